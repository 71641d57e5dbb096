"""Low-level networking that the SIP edge and the DNS authority share: addresses, sockets,
batched UDP.  It imports nothing of sipzone, so ``sip/`` and ``dns/`` may both use it."""

from __future__ import annotations

MAX_PORT = 65535


def is_port(number: int, *, allow_zero: bool = False) -> bool:
    """Whether ``number`` is a port: 1-65535, or 0 ("any free port") with ``allow_zero``."""
    return (0 if allow_zero else 1) <= number <= MAX_PORT


def split_hostport(text: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` to ``(host, port)``; raises ValueError on anything else.

    Port 0 ("any free port") is accepted only with ``allow_zero``, for sockets we listen on.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or host.startswith("[") or host.endswith("]"):
        raise ValueError(f"{text!r} is not HOST:PORT")
    number = int(port)
    if not is_port(number, allow_zero=allow_zero):
        raise ValueError(f"port {number} in {text!r} is outside 1-65535")
    return host, number
