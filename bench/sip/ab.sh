#!/usr/bin/env bash
# Two builds of the SIP edge side by side: CPU per admitted OPTIONS (../shared/bench/sip-cpu.sh)
# of A and B, both one worker on the same store of N domains, measured A B A B A B in one run so
# the machine's load hits both alike; prints the runs, the means and B / A.  For a change to the
# hot path (the debug switches' check, issue 13): A = the code before it, B = after.
# Every measurement holds /tmp/sipzone-bench.lock.
# usage: SIPZONE_A=/path/to/sipzone SIPZONE_B=/path/to/sipzone bench/sip/ab.sh
#        (env: N=10000 RATE=5000 COUNT=30000 ROUNDS=3; B defaults to this tree's .venv)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
a=${SIPZONE_A:?the sipzone command of build A}; b=${SIPZONE_B:-$root/.venv/bin/sipzone}
python=$root/.venv/bin/python
n=${N:-10000}; rate=${RATE:-5000}; count=${COUNT:-30000}; rounds=${ROUNDS:-3}

work=$(mktemp -d /tmp/sipzone-bench-ab.XXXXXX)
pgids=()
cleanup() {
  for g in "${pgids[@]}"; do kill -- "-$g" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
{ for i in $(seq 1 "$n"); do echo "customer$i.example.com"; done; echo voip.example.com; } >"$work/domains.txt"
db="sqlite:///$work/sipzone.db"
"$b" init --db "$db" >/dev/null
"$b" domain import "$work/domains.txt" --owner provider --db "$db" >/dev/null 2>&1

start() {  # start SIPZONE PORT LOG -> pid of the new process group
  setsid "$1" serve --db "$db" --sip "udp:127.0.0.1:$2" --workers 1 --no-health-checks >"$3" 2>&1 &
  local pid=$!
  for _ in $(seq 150); do grep -q "sipzone: ready" "$3" && break; sleep 0.1; done
  grep -q "sipzone: ready" "$3" || { cat "$3" >&2; exit 1; }
  echo "$pid"
}
aport=$(free_port); bport=$(free_port)
apid=$(start "$a" "$aport" "$work/a.log"); pgids+=("$apid")
bpid=$(start "$b" "$bport" "$work/b.log"); pgids+=("$bpid")

measure() {  # measure PORT PID RATE COUNT -> "cpu_us ok offered"
  flock /tmp/sipzone-bench.lock "$shared/sip-cpu.sh" "127.0.0.1:$1" "$2" "$3" "$4" |
    sed -E 's/cpu_us_per_request=([0-9.]+) ok=([0-9]+) failed=([0-9]+) offered=([0-9]+).*/\1 \2 \4/'
}
measure "$aport" "$apid" 1000 2000 >/dev/null  # warm both
measure "$bport" "$bpid" 1000 2000 >/dev/null
declare -a acpu bcpu
afail=0; bfail=0
for _ in $(seq "$rounds"); do
  read -r c ok off < <(measure "$aport" "$apid" "$rate" "$count"); acpu+=("$c"); afail=$((afail + off - ok))
  read -r c ok off < <(measure "$bport" "$bpid" "$rate" "$count"); bcpu+=("$c"); bfail=$((bfail + off - ok))
done
avg() { echo "$@" | awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.1f", s / NF }'; }
am=$(avg "${acpu[@]}"); bm=$(avg "${bcpu[@]}")
echo "Measured $(date -u +'%Y-%m-%d %H:%M UTC') on $(nproc) shared cores (load average $(cut -d' ' -f1-3 /proc/loadavg))"
echo "by \`bench/sip/ab.sh\`: N=$n domains, OPTIONS to voip.example.com at $rate/s, $count per run, A B x $rounds."
echo
echo "| build | CPU µs/request per run | mean | failed of $((rounds * count)) |"
echo "|---|---|---|---|"
echo "| A ($a) | ${acpu[*]} | $am | $afail |"
echo "| B ($b) | ${bcpu[*]} | $bm | $bfail |"
echo
echo "B / A: **$(awk -v b="$bm" -v a="$am" 'BEGIN { printf "%.3f", b / a }')**"
