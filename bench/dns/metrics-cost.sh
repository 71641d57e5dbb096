#!/usr/bin/env bash
# What counting DNS queries for Prometheus costs: the same store served twice, one worker
# each, without and with --metrics, measured by the harness's dns-qps.sh (dnsperf at full
# speed, CPU per query from /proc) on its static query mix, A B A B.  Holds the benchmark
# lock around each measurement.  usage: bench/dns/metrics-cost.sh [SECONDS=5] [ROUNDS=2]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${SIPZONE_SHARED_BENCH:-/work/shared/bench}
sipzone=${SIPZONE:-$root/.venv/bin/sipzone}
secs=${1:-5}; rounds=${2:-2}
tmp=$(mktemp -d /tmp/sipzone-dns-metrics.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export SIPZONE_DB="sqlite:///$tmp/bench.db"
{
  "$sipzone" init
  "$sipzone" nameserver add ns1.example.com --address 127.0.0.1
  "$sipzone" zone add example.com
  "$sipzone" site add site-a --vip 192.0.2.10 --region a --network 127.0.0.0/8 --port-tls 5061
  "$sipzone" domain add voip.example.com
  "$sipzone" domain add '*.teams.example.com'
} >/dev/null
start() {  # start NAME [ARGS]: a server in its own process group; sets port_NAME, pid_NAME
  local name=$1 port; shift; port=$(free)
  setsid "$sipzone" serve --dns "127.0.0.1:$port" --share-ports "$@" >"$tmp/$name.log" 2>&1 &
  pids+=("$!"); eval "port_$name=$port pid_$name=$!"
  until grep -qs "sipzone: ready" "$tmp/$name.log"; do sleep 0.1; done
}
start plain
start counted --metrics "127.0.0.1:$(free)"
for round in $(seq "$rounds"); do
  for name in plain counted; do
    port_var="port_$name"; pid_var="pid_$name"
    echo "$name $(flock /tmp/sipzone-bench.lock "$shared/dns-qps.sh" 127.0.0.1 "${!port_var}" "${!pid_var}" "$shared/static-queries.txt" "$secs")"
  done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
