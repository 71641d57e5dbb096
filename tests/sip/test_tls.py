"""SIP over TLS on real sockets: certificates chosen by SNI, replaced live, client certificates
required, TLS toward an upstream, and what is not TLS on the TLS port.

A throwaway CA (trustme) issues every certificate at run time.  The edge runs in a thread
(``EdgeThread``) on snapshots the test builds; ``test_serve_*`` run the real `sipzone serve`
on a store changed by the real CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from prometheus_client import REGISTRY

from sipzone.model.certificates import Certificate, parse_certificate
from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.sip import SipConfig
from sipzone.sip.tls import TlsPolicy
from sipzone.sip.transport import TlsConnection
from tests.conftest import missing
from tests.sip.conftest import EdgeThread, Sipp, free_port, make_snapshot
from tests.sip.conftest import scenario as xml_scenario
from tests.sip.test_sipp import UAC_CALL, UAS_CALL, options_scenario
from tests.sip.test_transport import has_ipv6
from tests.tlscerts import Issued, issue

TEAMS = "*.teams.example.com"


@dataclasses.dataclass
class Pki:
    ca: trustme.CA
    dir: Path
    voip: Issued  # the default: first added
    teams: Issued

    def stored(self, name: str, cert: Issued) -> Certificate:
        return parse_certificate(name, cert.chain.read_bytes(), cert.key.read_bytes())

    def certificates(self) -> tuple[Certificate, ...]:
        return (self.stored("voip", self.voip), self.stored("teams", self.teams))

    def ca_file(self) -> str:
        path = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    where = tmp_path_factory.mktemp("pki")
    teams = issue(ca, where, TEAMS, "teams.example.com", key_type=trustme.KeyType.ECDSA)
    return Pki(ca, where, issue(ca, where, "voip.example.com"), teams)


def tls_snapshot(pki: Pki, **kwargs: object) -> Snapshot:
    return dataclasses.replace(make_snapshot(**kwargs), certificates=pki.certificates())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def edge(pki: Pki) -> Iterator[EdgeThread]:
    listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0", "tls:127.0.0.1:0"]
    if has_ipv6():
        listen.append("tls:[::1]:0")
    config = SipConfig(listen=tuple(listen), tcp_idle_timeout=30, tcp_header_timeout=2)
    thread = EdgeThread(SnapshotHolder(tls_snapshot(pki)), config).start()
    yield thread
    thread.stop()


def tls_port(edge: EdgeThread, host: str = "127.0.0.1") -> int:
    assert edge.service is not None
    return next(
        lst.port for lst in edge.service.listeners if lst.transport == "tls" and lst.host == host
    )


def client_context(pki: Pki, cert: Issued | None = None) -> ssl.SSLContext:
    """A client trusting the test CA, presenting ``cert`` when given."""
    context = ssl.create_default_context(cafile=pki.ca_file())
    if cert is not None:
        context.load_cert_chain(str(cert.chain), str(cert.key))
    return context


def connect(
    port: int,
    server_name: str | None,
    context: ssl.SSLContext,
    host: str = "127.0.0.1",
) -> ssl.SSLSocket:
    """A TLS connection to the edge; no SNI when ``server_name`` is None."""
    if server_name is None:
        context.check_hostname = False
    raw = socket.create_connection((host, port), timeout=5)
    return context.wrap_socket(raw, server_hostname=server_name)


def served_serial(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def options(domain: str, transport: str = "TLS", call: str = "tls-1") -> bytes:
    return (
        f"OPTIONS sip:ping@{domain} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bK-{call}\r\n"
        "Max-Forwards: 70\r\n"
        f"To: <sip:ping@{domain}>\r\nFrom: <sip:p@127.0.0.1>;tag=1\r\n"
        f"Call-ID: {call}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def answer(sock: socket.socket, request: bytes) -> bytes:
    """Send ``request`` and read one whole response head (Content-Length 0 answers)."""
    sock.sendall(request)
    data = b""
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# -- SNI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("cust42.teams.example.com", "teams"),  # one-label wildcard
        ("CUST42.Teams.Example.COM", "teams"),  # case-insensitive
        ("teams.example.com", "teams"),
        ("voip.example.com", "voip"),
        ("a.b.teams.example.com", "voip"),  # two labels: no wildcard match, the default
        ("unknown.example.net", "voip"),  # no certificate names it: the default
        (None, "voip"),  # no SNI: the default
    ],
)
def test_sni_picks_the_certificate(
    edge: EdgeThread, pki: Pki, server_name: str | None, expected: str
) -> None:
    context = client_context(pki)
    context.check_hostname = False  # the default certificate does not name every name asked
    with connect(tls_port(edge), server_name, context) as sock:
        assert served_serial(sock) == getattr(pki, expected).serial


def test_options_over_tls_is_answered_on_the_same_connection(edge: EdgeThread, pki: Pki) -> None:
    hosts = ["127.0.0.1", "::1"] if has_ipv6() else ["127.0.0.1"]
    for host in hosts:
        port = tls_port(edge, host)
        with connect(port, "cust42.teams.example.com", client_context(pki), host=host) as sock:
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
            reply = answer(sock, options("cust42.teams.example.com"))
            assert reply.startswith(b"SIP/2.0 200 OK"), reply
            assert b"Contact: <sip:cust42.teams.example.com:%d;transport=tls>" % port in reply
            # the next request on the same connection, too
            reply = answer(sock, options("voip.example.com", call="tls-2"))
            assert reply.startswith(b"SIP/2.0 200 OK"), reply


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_only_tls_1_2_and_1_3_with_the_microsoft_suite(edge: EdgeThread, pki: Pki) -> None:
    old = client_context(pki)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connect(tls_port(edge), "voip.example.com", old).close()
    microsoft = client_context(pki)
    microsoft.maximum_version = ssl.TLSVersion.TLSv1_2
    microsoft.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
    with connect(tls_port(edge), "voip.example.com", microsoft) as sock:
        assert sock.version() == "TLSv1.2"
        assert sock.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"  # type: ignore[index]


def test_a_replaced_certificate_serves_new_handshakes_and_spares_open_ones(
    pki: Pki, tmp_path: Path
) -> None:
    snapshot = tls_snapshot(pki)
    config = SipConfig(listen=("tls:127.0.0.1:0",), tcp_idle_timeout=30)
    thread = EdgeThread(SnapshotHolder(snapshot), config).start()
    try:
        port = thread.port("tls")
        context = client_context(pki)
        with connect(port, "voip.example.com", context) as held:
            assert served_serial(held) == pki.voip.serial
            renewed = issue(pki.ca, tmp_path, "voip.example.com")
            certs = (pki.stored("voip", renewed), pki.stored("teams", pki.teams))
            thread.publish(dataclasses.replace(snapshot, revision=2, certificates=certs))
            with connect(port, "voip.example.com", context) as fresh:
                assert served_serial(fresh) == renewed.serial != pki.voip.serial
                assert answer(fresh, options("voip.example.com")).startswith(b"SIP/2.0 200")
            reply = answer(held, options("voip.example.com", call="held"))
            assert reply.startswith(b"SIP/2.0 200 OK"), reply
            # removing every certificate: new handshakes fail, the open connection still works
            thread.publish(dataclasses.replace(snapshot, revision=3, certificates=()))
            with pytest.raises((ssl.SSLError, ConnectionError)):
                connect(port, "voip.example.com", context).close()
            reply = answer(held, options("voip.example.com", call="held-2"))
            assert reply.startswith(b"SIP/2.0 200 OK"), reply
    finally:
        thread.stop()


# -- mutual TLS --------------------------------------------------------------------------------


def handshake_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "sipzone_sip_tls_handshakes_total", {"direction": "in", "outcome": outcome}
    )
    return value or 0.0


def published_within(seconds: float, condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (the transport publishes its counters about once a second)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not published in time"
        time.sleep(0.1)


def refused(port: int, server_name: str, context: ssl.SSLContext) -> bool:
    """Whether the edge refuses this client: the handshake fails, or (TLS 1.3, where the
    client's side ends before the server checked its certificate) the first read does."""
    try:
        with connect(port, server_name, context) as sock:
            reply = answer(sock, options(server_name))
    except (ssl.SSLError, ConnectionError):
        return True
    return not reply


@pytest.mark.parametrize("server_name", ["voip.example.com", "cust42.teams.example.com"])
def test_required_client_certificates_are_checked_whatever_sni_picks(
    pki: Pki, tmp_path: Path, server_name: str
) -> None:
    policy = TlsPolicy(verify_client="required", client_ca=pki.ca_file())
    config = SipConfig(listen=("tls:127.0.0.1:0",), tcp_idle_timeout=30, tls=policy)
    thread = EdgeThread(SnapshotHolder(tls_snapshot(pki)), config).start()
    try:
        port = thread.port("tls")
        stranger_ca = trustme.CA()
        stranger = issue(stranger_ca, tmp_path, "phone.example.org")
        phone = issue(pki.ca, tmp_path, "phone.example.org")
        missing_before = handshake_count("no_client_certificate")
        refused_before = handshake_count("certificate_refused")
        assert refused(port, server_name, client_context(pki))  # no certificate
        assert refused(port, server_name, client_context(pki, stranger))  # another CA
        published_within(5, lambda: handshake_count("no_client_certificate") > missing_before)
        published_within(5, lambda: handshake_count("certificate_refused") > refused_before)
        with connect(port, server_name, client_context(pki, phone)) as sock:
            reply = answer(sock, options(server_name))
            assert reply.startswith(b"SIP/2.0 200 OK"), reply
            assert thread.service is not None
            [conn] = [
                c for c in thread.service.connections.values() if isinstance(c, TlsConnection)
            ]
            assert conn.peer_certificate is not None
            assert conn.peer_certificate.names == ("phone.example.org",)
    finally:
        thread.stop()


def test_optional_client_certificates_are_checked_when_sent(pki: Pki, tmp_path: Path) -> None:
    policy = TlsPolicy(verify_client="optional", client_ca=pki.ca_file())
    config = SipConfig(listen=("tls:127.0.0.1:0",), tcp_idle_timeout=30, tls=policy)
    thread = EdgeThread(SnapshotHolder(tls_snapshot(pki)), config).start()
    try:
        port = thread.port("tls")
        stranger = issue(trustme.CA(), tmp_path, "phone.example.org")
        with connect(port, "voip.example.com", client_context(pki)) as sock:  # none: fine
            assert answer(sock, options("voip.example.com")).startswith(b"SIP/2.0 200 OK")
        assert refused(port, "voip.example.com", client_context(pki, stranger))
    finally:
        thread.stop()


# -- not TLS on the TLS port -------------------------------------------------------------------


def test_garbage_and_plaintext_on_the_tls_port_disturb_no_one(edge: EdgeThread, pki: Pki) -> None:
    port = tls_port(edge)
    not_tls = handshake_count("not_tls")
    with connect(port, "voip.example.com", client_context(pki)) as good:
        for junk in (bytes(range(256)) * 4, options("voip.example.com", "TCP"), b"\x16\x03\x01"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(junk)
                raw.settimeout(5)
                try:
                    while raw.recv(4096):  # an alert at most, then the close
                        pass
                except ConnectionError:
                    pass
            reply = answer(good, options("voip.example.com", call=f"good-{len(junk)}"))
            assert reply.startswith(b"SIP/2.0 200 OK"), reply
    published_within(5, lambda: handshake_count("not_tls") >= not_tls + 2)


# -- TLS toward an upstream ------------------------------------------------------------------


def ok_for(request: bytes) -> bytes:
    """The core's 200 to ``request``: its Via, From, To, Call-ID and CSeq copied."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    copied = (b"Via", b"From", b"To", b"Call-ID", b"CSeq")
    keep = [line for line in head[1:] if line.split(b":")[0] in copied]
    return b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n"


class TlsCore:
    """A TLS server as the core: answers 200 to each request, remembering what it saw."""

    def __init__(self, pki: Pki, cert: Issued) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert.chain), str(cert.key))
        context.load_verify_locations(cafile=pki.ca_file())
        context.verify_mode = ssl.CERT_OPTIONAL
        self.server_names: list[str | None] = []
        self.client_names: list[tuple[str, ...]] = []
        self.requests: list[bytes] = []

        def sni(_sock: object, name: str | None, _ctx: object) -> None:
            self.server_names.append(name)

        context.sni_callback = sni
        self.context = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        try:
            raw, _ = self.sock.accept()
        except OSError:
            return
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                cert = conn.getpeercert() or {}
                self.client_names.append(
                    tuple(v for k, v in cert.get("subjectAltName", ()) if k == "DNS")
                )
                data = conn.recv(65536)
                self.requests.append(data)
                conn.sendall(ok_for(data))
                time.sleep(0.5)
        except (ssl.SSLError, OSError):
            return

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


MESSAGE = (
    "MESSAGE sip:bob@cust42.teams.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-msg{n};rport\r\n"
    "Max-Forwards: 70\r\nTo: <sip:bob@cust42.teams.example.com>\r\n"
    "From: <sip:alice@127.0.0.1>;tag=a{n}\r\nCall-ID: msg-{n}\r\nCSeq: 1 MESSAGE\r\n"
    "Content-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(("core_name", "delivered"), [("localhost", True), ("other.test", False)])
def test_requests_to_a_tls_upstream_verify_its_name_and_present_ours(
    pki: Pki, tmp_path: Path, core_name: str, delivered: bool
) -> None:
    core = TlsCore(pki, issue(pki.ca, tmp_path, core_name))
    upstream = f"sip:localhost:{core.port};transport=tls"
    policy = TlsPolicy(upstream_ca=pki.ca_file())
    config = SipConfig(listen=("udp:127.0.0.1:0", "tls:127.0.0.1:0"), tls=policy)
    thread = EdgeThread(SnapshotHolder(tls_snapshot(pki, upstream=upstream)), config).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
            phone.bind(("127.0.0.1", 0))
            phone.settimeout(3)
            own = phone.getsockname()[1]
            phone.sendto(MESSAGE.format(port=own, n=1).encode(), ("127.0.0.1", thread.port("udp")))
            try:
                reply = phone.recv(65536)
            except TimeoutError:
                reply = b""
        core.thread.join(5)
        if delivered:
            assert reply.startswith(b"SIP/2.0 200 OK"), reply
            assert core.server_names == ["localhost"]  # SNI: the upstream's name
            assert core.client_names == [("voip.example.com",)]  # our default certificate
            [request] = core.requests
            assert request.startswith(b"MESSAGE sip:bob@cust42.teams.example.com SIP/2.0")
            assert b"Via: SIP/2.0/TLS 127.0.0.1:%d;branch=" % thread.port("tls") in request
        else:
            assert reply == b"" and core.requests == []
    finally:
        thread.stop()
        core.close()


# -- the real `sipzone serve` on a store the CLI changes ---------------------------------------


def scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def test_serve_takes_cert_add_live_across_workers(
    cli: Callable[..., Any], serve: Callable[..., Any], pki: Pki, tmp_path: Path
) -> None:
    cli("init", check=True)
    cli("domain", "add", "voip.example.com", check=True)
    cli(
        "cert", "add", "voip", "--cert", str(pki.voip.chain), "--key", str(pki.voip.key), check=True
    )
    port, metrics = free_port(), free_port()
    serve(
        "--sip", f"tls:127.0.0.1:{port}", "--workers", "2", "--metrics", f"127.0.0.1:{metrics}",
        "--tls-verify-client", "none",
    )  # fmt: skip
    context = client_context(pki)
    with connect(port, "voip.example.com", context) as held:
        assert served_serial(held) == pki.voip.serial
        renewed = issue(pki.ca, tmp_path, "voip.example.com")
        cli("cert", "add", "voip", "--cert", str(renewed.chain), "--key", str(renewed.key),
            check=True)  # fmt: skip
        # Both workers (the kernel picks one per connection) serve it within a stall bound.
        seen: list[int] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with connect(port, "voip.example.com", context) as fresh:
                seen.append(served_serial(fresh))
            if seen[-8:] == [renewed.serial] * 8:
                break
            time.sleep(0.05)
        assert seen[-8:] == [renewed.serial] * 8, seen
        reply = answer(held, options("voip.example.com", call="held"))
        assert reply.startswith(b"SIP/2.0 200 OK"), reply
        time.sleep(1.5)  # the workers publish their counters about once a second
        text = scrape(metrics)
    assert 'sipzone_sip_tls_handshakes_total{direction="in",outcome="ok"}' in text
    days = r'sipzone_tls_certificate_days_left\{name="voip"\} (89\.\d+|90\.0)'
    assert re.search(days, text), text
    assert re.search(r'sipzone_sip_connections\{transport="tls"\} [1-9]', text), text


def test_serve_refuses_bad_tls_options(cli: Callable[..., Any], pki: Pki) -> None:
    cli("init", check=True)
    cases = {
        ("--tls-verify-client", "required"): "needs --tls-client-ca",
        ("--tls-verify-client", "always"): "give none, optional or required",
        ("--tls-ciphers", "NOT-A-CIPHER"): "TLS settings refused",
        ("--tls-client-ca", "/nonexistent/ca.pem", "--tls-verify-client", "optional"): "refused",
    }
    for args, reason in cases.items():
        result = cli("serve", "--sip", "tls:127.0.0.1:0", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert reason in result.stderr, (args, result.stderr)


# -- sipp over TLS -----------------------------------------------------------------------------
# Debian's sipp (sip-tester 3.6.1) is built without TLS (no `-t l1`), so sipp speaks TCP to a
# socat that speaks TLS: to the edge for the phone (with the phone's client certificate and
# SNI), and from the edge for the core (requiring the edge's certificate).  The scenarios are
# test_sipp.py's, with the transport the edge sees written in: TLS.


def as_tls(xml: str) -> str:
    return (
        xml.replace("SIP/2.0/[transport]", "SIP/2.0/TLS")
        .replace("transport=[transport]", "transport=tls")
        .replace("transport=udp;lr", "transport=tls;lr")
        .replace("(udp|tcp)", "tls")
    )


class Socat:
    """socat processes, each stopped by :meth:`close`."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, left: str, right: str, port: int) -> None:
        proc = subprocess.Popen(
            ["socat", left, right], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.05)
        raise AssertionError(f"socat {left} did not listen")

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(5)


@pytest.fixture
def socat() -> Iterator[Socat]:
    if shutil.which("socat") is None:
        missing("socat is not installed (apt-get install socat)")
    tunnels = Socat()
    yield tunnels
    tunnels.close()


@pytest.fixture
def sipp_edge(pki: Pki, tmp_path: Path, socat: Socat) -> Iterator[tuple[EdgeThread, int, int]]:
    """The edge (UDP and TLS) with acme's core at ``localhost`` over TLS; returns the edge,
    the port sipp phones connect to (the TLS tunnel to the edge) and the sipp UAS's port."""
    uas_port, core_tls = free_port(), free_port()
    core = issue(pki.ca, tmp_path, "localhost")
    socat.start(
        f"OPENSSL-LISTEN:{core_tls},bind=127.0.0.1,reuseaddr,fork,cert={core.chain},"
        f"key={core.key},cafile={pki.ca_file()},verify=1",
        f"TCP:127.0.0.1:{uas_port}",
        core_tls,
    )
    policy = TlsPolicy(upstream_ca=pki.ca_file())
    config = SipConfig(listen=("udp:127.0.0.1:0", "tls:127.0.0.1:0"), tls=policy)
    upstream = f"sip:localhost:{core_tls};transport=tls"
    thread = EdgeThread(SnapshotHolder(tls_snapshot(pki, upstream=upstream)), config).start()
    phone = issue(pki.ca, tmp_path, "phone.example.org")
    tunnel = free_port()
    socat.start(
        f"TCP-LISTEN:{tunnel},bind=127.0.0.1,reuseaddr,fork",
        f"OPENSSL:127.0.0.1:{thread.port('tls')},cafile={pki.ca_file()},cert={phone.chain},"
        f"key={phone.key},commonname=cust42.teams.example.com,snihost=cust42.teams.example.com",
        tunnel,
    )
    yield thread, tunnel, uas_port
    thread.stop()


def test_sipp_options_over_tls(sipp: Sipp, sipp_edge: tuple[EdgeThread, int, int]) -> None:
    edge, tunnel, _ = sipp_edge
    contact = rf"<sip:cust42\.teams\.example\.com:{edge.port('tls')};transport=tls>"
    xml = as_tls(options_scenario("cust42.teams.example.com", 200, contact))
    result = sipp.run(xml, f"127.0.0.1:{tunnel}", "tcp")
    assert result.ok, result.output


def test_sipp_call_over_tls_to_a_tls_core(
    sipp: Sipp, sipp_edge: tuple[EdgeThread, int, int]
) -> None:
    _, tunnel, uas_port = sipp_edge
    uas = sipp.serve(as_tls(xml_scenario("uas", UAS_CALL)), uas_port, "tcp")
    time.sleep(0.3)  # let the UAS bind before the INVITE leaves
    caller = sipp.run(as_tls(xml_scenario("uac", UAC_CALL)), f"127.0.0.1:{tunnel}", "tcp")
    callee = sipp.wait(uas)
    assert caller.ok, caller.output
    assert callee.ok, callee.output


def test_a_connection_that_never_finishes_its_handshake_is_closed(edge: EdgeThread) -> None:
    # The edge fixture's header deadline (which the handshake runs on) is 2 s.
    with socket.create_connection(("127.0.0.1", tls_port(edge)), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, and then nothing
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            while raw.recv(4096):  # an alert at most; a socket timeout (5 s) fails the test
                pass
        assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("uri", "target"),
    [
        ("sips:core.example.com", ("tls", "core.example.com", 5061)),
        ("sip:core.example.com;transport=tls", ("tls", "core.example.com", 5061)),
        ("sip:192.0.2.1:5071;transport=TLS", ("tls", "192.0.2.1", 5071)),
        ("sip:192.0.2.1;transport=tcp", ("tcp", "192.0.2.1", 5060)),
    ],
)
def test_tls_upstreams_are_targets_on_5061(uri: str, target: tuple[str, str, int]) -> None:
    from sipzone.sip.memo import Upstreams

    found = Upstreams().target(uri)
    assert found is not None and tuple(found[:3]) == target


def test_a_response_goes_back_over_the_tls_connection_whatever_the_via_says(pki: Pki) -> None:
    """A phone whose Via says TCP (a misconfigured one, or one behind a TLS tunnel) gets its
    responses over the TLS connection its request came in on, not a new TCP connection."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as core:
        core.bind(("127.0.0.1", 0))
        core.settimeout(5)
        upstream = f"sip:127.0.0.1:{core.getsockname()[1]}"
        config = SipConfig(listen=("udp:127.0.0.1:0", "tls:127.0.0.1:0"))
        thread = EdgeThread(SnapshotHolder(tls_snapshot(pki, upstream=upstream)), config).start()
        try:
            context = client_context(pki)
            with connect(thread.port("tls"), "cust42.teams.example.com", context) as phone:
                message = MESSAGE.format(port=5999, n=7).replace("SIP/2.0/UDP", "SIP/2.0/TCP")
                phone.sendall(message.encode())
                request, edge_addr = core.recvfrom(65536)
                core.sendto(ok_for(request), edge_addr)
                phone.settimeout(5)
                reply = phone.recv(65536)
                assert reply.startswith(b"SIP/2.0 200 OK"), reply
                assert b"Call-ID: msg-7" in reply
        finally:
            thread.stop()
