"""Where the store is: its URL, where that URL may come from, and how it may be shown.

It imports nothing heavy (no SQLAlchemy), so the command line can name a store, show it and
say what is wrong with it before the database layer is loaded, or without loading it at all.

The URL comes from ``--db``, else ``SIPZONE_DB``, else the file named by ``SIPZONE_DB_FILE``
(or ``--db-file``, or ``db_file`` in a ``serve`` configuration file: a file readable only by
the service, so the password is in no process list, unit file or environment dump), else
:data:`DEFAULT_URL`.  A URL is never printed or logged with its password: :func:`redacted`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_URL = "sqlite:///./sipzone.db"
ENV_URL = "SIPZONE_DB"
ENV_URL_FILE = "SIPZONE_DB_FILE"

# scheme://user:password@host -- the password is everything between the first ':' after the
# scheme's '//' and the last '@' before the path (a password may hold '@' unescaped).
_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^/]*@")


class UnreadableUrlFile(OSError):
    """The file that should hold the store URL cannot be read, or holds no URL."""


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: the only form we show."""
    return _PASSWORD.sub(lambda m: m["head"] + ":***@", url, count=1)


def read_url_file(path: str | os.PathLike[str]) -> str:
    """The URL in ``path``: its first line that is neither empty nor a ``#`` comment."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UnreadableUrlFile(f"cannot read the store URL from {str(path)!r}: {reason}") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise UnreadableUrlFile(f"{str(path)!r} holds no store URL (one line: postgresql://...)")


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///FILE`` URL; None for another database or an in-memory one."""
    match = re.match(r"^sqlite(\+pysqlite)?://(/(?P<path>[^?]*))?(\?.*)?$", url)
    if match is None:
        return None
    path = match["path"] or ""
    return None if path in ("", ":memory:") else path
