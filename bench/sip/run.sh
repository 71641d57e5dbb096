#!/usr/bin/env bash
# sipzone's SIP edge against Kamailio 5.6 (../shared/bench/kamailio-anchor.sh), both one worker,
# both holding the same 10,001 domains: CPU per admitted OPTIONS at RATE/s, measured A B
# ROUNDS times (default 3) with ../shared/bench/sip-cpu.sh, then a short rate ladder for the
# highest rate each sustains with < 0.1 % failures.  Prints a markdown table (redirect it into bench/sip/RESULTS.md).
# Every measurement holds /tmp/sipzone-bench.lock: the two cores are shared with other benches.
# usage: bench/sip/run.sh   (env: N=10000 RATE=5000 COUNT=50000 ROUNDS=3 LADDER="5000 10000 ...")
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
sipzone=${SIPZONE:-$root/.venv/bin/sipzone}
python=${PYTHON:-$root/.venv/bin/python}
n=${N:-10000}; rate=${RATE:-5000}; count=${COUNT:-50000}; rounds=${ROUNDS:-3}
ladder=${LADDER:-"5000 10000 15000 20000 25000 30000"}; step_seconds=${STEP_SECONDS:-4}

work=$(mktemp -d /tmp/sipzone-bench-sip.XXXXXX)
pgids=()
cleanup() {
  for g in "${pgids[@]}"; do kill -- "-$g" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
kport=$(free_port); zport=$(free_port)

# The same names Kamailio's anchor loads: customer1..N.example.com and voip.example.com.
{ for i in $(seq 1 "$n"); do echo "customer$i.example.com"; done; echo voip.example.com; } >"$work/domains.txt"
db="sqlite:///$work/sipzone.db"
"$sipzone" init --db "$db" >/dev/null
"$sipzone" domain import "$work/domains.txt" --owner provider --db "$db" >/dev/null 2>&1

kpid=$("$shared/kamailio-anchor.sh" "$kport" "$n")
pgids+=("$(ps -o pgid= "$kpid" | tr -d ' ')")
start_sipzone() {  # start_sipzone PORT LOG [serve options] -> pid of the new process group
  setsid "$sipzone" serve --db "$db" --sip "udp:127.0.0.1:$1" --workers 1 --no-health-checks "${@:3}" >"$2" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "sipzone: ready" "$2" && break; sleep 0.1; done
  grep -q "sipzone: ready" "$2" || { cat "$2" >&2; exit 1; }
  echo "$pid"
}
zpid=$(start_sipzone "$zport" "$work/serve.log"); pgids+=("$zpid")

measure() {  # measure PORT PID RATE COUNT -> "cpu ok failed offered"
  flock /tmp/sipzone-bench.lock "$shared/sip-cpu.sh" "127.0.0.1:$1" "$2" "$3" "$4" |
    sed -E 's/cpu_us_per_request=([0-9.]+) ok=([0-9]+) failed=([0-9]+) offered=([0-9]+).*/\1 \2 \3 \4/'
}

# Warm both (first packets pay for imports and caches), then A B, ROUNDS times.
measure "$kport" "$kpid" 1000 2000 >/dev/null
measure "$zport" "$zpid" 1000 2000 >/dev/null
# CPU a server spends with no traffic at all (sipzone: the store feed's safety check, the
# heartbeat), as µs per request at RATE: part of every per-request figure below.
idle_us() {  # idle_us PID SECONDS
  local t0 t1 hz; hz=$(getconf CLK_TCK)
  t0=$(awk '{print $14+$15}' "/proc/$1/stat"); sleep "$2"; t1=$(awk '{print $14+$15}' "/proc/$1/stat")
  awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$2" -v r="$rate" 'BEGIN { printf "%.1f", d * 1e6 / hz / s / r }'
}
kidle=$(flock /tmp/sipzone-bench.lock bash -c "$(declare -f idle_us); rate=$rate; idle_us $kpid 5")
zidle=$(flock /tmp/sipzone-bench.lock bash -c "$(declare -f idle_us); rate=$rate; idle_us $zpid 5")
declare -a kcpu zcpu
kfail=0; zfail=0
for _ in $(seq "$rounds"); do
  read -r c ok f off < <(measure "$kport" "$kpid" "$rate" "$count"); kcpu+=("$c"); kfail=$((kfail + off - ok))
  read -r c ok f off < <(measure "$zport" "$zpid" "$rate" "$count"); zcpu+=("$c"); zfail=$((zfail + off - ok))
done

best_rate() {  # best_rate PORT PID -> highest ladder rate with < 0.1 % failures
  local best=0 r c ok f off
  for r in $ladder; do
    read -r c ok f off < <(measure "$1" "$2" "$r" $((r * step_seconds)))
    if (( (off - ok) * 1000 < off )); then best=$r; else break; fi
  done
  echo "$best"
}
kbest=$(best_rate "$kport" "$kpid")
zbest=$(best_rate "$zport" "$zpid")

avg() { echo "$@" | awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.1f", s / NF }'; }
ka=$(avg "${kcpu[@]}"); za=$(avg "${zcpu[@]}")
ratio=$(awk -v z="$za" -v k="$ka" 'BEGIN { printf "%.2f", z / k }')

echo "Measured $(date -u +'%Y-%m-%d %H:%M UTC') on $(nproc) shared cores by \`bench/sip/run.sh\`"
echo "(N=$n domains + voip.example.com, OPTIONS to voip.example.com at $rate/s, $count per run, A B x $rounds)."
echo
echo "| server (1 worker) | CPU µs/request per run | mean | of which idle | failed of $((rounds * count)) | highest rate with < 0.1 % failures |"
echo "|---|---|---|---|---|---|"
echo "| Kamailio 5.6 (anchor) | ${kcpu[*]} | $ka | $kidle | $kfail | $kbest/s |"
echo "| sipzone serve | ${zcpu[*]} | $za | $zidle | $zfail | $zbest/s |"
echo
echo "sipzone / Kamailio CPU per request: **$ratio** (target ≤ 0.40). Ladder: $ladder/s, ${step_seconds} s per step;"
echo "the ladder stops at the first failing step, and sipp on the same two cores limits the top."
echo "\"of which idle\": the server's CPU with no traffic (5 s), spread over $rate requests/s."
