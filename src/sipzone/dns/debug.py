"""The DNS debug switch's lines: each query from one client, or for one name (and the names
under it, such as its SRV names), with its answer (``sipzone debug dns``; the hook is at the
top of :meth:`Authority.respond`)."""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from sipzone.logs import Trace
from sipzone.model.debug import DebugSwitch


class DnsTrace(Trace):
    kind = "dns"

    def __init__(self, switch: DebugSwitch) -> None:
        super().__init__(switch)
        # A client comes as text or as packed bytes (the batched UDP path): either matches.
        peer = ipaddress.ip_address(switch.peer) if switch.peer else None
        self._peers = (switch.peer, peer.packed) if peer else ()
        self._name = dns.name.from_text(switch.name) if switch.name else None

    def exchange(self, query: bytes, client: str | bytes, response: bytes | None) -> bool:
        """Log ``query`` and ``response`` (None: none was sent) when they concern the switch's
        client or name; False once the switch has ended."""
        if not self.live():
            return False
        if self._peers and client not in self._peers:
            return True
        try:
            asked = dns.message.from_wire(query)
        except dns.exception.DNSException as exc:
            if self._name is None:
                self.line(f"from {show(client)}: malformed query of {len(query)} bytes ({exc})")
            return True
        question = asked.question[0] if asked.question else None
        if self._name is not None and not (
            question is not None and question.name.is_subdomain(self._name)
        ):
            return True
        # (A question's RRset holds no records, so it is false: compare with None.)
        what = (
            "?" if question is None else f"{question.name} {dns.rdatatype.to_text(question.rdtype)}"
        )
        self.line(f"from {show(client)}: {what}", asked.to_text())
        if response is None:
            self.line(f"to {show(client)}: no response")
            return True
        try:
            answer = dns.message.from_wire(response)
        except dns.exception.DNSException:
            self.line(f"to {show(client)}: {len(response)} bytes")
            return True
        records = sum(len(rrset) for rrset in answer.answer)
        said = f"{dns.rcode.to_text(answer.rcode())}, {records} answer record(s)"
        self.line(f"to {show(client)}: {what}: {said}", answer.to_text())
        return True


def show(client: str | bytes) -> str:
    return client if isinstance(client, str) else str(ipaddress.ip_address(client))
