#!/usr/bin/env bash
# SIP over TLS: sipzone's edge against Kamailio 5.6 with its tls module (Debian package
# kamailio-tls-modules), both one worker, the same RSA-2048 certificate (a throwaway trustme CA),
# OPTIONS to voip.example.com answered 200 by each.  Measured A B A B with bench/sip/tlsload.py:
#  (a) OPTIONS over established TLS connections: CPU per request;
#  (b) new TLS connections (handshake, close): CPU per handshake, TLS 1.2 and TLS 1.3;
#  and (a) over plain TCP, which tells what TLS adds from what the SIP part costs.
# CPU is read from /proc for the server's whole process group.  Prints a markdown table.
# Every measurement holds /tmp/sipzone-bench.lock (the two cores are shared).
# usage: bench/sip/tls.sh   (env: COUNT=40000 HANDSHAKES=2000 CONNECTIONS=20 DEPTH=8)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
sipzone=${SIPZONE:-$root/.venv/bin/sipzone}
python=${PYTHON:-$root/.venv/bin/python}
count=${COUNT:-40000}; handshakes=${HANDSHAKES:-2000}
connections=${CONNECTIONS:-20}; depth=${DEPTH:-8}

work=$(mktemp -d /tmp/sipzone-bench-tls.XXXXXX)
pgids=()
cleanup() {
  for g in "${pgids[@]}"; do kill -- "-$g" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
kport=$(free_port); zport=$(free_port); ktcp=$(free_port); ztcp=$(free_port)

"$python" - "$work" <<'PY'
import sys, trustme
ca = trustme.CA(key_type=trustme.KeyType.RSA)
leaf = ca.issue_cert("voip.example.com", key_type=trustme.KeyType.RSA)
ca.cert_pem.write_to_path(f"{sys.argv[1]}/ca.pem")
leaf.cert_chain_pems[0].write_to_path(f"{sys.argv[1]}/cert.pem")
leaf.private_key_pem.write_to_path(f"{sys.argv[1]}/key.pem")
PY

# sipzone: one domain, the certificate, one worker.
db="sqlite:///$work/sipzone.db"
"$sipzone" init --db "$db" >/dev/null
"$sipzone" domain add voip.example.com --db "$db" >/dev/null
"$sipzone" cert add voip --cert "$work/cert.pem" --key "$work/key.pem" --db "$db" >/dev/null
setsid "$sipzone" serve --db "$db" --sip "tls:127.0.0.1:$zport,tcp:127.0.0.1:$ztcp" --workers 1 >"$work/serve.log" 2>&1 &
zpid=$!; pgids+=("$zpid")
for _ in $(seq 100); do grep -q "sipzone: ready" "$work/serve.log" && break; sleep 0.1; done
grep -q "sipzone: ready" "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }

# Kamailio: TLS only, one TCP worker, OPTIONS to the domain -> 200 (sl, stateless).
mods=$(dirname "$(find /usr/lib -name tls.so -path '*kamailio*' | head -1)")
[[ -f $mods/tls.so ]] || { echo "kamailio tls module missing: apt-get install kamailio-tls-modules" >&2; exit 1; }
cat > "$work/tls.cfg" <<CFG
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = $work/key.pem
certificate = $work/cert.pem
CFG
cat > "$work/kamailio.cfg" <<CFG
#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=1
tcp_children=1
auto_aliases=no
enable_tls=yes
listen=tls:127.0.0.1:$kport
listen=tcp:127.0.0.1:$ktcp
mpath="$mods/"
loadmodule "tls.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
modparam("tls", "config", "$work/tls.cfg")
request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483","Too Many Hops"); exit; }
    if (\$rd == "voip.example.com" && is_method("OPTIONS")) { sl_send_reply("200","OK"); exit; }
    sl_send_reply("403","Domain Not Served");
    exit;
}
CFG
setsid kamailio -f "$work/kamailio.cfg" -P "$work/kamailio.pid" -E >"$work/kamailio.log" 2>&1 || { cat "$work/kamailio.log" >&2; exit 1; }
for _ in $(seq 50); do [[ -s $work/kamailio.pid ]] && break; sleep 0.1; done
kpid=$(cat "$work/kamailio.pid"); pgids+=("$(ps -o pgid= "$kpid" | tr -d ' ')")
sleep 1

load() {  # load MODE PORT PID [options] -> "cpu ok seconds"
  flock /tmp/sipzone-bench.lock "$python" "$here/tlsload.py" "$1" 127.0.0.1 "$2" "$3" "$work/ca.pem" \
    --connections "$connections" --depth "$depth" "${@:4}" |
    sed -E 's/cpu_us_per_[a-z]+=([0-9.]+) ok=([0-9]+) seconds=([0-9.]+)/\1 \2 \3/'
}

# Warm both, then A B A B for each measurement.
load options "$kport" "$kpid" --count 2000 >/dev/null
load options "$zport" "$zpid" --count 2000 >/dev/null
declare -A cpu ok
for what in options tcp tls12 tls13; do
  case $what in
    options) args=(options --count "$count") ;;
    tcp) args=(options --count "$count" --plain) ;;
    tls12) args=(handshakes --count "$handshakes" --tls 1.2) ;;
    tls13) args=(handshakes --count "$handshakes" --tls 1.3) ;;
  esac
  for round in 1 2; do
    for side in k z; do
      if [[ $side == k ]]; then port=$kport pid=$kpid; else port=$zport pid=$zpid; fi
      if [[ $what == tcp ]]; then if [[ $side == k ]]; then port=$ktcp; else port=$ztcp; fi; fi
      read -r c n s < <(load "${args[0]}" "$port" "$pid" "${args[@]:1}")
      cpu[$what,$side]="${cpu[$what,$side]:-} $c"; ok[$what,$side]=$(( ${ok[$what,$side]:-0} + n ))
    done
  done
done

mean() { awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.1f", s / NF }' <<<"$1"; }
echo "| measurement | Kamailio 5.6 tls (µs CPU) | sipzone (µs CPU) | sipzone / Kamailio | runs (A B A B) |"
echo "|---|---|---|---|---|"
for what in options tcp tls12 tls13; do
  case $what in
    options) label="(a) OPTIONS over established TLS, per request" ;;
    tcp) label="(a) the same over plain TCP (no TLS), per request" ;;
    tls12) label="(b) new connection, TLS 1.2 handshake" ;;
    tls13) label="(b) new connection, TLS 1.3 handshake" ;;
  esac
  k=$(mean "${cpu[$what,k]}"); z=$(mean "${cpu[$what,z]}")
  ratio=$(awk -v k="$k" -v z="$z" 'BEGIN { printf "%.2f", z / k }')
  echo "| $label | $k | $z | ${ratio}× | K:${cpu[$what,k]} / Z:${cpu[$what,z]}; ok K ${ok[$what,k]}, Z ${ok[$what,z]} |"
done
