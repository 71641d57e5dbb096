"""Listening sockets as both services bind them: SO_REUSEPORT for ``--workers N``, IPv4 or IPv6
chosen by the host, non-blocking; and the probe that tells whether another process holds one."""

from __future__ import annotations

import contextlib
import errno
import socket

UDP_BUFFER = 4 << 20  # bursts at full speed outrun one Python thread for a moment: queue them


def bound_socket(
    host: str,
    port: int,
    kind: socket.SocketKind,
    *,
    reuse_port: bool = True,
    buffers: int = UDP_BUFFER,
    dual_stack: bool = False,
    backlog: int = 1024,
) -> socket.socket:
    """A non-blocking socket bound to host:port (a stream socket also listening).

    ``buffers`` sets SO_RCVBUF and SO_SNDBUF of a datagram socket (0: the kernel's default; a
    larger value than the kernel allows is capped by it, not an error).  An IPv6 socket takes
    IPv4 peers too (as ::ffff:a.b.c.d) only with ``dual_stack``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_DGRAM and buffers:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind((host, port))
        sock.setblocking(False)
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def held_elsewhere(
    host: str, port: int, kind: socket.SocketKind, *, dual_stack: bool = False
) -> bool:
    """Whether another socket already holds ``host:port`` for ``kind`` (UDP or TCP).

    SO_REUSEPORT lets any process of the same user join a port silently and take a share of
    its traffic; a bind *without* it fails with EADDRINUSE while any other socket holds the
    port, so a throw-away bind tells.  A stream probe sets SO_REUSEADDR, as the listeners do,
    so that connections of an earlier run still in TIME_WAIT hold nothing.  Any other bind
    failure (an address not on this host, a privileged port) is raised as it is.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False
