"""API fixtures: a store with a reseller chain, `sipzone serve --api` on it, an httpx client
per token, and a tiny DNS server publishing TXT records for name proofs."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import httpx
import pytest

from sipzone.store.repository import Store
from tests.browser import browser  # noqa: F401 (a fixture of the console's tests)
from tests.conftest import Server, free_port


class TxtServer:
    """A UDP DNS server on loopback answering TXT queries from ``records`` (name -> strings)."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            if question.rdtype == dns.rdatatype.TXT and name in self.records:
                reply.answer.append(
                    dns.rrset.from_text_list(
                        question.name, 60, dns.rdataclass.IN, dns.rdatatype.TXT,
                        [f'"{value}"' for value in self.records[name]],
                    )
                )  # fmt: skip
            elif name not in self.records:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def txt_server() -> Iterator[TxtServer]:
    server = TxtServer()
    yield server
    server.close()


@dataclass
class Api:
    url: str
    server: Server
    tokens: dict[str, str]  # tenant -> token text
    store: Store

    def client(self, who: str | None = None, token: str | None = None) -> httpx.Client:
        secret = token or (self.tokens[who] if who else None)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


# The reseller chain every API test starts from: the provider's zone example.net, two
# resellers each granted a namespace in it, and a customer below each.
CHAIN = {"resa": "provider", "resb": "provider", "ca": "resa", "cb": "resb"}


@pytest.fixture
def chain_store(sqlite_url: str) -> Iterator[Store]:
    store = Store(sqlite_url)
    store.init()
    store.add_nameserver("ns1.example.org")
    store.add_zone("example.net")
    for name, parent in CHAIN.items():
        store.add_tenant(name, parent, brand_name=f"Brand {name.upper()}")
    store.grant_namespace("resa", "resa.example.net")
    store.grant_namespace("resb", "resb.example.net")
    yield store
    store.close()


@pytest.fixture
def api(
    chain_store: Store, sqlite_url: str, serve: Callable[..., Server], txt_server: TxtServer
) -> Iterator[Api]:
    """`sipzone serve --api` on the chain store, with one token per tenant."""
    tokens = {
        tenant: chain_store.create_token(tenant, f"{tenant}-key")[1]
        for tenant in ("provider", *CHAIN)
    }
    port = free_port()
    server = serve("--api", f"127.0.0.1:{port}", "--proof-resolver", txt_server.address)
    yield Api(f"http://127.0.0.1:{port}", server, tokens, chain_store)
