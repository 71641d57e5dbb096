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
from types import CodeType, FunctionType
from typing import NoReturn

import pytest
import sqlalchemy as sa

from sipzone.store.repository import Store

PG_ADMIN = os.environ.get(
    "SIPZONE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SIPZONE = shutil.which("sipzone", path=str(Path(sys.executable).parent)) or "sipzone"
IN_CI = os.environ.get("CI", "").lower() == "true"

# -- markers ------------------------------------------------------------------------------------
# Tests are marked here, by what they use, so test files need not say it (pyproject.toml
# registers the markers; README "Tests" shows how to select with them):
#   needs_pg     PostgreSQL at SIPZONE_TEST_PG: the fixture `pg_url`, or the postgresql case of
#                `any_url` (and so of `store`).
#   needs_sipp   the sipp program: the fixture `sipp` (tests/sip/test_sipp.py says it whole).
#   needs_bind   BIND's programs (named, named-checkzone, dig): the fixture `named`, or a test
#                that calls tests/dns/conftest.py's dig() or need("named..."), itself or through
#                a helper function of its module.
#   integration  the test starts processes, or runs a service on real sockets in a thread: the
#                fixtures in INTEGRATION_FIXTURES, and every needs_sipp or needs_bind test.
#                `pytest -m "not integration"` is the fast loop (model, store, sans-IO DNS and SIP).
# A marked test whose peer is missing is skipped with the reason, and FAILS when CI=true: CI
# runs everything or says why not.
INTEGRATION_FIXTURES = frozenset(
    {"cli", "serve", "live_dns", "edge_factory", "sipp", "named", "dovecot"}
)
BIND_PROGRAMS = ("named", "named-checkzone", "dig")


def missing(reason: str) -> NoReturn:
    """A peer the test needs is not here: skip with ``reason``, or fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing peer fails the test)", pytrace=False)
    pytest.skip(reason)


def _runs_bind(code: CodeType, scope: dict[str, object], seen: set[CodeType]) -> bool:
    """Whether code runs a BIND program itself, through dig() or need("PROGRAM"), or through a
    helper of its own module (``scope``) that does."""
    if code in seen:
        return False
    seen.add(code)
    for const in code.co_consts:
        if const in BIND_PROGRAMS or (
            isinstance(const, CodeType) and _runs_bind(const, scope, seen)  # a comprehension
        ):
            return True
    for name in code.co_names:
        helper = scope.get(name)
        if name == "dig" or (
            isinstance(helper, FunctionType)
            and helper.__module__ == scope["__name__"]
            and _runs_bind(helper.__code__, scope, seen)
        ):
            return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "pg_url" in fixtures or params.get("any_url") == "postgresql":
            item.add_marker(pytest.mark.needs_pg)
        if "sipp" in fixtures:
            item.add_marker(pytest.mark.needs_sipp)
        test = getattr(item, "function", None)
        if "named" in fixtures or (
            isinstance(test, FunctionType) and _runs_bind(test.__code__, test.__globals__, set())
        ):
            item.add_marker(pytest.mark.needs_bind)
        if fixtures & INTEGRATION_FIXTURES or any(
            item.get_closest_marker(m) for m in ("needs_sipp", "needs_bind")
        ):
            item.add_marker(pytest.mark.integration)


_pg_reachable: str | None = None  # "" when reachable, else why not; checked once a session


def pg_unreachable() -> str:
    """Why PostgreSQL at PG_ADMIN cannot be used, or "" when it can."""
    global _pg_reachable
    if _pg_reachable is None:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_ADMIN, connect_args={"connect_timeout": 3})
        try:
            with engine.connect():
                _pg_reachable = ""
        except sa.exc.SQLAlchemyError as exc:
            _pg_reachable = f"PostgreSQL at {PG_ADMIN} is not reachable: {exc.orig or exc}"
        finally:
            engine.dispose()
    return _pg_reachable


def _absent(*programs: str) -> list[str]:
    return [p for p in programs if not (shutil.which(p) or os.access(f"/usr/sbin/{p}", os.X_OK))]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (locally) or fail (CI=true) a marked test whose peer is missing, before its
    fixtures start anything."""
    if item.get_closest_marker("needs_pg") and (reason := pg_unreachable()):
        missing(reason)
    if item.get_closest_marker("needs_sipp") and _absent("sipp"):
        missing("sipp is not installed (apt-get install sip-tester)")
    if item.get_closest_marker("needs_bind") and (absent := _absent(*BIND_PROGRAMS)):
        missing(
            f"{', '.join(absent)} not installed (apt-get install bind9 bind9-utils bind9-dnsutils)"
        )


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
        missing(f"PostgreSQL at {PG_ADMIN} is not reachable: {exc.orig or exc}")
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
    """A `sipzone serve` process in its own process group; ``ready=False``: return once it
    runs, without waiting for its "ready" line (a server that waits for its store)."""

    def __init__(
        self, args: list[str], db: str, ready: bool = True, state_dir: str | None = None
    ) -> None:
        env = {**os.environ, "SIPZONE_DB": db, "PYTHONUNBUFFERED": "1"}
        if state_dir is not None and not db.startswith("sqlite"):
            # The disk copy of a PostgreSQL store would go to /var/lib/sipzone: keep it here.
            env["SIPZONE_STATE_DIR"] = state_dir
        # Sites in tests mostly have documentation addresses nobody answers at: probes are off
        # unless a test (tests/test_health.py) asks for them with --health-checks.
        if not {"--health-checks", "--no-health-checks"} & set(args):
            args = [*args, "--no-health-checks"]
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
        if not ready:
            threading.Thread(target=self._drain, daemon=True).start()
            return
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

    def start(*args: str, db: str | None = None, ready: bool = True) -> Server:
        server = Server(
            list(args),
            db or sqlite_url,
            ready,
            os.path.dirname(sqlite_url.removeprefix("sqlite:///")),
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class Connections:
    """New connections to one PostgreSQL database, switched off and on from the side (the
    shared server itself untouched): ``allow(False)`` refuses them and ends the open ones (a
    lost store), ``allow(True)`` lets them in again; ``close()`` does that and lets go."""

    def __init__(self, pg_url: str) -> None:
        self._name = pg_url.rsplit("/", 1)[1]
        self._admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")

    def allow(self, yes: bool) -> None:
        with self._admin.connect() as conn:
            switch = f'ALTER DATABASE "{self._name}" ALLOW_CONNECTIONS {str(yes).lower()}'
            conn.execute(sa.text(switch))
            if not yes:
                conn.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :name"), {"name": self._name},
                )  # fmt: skip

    def close(self) -> None:
        self.allow(True)
        self._admin.dispose()
