"""The API's contract through real HTTP: problem documents, paging, idempotent writes, IDN
names, the failed-auth limiter, /healthz, /metrics, the OpenAPI document, and a write that
reaches the DNS of the same process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx

from sipzone.store.repository import Store
from tests.api.conftest import Api
from tests.conftest import Server, free_port


def test_problem_documents(api: Api) -> None:
    with api.client("provider") as c:
        cases = [
            (c.post("/api/v1/domains", json={"name": "bad_name.example.net"}), 422, "'_'"),
            (c.post("/api/v1/domains", json={"nme": "x.example.net"}), 422, "body.name"),
            (
                c.post(
                    "/api/v1/domains", content=b"{", headers={"content-type": "application/json"}
                ),
                422,
                "JSON",
            ),
            (c.get("/api/v1/domains/nope.example.net"), 404, "not a SIP domain here"),
            (c.get("/api/v1/nothing-here"), 404, "Not Found"),
            (c.put("/api/v1/domains"), 405, "Method Not Allowed"),
            (c.get("/api/v1/domains", params={"limit": 0}), 422, "limit"),
            (
                c.post("/api/v1/sites", json={"name": "s1", "vips": ["300.1.1.1"], "region": "eu"}),
                422,
                "'300.1.1.1'",
            ),
            (c.post("/api/v1/zones", json={"name": "example.net"}), 409, "exists already"),
        ]
        for response, status, words in cases:
            assert response.status_code == status, (response.request.url, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            body = response.json()
            assert body["status"] == status and body["title"] and body["type"]
            assert words in body["detail"], body
    # the CLI's words, exactly
    with api.client("resa") as c:
        r = c.post("/api/v1/sites", json={"name": "s1", "vips": ["192.0.2.1"], "region": "eu"})
        assert r.status_code == 403
        assert r.json()["detail"] == "only the provider manages sites; tenant 'resa' may not"
        assert r.json()["type"] == "urn:sipzone:problem:not-permitted"


def test_idempotent_post_and_conflict(api: Api) -> None:
    with api.client("provider") as c:
        first = c.post("/api/v1/domains", json={"name": "*.Teams.Example.net", "owner": "resa"})
        assert first.status_code == 201
        revision = api.store.revision()
        again = c.post("/api/v1/domains", json={"name": "*.teams.example.net", "owner": "resa"})
        assert again.status_code == 200 and again.json() == first.json()
        assert api.store.revision() == revision  # nothing written
        other = c.post("/api/v1/domains", json={"name": "*.teams.example.net", "owner": "resb"})
        assert other.status_code == 409
        assert other.json()["detail"] == "'*.teams.example.net' exists already (owner 'resa')"
        assert api.store.revision() == revision


def test_idn_names_and_wildcards_in_paths(api: Api) -> None:
    with api.client("provider") as c:
        r = c.post("/api/v1/domains", json={"name": "*.bücher.example.net"})
        assert r.status_code == 201
        assert r.json()["name"] == "*.xn--bcher-kva.example.net"
        assert r.json()["unicode"] == "*.bücher.example.net"
        for typed in (
            "%2A.bücher.example.net",
            "*.xn--bcher-kva.example.net",
            "%2A.BÜCHER.example.net",
        ):
            got = c.get(f"/api/v1/domains/{typed}")
            assert got.status_code == 200 and got.json()["name"] == "*.xn--bcher-kva.example.net"
        check = c.get("/api/v1/check/laden.bücher.example.net").json()
        assert (check["admitted"], check["rule"]) == (True, "*.xn--bcher-kva.example.net")
        assert c.get("/api/v1/domains", params={"suffix": "bücher.example.net"}).json()["items"]
        assert c.delete("/api/v1/domains/%2A.bücher.example.net").status_code == 200
        assert c.get("/api/v1/check/laden.bücher.example.net").json()["admitted"] is False


def test_paging_filters(api: Api) -> None:
    names = [f"n{i:03d}.example.net" for i in range(25)] + ["*.w.example.net", "*.v.example.org"]
    for name in names:
        api.store.add_domain(name, "resb" if name.startswith("n01") else "provider")
    with api.client("provider") as c:

        def walk(**params: object) -> list[str]:
            out: list[str] = []
            cursor = None
            while True:
                query = {**params, "limit": 7, **({"cursor": cursor} if cursor else {})}
                page = c.get("/api/v1/domains", params=query).json()
                assert len(page["items"]) <= 7
                out += [i["name"] for i in page["items"]]
                if (cursor := page["next"]) is None:
                    return out

        assert walk() == sorted(names)
        assert walk(owner="resb") == [f"n01{i}.example.net" for i in range(10)]
        assert walk(wildcard="true") == ["*.v.example.org", "*.w.example.net"]
        assert walk(wildcard="false", prefix="n02") == [f"n02{i}.example.net" for i in range(5)]
        assert walk(suffix=".example.org") == ["*.v.example.org"]
        assert walk(suffix="w.example.net", prefix="*") == ["*.w.example.net"]
        assert walk(prefix="zzz") == []
        # a cursor of one order is refused by the other
        page = c.get("/api/v1/domains", params={"limit": 1}).json()
        r = c.get("/api/v1/domains", params={"suffix": "net", "cursor": page["next"]})
        assert r.status_code == 422 and r.json()["type"] == "urn:sipzone:problem:bad-cursor"


def test_failed_auth_is_rate_limited_per_address(api: Api) -> None:
    with api.client(token="sz_" + "x" * 43) as bad:
        for _ in range(10):
            assert bad.get("/api/v1/domains").status_code == 401
        r = bad.get("/api/v1/domains")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["type"] == "urn:sipzone:problem:too-many-attempts"
    with api.client("provider") as good:  # the same address: it waits too
        assert good.get("/api/v1/domains").status_code == 429
    with httpx.Client(base_url=api.url) as c:  # health needs no token and is not limited
        assert c.get("/healthz").status_code == 200


def test_health_metrics_openapi_docs_status(api: Api) -> None:
    with api.client("provider") as c:
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["revision"] == api.store.revision()
        c.get("/api/v1/domains")
        metrics = c.get("/metrics").text
        assert 'sipzone_api_requests_total{method="GET",status="2xx"}' in metrics
        assert "sipzone_revision" in metrics
        spec = c.get("/api/v1/openapi.json").json()
        assert {"/api/v1/domains", "/api/v1/domains/{name}", "/api/v1/check/{name}"} <= set(
            spec["paths"]
        )
        assert "swagger" in c.get("/api/v1/docs").text.lower()
        status = c.get("/api/v1/status").json()
        assert status["revision"] == status["served_revision"] == api.store.revision()
        assert status["node"]["pid"] == api.server.proc.pid
    with api.client("ca") as c:
        assert c.get("/api/v1/status").json()["node"] is None  # node details: provider only


def test_api_write_reaches_the_dns_of_the_same_process(
    chain_store: Store, serve: Callable[..., Server]
) -> None:
    api_port, dns_port = free_port(), free_port()
    chain_store.add_site("eu1", vips=["192.0.2.10"], region="eu")
    _row, token = chain_store.create_token("resa", "ops")
    serve("--api", f"127.0.0.1:{api_port}", "--dns", f"127.0.0.1:{dns_port}")

    def answer(name: str) -> int:
        query = dns.message.make_query(name, "A")
        return dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=2).rcode()

    assert answer("x.teams.resa.example.net") == dns.rcode.NXDOMAIN
    with httpx.Client(base_url=f"http://127.0.0.1:{api_port}") as c:
        c.headers["Authorization"] = f"Bearer {token}"
        r = c.post("/api/v1/domains", json={"name": "*.teams.resa.example.net"})
        assert r.status_code == 201
    deadline = time.monotonic() + 5  # a stall bound, not a latency
    while answer("x.teams.resa.example.net") != dns.rcode.NOERROR:
        assert time.monotonic() < deadline, "the DNS never answered the new name"
        time.sleep(0.05)


def test_workers_share_the_api_port(chain_store: Store, serve: Callable[..., Server]) -> None:
    port = free_port()
    _row, token = chain_store.create_token("provider", "ops")
    serve("--api", f"127.0.0.1:{port}", "--workers", "2")
    pids = set()
    for i in range(40):  # new connections land on either worker
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            c.headers["Authorization"] = f"Bearer {token}"
            status = c.get("/api/v1/status").json()
            pids.add(status["node"]["pid"])
            if i == 0:
                r = c.post("/api/v1/domains", json={"name": "w.example.net"})
                assert r.status_code == 201
    assert len(pids) == 2
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
        metrics = c.get("/metrics").text
    # both workers' counts, summed: 40 status reads, one write
    assert 'sipzone_api_requests_total{method="GET",status="2xx"} 40.0' in metrics


def test_on_postgresql(pg_url: str, serve: Callable[..., Server]) -> None:
    store = Store(pg_url)
    store.init()
    store.add_nameserver("ns1.example.org")
    store.add_zone("example.net")
    store.add_tenant("resa")
    store.grant_namespace("resa", "resa.example.net")
    _row, token = store.create_token("resa", "ops")
    port = free_port()
    serve("--api", f"127.0.0.1:{port}", db=pg_url)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
        c.headers["Authorization"] = f"Bearer {token}"
        r = c.post("/api/v1/domains", json={"name": "*.teams.resa.example.net"})
        assert r.status_code == 201, r.text
        assert c.post("/api/v1/domains", json={"name": "*.example.net"}).status_code == 403
        names = [d["name"] for d in c.get("/api/v1/domains").json()["items"]]
        assert names == ["*.teams.resa.example.net"]
        entry = c.get("/api/v1/audit").json()["items"][0]
        assert (entry["op"], entry["principal"]) == ("domain.add", "token 'ops' (#1)")
        deadline = time.monotonic() + 5  # the worker follows through LISTEN/NOTIFY
        while (status := c.get("/api/v1/status").json())["served_revision"] != status["revision"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
    store.close()


def test_large_bodies_are_refused(api: Api) -> None:
    with api.client("provider") as c:
        big = b'{"name": "' + b"a" * 100_000 + b'.example.net"}'
        r = c.post("/api/v1/domains", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["status"] == 413

        def chunks() -> Iterator[bytes]:
            yield b'{"name": "'
            for _ in range(100):
                yield b"a" * 1000
            yield b'.example.net"}'

        r = c.post(
            "/api/v1/domains", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 411 and r.headers["content-type"] == "application/problem+json"
        assert c.get("/healthz").status_code == 200


def test_certificates_metadata(api: Api, tmp_path: Path) -> None:
    import trustme

    from tests.tlscerts import issue

    issued = issue(trustme.CA(), tmp_path, "*.teams.example.net", "voip.example.net")
    api.store.add_certificate("edge", issued.chain.read_text(), issued.key.read_text())
    with api.client("provider") as c:
        [cert] = c.get("/api/v1/certificates").json()
        assert (cert["name"], cert["default"]) == ("edge", True)
        assert cert["names"] == ["*.teams.example.net", "voip.example.net"]
        assert cert["serial"] == f"{issued.serial:x}"
        assert "PRIVATE" not in c.get("/api/v1/certificates").text
    with api.client("resa") as c:
        r = c.get("/api/v1/certificates")
        assert r.status_code == 403
        assert r.json()["detail"] == "only the provider reads certificates; tenant 'resa' may not"
