"""Sans-IO parsing: bytes in, values out; each failure its own error class."""

from __future__ import annotations

import pytest

from sipzone.sip import message as m


def build(
    *headers: str, start: str = "INVITE sip:bob@example.com SIP/2.0", body: str = ""
) -> bytes:
    return ("\r\n".join([start, *headers, "", body])).encode()


BASE = (
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1",
    "To: <sip:bob@example.com>",
    "From: Alice <sip:alice@example.net>;tag=a1",
    "Call-ID: c1@192.0.2.1",
    "CSeq: 7 INVITE",
    "Max-Forwards: 70",
)


def test_plain_request() -> None:
    msg = m.parse_message(build(*BASE, "Content-Length: 4", body="abcdEXTRA"))
    assert isinstance(msg, m.Request)
    assert (msg.method, msg.uri) == ("INVITE", b"sip:bob@example.com")
    assert msg.fields[b"CSeq"] == b"7 INVITE"
    assert msg.body == b"abcd"  # octets after Content-Length are not the body
    assert m.check_request(msg).host == b"192.0.2.1"


def test_compact_forms_any_case_and_spacing_map_to_one_key() -> None:
    msg = m.parse_message(
        build(
            "v: SIP/2.0/UDP a.example.com;branch=z9hG4bK-1",
            "VIA  : SIP/2.0/TCP b.example.com;branch=z9hG4bK-2",
            "t: <sip:bob@example.com>",
            "f:Alice <sip:alice@example.net>;tag=a1",
            "i: c1",
            "cseq:   7 INVITE   ",
            "l: 0",
            "k: path",
            "m: <sip:alice@192.0.2.1>",
        )
    )
    assert msg.fields[b"Via"] == (
        b"SIP/2.0/UDP a.example.com;branch=z9hG4bK-1, SIP/2.0/TCP b.example.com;branch=z9hG4bK-2"
    )
    assert b"Via" in msg.repeated
    assert msg.fields[b"CSeq"] == b"7 INVITE"
    assert msg.fields[b"Supported"] == b"path"
    assert msg.fields[b"Contact"] == b"<sip:alice@192.0.2.1>"
    assert [v.host for v in m.split_vias(msg.fields[b"Via"])] == [
        b"a.example.com",
        b"b.example.com",
    ]
    assert msg.headers()[1] == (b"Via", b"VIA", b"SIP/2.0/TCP b.example.com;branch=z9hG4bK-2")


def test_folded_lines_are_unfolded() -> None:
    msg = m.parse_message(build(*BASE, "Subject: one\r\n  two\r\n\tthree", "l: 0"))
    assert msg.fields[b"Subject"] == b"one two three"


def test_uris() -> None:
    uri = m.parse_uri(b"sips:alice:pw@[2001:db8::1]:5061;transport=TCP;lr?subject=x")
    assert (uri.scheme, uri.user, uri.host, uri.port) == (
        "sips",
        b"alice:pw",
        b"[2001:db8::1]",
        5061,
    )
    assert uri.params == {b"transport": b"TCP", b"lr": None}
    assert uri.headers == b"subject=x" and uri.is_ip and uri.transport == "tcp"
    assert m.parse_uri(b"sip:example.com").user is None
    tel = m.parse_uri(b"tel:+4930123;phone-context=example.com")
    assert (tel.scheme, tel.user, tel.host) == ("tel", b"+4930123", b"")
    assert m.parse_uri(b"sip:user;par=u%40example.net@example.com").host == b"example.com"
    assert m.uri_host(b"SIP:ping@Voip.Example.COM:5070;transport=udp") == b"Voip.Example.COM"
    assert m.uri_host(b"sip:[::1]:5070") == b"[::1]"
    with pytest.raises(m.BadURI):
        m.parse_uri(b"sip:alice@")
    with pytest.raises(m.UnsupportedScheme):
        m.check_uri(b"http://example.com")


def test_addresses() -> None:
    a = m.parse_address(b'"Alice \\"A\\"" <sip:alice@example.net>;tag=x;foo')
    assert a.display == b'"Alice \\"A\\""' and a.uri == b"sip:alice@example.net"
    assert a.params == {b"tag": b"x", b"foo": None} and a.tag == b"x"
    b = m.parse_address(b"sip:bob@example.com;tag=9")
    assert (b.uri, b.tag) == (b"sip:bob@example.com", b"9")
    for bad in (b"Bell, Alexander <sip:a@b.example>", b'"open <sip:a@b.example>', b"< sip:a@b >"):
        with pytest.raises(m.BadAddress):
            m.parse_address(bad)


def test_via_received_rport() -> None:
    via = m.parse_via(b"SIP / 2.0 / UDP 10.0.0.1:5062 ; rport ; received=192.0.2.1;branch=z9hG4bKx")
    assert (via.transport, via.host, via.port) == ("udp", b"10.0.0.1", 5062)
    assert via.rport == b"" and via.received == b"192.0.2.1" and via.branch == b"z9hG4bKx"
    assert m.parse_via(b"SIP/2.0/TCP [::1];rport=5070").rport == b"5070"
    assert m.parse_via(b"SIP/2.0/UDP h.example").rport is None
    with pytest.raises(m.BadVia):
        m.parse_via(b"SIP/2.0/UDP 192.0.2.15;;,;,,")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x", m.Incomplete),
        (b"INVITE  sip:a@b SIP/2.0\r\n\r\n", m.BadStartLine),
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", m.BadVersion),
        (b"SIP/2.0 1000 Big\r\n\r\n", m.BadStatusCode),
        (b"INVITE sip:a@b SIP/2.0\r\nNoColonHere\r\n\r\n", m.BadHeaderLine),
        (b"INVITE sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n", m.BadHeaderLine),
        (b"INVITE sip:a@b SIP/2.0\r\nl: 5\r\n\r\nab", m.BadContentLength),
        (b"INVITE sip:a@b SIP/2.0\r\nl: -1\r\n\r\n", m.BadContentLength),
        (b"INVITE sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 1\r\n\r\nx", m.RepeatedHeader),
        (b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 200 + b"\r\n", m.TooManyHeaders),
        (b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * 70000 + b"\r\n\r\n", m.MessageTooLarge),
    ],
)
def test_errors_are_distinct_classes(data: bytes, error: type[m.MalformedMessage]) -> None:
    with pytest.raises(error):
        m.parse_message(data)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (("CSeq: 7 INVITE", "CSeq: 7 BYE"), m.BadCSeq),
        (("CSeq: 7 INVITE", "CSeq: 99999999999 INVITE"), m.BadCSeq),
        (("Max-Forwards: 70", "Max-Forwards: 300"), m.BadMaxForwards),
        (("Call-ID: c1@192.0.2.1", "Call-ID: a b"), m.BadCallID),
        (("To: <sip:bob@example.com>", "To: <sip:bob@example.com"), m.BadAddress),
        (("Max-Forwards: 70", "Date: Fri, 01 Jan 2010 16:00:00 EST"), m.BadDate),
        (("Max-Forwards: 70", "Expires: 99999999999"), m.BadExpires),
        (("Call-ID: c1@192.0.2.1", "X-Other: 1"), m.MissingHeader),
    ],
)
def test_request_checks(change: tuple[str, str], error: type[m.MalformedMessage]) -> None:
    headers = [h.replace(*change) if h == change[0] else h for h in BASE]
    msg = m.parse_message(build(*headers, "l: 0"))
    assert isinstance(msg, m.Request)
    with pytest.raises(error) as info:
        m.check_request(msg)
    assert info.value.message is msg  # so a 400 can still echo Via, From, To, ...


def test_stream_framing() -> None:
    one = build(*BASE, "Content-Length: 3", body="abc")
    reader = m.StreamReader()
    reader.receive_data(b"\r\n\r\n" + one + one[:20])
    first = reader.next_message()
    assert isinstance(first, m.Request) and first.body == b"abc"
    assert reader.keepalives == 1
    assert reader.next_message() is None  # half a message: wait for the rest
    reader.receive_data(one[20:])
    second = reader.next_message()
    assert isinstance(second, m.Request) and second.body == b"abc"
    assert reader.next_message() is None and reader.buffered == 0
    reader.receive_data(build(*BASE))  # no Content-Length on a stream
    with pytest.raises(m.BadContentLength):
        reader.next_message()
    endless = m.StreamReader()
    endless.receive_data(b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 12000)
    with pytest.raises(m.MessageTooLarge):
        endless.next_message()
