"""The API as a service of a worker: uvicorn on the worker's own event loop.

Why in the same loop rather than a thread or a process of its own: the API reads the live
snapshot (``/api/v1/status``) and must stop with the worker; uvicorn is asyncio code already,
and every endpoint that touches the database runs in FastAPI's thread pool, so the loop that
answers SIP and DNS never waits on the store.  uvicorn's own signal handling is switched off
(the worker owns SIGTERM/SIGINT); the listening socket is bound by us, with SO_REUSEPORT, so
``--workers N`` share the port as they share SIP's.  With ``--api-tls`` it speaks HTTPS, the
certificate chosen by SNI as the SIP edge chooses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator

import uvicorn

from sipzone.api import ApiConfig
from sipzone.api.app import create_app
from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.net import split_hostport
from sipzone.net.sockets import bound_socket
from sipzone.store.repository import Store

STOP_GRACE = 5.0  # seconds open requests get to finish when the worker stops


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the worker handles signals and stops us with close()


class ApiService:
    def __init__(
        self, server: _Server, task: asyncio.Task[None], sock: socket.socket, store: Store
    ) -> None:
        self.server = server
        self.task = task
        self.socket = sock
        self.store = store

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    async def close(self) -> None:
        self.server.should_exit = True
        try:
            async with asyncio.timeout(STOP_GRACE):
                await asyncio.shield(self.task)
        except TimeoutError:
            self.server.force_exit = True
            await self.task
        self.socket.close()
        self.store.close()


def https_context(holder: SnapshotHolder) -> ssl.SSLContext:
    """The HTTPS server context: the SIP edge's certificate choice by SNI
    (:class:`~sipzone.sip.tls.TlsContexts`: exact name, then one-label wildcard, else the
    default), over the store's certificates as each new snapshot carries them."""
    from sipzone.sip.tls import TlsContexts, TlsPolicy

    contexts = TlsContexts(TlsPolicy())
    contexts.update(holder.current.certificates)

    def follow(_old: Snapshot, new: Snapshot) -> None:
        contexts.update(new.certificates)

    holder.subscribe(follow)
    return contexts.dispatcher


async def start_api(
    config: ApiConfig, db: str, holder: SnapshotHolder, wrote: Callable[[], None] | None = None
) -> ApiService:
    """Serve the API of the store at ``db`` on ``config.listen`` until :meth:`close`.  The API
    has a store (and connection pool) of its own: the feed's reconnects leave it alone.
    ``wrote`` is called on the loop after each successful write (the worker's follower reads
    the store at once instead of at its next poll)."""
    host, port = split_hostport(config.listen, allow_zero=True)
    sock = bound_socket(host, port, socket.SOCK_STREAM)
    store = Store(db, via="api")
    app = create_app(store, config, holder, wrote)
    server = _Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,  # the client address is the peer's: no X-Forwarded-For trust
            server_header=False,
            ssl_context_factory=(lambda _c, _d: https_context(holder)) if config.tls else None,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the API server stopped while starting")
        await asyncio.sleep(0.01)
    return ApiService(server, task, sock, store)
