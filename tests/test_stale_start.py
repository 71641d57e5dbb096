"""Issue 12 item 4: a store that fails.  A node started while the store is out of reach serves
its disk copy (DNS and SIP), marked stale, and catches up when the store returns; with no copy
it waits and says why; a SQLite file that turns to garbage under a running node is ridden out."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sipzone.store.diskcopy import copy_path
from tests.conftest import Cli, Connections, Server, free_port
from tests.dns.conftest import dig
from tests.sip.conftest import Sipp, needs_sipp
from tests.sip.test_sipp import options_scenario
from tests.test_runtime import (
    Serve,
    add_domains,
    logged,
    one_site_store,
    options,
    per_worker,
    wait_for,
)

pytestmark = pytest.mark.integration


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def gauge(port: int, name: str) -> float:
    return per_worker(port, name)["0"]


class Node:
    """The ports and options of one `serve` on loopback, started as often as a test needs."""

    def __init__(self, serve: Serve, db: str, *extra: str) -> None:
        self.serve, self.db = serve, db
        self.dns, self.sip, self.metrics = free_port(), free_port(), free_port()
        self.args = ("--dns", f"127.0.0.1:{self.dns}", "--sip", f"udp:127.0.0.1:{self.sip}",
                     "--metrics", f"127.0.0.1:{self.metrics}", *extra)  # fmt: skip

    def start(self, ready: bool = True) -> Server:
        return self.serve(*self.args, db=self.db, ready=ready)


@needs_sipp
def test_a_node_started_without_postgresql_serves_its_disk_copy_then_catches_up(
    pg_url: str, serve: Serve, cli: Cli, tmp_path: Path
) -> None:
    one_site_store(pg_url, "voip.example.com")
    state = tmp_path / "state"
    node = Node(serve, pg_url, "--state-dir", str(state))
    first = node.start()
    copy = Path(copy_path(str(state), pg_url))
    wait_for(copy.exists, timeout=5.0)
    first.stop()
    cli("domain", "add", "meanwhile.example.com", db=pg_url, check=True)  # not in the copy
    connections = Connections(pg_url)
    sipp = Sipp(tmp_path)
    try:
        connections.allow(False)
        server = node.start()
        [line] = logged(server, "serving the disk copy of revision")
        assert "store out of reach at start" in line and str(copy) in line
        assert dig(node.dns, "voip.example.com", "A").rdata("A") == ["192.0.2.10"]
        assert dig(node.dns, "meanwhile.example.com", "A").status == "NXDOMAIN"
        call = sipp.run(options_scenario("voip.example.com", 200), f"127.0.0.1:{node.sip}")
        assert call.ok, call.output
        assert options(node.sip, "meanwhile.example.com") == 403
        assert gauge(node.metrics, "sipzone_snapshot_stale") == 1
        assert gauge(node.metrics, "sipzone_store_up") == 0
        assert readyz(node.metrics)[0] == 200  # it answers: ready until --ready-stale-after
    finally:
        sipp.close()
        connections.close()
    wait_for(lambda: options(node.sip, "meanwhile.example.com") == 200, timeout=15.0)
    assert dig(node.dns, "meanwhile.example.com", "A").rdata("A") == ["192.0.2.10"]
    wait_for(lambda: gauge(node.metrics, "sipzone_store_up") == 1, timeout=5.0)
    assert gauge(node.metrics, "sipzone_snapshot_stale") == 0
    assert len(logged(server, "caught up from the disk copy's revision")) == 1
    assert not logged(server, "Traceback")


@pytest.mark.parametrize("copy", ["none", "damaged"])
def test_a_node_without_store_or_usable_copy_waits_says_why_and_starts_when_the_store_comes(
    pg_url: str, serve: Serve, tmp_path: Path, copy: str
) -> None:
    one_site_store(pg_url, "voip.example.com")
    state = tmp_path / "state"
    node = Node(serve, pg_url, "--state-dir", str(state))
    path = copy_path(str(state), pg_url)
    why = f"no disk copy at {path}"
    if copy == "damaged":  # a copy cut short: its checksum line is missing
        first = node.start()
        wait_for(lambda: os.path.exists(path), timeout=5.0)
        first.stop()
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
        why = f"the disk copy at {path} is unusable"
    connections = Connections(pg_url)
    try:
        connections.allow(False)
        server = node.start(ready=False)
        wait_for(lambda: logged(server, "nothing to serve yet"), timeout=15.0)
        code, body = readyz(node.metrics)
        assert code == 503
        assert "waiting for the store" in body and why in body, body
        if copy == "damaged":
            assert logged(server, "ignored: no checksum line at its end")
        assert options(node.sip, "voip.example.com") is None  # nothing bound yet
    finally:
        connections.close()
    wait_for(lambda: logged(server, "sipzone: ready"), timeout=20.0)
    assert options(node.sip, "voip.example.com") == 200
    assert readyz(node.metrics) == (200, "ready\n")
    assert len(logged(server, "nothing to serve yet")) == 1  # back-off, one line a minute
    assert logged(server, "store reached at revision")


def test_a_sqlite_file_turned_to_garbage_is_ridden_out_and_a_node_starts_on_its_copy(
    serve: Serve, sqlite_url: str, tmp_path: Path
) -> None:
    live = Path(sqlite_url.removeprefix("sqlite:///"))
    one_site_store(sqlite_url, "voip.example.com")
    running = Node(serve, sqlite_url)  # the copy goes beside the store file by default
    server = running.start()
    copy = Path(copy_path(str(tmp_path), sqlite_url))
    wait_for(copy.exists, timeout=5.0)
    add_domains(sqlite_url, "seen.example.com")  # the node follows the file now
    wait_for(lambda: options(running.sip, "seen.example.com") == 200, timeout=5.0)

    aside = tmp_path / "aside.db"
    with (
        contextlib.closing(sqlite3.connect(live)) as source,
        contextlib.closing(sqlite3.connect(aside)) as target,
    ):
        source.backup(target)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(8192))
    since = len(server.lines)
    os.rename(garbage, live)  # the store's name now holds no database
    wait_for(lambda: gauge(running.metrics, "sipzone_store_up") == 0, timeout=5.0)
    assert all(options(running.sip, "voip.example.com") == 200 for _ in range(5))
    assert len(logged(server, "store read failed", since)) == 1

    # A node started now finds garbage where the store was: it serves its disk copy.
    started = Node(serve, sqlite_url)
    late = started.start()
    assert logged(late, "serving the disk copy of revision")
    assert options(started.sip, "voip.example.com") == 200
    assert gauge(started.metrics, "sipzone_snapshot_stale") == 1

    add_domains(f"sqlite:///{aside}", "restored.example.com")
    os.rename(aside, live)  # the store is back, one change ahead
    for node in (running, started):
        wait_for(lambda n=node: options(n.sip, "restored.example.com") == 200, timeout=10.0)
        wait_for(lambda n=node: gauge(n.metrics, "sipzone_store_up") == 1, timeout=5.0)
    assert gauge(started.metrics, "sipzone_snapshot_stale") == 0
    assert not logged(server, "Traceback") and not logged(late, "Traceback")
