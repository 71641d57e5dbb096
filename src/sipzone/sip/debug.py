"""The SIP debug switch's lines: each message from or to one peer, or naming one domain, with
what the edge sent for it (``sipzone debug sip``; the hook is :meth:`Edge.traced`)."""

from __future__ import annotations

import re

from sipzone.logs import Trace
from sipzone.model.debug import DebugSwitch
from sipzone.sip.message import Request, Response
from sipzone.sip.values import Arrival, Sends

_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class SipTrace(Trace):
    kind = "sip"

    def __init__(self, switch: DebugSwitch) -> None:
        super().__init__(switch)
        # A name matches as a URI's host (sip:NAME, sips:NAME, user@NAME), not inside another.
        self._name = (
            re.compile(rb"(?:sips?:|@)" + re.escape(switch.name.encode()) + rb"(?![\w.-])", re.I)
            if switch.name
            else None
        )

    def exchange(self, message: bytes | Request | Response, arrival: Arrival, sends: Sends) -> bool:
        """Log ``message`` (as it arrived) and ``sends`` (what the edge sent for it) when they
        concern the switch's peer or name; False once the switch has ended."""
        if not self.live():
            return False
        data = message if isinstance(message, bytes) else wire(message)
        if not data.strip(b"\r\n"):
            return True  # a CRLF keep-alive
        if self._name is not None:
            if not self._name.search(data):
                return True
        elif arrival.addr[0] != self.switch.peer and all(
            send.host != self.switch.peer for send in sends
        ):
            return True
        host, port = arrival.addr[:2]
        where = f"{arrival.listener.transport} from {host}:{port}"
        self.line(f"in {where}: {summary(data)}", text(data))
        for out in sends:
            where = f"{out.transport} to {out.host}:{out.port}"
            self.line(f"out {where}: {summary(out.data)}", text(out.data))
        return True


def wire(message: Request | Response) -> bytes:
    """A parsed message as bytes again (its header block as received, unfolded)."""
    return message.start_line + b"\r\n" + message.head + b"\r\n\r\n" + message.body


def summary(data: bytes) -> str:
    """The start line and Call-ID of a message."""
    start = data.split(b"\r\n", 1)[0][:200]
    call = _CALL_ID.search(data)
    tail = f" (Call-ID {text(call[1][:100])})" if call else ""
    return text(start) + tail


def text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")
