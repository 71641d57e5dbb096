#!/usr/bin/env bash
# 1,000,000 SIP domains served by one `sipzone serve --dns` worker: import time, start time,
# resident memory of the serving process group, and dnsperf over a random sample of the names
# (A, SRV and NAPTR; every answer must be NOERROR).  Holds /tmp/sipzone-bench.lock while it
# measures.  usage: bench/dns/million.sh [COUNT=1000000] [SECONDS=10]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
sipzone=${SIPZONE:-$root/.venv/bin/sipzone}
count=${1:-1000000}
secs=${2:-10}
tmp=$(mktemp -d /tmp/sipzone-dns-million.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill -- -"$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

export SIPZONE_DB="sqlite:///$tmp/million.db"
{
  "$sipzone" init
  "$sipzone" nameserver add ns1.example.com --address 127.0.0.1
  "$sipzone" zone add example.com
  "$sipzone" site add site-a --vip 192.0.2.10 --vip 2001:db8::10 --region a --network 127.0.0.0/8
  "$sipzone" site add site-b --vip 198.51.100.10 --region b
  "$sipzone" domain add '*.teams.example.com' --owner provider
} >/dev/null
seq 1 "$count" | sed 's/^/customer/; s/$/.example.com/' >"$tmp/names.txt"
t0=$(date +%s.%N)
"$sipzone" domain import "$tmp/names.txt" --owner provider 2>/dev/null
t1=$(date +%s.%N)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
setsid "$sipzone" serve --dns "127.0.0.1:$port" --workers 1 --no-health-checks >"$tmp/serve.log" 2>&1 &
pid=$!
until grep -q "sipzone: ready" "$tmp/serve.log"; do sleep 0.2; kill -0 "$pid"; done
t2=$(date +%s.%N)
dig +short @127.0.0.1 -p "$port" "customer$count.example.com" A | grep -q 192.0.2.10

python3 - "$count" >"$tmp/queries.txt" <<'PY'
import random, sys
n = int(sys.argv[1])
rng = random.Random(42)
for _ in range(100_000):
    i = rng.randint(1, n)
    kind = rng.choice(["A", "SRV", "NAPTR"])
    name = f"customer{i}.example.com" if kind != "SRV" else f"_sip._udp.customer{i}.example.com"
    print(name, kind)
PY
rss() { local t=0 p; for p in $(pgrep -g "$pid"); do t=$((t + $(awk '/VmRSS/ {print $2}' /proc/$p/status))); done; echo $t; }
before=$(rss)
out=$(flock /tmp/sipzone-bench.lock dnsperf -s 127.0.0.1 -p "$port" -d "$tmp/queries.txt" -l "$secs" -c 10 -q 200 2>&1)
after=$(rss)
echo "$out" | grep -E "Queries (sent|completed|lost)|Response codes|Queries per second" >&2
awk -v n="$count" -v imp="$(echo "$t1 - $t0" | bc)" -v st="$(echo "$t2 - $t1" | bc)" \
  -v b="$before" -v a="$after" -v qps="$(echo "$out" | awk '/Queries per second/ {print $4}')" \
  -v codes="$(echo "$out" | awk -F': ' '/Response codes/ {print $2}')" 'BEGIN {
  printf "| SIP domains | import | serve start | RSS after start | RSS after queries | qps (random names) | response codes |\n"
  printf "|---:|---:|---:|---:|---:|---:|---|\n"
  printf "| %d | %.0f s | %.1f s | %.0f MB | %.0f MB | %.0f | %s |\n", n, imp, st, b/1024, a/1024, qps, codes }'
