"""The C library's system calls that Python's standard library does not wrap (recvmmsg and
sendmmsg for batched UDP, inotify for the store's file watch), by ctypes, on Linux only.

Each caller asks for the functions it needs with their argument types; None means "not
here" (another system, an old C library), and the caller falls back to what the standard
library offers.  Errors come back the C way: a negative result and ``ctypes.get_errno()``.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from typing import Any

_libc: ctypes.CDLL | None = None
_loaded = False


def _load() -> ctypes.CDLL | None:
    global _libc, _loaded
    if not _loaded:
        _loaded = True
        if sys.platform.startswith("linux"):
            try:
                _libc = ctypes.CDLL(None, use_errno=True)
            except OSError:
                _libc = None
    return _libc


def function(name: str, argtypes: Sequence[Any]) -> Any | None:
    """The C library's ``name`` taking ``argtypes`` (returning an int), or None."""
    libc = _load()
    if libc is None:
        return None
    try:
        found = getattr(libc, name)
    except AttributeError:
        return None
    found.argtypes = list(argtypes)
    return found
