"""Mail clients find the voicemail store from an address alone: RFC 6186 SRV through sipzone's
DNS (Python's imaplib then signs in over TLS and fetches a voice message), and the autoconfig
and autodiscover documents of the web service."""

from __future__ import annotations

import email
import email.policy
import ssl
from email.message import EmailMessage
from xml.etree import ElementTree

import dns.message
import dns.query
import dns.rdatatype

from sipzone.web.mailbox import Endpoint, connect
from tests.web.conftest import EMAIL, MAILBOX, PASSWORD, SITE_HOST, Voicemail


def ask(dns_at: tuple[str, int], name: str, rdtype: str) -> list[str]:
    query = dns.message.make_query(name, rdtype)
    reply = dns.query.udp(query, dns_at[0], port=dns_at[1], timeout=5)
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


def test_imaplib_finds_the_store_by_rfc6186_and_fetches_the_voice_message(
    voicemail: Voicemail,
) -> None:
    address = MAILBOX
    domain = address.partition("@")[2]
    # RFC 6186 §3.4 / RFC 8314 §5.1: implicit TLS first; the services not offered say "."
    [srv] = ask(voicemail.dns, f"_imaps._tcp.{domain}", "SRV")
    _priority, _weight, port, target = srv.split()
    assert (int(port), target) == (voicemail.dovecot.port, f"{SITE_HOST}.")
    for absent in ("_imap", "_pop3", "_pop3s", "_submission"):
        assert ask(voicemail.dns, f"{absent}._tcp.{domain}", "SRV") == ["0 0 0 ."]
    submissions = ask(voicemail.dns, f"_submissions._tcp.{domain}", "SRV")
    assert submissions == ["10 100 465 smtp.example.com."]
    [ip] = ask(voicemail.dns, target, "A")

    context = ssl.create_default_context(cafile=None)
    voicemail.dovecot.ca.configure_trust(context)
    # imaplib over TLS to the address sipzone gave, the certificate checked against the target
    imap = connect(Endpoint(target.rstrip("."), int(port), (ip,)), context)
    try:
        assert imap.login(address, PASSWORD)[0] == "OK"
        imap.select("INBOX", readonly=True)
        _, data = imap.fetch("1", "(BODY.PEEK[])")
        message = email.message_from_bytes(data[0][1], policy=email.policy.default)
    finally:
        imap.logout()
    assert isinstance(message, EmailMessage)
    assert message["X-Asterisk-VM-Caller-ID-Name"] == "Alice"
    [audio] = [p for p in message.walk() if p.get_content_maintype() == "audio"]
    assert audio.get_payload(decode=True) == voicemail.voice.wav


def test_autoconfig_names_resolve_to_the_sites(voicemail: Voicemail) -> None:
    for name in (f"autoconfig.{EMAIL}", f"autodiscover.{EMAIL}", EMAIL):
        assert ask(voicemail.dns, name, "A") == ["127.0.0.1"]


def server_settings(provider: ElementTree.Element, tag: str) -> list[dict[str, str]]:
    return [
        {"type": s.get("type", ""), **{child.tag: child.text or "" for child in s}}
        for s in provider.findall(tag)
    ]


def test_thunderbird_autoconfig_names_the_endpoints(voicemail: Voicemail) -> None:
    for host, path in (
        (f"autoconfig.{EMAIL}", f"/mail/config-v1.1.xml?emailaddress={MAILBOX}"),
        (EMAIL, "/.well-known/autoconfig/mail/config-v1.1.xml"),
    ):
        with voicemail.client(host) as client:
            reply = client.get(path)
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"].startswith("application/xml")
        root = ElementTree.fromstring(reply.content)
        # clientConfig 1.1 as Thunderbird reads it: one emailProvider with its domain, each
        # server with hostname, port, socketType, authentication and username.
        assert (root.tag, root.get("version")) == ("clientConfig", "1.1")
        [provider] = root.findall("emailProvider")
        assert provider.get("id") == EMAIL
        assert [d.text for d in provider.findall("domain")] == [EMAIL]
        required = {"hostname", "port", "socketType", "authentication", "username"}
        incoming = server_settings(provider, "incomingServer")
        outgoing = server_settings(provider, "outgoingServer")
        for server in incoming + outgoing:
            assert required <= set(server)
            assert server["socketType"] == "SSL"
            assert server["authentication"] == "password-cleartext"
            assert server["username"] == "%EMAILADDRESS%"
        assert [(s["type"], s["hostname"], s["port"]) for s in incoming] == [
            ("imap", SITE_HOST, str(voicemail.dovecot.port))
        ]
        assert [(s["type"], s["hostname"], s["port"]) for s in outgoing] == [
            ("smtp", "smtp.example.com", "465")
        ]


AUTODISCOVER = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{address}</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""
RESPONSE = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
OUTLOOK = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


def test_outlook_autodiscover_names_the_endpoints(voicemail: Voicemail) -> None:
    with voicemail.client(f"autodiscover.{EMAIL}") as client:
        reply = client.post(
            "/autodiscover/autodiscover.xml",
            content=AUTODISCOVER.format(address=MAILBOX),
            headers={"Content-Type": "text/xml"},
        )
    assert reply.status_code == 200, reply.text
    root = ElementTree.fromstring(reply.content)
    assert root.tag == f"{RESPONSE}Autodiscover"
    account = root.find(f"{OUTLOOK}Response/{OUTLOOK}Account")
    assert account is not None
    assert account.findtext(f"{OUTLOOK}Action") == "settings"
    protocols = [
        {child.tag.removeprefix(OUTLOOK): child.text for child in protocol}
        for protocol in account.findall(f"{OUTLOOK}Protocol")
    ]
    assert [(p["Type"], p["Server"], p["Port"], p["SSL"], p["LoginName"]) for p in protocols] == [
        ("IMAP", SITE_HOST, str(voicemail.dovecot.port), "on", MAILBOX),
        ("SMTP", "smtp.example.com", "465", "on", MAILBOX),
    ]


def test_autodiscover_refuses_entities_and_bad_addresses(voicemail: Voicemail) -> None:
    entity = (
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + AUTODISCOVER.split("?>", 1)[1].format(address="&x;")
    )
    with voicemail.client() as client:
        for body in (entity, AUTODISCOVER.format(address="a b@example.com"), "<not xml"):
            reply = client.post("/autodiscover/autodiscover.xml", content=body)
            assert reply.status_code == 400
            assert "root:" not in reply.text
