"""One SIP health probe: an OPTIONS to one transport, address and port, and whether a final
response came back in time.

Theory of operation.  The request is written here (a few lines, with a fresh branch, tag and
Call-ID each time) and answers are read with sip/message.py's parser, so a probe costs one
socket and a few hundred bytes.  Any final response (2xx to 6xx) proves a SIP stack answers;
provisional ones are waited through.  Over UDP the request is retransmitted on RFC 3261's
timer A (500 ms, doubling) until the timeout, and an ICMP port-unreachable ends the probe at
once.  Over TCP and TLS one connection per probe: connecting is part of what is checked.  TLS
probes do not verify the site's certificate: they check that the site answers, and a site
whose certificate phones refuse is a certificate problem for `cert list`, not a dead site.
Nothing here resolves a name: targets are the sites' virtual IPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import ssl
from dataclasses import dataclass

from sipzone.model.errors import SipzoneError
from sipzone.sip.message import Response, StreamReader, parse_message

TIMER_A = 0.5  # RFC 3261 T1: first UDP retransmission, doubling after each


@dataclass(frozen=True, slots=True)
class Target:
    """Where one probe goes: ``transport`` is udp, tcp or tls; ``address`` an IP literal."""

    transport: str
    address: str
    port: int
    server_name: str | None = None  # SNI for TLS: the site's SIP host

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.transport} {host}:{self.port}"


def options_request(target: Target, local: tuple[str, int], branch: str) -> bytes:
    """The OPTIONS a probe sends to ``target`` from ``local`` (address, port)."""
    host = f"[{target.address}]" if ":" in target.address else target.address
    me = f"[{local[0]}]" if ":" in local[0] else local[0]
    tag = secrets.token_hex(6)
    return (
        f"OPTIONS sip:{host}:{target.port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{target.transport.upper()} {me}:{local[1]};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"To: <sip:{host}:{target.port}>\r\n"
        f"From: <sip:sipzone-health@{me}>;tag={tag}\r\n"
        f"Call-ID: {secrets.token_hex(10)}@sipzone-health\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "User-Agent: sipzone-health\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _final(message: object, branch: bytes) -> bool:
    """Whether ``message`` is a final response to our request (its Via carries our branch)."""
    return (
        isinstance(message, Response)
        and message.status >= 200
        and branch in message.fields.get(b"Via", b"")
    )


def tls_context() -> ssl.SSLContext:
    """The client context TLS probes use (no certificate check: see the module's docstring)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def probe(
    target: Target, timeout: float, context: ssl.SSLContext | None = None
) -> str | None:
    """None when ``target`` gave a final response within ``timeout`` seconds, else what
    happened instead (for the log and ``site list``)."""
    try:
        async with asyncio.timeout(timeout):
            if target.transport == "udp":
                return await _probe_udp(target)
            return await _probe_stream(target, context)
    except TimeoutError:
        return f"{target}: no final response within {timeout:g} s"
    except OSError as exc:
        return f"{target}: {os.strerror(exc.errno) if exc.errno else exc}"


class _UdpProbe(asyncio.DatagramProtocol):
    def __init__(self, branch: bytes) -> None:
        self.branch = branch
        self.done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        with contextlib.suppress(SipzoneError):
            if _final(parse_message(data), self.branch) and not self.done.done():
                self.done.set_result(None)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            errno = getattr(exc, "errno", None)
            self.done.set_result(os.strerror(errno) if errno else str(exc))


async def _probe_udp(target: Target) -> str | None:
    loop = asyncio.get_running_loop()
    branch = "z9hG4bK-hc" + secrets.token_hex(8)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UdpProbe(branch.encode()), remote_addr=(target.address, target.port)
    )
    try:
        request = options_request(target, transport.get_extra_info("sockname")[:2], branch)
        wait = TIMER_A
        while True:
            transport.sendto(request)
            done, _ = await asyncio.wait({protocol.done}, timeout=wait)
            if done:
                error = protocol.done.result()
                return None if error is None else f"{target}: {error}"
            wait *= 2
    finally:
        transport.close()


async def _probe_stream(target: Target, context: ssl.SSLContext | None) -> str | None:
    tls = target.transport == "tls"
    reader, writer = await asyncio.open_connection(
        target.address,
        target.port,
        ssl=(context or tls_context()) if tls else None,
        server_hostname=(target.server_name or target.address) if tls else None,
    )
    try:
        branch = "z9hG4bK-hc" + secrets.token_hex(8)
        writer.write(options_request(target, writer.get_extra_info("sockname")[:2], branch))
        frames = StreamReader()
        while True:
            data = await reader.read(65536)
            if not data:
                return f"{target}: connection closed without a final response"
            frames.receive_data(data)
            try:
                while (message := frames.next_message()) is not None:
                    if _final(message, branch.encode()):
                        return None
            except SipzoneError as exc:
                return f"{target}: unreadable answer ({exc})"
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
