#!/usr/bin/env bash
# `sipzone domain import` of N names (default 1,000,000) into a fresh SQLite store, then the
# same file again (idempotent: nothing added), then the snapshot load a server does at start.
# usage: bench/model/import.sh [N]
set -euo pipefail
n=${1:-1000000}
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=$here/.venv/bin
work=$(mktemp -d /tmp/sipzone-import.XXXXXX); trap 'rm -rf "$work"' EXIT
export SIPZONE_DB="sqlite:///$work/sipzone.db"
"$bin/python" -c "
import sys
with open('$work/names.txt', 'w') as f:
    for i in range($n): f.write(f'customer{i}.example.com\n')
    for i in range($n // 10): f.write(f'*.teams{i}.example.net\n')
"
"$bin/sipzone" init >/dev/null
measure() { /usr/bin/time -f "%e %M" "$@" 2>&1 >/dev/null | tail -1; }
first=$(measure "$bin/sipzone" domain import "$work/names.txt")
again=$(measure "$bin/sipzone" domain import "$work/names.txt")
load=$("$bin/python" -c "
import time, resource
from sipzone.store.repository import Store
t = time.perf_counter(); s = Store('$SIPZONE_DB').load_snapshot(); dt = time.perf_counter() - t
print(f'{dt:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} {len(s.matcher)}')")
echo "| step ($n exact + $((n / 10)) wildcard names, SQLite) | wall s | peak RSS MB |"
echo "|---|---|---|"
set -- $first; echo "| domain import, fresh store | $1 | $(($2 / 1024)) |"
set -- $again; echo "| domain import again (idempotent, 0 added) | $1 | $(($2 / 1024)) |"
set -- $load; echo "| load snapshot from store ($3 rules) | $1 | $(($2 / 1024)) |"
