"""Mail clients configure themselves over HTTP: Thunderbird's autoconfig
(``/mail/config-v1.1.xml``, ``/.well-known/autoconfig/mail/config-v1.1.xml``) and Outlook's
autodiscover POX request (``POST /autodiscover/autodiscover.xml``), on every host name the
web service answers (the email domain, ``autoconfig.E`` and ``autodiscover.E`` resolve to it).

Both name the email domain's IMAP and submission endpoints (implicit TLS, RFC 8314): the site
this node runs at first, then the other serving sites in their configured order, as the
snapshot has them (``email-domain set --imap/--submission``).  The only input read is the
address the client asks about, checked as the voicemail sign-in checks a mailbox, and it is
echoed back as the login name only; XML bodies with a DOCTYPE are refused unread, so no entity
can expand.
"""

from __future__ import annotations

import re
from xml.etree import ElementTree

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sipzone.model.errors import InvalidValue
from sipzone.model.mail import SETTING, mail_targets, stored_endpoints
from sipzone.model.snapshot import Site, Snapshot
from sipzone.web.mailbox import parse_mailbox

router = APIRouter(include_in_schema=False)

XML = "application/xml"
_REQUEST_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006}"
_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
_OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


def targets(snapshot: Snapshot, service: str, site: str | None) -> list[tuple[str, int]]:
    """(host, port) of ``service`` for clients of this node: its site first, then the other
    serving sites in their configured order."""
    email = snapshot.email_domain
    if not email:
        return []
    serving = snapshot.serving()
    ordered = sorted(serving, key=lambda s: s.name != site)  # stable: configured order kept
    endpoints = stored_endpoints(service, snapshot.settings.get(SETTING[service]))
    zone = snapshot.zone_of(email) or email
    pairs: list[tuple[int, Site]] = [(0, s) for s in ordered]
    return [(host, port) for _prio, _site, host, port in mail_targets(endpoints, pairs, zone)]


def _element(parent: ElementTree.Element, tag: str, text: str) -> None:
    ElementTree.SubElement(parent, tag).text = text


def _xml(root: ElementTree.Element) -> Response:
    body = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return Response(body, media_type=XML, headers={"Cache-Control": "no-store"})


def _context(request: Request) -> tuple[Snapshot, str | None]:
    holder = request.app.state.holder
    config = request.app.state.config
    return (holder.current if holder else Snapshot.empty()), config.site


def autoconfig(request: Request, emailaddress: str = "") -> Response:
    """Thunderbird's clientConfig 1.1 for the email domain."""
    snapshot, site = _context(request)
    email = snapshot.email_domain
    if not email:
        return Response(status_code=404)
    root = ElementTree.Element("clientConfig", version="1.1")
    provider = ElementTree.SubElement(root, "emailProvider", id=email)
    _element(provider, "domain", email)
    _element(provider, "displayName", f"Voice messages at {email}")
    _element(provider, "displayShortName", email)
    for service, tag, kind in (("imap", "incomingServer", "imap"),
                               ("submission", "outgoingServer", "smtp")):  # fmt: skip
        for host, port in targets(snapshot, service, site):
            server = ElementTree.SubElement(provider, tag, type=kind)
            _element(server, "hostname", host)
            _element(server, "port", str(port))
            _element(server, "socketType", "SSL")
            _element(server, "authentication", "password-cleartext")
            _element(server, "username", "%EMAILADDRESS%")
    return _xml(root)


async def autodiscover(request: Request) -> Response:
    """Outlook's POX autodiscover: the IMAP and SMTP settings for the address it asks about."""
    snapshot, site = _context(request)
    body = await request.body()
    if not snapshot.email_domain:
        return Response(status_code=404)
    try:
        if re.search(rb"<!\s*(DOCTYPE|ENTITY)", body, re.IGNORECASE):
            raise InvalidValue("an autodiscover request has no DOCTYPE")
        found = ElementTree.fromstring(body).find(f"{_REQUEST_NS}Request/{_REQUEST_NS}EMailAddress")
        address = parse_mailbox(found.text or "" if found is not None else "", None)
    except (ElementTree.ParseError, InvalidValue):
        return Response("give an Autodiscover request with an EMailAddress", 400)
    root = ElementTree.Element("Autodiscover", xmlns=_RESPONSE)
    account = ElementTree.SubElement(ElementTree.SubElement(root, "Response", xmlns=_OUTLOOK),
                                     "Account")  # fmt: skip
    _element(account, "AccountType", "email")
    _element(account, "Action", "settings")
    for service, kind in (("imap", "IMAP"), ("submission", "SMTP")):
        for host, port in targets(snapshot, service, site):
            protocol = ElementTree.SubElement(account, "Protocol")
            fields = {"Type": kind, "Server": host, "Port": str(port), "DomainRequired": "off",
                      "LoginName": address, "SPA": "off", "SSL": "on", "Encryption": "SSL",
                      "AuthRequired": "on"}  # fmt: skip
            for tag, text in fields.items():
                _element(protocol, tag, text)
    return _xml(root)


for _path in ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"):
    router.add_api_route(_path, autoconfig, methods=["GET"])
for _path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
    router.add_api_route(_path, autodiscover, methods=["POST"])
