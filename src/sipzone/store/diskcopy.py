"""The node's copy of its last applied snapshot on local disk: what it serves when it starts
while the store is out of reach.

Theory of operation:

- One file per store in the state directory (``--state-dir``), named after the store
  (``sipzone.db.snapshot`` for a SQLite file, ``DATABASE@HOST_PORT.snapshot`` for PostgreSQL),
  mode 0600: it holds what the snapshot holds, the SIP branch keys and the TLS keys included,
  so it is kept as the store is.
- The format is lines: a JSON header (format, version, revision, when the revision was
  committed and when the copy was written, the store it came from), a JSON body (tenants,
  sites, zones, settings, certificates, trunks, ACME challenges), one ``RULE<TAB>OWNER`` line
  per SIP domain rule (a million rules are a million short lines, not one JSON value the
  encoder must hold whole), and a last line ``sha256 HEX`` over every byte before it.  A file
  whose digest does not match (cut short, damaged) is ignored with one log line.
- A write goes to a temporary file in the same directory, is fsynced, renamed over the old
  copy and the directory fsynced: a reader sees the old copy or the new one, never a part.
- :class:`CopyWriter` writes from a thread, the newest snapshot only: revisions that arrive
  while a write runs are coalesced into the next write, and after each write it rests four
  times as long as the write took, so that a store changing many times a second costs at most
  a fifth of a core for its copy (a million domains: about a second per write; tens of rules:
  a millisecond, so every revision is written).  The rules are encoded in slices, each a
  bounded piece of work, so the event loop gets the interpreter back between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sipzone.model.certificates import parse_certificate
from sipzone.model.errors import SipzoneError
from sipzone.model.health import HealthCheck
from sipzone.model.snapshot import Site, Snapshot
from sipzone.model.tenancy import TenancyTree, Tenant
from sipzone.model.trunks import parse_trunk
from sipzone.store.url import redacted

log = logging.getLogger("sipzone.diskcopy")

FORMAT = "sipzone-snapshot"
VERSION = 1
SUFFIX = ".snapshot"
DEFAULT_STATE_DIR = "/var/lib/sipzone"
SLICE = 20_000  # rules encoded per piece of work (a few milliseconds)
REST_FACTOR = 4.0  # after a write of d seconds, no other write for 4 d: at most 1/5 of a core

Mark = tuple[int, datetime] | None  # the change log's (revision, time) of the snapshot served


@dataclass(frozen=True, slots=True)
class DiskCopy:
    """A snapshot read back from disk, with what says how old it is."""

    snapshot: Snapshot
    mark: Mark
    written_at: datetime


def default_state_dir(url: str) -> str:
    """Where the copy goes without ``--state-dir``: systemd's ``StateDirectory=`` when set,
    else beside a SQLite store's file, else /var/lib/sipzone."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return os.path.dirname(os.path.abspath(str(parsed.database)))
    return DEFAULT_STATE_DIR


def copy_path(state_dir: str, url: str) -> str:
    """The copy's file for the store at ``url``: several stores may share a directory."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        name = os.path.basename(str(parsed.database or "")) or "memory"
    else:
        name = f"{parsed.database or 'default'}@{parsed.host or 'local'}_{parsed.port or 'default'}"
    return os.path.join(state_dir, name.replace("/", "_") + SUFFIX)


# ------------------------------------------------------------------------ writing


def _site(site: Site) -> dict[str, Any]:
    return {
        "name": site.name,
        "region": site.region,
        "vips": [str(a) for a in site.vips],
        "host": site.host,
        "ports": dict(site.ports),
        "networks": [str(n) for n in site.networks],
        "weight": site.weight,
        "order": site.order,
        "upstream": site.upstream,
        "healthy": site.healthy,
        "check": asdict(site.check),
        "drained": site.drained,
    }


def _body(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "tenants": [asdict(t) for t in snapshot.tenants],
        "sites": [_site(s) for s in snapshot.sites],
        "zones": list(snapshot.zones),
        "email_domain": snapshot.email_domain,
        "settings": dict(snapshot.settings),
        "certificates": [
            {"name": c.name, "chain_pem": c.chain_pem, "key_pem": c.key_pem}
            for c in snapshot.certificates
        ],
        "trunks": [asdict(t) for t in snapshot.trunks],
        "challenges": [[name, list(values)] for name, values in snapshot.challenges],
        "zone_revisions": dict(snapshot.zone_revisions),
    }


def _when(at: datetime) -> str:
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at).isoformat()


def _pieces(snapshot: Snapshot, mark: Mark, url: str) -> Iterator[bytes]:
    header = {
        "format": FORMAT,
        "version": VERSION,
        "revision": snapshot.revision,
        "history": [mark[0], _when(mark[1])] if mark else None,
        "naive": mark is not None and mark[1].tzinfo is None,
        "written_at": datetime.now(UTC).isoformat(),
        "store": redacted(url),
        "rules": len(snapshot.matcher),
    }
    yield (json.dumps(header) + "\n").encode()
    yield (json.dumps(_body(snapshot), ensure_ascii=False) + "\n").encode()
    rules = iter(snapshot.matcher.rules())
    while True:
        piece = [f"{text}\t{owner.name}\n" for text, owner in itertools.islice(rules, SLICE)]
        if not piece:
            return
        yield "".join(piece).encode()


def write_copy(path: str, snapshot: Snapshot, mark: Mark, url: str) -> int:
    """Write ``snapshot`` to ``path`` atomically (temporary file, fsync, rename, fsync of the
    directory); returns the file's size in bytes."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".snapshot-", dir=directory)  # mode 0600
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as fh:
            for piece in _pieces(snapshot, mark, url):
                digest.update(piece)
                fh.write(piece)
                size += len(piece)
            trailer = f"sha256 {digest.hexdigest()}\n".encode()
            fh.write(trailer)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    return size + len(trailer)


class CopyWriter:
    """Keeps the disk copy at the newest snapshot offered, writing from a thread (see the
    module's docstring: coalesced, resting between writes)."""

    def __init__(self, path: str, url: str) -> None:
        self.path = path
        self.url = url
        self._offered: tuple[Snapshot, Mark] | None = None
        self._wake = asyncio.Event()
        self._failing = False
        self.written: tuple[int, float, int] | None = None  # revision, seconds, bytes: the last

    def offer(self, snapshot: Snapshot, mark: Mark) -> None:
        """The snapshot now applied (call on the loop); written when the writer is free."""
        self._offered = (snapshot, mark)
        self._wake.set()

    async def run(self) -> None:
        """Write until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            offered, self._offered = self._offered, None
            if offered is None:
                continue
            snapshot = offered[0]
            began = time.monotonic()
            try:
                size = await loop.run_in_executor(None, write_copy, self.path, *offered, self.url)
            except OSError as exc:
                if not self._failing:
                    log.warning(
                        "cannot write the disk copy of the snapshot to %s (%s); a start without "
                        "the store would have no snapshot to serve",
                        self.path, exc,
                    )  # fmt: skip
                self._failing = True
                await asyncio.sleep(10.0)
                if self._offered is None:
                    self._offered = offered
                self._wake.set()
                continue
            took = time.monotonic() - began
            if self._failing:
                self._failing = False
                log.info("disk copy written again to %s", self.path)
            self.written = (snapshot.revision, took, size)
            log.debug("disk copy of revision %d: %d bytes in %.3f s", snapshot.revision, size, took)
            await asyncio.sleep(took * REST_FACTOR)


# ------------------------------------------------------------------------ reading


class BadCopy(ValueError):
    """A file that is not a whole, intact disk copy of this version."""


def read_copy(path: str) -> DiskCopy | None:
    """The copy at ``path``; None when there is none.  Raises :class:`BadCopy` for a file
    that is damaged, cut short or of another version."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1  # the start of the last line
    if not data.endswith(b"\n") or not data.startswith(b"sha256 ", cut):
        raise BadCopy("no checksum line at its end (cut short?)")
    if data[cut + 7 : -1].decode("ascii", "replace") != hashlib.sha256(data[:cut]).hexdigest():
        raise BadCopy("its checksum does not match its content (damaged or cut short)")
    lines = data[:cut].decode().split("\n")
    try:
        header, body = json.loads(lines[0]), json.loads(lines[1])
    except (json.JSONDecodeError, IndexError) as exc:
        raise BadCopy(f"its header or body is not JSON ({exc})") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise BadCopy(f"format {header.get('format')!r} version {header.get('version')!r}")
    try:
        return _copy(header, body, lines[2:])
    except (KeyError, TypeError, ValueError, SipzoneError) as exc:
        raise BadCopy(f"its content does not make a snapshot ({exc})") from None


def _copy(header: dict[str, Any], body: dict[str, Any], lines: list[str]) -> DiskCopy:
    rules = [line.split("\t", 1) for line in lines if line]
    history = header["history"]
    mark: Mark = None
    if history:
        at = datetime.fromisoformat(history[1])
        mark = (int(history[0]), at.replace(tzinfo=None) if header.get("naive") else at)
    snapshot = Snapshot.build(
        int(header["revision"]),
        TenancyTree(Tenant(**t) for t in body["tenants"]),
        [(text, owner) for text, owner in rules],
        sites=tuple(_read_site(s) for s in body["sites"]),
        zones=tuple(body["zones"]),
        email_domain=body["email_domain"],
        settings=body["settings"],
        certificates=tuple(
            parse_certificate(c["name"], c["chain_pem"], c["key_pem"]) for c in body["certificates"]
        ),
        trunks=tuple(parse_trunk(**t) for t in body["trunks"]),
        challenges=tuple((name, tuple(values)) for name, values in body["challenges"]),
        zone_revisions=body.get("zone_revisions"),
    )
    return DiskCopy(snapshot, mark, datetime.fromisoformat(header["written_at"]))


def _read_site(entry: dict[str, Any]) -> Site:
    return Site(
        name=entry["name"],
        region=entry["region"],
        vips=tuple(ipaddress.ip_address(a) for a in entry["vips"]),
        host=entry["host"],
        ports=entry["ports"],
        networks=tuple(ipaddress.ip_network(n) for n in entry["networks"]),
        weight=entry["weight"],
        order=entry["order"],
        upstream=entry["upstream"],
        healthy=entry["healthy"],
        check=HealthCheck(**entry["check"]),
        drained=entry["drained"],
    )
