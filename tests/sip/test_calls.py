"""Issue 8, calls through the edge on real sockets: sipp phones over UDP and TCP, a sipp UAS as
the core.  Hang-ups from either side, re-INVITE, CANCEL of a ringing call, REGISTER with a
Path, the core's INVITE to a registered phone over that phone's own flow, and a forged flow
token that reaches nobody.

sipp's regex checks (``check_it``, ``check_it_inverse``) fail a call, and so the test, when a
header is not what the edge must send; sinks on the ports a message names prove what must not
be sent is not.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sipzone.model.snapshot import SnapshotHolder
from sipzone.sip import BRANCH_SECRET, SipConfig
from sipzone.sip.signing import Keys
from sipzone.sip.values import Target
from tests.sip.conftest import EdgeThread, Sipp, answer, free_port, make_snapshot, needs_sipp
from tests.sip.conftest import scenario as xml_scenario

pytestmark = needs_sipp
TRANSPORTS = ["udp", "tcp"]
SECRET = "f" * 64
CALLEE = "sip:+4930123@cust42.teams.example.com"  # acme's name
CALLER = "sip:caller@cust42.example.org"  # customer42's name

# sipp regexes (POSIX, over sipp's view of a header or of the whole message).
PHONE_FACING = r"sip:cust42\.teams\.example\.com:[0-9]+;transport=(udp|tcp);lr"
CORE_FACING = r"sip:szf1\.[-_A-Za-z0-9]+@127\.0\.0\.1:[0-9]+;transport=udp;lr"
NO_TENANT = '<ereg regexp="X-Sipzone" search_in="msg" check_it_inverse="true" assign_to="leak"/>'
CALLEE_CONTACT = "Contact: <sip:callee@[local_ip]:[local_port]>"


def record_routes(top: str, below: str) -> str:
    """An ereg (over the whole message: sipp's header view shows the first line only) for our
    two Record-Route lines, ``top`` first."""
    return (
        f'<ereg regexp="Record-Route: &lt;{top}&gt;[[:space:]]+Record-Route: &lt;{below}&gt;" '
        'search_in="msg" check_it="true" assign_to="rr"/>'
    )


@pytest.fixture(scope="module")
def core_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def edge(core_port: int) -> Iterator[EdgeThread]:
    snapshot = make_snapshot(upstream=f"sip:127.0.0.1:{core_port}")
    snapshot = dataclasses.replace(snapshot, settings={BRANCH_SECRET: SECRET})
    config = SipConfig(listen=("udp:127.0.0.1:0", "tcp:127.0.0.1:0"), tcp_idle_timeout=30)
    thread = EdgeThread(SnapshotHolder(snapshot), config).start()
    yield thread
    thread.stop()


def target(edge: EdgeThread, transport: str) -> str:
    return f"127.0.0.1:{edge.port(transport)}"


@contextmanager
def sinks() -> Iterator[tuple[int, socket.socket, socket.socket]]:
    """A UDP and a TCP socket on one free port; the test asserts nothing reaches them."""
    port = free_port()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        tcp.bind(("127.0.0.1", port))
        tcp.listen(8)
        udp.bind(("127.0.0.1", port))
        yield port, tcp, udp


def assert_silent(tcp: socket.socket, udp: socket.socket) -> None:
    tcp.settimeout(0.5)
    with pytest.raises(TimeoutError):
        tcp.accept()
    udp.settimeout(0.5)
    with pytest.raises(TimeoutError):
        udp.recv(65535)


def both(sipp: Sipp, core: str, phone: str, edge: EdgeThread, transport: str, port: int) -> None:
    """Run the core's scenario (a UAS on ``port``) and a phone's (a UAC) against each other."""
    uas = sipp.serve(xml_scenario("core", core), port, "udp")
    time.sleep(0.3)  # let the core bind before the phone starts
    uac = sipp.run(xml_scenario("phone", phone), target(edge, transport), transport)
    callee = sipp.wait(uas)
    assert uac.ok, uac.output
    assert callee.ok, callee.output


# -- a call, hung up by either side; re-INVITE ---------------------------------------------------

# A phone's INVITE to the callee.
SEND_INVITE = f"""
  <send retrans="500"><![CDATA[
INVITE {CALLEE} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <{CALLER}>;tag=[pid]a[call_number]
To: <{CALLEE}>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

]]></send>
"""
INVITE = f"""{SEND_INVITE}  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true">
    <action>
      <ereg regexp="{PHONE_FACING}" search_in="hdr" header="Record-Route:" check_it="true"
        assign_to="rr"/>
      {NO_TENANT}
    </action>
  </recv>
  <Reference variables="rr,leak"/>
"""


def in_dialog(method: str, cseq: int, sdp: bool = False) -> str:
    """A request the phone sends along its route set (the Record-Route it got, reversed)."""
    return f"""
  <send{' retrans="500"' if method != "ACK" else ""}><![CDATA[
{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <{CALLER}>;tag=[pid]a[call_number]
To: <{CALLEE}>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

]]></send>"""


ANSWER_BYE = f"""
  <recv request="BYE"><action>{NO_TENANT}</action></recv>
  <Reference variables="leak"/>{answer("200 OK")}
"""

CORE_ANSWERS = f"""
  <recv request="INVITE" rrs="true">
    <action>
      {record_routes(CORE_FACING, PHONE_FACING)}
      <ereg regexp="^ *acme$" search_in="hdr" header="X-Sipzone-Tenant:" check_it="true"
        assign_to="tenant"/>
      <ereg regexp="^ *customer42$" search_in="hdr" header="X-Sipzone-Caller-Tenant:"
        check_it="true" assign_to="caller"/>
      <ereg regexp="[^ ].*" search_in="hdr" header="From:" assign_to="remote"/>
      <ereg regexp="[^ ].*" search_in="hdr" header="To:" assign_to="local"/>
    </action>
  </recv>
  <Reference variables="rr,tenant,caller,remote,local"/>
  {answer("180 Ringing", "[last_Record-Route:]", CALLEE_CONTACT, tag="core[call_number]")}
  {answer("200 OK", "[last_Record-Route:]", CALLEE_CONTACT, tag="core[call_number]", retrans=True)}
  <recv request="ACK"/>
"""

CORE_ANSWERS_REQUEST = answer("200 OK", CALLEE_CONTACT) + "\n"

CORE_HANGS_UP = """
  <pause milliseconds="100"/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
From: [$local];tag=core[call_number]
To: [$remote]
[routes]
Call-ID: [call_id]
CSeq: 1 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("hangs_up", ["caller", "core"])
def test_a_call_is_hung_up_by_either_side(
    sipp: Sipp, edge: EdgeThread, core_port: int, transport: str, hangs_up: str
) -> None:
    phone = INVITE + in_dialog("ACK", 1)
    core = CORE_ANSWERS
    if hangs_up == "caller":
        phone += '<pause milliseconds="100"/>' + in_dialog("BYE", 2) + '<recv response="200"/>'
        core += '<recv request="BYE"/>' + CORE_ANSWERS_REQUEST
    else:  # the core's BYE reaches the caller over its own flow (its TCP connection)
        phone += ANSWER_BYE
        core += CORE_HANGS_UP
    both(sipp, core, phone, edge, transport, core_port)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_re_invite_goes_through_the_dialog(
    sipp: Sipp, edge: EdgeThread, core_port: int, transport: str
) -> None:
    phone = (
        INVITE
        + in_dialog("ACK", 1)
        + in_dialog("INVITE", 2)
        + '<recv response="200"/>'
        + in_dialog("ACK", 2)
        + in_dialog("BYE", 3)
        + '<recv response="200"/>'
    )
    core = (
        CORE_ANSWERS
        # In a dialog nothing is record-routed again, and the tenants are told again.
        + """<recv request="INVITE"><action>
      <ereg regexp="Record-Route" search_in="msg" check_it_inverse="true" assign_to="rr2"/>
      <ereg regexp="^ *acme$" search_in="hdr" header="X-Sipzone-Tenant:" check_it="true"
        assign_to="t2"/>
    </action></recv>
  <Reference variables="rr2,t2"/>"""
        + CORE_ANSWERS_REQUEST
        + '<recv request="ACK"/><recv request="BYE"/>'
        + CORE_ANSWERS_REQUEST
    )
    both(sipp, core, phone, edge, transport, core_port)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_ringing_call_is_cancelled(
    sipp: Sipp, edge: EdgeThread, core_port: int, transport: str
) -> None:
    # The CANCEL and the ACK of the 487 carry the INVITE's branch ([branch-N]: N messages back),
    # as a phone's do; the stateless edge gives them the INVITE's branch toward the core too.
    request_head = f"""
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch-{{n}}]
From: <{CALLER}>;tag=[pid]a[call_number]
To: <{CALLEE}>{{tag}}
Call-ID: [call_id]
CSeq: 1 {{method}}
Max-Forwards: 70
Content-Length: 0
"""
    phone = f"""{SEND_INVITE}  <recv response="100" optional="true"/>
  <recv response="180"/>
  <send><![CDATA[
CANCEL {CALLEE} SIP/2.0{request_head.format(n=3, tag="", method="CANCEL")}
]]></send>
  <recv response="200"/>
  <recv response="487"/>
  <send><![CDATA[
ACK {CALLEE} SIP/2.0{request_head.format(n=6, tag="[peer_tag_param]", method="ACK")}
]]></send>
"""
    core = "".join(
        [
            '\n  <recv request="INVITE"/>',
            answer("180 Ringing", tag="core[call_number]"),
            '\n  <recv request="CANCEL"/>',
            answer("200 OK"),
            answer("487 Request Terminated", tag="core[call_number]", cseq="CSeq: 1 INVITE"),
            '\n  <recv request="ACK"/>\n',
        ]
    )
    both(sipp, core, phone, edge, transport, core_port)


# -- REGISTER with a Path, and the core's INVITE back over the phone's flow ------------------------


def register(contact_port: int) -> str:
    """A phone that registers, then takes the core's call to it and the core's hang-up.  Its
    Contact names ``contact_port`` (a sink): the call must come over the phone's own flow."""
    contact = f"Contact: <sip:alice@127.0.0.1:{contact_port};transport=[transport]>"
    ok = answer("200 OK", "[last_Record-Route:]", contact, tag="alice[call_number]")
    return f"""
  <send retrans="500"><![CDATA[
REGISTER sip:cust42.teams.example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:alice@cust42.teams.example.com>;tag=[call_number]
To: <sip:alice@cust42.teams.example.com>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:alice@127.0.0.1:{contact_port};transport=[transport]>
Supported: path
Expires: 300
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"><action>{NO_TENANT}</action></recv>
  <recv request="INVITE">
    <action>
      {record_routes(PHONE_FACING, CORE_FACING)}
      {NO_TENANT}
    </action>
  </recv>
  <Reference variables="leak,rr"/>{ok}
  <recv request="ACK"/>
{ANSWER_BYE}
"""


REGISTERED = ("[last_Path:]", "Contact: [$contact];expires=300", "X-Sipzone-Tenant: to-be-stripped")
CORE_REGISTRAR = f"""
  <recv request="REGISTER">
    <action>
      <ereg regexp="^ *&lt;{CORE_FACING}&gt;$" search_in="hdr" header="Path:" check_it="true"
        assign_to="path"/>
      <ereg regexp="^ *path$" search_in="hdr" header="Require:" check_it="true" assign_to="req"/>
      <ereg regexp="^ *acme$" search_in="hdr" header="X-Sipzone-Tenant:" check_it="true"
        assign_to="tenant"/>
      <ereg regexp="[^ ].*" search_in="hdr" header="Contact:" assign_to="contact"/>
    </action>
  </recv>
  <Reference variables="req,tenant"/>{answer("200 OK", *REGISTERED, tag="reg[call_number]")}
  <pause milliseconds="200"/>
  <send retrans="500"><![CDATA[
INVITE sip:alice@127.0.0.1:{{contact_port}} SIP/2.0
Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
Route: [$path]
From: <sip:+4930555@core.example.net>;tag=core[call_number]
To: <sip:alice@cust42.teams.example.com>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:core@[local_ip]:[local_port]>
X-Sipzone-Tenant: to-be-stripped
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:+4930555@core.example.net>;tag=core[call_number]
To: <sip:alice@cust42.teams.example.com>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause milliseconds="100"/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:+4930555@core.example.net>;tag=core[call_number]
To: <sip:alice@cust42.teams.example.com>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_cores_call_to_a_registered_phone_comes_over_its_own_flow(
    sipp: Sipp, edge: EdgeThread, core_port: int, transport: str
) -> None:
    """REGISTER gets our Path (the phone's flow, signed); the core's INVITE routed by it (and
    its ACK and BYE by the Record-Route) reach the phone over its UDP binding or the TCP
    connection it opened, never at the Contact it registered (a sink here)."""
    with sinks() as (contact_port, tcp_sink, udp_sink):
        core = CORE_REGISTRAR.replace("{contact_port}", str(contact_port))
        both(sipp, core, register(contact_port), edge, transport, core_port)
        assert_silent(tcp_sink, udp_sink)


# -- a forged flow token reaches nobody -----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("forgery", ["another key", "tampered"])
def test_a_forged_flow_token_gets_403_and_nothing_is_sent(
    sipp: Sipp, edge: EdgeThread, core_port: int, transport: str, forgery: str
) -> None:
    with sinks() as (port, tcp_sink, udp_sink):
        phone = Target(transport, "127.0.0.1", port)
        if forgery == "another key":
            token = Keys((b"not ours" * 4,)).flow_token(phone)
        else:  # a genuine token for another port, the port rewritten to the sink's
            keys = Keys((SECRET.encode(),))
            genuine = keys.flow_token(phone._replace(port=port ^ 1))
            assert genuine is not None
            token = _retarget(genuine, port)
            assert keys.flow(token) is None
        assert token is not None
        route = f"<sip:{token.decode()}@127.0.0.1:{edge.port('udp')};transport=udp;lr>"
        core = f"""
  <send><![CDATA[
INVITE sip:alice@127.0.0.1:{port};transport={transport} SIP/2.0
Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
Route: {route}
From: <sip:+4930555@core.example.net>;tag=[call_number]
To: <sip:alice@cust42.teams.example.com>
Call-ID: [call_id]
CSeq: 1 INVITE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="403">
    <action><ereg regexp="Invalid Flow Token" search_in="msg" check_it="true"
      assign_to="why"/></action>
  </recv>
  <Reference variables="why"/>
"""
        # From the core's own address: only requests from there follow a token at all.
        result = sipp.run(xml_scenario("core", core), target(edge, "udp"), "udp", port=core_port)
        assert result.ok, result.output
        assert_silent(tcp_sink, udp_sink)


def _retarget(token: bytes, port: int) -> bytes:
    """``token`` with the port it names replaced (its MAC left as it was)."""
    import base64

    prefix, body = token[:5], token[5:]
    raw = bytearray(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
    raw[1:3] = port.to_bytes(2, "big")
    return prefix + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=")
