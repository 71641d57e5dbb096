"""Fixtures shared by every layer: stores on SQLite and PostgreSQL, the real CLI, `serve`."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sipzone.store.repository import Store

PG_ADMIN = os.environ.get(
    "SIPZONE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SIPZONE = shutil.which("sipzone", path=str(Path(sys.executable).parent)) or "sipzone"


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sipzone.db'}"


@contextlib.contextmanager
def throwaway_pg() -> Iterator[str]:
    """A PostgreSQL database made for one test and dropped after it."""
    import sqlalchemy as sa

    name = f"sipzone_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is not reachable: {exc}")
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with throwaway_pg() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on both databases."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sipzone.db'}"
    else:
        with throwaway_pg() as url:
            yield url


@pytest.fixture
def store(any_url: str) -> Iterator[Store]:
    s = Store(any_url)
    s.init()
    yield s
    s.close()


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(sqlite_url: str) -> Cli:
    """Run the real `sipzone` console script against this test's store."""

    def run(
        *args: str, db: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SIPZONE_DB": db or sqlite_url}
        result = subprocess.run(
            [SIPZONE, *args], capture_output=True, text=True, env=env, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"sipzone {' '.join(args)} failed: {result.stderr}")
        return result

    return run


class Server:
    """A `sipzone serve` process in its own process group."""

    def __init__(self, args: list[str], db: str) -> None:
        env = {**os.environ, "SIPZONE_DB": db, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [SIPZONE, "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if "sipzone: ready" in line:
                # Keep reading, so a chatty server never blocks on a full pipe.
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.stop()
        raise AssertionError("sipzone serve did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


@pytest.fixture
def serve(sqlite_url: str) -> Iterator[Callable[..., Server]]:
    """Start `sipzone serve ARGS...` on this test's store; stopped after the test."""
    started: list[Server] = []

    def start(*args: str, db: str | None = None) -> Server:
        server = Server(list(args), db or sqlite_url)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
