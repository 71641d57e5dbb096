#!/usr/bin/env bash
# sipzone's DNS authority against PowerDNS 4.7 with the same records, in one run, A B A B.
# PowerDNS comes from ../shared/bench/pdns-anchor.sh; sipzone serves a SQLite store holding
# the same data (zone example.com, sites 192.0.2.10 (serves 127.0.0.0/8 first) and
# 198.51.100.10, voip, *.teams, geo).  Both are measured by dns-qps.sh on the static and the
# regional query mixes; each measurement holds /tmp/sipzone-bench.lock so it never overlaps
# another benchmark on the shared cores.  Prints a markdown table.
# usage: bench/dns/run.sh [SECONDS=10] [ROUNDS=2]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
shared=${SIPZONE_SHARED_BENCH:-/work/shared/bench}
sipzone=${SIPZONE:-$root/.venv/bin/sipzone}
secs=${1:-10}
rounds=${2:-2}
lock=/tmp/sipzone-bench.lock

tmp=$(mktemp -d /tmp/sipzone-dns-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

export SIPZONE_DB="sqlite:///$tmp/bench.db"
{
  "$sipzone" init
  "$sipzone" nameserver add ns1.example.com --address 127.0.0.1
  "$sipzone" zone add example.com
  # TLS ports: PowerDNS's zone has _sips._tcp SRV records, and sites offer no TLS by default.
  "$sipzone" site add site-a --vip 192.0.2.10 --region a --network 127.0.0.0/8 --weight 50 --order 1 \
      --port-tls 5061
  "$sipzone" site add site-b --vip 198.51.100.10 --region b --weight 50 --order 2 --port-tls 5061
  "$sipzone" domain add voip.example.com --owner provider
  "$sipzone" domain add '*.teams.example.com' --owner provider
  "$sipzone" domain add geo.example.com --owner provider
} >/dev/null

pdns_port=$(free_port)
pdns_pid=$("$shared/pdns-anchor.sh" "$pdns_port")
pids+=("$pdns_pid")

sz_port=$(free_port)
setsid "$sipzone" serve --dns "127.0.0.1:$sz_port" --workers 1 --no-health-checks >"$tmp/serve.log" 2>&1 &
sz_pid=$!
pids+=("$sz_pid")
for _ in $(seq 100); do
  dig +short +time=1 +tries=1 @127.0.0.1 -p "$sz_port" voip.example.com A | grep -q . && break
  sleep 0.1
done

measure() {  # server-name port pid mix-file
  flock "$lock" "$shared/dns-qps.sh" 127.0.0.1 "$2" "$3" "$4" "$secs"
}

results="$tmp/results"
: >"$results"
for mix in static geo; do
  file="$shared/$mix-queries.txt"
  for round in $(seq "$rounds"); do
    for server in pdns sipzone; do
      if [ "$server" = pdns ]; then line=$(measure pdns "$pdns_port" "$pdns_pid" "$file")
      else line=$(measure sipzone "$sz_port" "$sz_pid" "$file"); fi
      echo "$mix $server $round $line" | tee -a "$results" >&2
    done
  done
done

# Mean per (mix, server); ratio = sipzone qps / PowerDNS qps in the same run.
awk '
  { split($4, q, "="); split($5, c, "="); split($7, l, "=");
    k = $1 " " $2; qps[k] += q[2]; cpu[k] += c[2]; lost[k] += l[2]; n[k]++;
    runs[k] = runs[k] (runs[k] == "" ? "" : ", ") q[2] }
  END {
    print "| query mix | server | qps (mean) | qps per run | CPU µs/query | lost | vs PowerDNS |"
    print "|---|---|---:|---|---:|---:|---:|"
    split("static geo", mixes, " ")
    for (i = 1; i <= 2; i++) {
      m = mixes[i]; p = m " pdns"; s = m " sipzone"
      label = (m == "static") ? "static (static-queries.txt)" : "regional (geo-queries.txt; PowerDNS LUA)"
      printf "| %s | PowerDNS 4.7 | %.0f | %s | %.1f | %d | 1.00× |\n", label, qps[p]/n[p], runs[p], cpu[p]/n[p], lost[p]
      printf "| %s | sipzone, 1 worker | %.0f | %s | %.1f | %d | **%.2f×** |\n", label, qps[s]/n[s], runs[s], cpu[s]/n[s], lost[s], (qps[s]/n[s])/(qps[p]/n[p])
    }
  }' "$results"
