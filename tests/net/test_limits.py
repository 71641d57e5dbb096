"""Connection caps follow the open-file limit, measured in a child with a lowered limit."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import resource
from sipzone.net.limits import FD_RESERVE, STREAM_SERVICES, connection_cap, raise_open_files
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
share = (1024 - FD_RESERVE) // STREAM_SERVICES
assert connection_cap() == share, connection_cap()
assert connection_cap(4096) == share
assert connection_cap(100) == 100
resource.setrlimit(resource.RLIMIT_NOFILE, (512, 1024))
assert raise_open_files() == 1024
assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 1024
print("ok")
"""


def test_caps_stay_below_the_open_file_limit() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
