#!/usr/bin/env bash
# Sizing figures for the README: for N SIP domains (default 100000 and 1000000) in a SQLite
# store, `sipzone serve` with SIP (UDP+TCP) and DNS and 2 workers: time from start to "ready",
# memory of each worker (RSS, and PSS: a forked worker shares pages with its supervisor) and
# of the supervisor, and the time of a full AXFR of the zone to `dig`.  Holds the benchmark
# lock while it measures.  usage: bench/ops/sizing.sh [N ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
sipzone=${SIPZONE:-$root/.venv/bin/sipzone}
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)
tmp=$(mktemp -d /tmp/sipzone-sizing.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill -- -"$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/${3:-status}"; }
exec 9>/tmp/sipzone-bench.lock
echo "| SIP domains | ready after | worker RSS | worker PSS | supervisor RSS | AXFR (dig) | AXFR size |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for n in "${sizes[@]}"; do
  export SIPZONE_DB="sqlite:///$tmp/s$n.db"
  {
    "$sipzone" init
    "$sipzone" nameserver add ns1.example.com --address 127.0.0.1
    "$sipzone" zone add example.com
    "$sipzone" site add eu1 --vip 192.0.2.10 --vip 2001:db8::10 --region eu
  } >/dev/null
  seq 1 "$n" | sed 's/^/customer/; s/$/.example.com/' >"$tmp/names.txt"
  "$sipzone" domain import "$tmp/names.txt" >/dev/null 2>&1
  sport=$(free); dport=$(free)
  flock 9
  t0=$(date +%s.%N)
  setsid "$sipzone" serve --sip "udp:127.0.0.1:$sport,tcp:127.0.0.1:$sport" --dns "127.0.0.1:$dport" \
    --workers 2 --allow-transfer 127.0.0.1/32 >"$tmp/serve.log" 2>&1 &
  pid=$!
  until grep -q "sipzone: ready" "$tmp/serve.log"; do sleep 0.05; kill -0 "$pid"; done
  t1=$(date +%s.%N)
  sleep 2
  sup=$(pgrep -f -o "sipzone serve --sip udp:127.0.0.1:$sport")
  workers=$(cat "/proc/$sup/task/$sup/children")
  rss=0; pss=0; k=0
  for w in $workers; do rss=$((rss + $(kb "$w" VmRSS))); pss=$((pss + $(kb "$w" Pss smaps_rollup))); k=$((k + 1)); done
  srss=$(($(kb "$sup" VmRSS) / 1024))
  t2=$(date +%s.%N)
  size=$(dig +tcp +time=600 @127.0.0.1 -p "$dport" example.com AXFR | wc -c)
  t3=$(date +%s.%N)
  flock -u 9
  kill -- -"$pid"; wait "$pid" 2>/dev/null || true; pid=
  awk -v n="$n" -v r="$(echo "$t1 - $t0" | bc)" -v wr="$((rss / k / 1024))" -v wp="$((pss / k / 1024))" \
    -v sr="$srss" -v x="$(echo "$t3 - $t2" | bc)" -v b="$size" \
    'BEGIN { printf "| %d | %.1f s | %d MB | %d MB | %d MB | %.1f s | %.0f MB |\n", n, r, wr, wp, sr, x, b / 1e6 }'
  rm -f "$tmp"/s"$n".db* "$tmp/names.txt"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
