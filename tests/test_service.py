"""`serve` as a service (issue 13): systemd's notify protocol, a SIGTERM that drains SIP over
TCP without cutting a message, privileges dropped after binding, the unit sipzone ships."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.conftest import SIPZONE, free_port, missing
from tests.sip.conftest import needs_sipp
from tests.sip.test_sipp import options_scenario
from tests.test_runtime import one_site_store

Start = Callable[..., "Proc"]


class Proc:
    """`sipzone serve ARGS` with its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [SIPZONE, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env={**os.environ, **env}, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"no {text!r}:\n" + "".join(self.lines))
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[Proc] = []

    def run(*args: str, db: str, **env: str) -> Proc:
        # The disk copy of a PostgreSQL store would go to /var/lib/sipzone: keep it here.
        proc = Proc(list(args), {"SIPZONE_DB": db, "SIPZONE_STATE_DIR": str(tmp_path), **env})
        started.append(proc)
        return proc

    yield run
    for proc in started:
        proc.stop()


def a_store(url: str) -> None:
    one_site_store(url, "voip.example.com")


class NotifySocket:
    """What systemd listens on: a unix datagram socket that learns each sender's pid."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.path = path
        self.got: list[tuple[int, str]] = []  # (sender pid, message)

    def receive(self, until: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"notifications so far: {self.got}")
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = next(
                struct.unpack("iII", cdata)[0]
                for level, kind, cdata in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            )
            self.got.append((pid, data.decode()))

    def saw(self, line: str) -> bool:
        return any(line in message.split("\n") for _, message in self.got)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_systemd_hears_ready_watchdog_and_stopping_from_the_main_process(
    start: Start, sqlite_url: str, tmp_path: Path, workers: str
) -> None:
    a_store(sqlite_url)
    notify = NotifySocket(tmp_path / "notify")
    server = start(
        "--dns", f"127.0.0.1:{free_port()}", "--workers", workers, db=sqlite_url,
        NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="200000",
    )  # fmt: skip
    notify.receive(lambda: notify.saw("READY=1"))
    server.wait_for("sipzone: ready")
    notify.receive(lambda: [m for _, m in notify.got].count("WATCHDOG=1") >= 3, timeout=5)
    assert notify.saw(f"MAINPID={server.proc.pid}")
    os.killpg(server.proc.pid, signal.SIGTERM)
    notify.receive(lambda: notify.saw("STOPPING=1"))
    assert server.proc.wait(timeout=20) == 0
    assert {pid for pid, _ in notify.got} == {server.proc.pid}  # workers never speak
    ready_at = next(i for i, (_, m) in enumerate(notify.got) if "READY=1" in m)
    assert all("STOPPING=1" not in m for _, m in notify.got[:ready_at])


def responses(stream: bytes) -> tuple[int, bytes]:
    """How many whole SIP messages ``stream`` holds, and what follows the last one."""
    count = 0
    while stream:
        end = stream.find(b"\r\n\r\n")
        if end < 0:
            break
        length = re.search(rb"\r\nContent-Length: *(\d+)", stream[: end + 2], re.I)
        size = end + 4 + (int(length[1]) if length else 0)
        if length is None or len(stream) < size:
            break
        count += 1
        stream = stream[size:]
    return count, stream


def options(i: int) -> bytes:
    return (
        f"OPTIONS sip:ping@voip.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-drain-{i}\r\n"
        "Max-Forwards: 70\r\nTo: <sip:ping@voip.example.com>\r\n"
        f"From: <sip:probe@127.0.0.1>;tag={i}\r\nCall-ID: drain-{i}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@needs_sipp
def test_sigterm_under_sipp_load_over_tcp_cuts_no_message(
    start: Start, sqlite_url: str, tmp_path: Path
) -> None:
    a_store(sqlite_url)
    port = free_port()
    server = start("--sip", f"tcp:127.0.0.1:{port}", "--drain-timeout", "1.5", db=sqlite_url)
    server.wait_for("sipzone: ready")
    scenario = tmp_path / "load.xml"
    scenario.write_text(options_scenario("voip.example.com", 200), encoding="latin-1")
    load = subprocess.Popen(
        ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(free_port()), "-t", "t1",
         "-r", "400", "-m", "100000", "-nostdin", "-timeout", "30", f"127.0.0.1:{port}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Two clients of our own.  One never pauses: its connection is never settled, so the
    # drain's deadline closes it, after the responses already written and never inside one.
    # The other sent a burst and reads nothing until after the signal: thousands of responses
    # wait in the server's buffers, and every one must still arrive whole.
    busy = socket.create_connection(("127.0.0.1", port))
    backlog = socket.socket()
    backlog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    backlog.connect(("127.0.0.1", port))
    received, late = bytearray(), bytearray()
    sent = 0

    def read(sock: socket.socket, into: bytearray) -> None:
        while chunk := sock.recv(65536):
            into.extend(chunk)

    reader = threading.Thread(target=read, args=(busy, received), daemon=True)
    reader.start()
    try:
        burst = 12_000  # more responses than the kernel buffers (4 MB here) hold
        backlog.sendall(b"".join(options(100_000 + i) for i in range(burst)))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            busy.sendall(options(sent))
            sent += 1
            time.sleep(0.001)
        assert load.poll() is None  # sipp is still loading the server
        os.killpg(server.proc.pid, signal.SIGTERM)
        stopped_at = time.monotonic()
        time.sleep(0.3)
        late_reader = threading.Thread(target=read, args=(backlog, late), daemon=True)
        late_reader.start()
        with pytest.raises(OSError):
            while True:  # keep sending until the server stops reading and closes
                busy.sendall(options(sent))
                sent += 1
                time.sleep(0.001)
                assert time.monotonic() - stopped_at < 10
        reader.join(10)
        late_reader.join(10)
        assert server.proc.wait(timeout=10) == 0
        assert time.monotonic() - stopped_at < 10  # a stall bound: the drain takes 1.5 s + 1 s
    finally:
        busy.close()
        backlog.close()
        load.terminate()
        load.wait(10)
    whole, rest = responses(bytes(received))
    assert whole > 100
    assert rest == b"", f"{len(rest)} bytes of a cut message after {whole} whole ones"
    # What the server had answered before it stopped reading arrives whole, however much of
    # it was still in its own buffers (an abort there cuts a response in two).
    late_whole, late_rest = responses(bytes(late))
    assert late_rest == b"", f"{len(late_rest)} bytes of a cut message after {late_whole}"
    assert late_whole > 1000
    log = "".join(server.lines)
    assert "stopping (SIGTERM)" in log and "stopped after" in log
    assert re.search(r"SIP TCP: \d+ connection\(s\) closed when settled, \d+ cut", log)


def test_started_as_root_the_workers_run_as_the_user_after_binding(
    start: Start, pg_url: str
) -> None:
    if os.geteuid() != 0:
        missing("becoming another user needs root (the suite runs as root in CI)")
    a_store(pg_url)
    nobody = pwd.getpwnam("nobody")
    dns_port = free_port()
    server = start(
        "--dns", f"127.0.0.1:{dns_port}", "--workers", "2", "--user", "nobody", db=pg_url
    )
    server.wait_for("sipzone: ready")
    workers = [
        int(p) for p in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
        .read_text().split()
    ]  # fmt: skip
    assert len(workers) == 2
    for pid in workers:
        uid_line = next(
            line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("Uid:")
        )  # fmt: skip
        assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
    query = dns.message.make_query("voip.example.com", "A")
    assert dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=2).answer
    server.wait_for("running as nobody")


def test_user_is_checked_before_anything_starts(start: Start, sqlite_url: str) -> None:
    a_store(sqlite_url)
    server = start("--dns", f"127.0.0.1:{free_port()}", "--user", "no-such-user", db=sqlite_url)
    assert server.proc.wait(timeout=30) == 2
    server.wait_for("no such user")


def test_the_shipped_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    unit = subprocess.run([SIPZONE, "systemd-unit"], capture_output=True, text=True, check=True)
    text = unit.stdout
    for line in ("Type=notify", "User=sipzone", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                 "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                 "WatchdogSec=30"):  # fmt: skip
        assert line in text.splitlines(), line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze is not installed (scripts/test installs systemd)")
    path = tmp_path / "sipzone.service"
    path.write_text(text.replace("/usr/local/bin/sipzone", SIPZONE))
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sigterm_lets_a_zone_transfer_finish_and_closes_idle_dns_tcp(
    start: Start, sqlite_url: str, tmp_path: Path
) -> None:
    a_store(sqlite_url)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"c{i}.example.com\n" for i in range(20_000)))
    subprocess.run([SIPZONE, "domain", "import", str(names), "--db", sqlite_url], check=True,
                   capture_output=True)  # fmt: skip
    port = free_port()
    # A drain long enough for the transfer on a loaded machine: what is tested is that the
    # transfer is let finish and the process then exits, not how fast the transfer runs.
    server = start("--dns", f"127.0.0.1:{port}", "--allow-transfer", "127.0.0.1/32",
                   "--drain-timeout", "30", db=sqlite_url)  # fmt: skip
    server.wait_for("sipzone: ready")
    idle = socket.create_connection(("127.0.0.1", port))
    messages = 0
    exited: list[float] = []

    def wait_for_exit() -> None:
        server.proc.wait(timeout=30)
        exited.append(time.monotonic())

    for message in dns.query.xfr("127.0.0.1", "example.com", port=port, lifetime=60):
        messages += 1
        if messages == 1:
            os.killpg(server.proc.pid, signal.SIGTERM)
            stopped_at = time.monotonic()
            threading.Thread(target=wait_for_exit, daemon=True).start()
            idle.settimeout(3)
            assert idle.recv(1) == b""  # the idle session is closed at once
            idle.close()
        assert message.answer
    # dnspython checked that the transfer ends with the zone's SOA: it was not cut
    assert messages > 10
    assert server.proc.wait(timeout=10) == 0
    wait_until = time.monotonic() + 5
    while not exited and time.monotonic() < wait_until:
        time.sleep(0.05)
    assert exited and exited[0] - stopped_at < 40  # a stall bound: the drain takes up to 30 s
    assert "DNS TCP: 2 connection(s) closed when settled, 0 cut" in "".join(server.lines)
