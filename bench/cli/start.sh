#!/usr/bin/env bash
# Start-to-exit time of simple `sipzone` commands (what a script calling the CLI a thousand
# times pays each time): `--help`, `domain add`, `check`, `domain list --json` on SQLite, and
# `check` on PostgreSQL when SIPZONE_TEST_PG reaches one.  Each command runs N times (default
# 15); the median and the best wall time and the median CPU time (user + system, steadier on a
# shared machine) are printed, with what SQLAlchemy's import alone takes (the floor of a command
# that uses the store) and `check` ending with the interpreter's full teardown (as before the
# console script skipped it: sipzone.cli._leave).  Python writes bytecode here (as an installed package has it): PYTHONDONTWRITEBYTECODE
# is unset.  Holds the benchmark lock so two benchmarks never share the CPUs.
# usage: bench/cli/start.sh [N]
set -euo pipefail
n=${1:-15}
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=$here/.venv/bin
work=$(mktemp -d /tmp/sipzone-clibench.XXXXXX); trap 'rm -rf "$work"' EXIT
unset PYTHONDONTWRITEBYTECODE
export SIPZONE_DB="sqlite:///$work/sipzone.db"
"$bin/sipzone" init >/dev/null
"$bin/sipzone" domain add warm.example.com >/dev/null  # bytecode written, caches warm

stats() {  # stats NAME CMD... : median and best of n runs, in seconds
    local name=$1; shift
    "$bin/python" - "$n" "$name" "$@" <<'PY'
import os, statistics, subprocess, sys, time
n, name, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
times, cpu = [], []
for i in range(n):
    argv = [a.replace("{i}", str(i)) for a in cmd]
    t, c = time.perf_counter(), os.times()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times.append(time.perf_counter() - t)
    d = os.times()
    cpu.append(d.children_user - c.children_user + d.children_system - c.children_system)
median = statistics.median
print(f"| {name} | {median(times):.3f} | {min(times):.3f} | {median(cpu):.3f} |")
PY
}

exec 9>/tmp/sipzone-bench.lock
flock 9
echo "| command ($n runs each) | median s | best s | median CPU s |"
echo "|---|---:|---:|---:|"
stats "python -c pass (the interpreter alone)" "$bin/python" -c pass
stats "python -c 'import sqlalchemy'" "$bin/python" -c "import sqlalchemy"
stats "python -c 'import sqlalchemy', no teardown" "$bin/python" -c "import os, sqlalchemy; os._exit(0)"
stats "sipzone --help" "$bin/sipzone" --help
stats "sipzone domain add NAME (SQLite)" "$bin/sipzone" domain add "n{i}.example.com"
stats "sipzone check NAME (SQLite)" "$bin/sipzone" check n1.example.com
stats "sipzone check NAME (SQLite), with teardown" "$bin/python" -c \
    "import sys; from sipzone.cli import main; main(sys.argv[1:])" check n1.example.com
stats "sipzone domain list --json (SQLite, $((n + 1)) domains)" "$bin/sipzone" domain list --json
pg=${SIPZONE_TEST_PG:-postgres@127.0.0.1:5432}
if "$bin/python" -c "import psycopg; psycopg.connect('postgresql://$pg/test', connect_timeout=2).close()" 2>/dev/null; then
    db="clibench_$$"
    psql -q -h "${pg#*@}" -U "${pg%@*}" -d test -c "CREATE DATABASE $db" 2>/dev/null \
        || "$bin/python" -c "import psycopg; c = psycopg.connect('postgresql://$pg/test', autocommit=True); c.execute('CREATE DATABASE $db')"
    export SIPZONE_DB="postgresql://$pg/$db"
    "$bin/sipzone" init >/dev/null
    stats "sipzone domain add NAME (PostgreSQL)" "$bin/sipzone" domain add "p{i}.example.com"
    stats "sipzone check NAME (PostgreSQL)" "$bin/sipzone" check p1.example.com
    "$bin/python" -c "import psycopg; c = psycopg.connect('postgresql://$pg/test', autocommit=True); c.execute('DROP DATABASE $db WITH (FORCE)')"
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
