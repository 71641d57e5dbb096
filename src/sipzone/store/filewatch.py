"""Linux inotify(7) on a SQLite store's directory: the change feed sleeps until one of the
store's files is written, created, moved or deleted, instead of polling ``data_version`` twenty
times a second.

Why: the poll was the whole of an idle server's CPU, and at 5,000 keep-alives a second it was
a tenth of the SIP edge's cost per request.  A commit in WAL mode writes the ``-wal`` file (in
rollback mode, the database file), which is an ``IN_MODIFY`` event for that name in the
directory; replacing the file (``mv backup.db sipzone.db``), deleting it or creating it again
are ``IN_MOVED_TO``, ``IN_DELETE`` and ``IN_CREATE``.  Events for other names in the directory
are read and ignored.

The watch only says "look now"; the feed still reads ``data_version`` and looks at the file to
decide what happened, so a lost event costs latency, never correctness (the feed keeps a slow
safety poll).  Where inotify cannot be had (not Linux, no instances left, a directory it cannot
watch) :func:`watch` returns None and the feed polls as before.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import logging
import os
import struct

from sipzone import libc

log = logging.getLogger("sipzone.feed")

IN_MODIFY = 0x00000002
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

MASK = IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
MASK |= IN_MOVE_SELF | IN_ONLYDIR
EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
NO_NAMES: tuple[frozenset[bytes], frozenset[bytes]] = (frozenset(), frozenset())
READ_SIZE = 64 * 1024  # a burst of a bulk import's page writes is drained in one read


class Stir(enum.IntEnum):
    """What :meth:`FileWatch.read` saw, in rising order of what the feed must do."""

    NOTHING = 0  # events for other files only
    DATA = 1  # a journal was written: a commit may have landed (read ``data_version``)
    FILE = 2  # the database file itself was written, created, moved or deleted: look at it
    LOST = 3  # the directory went away, or events were lost: the watch is no use any more


class FileWatch:
    """An inotify descriptor watching the directory of one SQLite database file (and, when
    the path is a symbolic link, the link's directory too: SQLite keeps its journals beside
    the file the link points to, and an operator repoints the link where it is)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # watch descriptor -> (the names whose events say FILE, the names that say DATA)
        self._names: dict[int, tuple[frozenset[bytes], frozenset[bytes]]] = {}

    def add(self, wd: int, name: str, journals: bool) -> None:
        """Say FILE for ``name`` in the directory of ``wd`` (and DATA for its journals)."""
        file = os.fsencode(name)
        files, data = self._names.get(wd, NO_NAMES)
        if journals:
            data |= {file + b"-wal", file + b"-journal"}
        self._names[wd] = (files | {file}, data)

    def read(self) -> Stir:
        """Drain the pending events (non-blocking) and say what they mean for the store."""
        stir = Stir.NOTHING
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return stir
            except OSError as exc:
                log.warning("reading store file events failed (%s); polling instead", exc)
                return Stir.LOST
            if not data:
                return stir
            at = 0
            while at + EVENT.size <= len(data):
                wd, mask, _, length = EVENT.unpack_from(data, at)
                name = data[at + EVENT.size : at + EVENT.size + length].rstrip(b"\0")
                at += EVENT.size + length
                if mask & (IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                    return Stir.LOST
                files, journals = self._names.get(wd, NO_NAMES)
                if name in files:
                    stir = Stir.FILE
                elif name in journals and stir < Stir.DATA:
                    stir = Stir.DATA

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def watch(path: str) -> FileWatch | None:
    """A watch on ``path``'s directory (and, for a symbolic link, on its file's), or None where
    inotify is not to be had (said at debug level: polling is the fallback, not a fault)."""
    init = libc.function("inotify_init1", [ctypes.c_int])
    add_watch = libc.function("inotify_add_watch", [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32])
    if init is None or add_watch is None:
        return None
    fd = init(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        log.debug("inotify_init1: %s; polling the store", errno.errorcode.get(ctypes.get_errno()))
        return None
    found = FileWatch(fd)
    given, real = os.path.abspath(path), os.path.realpath(path)
    places = [(real, True)] if given == real else [(real, True), (given, False)]
    for where, journals in places:
        directory = os.path.dirname(where)
        wd = add_watch(fd, os.fsencode(directory), MASK)
        if wd < 0:
            code = errno.errorcode.get(ctypes.get_errno())
            log.debug("inotify_add_watch %s: %s; polling the store", directory, code)
            os.close(fd)
            return None
        found.add(wd, os.path.basename(where), journals)  # one directory: the same wd
    return found
