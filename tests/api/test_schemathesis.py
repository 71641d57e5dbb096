"""Property tests of the API from its own OpenAPI document (Schemathesis): whatever the
generated request, no 5xx, and every error is an RFC 9457 problem document.  Bounded: a few
dozen examples per operation against one server for the module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from sipzone.store.repository import Store
from tests.conftest import Server, free_port

pytestmark = pytest.mark.integration

EXAMPLES = 25  # per operation


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    db = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'sipzone.db'}"
    store = Store(db)
    store.init()
    store.add_nameserver("ns1.example.org")
    store.add_zone("example.net")
    store.add_tenant("resa", brand_name="Res A")
    store.add_site("eu1", vips=["192.0.2.10"], region="eu")
    store.add_domain("*.teams.example.net", "resa")
    store.add_tenant("ca", "resa")
    store.grant_namespace("resa", "resa.example.net")
    tokens = {who: store.create_token(who, "fuzz")[1] for who in ("provider", "resa")}
    store.close()
    port = free_port()
    server = Server(["--api", f"127.0.0.1:{port}", "--proof-resolver", "127.0.0.1:9"], db)
    yield f"http://127.0.0.1:{port}", tokens
    server.stop()


def operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("who", ["provider", "resa"])
def test_no_server_errors_and_problem_documents(
    fuzzed_api: tuple[str, dict[str, str]], who: str
) -> None:
    url, tokens = fuzzed_api
    token = tokens[who]
    ops = operations(url)
    assert len(ops) >= 20  # the document lists the whole API
    statuses: list[int] = []
    for operation in ops:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            where = f"{case.method} {case.formatted_path}"
            statuses.append(response.status_code)
            assert response.status_code < 500, (where, response.text)
            if response.status_code >= 400:
                assert response.headers["content-type"] in (
                    ["application/problem+json"],
                    "application/problem+json",
                ), (where, response.headers)
                body = response.json()
                assert {"type", "title", "status", "detail"} <= body.keys(), (where, body)
                assert body["status"] == response.status_code, (where, body)
                assert isinstance(body["detail"], str) and body["detail"], (where, body)

        check()
    assert len(statuses) >= 5 * len(ops)
    assert {200, 422} <= set(statuses)  # it reached the store, and it was refused
