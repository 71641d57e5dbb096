#!/usr/bin/env bash
# Whole calls through sipzone's SIP edge against Kamailio 5.6 as a stateless record-routing proxy
# (../shared/bench/kamailio-proxy-anchor.sh), both one worker, both holding the same 10,001
# domains: CPU per call (INVITE, 180, 200, ACK, BYE, 200: six messages each way through the
# proxy) at RATE calls/s, COUNT calls per run, measured A B A B with ../shared/bench/call-cpu.sh
# (a sipp UAC through the proxy to a sipp UAS that echoes Record-Route).  Prints a markdown table
# (redirect it into bench/sip/RESULTS.md).  Every measurement holds /tmp/sipzone-bench.lock:
# the two cores are shared with other benches.
# usage: bench/sip/calls.sh   (env: N=10000 RATE=1000 COUNT=10000 ROUNDS=2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
[[ -d $shared ]] || shared=$root/../../shared/bench  # from a worktree under /work/wt/
sipzone=${SIPZONE:-$root/.venv/bin/sipzone}
python=${PYTHON:-$root/.venv/bin/python}
n=${N:-10000}; rate=${RATE:-1000}; count=${COUNT:-10000}; rounds=${ROUNDS:-2}

work=$(mktemp -d /tmp/sipzone-bench-calls.XXXXXX)
pgids=()
kdir=""
cleanup() {
  for g in "${pgids[@]}"; do kill -- "-$g" 2>/dev/null || true; done
  rm -rf "$work"
  [[ -n $kdir && $kdir == /tmp/kamailio-proxy.* ]] && rm -rf "$kdir"
  return 0
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
kport=$(free_port); kuas=$(free_port); zport=$(free_port); zuas=$(free_port)

# The same names Kamailio's anchor loads: customer1..N.example.com and voip.example.com, owned
# by a tenant whose upstream is the sipp UAS that call-cpu.sh starts for sipzone's runs.
{ for i in $(seq 1 "$n"); do echo "customer$i.example.com"; done; echo voip.example.com; } >"$work/domains.txt"
db="sqlite:///$work/sipzone.db"
"$sipzone" init --db "$db" >/dev/null
"$sipzone" tenant add acme --upstream "sip:127.0.0.1:$zuas" --db "$db" >/dev/null
"$sipzone" domain import "$work/domains.txt" --owner acme --db "$db" >/dev/null 2>&1

kpid=$("$shared/kamailio-proxy-anchor.sh" "$kport" "$kuas" "$n")
pgids+=("$(ps -o pgid= "$kpid" | tr -d ' ')")
kdir=$(dirname "$(tr '\0' '\n' <"/proc/$kpid/cmdline" | grep -m1 'kamailio.cfg$' || echo /nonexistent/x)")

setsid "$sipzone" serve --db "$db" --sip "udp:127.0.0.1:$zport" --workers 1 --no-health-checks >"$work/serve.log" 2>&1 &
zpid=$!
pgids+=("$zpid")
for _ in $(seq 100); do grep -q "sipzone: ready" "$work/serve.log" && break; sleep 0.1; done
grep -q "sipzone: ready" "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }

measure() {  # measure PORT PID UAS_PORT COUNT -> "cpu ok failed offered"
  flock /tmp/sipzone-bench.lock "$shared/call-cpu.sh" "127.0.0.1:$1" "$2" "$3" "$rate" "$4" |
    sed -E 's/cpu_us_per_call=([0-9.]+) ok=([0-9]+) failed=([0-9]+) offered=([0-9]+).*/\1 \2 \3 \4/'
}
load() { cut -d' ' -f1-3 /proc/loadavg; }

load_before=$(load)
# Warm both (the first calls pay for imports and caches), then A B A B.
measure "$kport" "$kpid" "$kuas" 1000 >/dev/null
measure "$zport" "$zpid" "$zuas" 1000 >/dev/null
declare -a kcpu zcpu
kok=0; kfail=0; zok=0; zfail=0
for _ in $(seq "$rounds"); do
  read -r c ok f off < <(measure "$kport" "$kpid" "$kuas" "$count")
  kcpu+=("$c"); kok=$((kok + ok)); kfail=$((kfail + off - ok))
  read -r c ok f off < <(measure "$zport" "$zpid" "$zuas" "$count")
  zcpu+=("$c"); zok=$((zok + ok)); zfail=$((zfail + off - ok))
done
load_after=$(load)

avg() { echo "$@" | awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.1f", s / NF }'; }
ka=$(avg "${kcpu[@]}"); za=$(avg "${zcpu[@]}")
ratio=$(awk -v z="$za" -v k="$ka" 'BEGIN { printf "%.2f", z / k }')
runs() { local IFS='|'; echo "$*" | sed 's/|/ | /g'; }
header=""; rule=""
for i in $(seq "$rounds"); do header+=" run $i |"; rule+="---|"; done

echo "Measured $(date -u +'%Y-%m-%d %H:%M UTC') on $(nproc) shared cores by \`bench/sip/calls.sh\`"
echo "at commit $(git -C "$root" rev-parse --short HEAD) (N=$n domains + voip.example.com; whole calls"
echo "to voip.example.com at $rate/s, $count per run, A B A B; load average $load_before before, $load_after after)."
echo
echo "| proxy (1 worker) | CPU µs/call,$header mean | calls ok | failed |"
echo "|---|$rule---|---|---|"
echo "| Kamailio 5.6 \`record_route()\` + \`forward()\` | $(runs "${kcpu[@]}") | $ka | $kok | $kfail |"
echo "| sipzone serve --workers 1 | $(runs "${zcpu[@]}") | $za | $zok | $zfail |"
echo
echo "sipzone / Kamailio CPU per call: **$ratio** (target ≤ 0.5, no call lost)."
echo "CPU is the proxy's whole process group (Kamailio: all its processes) over the run, per offered call."
