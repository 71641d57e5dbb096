"""Real phones through the edge: baresip phones that know only a domain name, sipzone's own DNS
and SIP edge, and a Kamailio 5.6 core (registrar, record_route) behind the edge (issue 8).

The phones are set up the way a provider's customers set up theirs: an account such as
``<sip:alice@cust42.teams.example.com;transport=udp>`` and sipzone's DNS server, nothing else.
They find the edge by RFC 3263 (SRV for the account's transport, then A) and register through
it at the core, which stores the binding with any ``Path`` the edge adds (RFC 3327) and routes
calls to a registered phone by ``lookup("location")``.  Each test drives two phones through
baresip's ``ctrl_tcp`` (netstring JSON: ``uanew``, ``dial``, ``hangup``) and asserts on what
they report (events REGISTER_OK, CALL_ESTABLISHED, CALL_CLOSED) and on what they traced
(``baresip -s``): the phones talk to the edge only, in both directions.  Every wait is bounded.

``test_harness_core_only`` runs the same scenarios with the DNS pointing the phones straight at
the core: it proves the phones, the core and the checks work, so a failure with the edge in
the path is the edge's.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from typer.testing import CliRunner

from sipzone.cli import app
from tests.conftest import Server
from tests.sip.conftest import free_port

BARESIP = shutil.which("baresip")
KAMAILIO = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin")
BARESIP_MODULES = Path("/usr/lib/baresip/modules")
MISSING = [name for name, path in (("baresip", BARESIP), ("kamailio", KAMAILIO)) if path is None]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(MISSING) and os.environ.get("CI") != "true",
        reason=f"{' and '.join(MISSING)} (Debian packages) missing; scripts/test installs them",
    ),
]

ALICE = "alice@cust42.teams.example.com"  # a customer domain under a reseller's wildcard
BOB = "bob@voip.example.com"  # the provider's own domain
TENANT_HEADER = "X-Sipzone-Tenant"  # serve's default --tenant-header
WAIT = 5.0  # seconds any one step may take (a REGISTER, a call set-up, a BYE): on loopback
# each takes milliseconds; the margin is for a loaded machine.


# -- the core ---------------------------------------------------------------------------------

CORE_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
tcp_children=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
mpath="{modules}/"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
# alice@cust42.teams.example.com and alice@voip.example.com are different users.
modparam("usrloc", "use_domain", 1)
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", 10)
# Path (RFC 3327): save() stores it with the contact whether or not the phone said it supports
# it (path_mode 0); lookup() then routes to the first Path URI, back through the edge that added
# it.  path_use_received stays 0: 1 would send to the Path entry's received address instead,
# around the edge.
modparam("registrar", "use_path", 1)
modparam("registrar", "path_mode", 0)
modparam("registrar", "path_use_received", 0)
modparam("tm", "fr_timer", 4000)
modparam("tm", "fr_inv_timer", 10000)

request_route {{
    # A phone's TCP connection also carries requests to it (as Via ";alias", RFC 5923).
    if (proto == TCP) {{ force_tcp_alias(); }}
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ route(RELAY); }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{ route(RELAY); }}
            exit;
        }}
        sl_send_reply("404", "Not Here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{ route(RELAY); }}
        exit;
    }}
    t_check_trans();
    if (is_method("REGISTER")) {{
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    remove_hf("Route");
    if (is_method("INVITE|SUBSCRIBE")) {{ record_route(); }}
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    route(RELAY);
}}

route[RELAY] {{
    if (!t_relay()) {{ sl_reply_error(); }}
    exit;
}}
"""


class Core:
    """Kamailio as registrar and proxy on 127.0.0.1:port (UDP and TCP)."""

    def __init__(self, workdir: Path) -> None:
        assert KAMAILIO is not None
        self.port = free_port()
        modules = next(Path("/usr/lib").glob("**/kamailio/modules/registrar.so")).parent
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "kamailio.cfg"
        cfg.write_text(CORE_CFG.format(port=self.port, modules=modules))
        self.log = workdir / "kamailio.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [KAMAILIO, "-DD", "-E", "-m", "32", "-M", "4", "-f", str(cfg),
                 "-P", str(workdir / "kamailio.pid")],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            _wait_listening(self.port, self.proc, self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        _stop_group(self.proc)


# -- phones -----------------------------------------------------------------------------------

PHONE_CONFIG = """\
sip_listen 127.0.0.1:{sip_port}
dns_server 127.0.0.1:{dns_port}
module_path {modules}
module g711.so
module_app account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:{ctrl_port}
"""
# One traced message of `baresip -s`: "\x1b[36;1m#", "UDP 1.2.3.4:5 -> 6.7.8.9:10", the message.
TRACED = re.compile(
    r"^(UDP|TCP|TLS) (\S+) -> (\S+)\n(.*?)(?=\x1b\[;m|\Z)", re.MULTILINE | re.DOTALL
)
CSEQ = re.compile(r"^CSeq:\s*\d+\s+(\w+)", re.MULTILINE | re.IGNORECASE)
STATUS_LINE = re.compile(r"\[\d+:\d\d:\d\d\] audio=")  # ten a second during a call


@dataclass(frozen=True)
class Traced:
    """A SIP message a phone sent or received, as its trace shows it."""

    transport: str
    source: str  # "127.0.0.1:5060"
    destination: str
    text: str

    @property
    def start(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def cseq_method(self) -> str:
        match = CSEQ.search(self.text)
        return match.group(1).upper() if match else ""

    def __str__(self) -> str:
        return f"{self.transport} {self.source} -> {self.destination}: {self.start}"


class Phone:
    """One baresip phone with one account, driven over ctrl_tcp; its events are queued."""

    def __init__(self, workdir: Path, dns_port: int) -> None:
        assert BARESIP is not None
        self.sip_port = _port_pair()  # baresip opens TLS on sip_port + 1
        self.ctrl_port = free_port()
        self.aor = ""
        self.transport = ""
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config").write_text(
            PHONE_CONFIG.format(
                sip_port=self.sip_port,
                dns_port=dns_port,
                modules=BARESIP_MODULES,
                ctrl_port=self.ctrl_port,
            )
        )
        (workdir / "accounts").write_text("")  # the account is added once we hear its events
        (workdir / "contacts").write_text("")
        self.log = workdir / "baresip.log"
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [BARESIP, "-f", str(workdir), "-s"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._responses: queue.Queue[dict[str, Any]] = queue.Queue()
        try:
            self._sock = _connect(self.ctrl_port, self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        """Split ctrl_tcp's netstrings ("LEN:JSON,") into events and command responses."""
        buf = b""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b":" in buf:
                length, _, rest = buf.partition(b":")
                size = int(length)
                if len(rest) < size + 1:
                    break
                message = json.loads(rest[:size])
                buf = rest[size + 1 :]
                (self.events if message.get("event") else self._responses).put(message)

    def command(self, command: str, params: str = "") -> dict[str, Any]:
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self._sock.sendall(b"%d:%s," % (len(body), body))
        try:
            reply = self._responses.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"{self.aor}: no answer to {command!r}") from None
        assert reply.get("ok"), f"{self.aor}: {command} {params}: {reply}"
        return reply

    def add_account(self, aor: str, transport: str) -> None:
        """The phone's one account: an address and a transport, nothing else."""
        self.aor = aor
        self.transport = transport
        self.command("uanew", f"<sip:{aor};transport={transport}>;regint=60;answermode=auto")

    def dial(self, aor: str) -> None:
        self.command("dial", f"sip:{aor}")  # baresip adds the account's transport

    def expect(self, kind: str, timeout: float = WAIT) -> dict[str, Any]:
        """Wait for event ``kind``; fail early on an event that rules it out."""
        fatal = {"REGISTER_OK": "REGISTER_FAIL"}.get(kind, "CALL_CLOSED")
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                self._fail(f"no {kind} within {timeout} s")
            self.seen.append(event)
            if event.get("type") == kind:
                return event
            if event.get("type") == fatal:
                self._fail(f"{fatal} ({event.get('param')}) while waiting for {kind}")

    def traced(self) -> list[Traced]:
        """Every SIP message this phone sent or received so far."""
        return [Traced(*m.groups()) for m in TRACED.finditer(self.trace())]

    def wait_traced(self, what: str, test: Callable[[Traced], bool]) -> Traced:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = next((m for m in self.traced() if test(m)), None)
            if found is not None:
                return found
            time.sleep(0.05)
        self._fail(f"no {what} within {WAIT} s")

    def trace(self) -> str:
        """baresip's output (with the SIP trace), without its call status lines."""
        self._out.flush()
        text = self.log.read_text(errors="replace")
        return "\n".join(line for line in text.splitlines() if not STATUS_LINE.search(line))

    def _fail(self, what: str) -> NoReturn:
        kinds = [e.get("type") for e in self.seen if e.get("type") != "CALL_RTCP"]
        messages = "\n  ".join(str(m) for m in self.traced())
        raise AssertionError(f"{self.aor}: {what}; events {kinds}; messages:\n  {messages}")

    def stop(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self._sock.close()
        # No goodbye needed (every test has its own users), and with a call up baresip takes
        # seconds to leave on SIGTERM.
        _stop_group(self.proc, signal.SIGKILL)
        self._out.close()


# -- the platform -----------------------------------------------------------------------------


@dataclass
class Platform:
    """sipzone's DNS (and its edge, unless phones go straight to the core), the core, and the
    phones of the running test.  ``sip_port``: where the DNS sends phones, edge or core."""

    workdir: Path
    dns_port: int
    sip_port: int
    core: Core
    server: Server
    phones: list[Phone] = field(default_factory=list)
    users: int = 0

    @classmethod
    def start(cls, workdir: Path, through_edge: bool) -> Platform:
        core = Core(workdir / "core")
        try:
            db = f"sqlite:///{workdir / 'sipzone.db'}"
            upstream = f"sip:127.0.0.1:{core.port}"
            dns_port = free_port()
            sip_port = free_port() if through_edge else core.port
            for args in (
                ("init",),
                ("nameserver", "add", "ns1.example.org"),
                ("zone", "add", "example.com"),
                ("tenant", "add", "acme", "--upstream", upstream),
                ("domain", "add", "voip.example.com"),
                ("domain", "add", "*.teams.example.com", "--owner", "acme"),
                # The site's host resolves (through sipzone's DNS) to the edge, and its SRV
                # records give the edge's ports.  No --port-tls: the edge serves none.
                ("site", "add", "fra", "--vip", "127.0.0.1", "--region", "eu",
                 "--host", "sip.example.com", "--port-udp", str(sip_port),
                 "--port-tcp", str(sip_port), "--upstream", upstream),
            ):  # fmt: skip
                _sipzone(db, *args)
            listen = ["--dns", f"127.0.0.1:{dns_port}"]
            if through_edge:
                listen += ["--sip", f"udp:127.0.0.1:{sip_port},tcp:127.0.0.1:{sip_port}"]
            server = Server(listen, db)
        except BaseException:
            core.stop()
            raise
        return cls(workdir, dns_port, sip_port, core, server)

    def phone(self, aor: str, transport: str) -> Phone:
        """A started phone whose account is ``aor`` with a user part unique on this platform
        (so no test finds another test's binding at the core)."""
        self.users += 1
        user, domain = aor.split("@")
        name = f"{user}{self.users}"
        phone = Phone(self.workdir / name, self.dns_port)
        self.phones.append(phone)
        phone.add_account(f"{name}@{domain}", transport)
        return phone

    def check(self, phone: Phone, messages: list[Traced]) -> None:
        """Each of ``messages`` went between ``phone`` and the edge (the core, when the phones
        go straight to it), never around it, over the phone's own transport, and without the
        edge's tenant header, which is for the core only."""
        ours = f"127.0.0.1:{self.sip_port}"
        wrong = [
            f"{m}  ({why})"
            for m in messages
            for why in (
                "not through " + ours if ours not in (m.source, m.destination) else "",
                "not over " + phone.transport if m.transport != phone.transport.upper() else "",
                "carries " + TENANT_HEADER if TENANT_HEADER.lower() in m.text.lower() else "",
            )
            if why
        ]
        assert not wrong, f"{phone.aor}:\n  " + "\n  ".join(wrong)

    def stop_phones(self) -> None:
        for phone in self.phones:
            phone.stop()
        self.phones.clear()

    def close(self) -> None:
        self.stop_phones()
        self.server.stop()
        self.core.stop()


def _sipzone(db: str, *args: str) -> None:
    """The operator's command, run in this process (a new interpreter per command would cost
    a second or two each on a loaded machine)."""
    result = CliRunner().invoke(app, list(args), env={"SIPZONE_DB": db})
    assert result.exit_code == 0, f"sipzone {' '.join(args)}: {result.output}"


@pytest.fixture(scope="module")
def edge_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    platform = Platform.start(tmp_path_factory.mktemp("through-edge"), through_edge=True)
    yield platform
    platform.close()


@pytest.fixture(scope="module")
def core_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    platform = Platform.start(tmp_path_factory.mktemp("core-only"), through_edge=False)
    yield platform
    platform.close()


@pytest.fixture
def through_edge(edge_platform: Platform) -> Iterator[Platform]:
    yield edge_platform
    edge_platform.stop_phones()


@pytest.fixture
def core_only(core_platform: Platform) -> Iterator[Platform]:
    yield core_platform
    core_platform.stop_phones()


# -- scenarios --------------------------------------------------------------------------------

TRANSPORTS = ["udp", "tcp"]
CALLS = [
    pytest.param(
        transport, caller, hangs_up, id=f"{transport}-{caller}-calls-{callee}-{ender}-hangs-up"
    )
    for transport in TRANSPORTS
    for caller, callee in (("alice", "bob"), ("bob", "alice"))
    for hangs_up, ender in (("caller", caller), ("callee", callee))
]


def register_both(platform: Platform, transport: str) -> tuple[Phone, Phone]:
    alice = platform.phone(ALICE, transport)
    bob = platform.phone(BOB, transport)
    for phone in (alice, bob):
        phone.expect("REGISTER_OK")
        platform.check(phone, phone.traced())
    return alice, bob


def call(platform: Platform, transport: str, caller_name: str, hangs_up: str) -> None:
    """Both register; one calls the other, who answers; one hangs up.  Established and closed
    at both ends; the BYE answered; every message to and from a phone through the edge, over
    the phone's transport, without the tenant header."""
    alice, bob = register_both(platform, transport)
    caller, callee = (alice, bob) if caller_name == "alice" else (bob, alice)
    caller.dial(callee.aor)
    invite = callee.wait_traced("INVITE", lambda m: m.start.startswith("INVITE "))
    # Calls *to* phones come through the edge (Path), not straight from the core.
    platform.check(callee, [invite])
    caller.expect("CALL_ESTABLISHED")
    callee.expect("CALL_ESTABLISHED")  # the callee has the caller's ACK
    ender, other = (caller, callee) if hangs_up == "caller" else (callee, caller)
    ender.command("hangup")
    other.expect("CALL_CLOSED")  # the BYE arrived
    ender.wait_traced(
        "200 answering its BYE",
        lambda m: m.start.startswith("SIP/2.0 200") and m.cseq_method == "BYE",
    )
    for phone in (alice, bob):
        platform.check(phone, phone.traced())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_phones_register_through_the_edge(through_edge: Platform, transport: str) -> None:
    register_both(through_edge, transport)


@pytest.mark.parametrize(("transport", "caller", "hangs_up"), CALLS)
def test_call_through_the_edge(
    through_edge: Platform, transport: str, caller: str, hangs_up: str
) -> None:
    call(through_edge, transport, caller, hangs_up)


@pytest.mark.parametrize(("transport", "caller", "hangs_up"), CALLS)
def test_harness_core_only(core_only: Platform, transport: str, caller: str, hangs_up: str) -> None:
    """The same calls with the DNS sending phones straight to the core: the harness works."""
    call(core_only, transport, caller, hangs_up)


# -- helpers ----------------------------------------------------------------------------------


def _port_pair() -> int:
    """A free port whose successor is free too (baresip listens for TLS there)."""
    for _ in range(100):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kamailio exited:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"kamailio does not listen on {port}:\n{log.read_text(errors='replace')}")


def _connect(port: int, proc: subprocess.Popen[bytes], log: Path) -> socket.socket:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"baresip exited:\n{log.read_text(errors='replace')}")
        try:
            sock = socket.create_connection(("127.0.0.1", port), 0.5)
        except OSError:
            time.sleep(0.05)
            continue
        sock.settimeout(None)  # the reader blocks until baresip says something
        return sock
    raise AssertionError(f"baresip's ctrl_tcp does not listen:\n{log.read_text(errors='replace')}")


def _stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
