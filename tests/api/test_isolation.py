"""The isolation matrix through real HTTP: the provider, two resellers (resa, resb) and a
customer of each (ca, cb) list, read, change, delete and claim; every cell asserted, and no
refusal names a tenant the caller may not see."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from tests.api.conftest import CHAIN, Api, TxtServer

TENANTS = ("provider", *CHAIN)
SUBTREE = {
    "provider": set(TENANTS),
    "resa": {"resa", "ca"},
    "resb": {"resb", "cb"},
    "ca": {"ca"},
    "cb": {"cb"},
}
# What each tenant may name in messages: its subtree and its own chain.
KNOWN = {
    "provider": set(TENANTS),
    "resa": {"provider", "resa", "ca"},
    "resb": {"provider", "resb", "cb"},
    "ca": {"provider", "resa", "ca"},
    "cb": {"provider", "resb", "cb"},
}
# The rules every test starts from, each added by the tenant that owns it, through the API.
OWNED = {
    "*.teams.resa.example.net": "resa",
    "voip.resa.example.net": "resa",
    "ca.resa.example.net": "ca",
    "*.teams.resb.example.net": "resb",
    "voip.resb.example.net": "resb",
    "cb.resb.example.net": "cb",
    "voip.example.net": "provider",
}


def visible(who: str) -> set[str]:
    return {name for name, owner in OWNED.items() if owner in SUBTREE[who]}


def assert_problem(
    response: httpx.Response, status: int, who: str, said: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A problem document of ``status`` that names no tenant hidden from ``who`` but those it
    ``said`` itself."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    for hidden in set(TENANTS) - KNOWN[who] - set(said):
        assert repr(hidden) not in body["detail"], (who, body["detail"])
    return body


@pytest.fixture
def populated(api: Api) -> Api:
    for who, namespace in (("resa", "ca.resa.example.net"), ("resb", "cb.resb.example.net")):
        customer = {"resa": "ca", "resb": "cb"}[who]
        with api.client(who) as c:
            r = c.post(f"/api/v1/tenants/{customer}/grants", json={"namespace": namespace})
            assert r.status_code == 201, r.text
    for name, owner in OWNED.items():
        with api.client(owner) as c:
            r = c.post("/api/v1/domains", json={"name": name})
            assert r.status_code == 201, r.text
            assert r.json()["status"] == "active"
    return api


def names_listed(c: httpx.Client, **params: Any) -> list[str]:
    names: list[str] = []
    cursor = None
    while True:
        query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = c.get("/api/v1/domains", params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        names += [item["name"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            return names


def test_list_and_read(populated: Api) -> None:
    for who in TENANTS:
        with populated.client(who) as c:
            assert names_listed(c) == sorted(visible(who)), who
            tenants = {t["name"] for t in c.get("/api/v1/tenants").json()}
            assert tenants == SUBTREE[who], who
            for name, owner in OWNED.items():
                r = c.get(f"/api/v1/domains/{name.replace('*', '%2A')}")
                if owner in SUBTREE[who]:
                    assert r.status_code == 200, (who, name)
                    assert r.json()["owner"] == owner
                else:
                    body = assert_problem(r, 404, who)
                    # exactly what a name that does not exist gets
                    assert body["detail"] == f"{name!r} is not a SIP domain here"
            for tenant in TENANTS:
                r = c.get(f"/api/v1/tenants/{tenant}")
                if tenant in SUBTREE[who]:
                    assert r.status_code == 200 and r.json()["name"] == tenant
                else:
                    body = assert_problem(r, 404, who, said=(tenant,))
                    assert body["detail"] == f"tenant {tenant!r} does not exist"
            # check: admitted for everyone; rule and owner only inside the subtree
            r = c.get("/api/v1/check/x.teams.resb.example.net")
            assert r.status_code == 200 and r.json()["admitted"] is True
            assert r.json()["owner"] == ("resb" if "resb" in SUBTREE[who] else None)


def test_change(populated: Api) -> None:
    for who in TENANTS:
        with populated.client(who) as c:
            for tenant in TENANTS:
                r = c.patch(f"/api/v1/tenants/{tenant}", json={"brand_name": f"by {who}"})
                if tenant in SUBTREE[who]:
                    assert r.status_code == 200, (who, tenant, r.text)
                    assert r.json()["brand_name"] == f"by {who}"
                else:
                    assert_problem(r, 404, who, said=(tenant,))
    brands = {t.name: t.brand_name for t in populated.store.tenants()}
    assert brands["resb"] == "by resb"  # the last writer in its subtree
    assert brands["cb"] == "by cb"
    assert brands["resa"] == "by resa"


def test_delete(populated: Api) -> None:
    revision = populated.store.revision()
    for who in TENANTS:
        with populated.client(who) as c:
            for name in set(OWNED) - visible(who):
                r = c.delete(f"/api/v1/domains/{name.replace('*', '%2A')}")
                assert_problem(r, 404, who)
    assert populated.store.revision() == revision
    assert {d.name for d in populated.store.list_domains()} == set(OWNED)
    # A customer cannot touch its reseller's names; its reseller can remove the customer's.
    with populated.client("ca") as c:
        assert_problem(c.delete("/api/v1/domains/voip.resa.example.net"), 404, "ca")
        r = c.patch("/api/v1/tenants/resa", json={"brand_name": "x"})
        assert_problem(r, 404, "ca", said=("resa",))
    with populated.client("resa") as c:
        assert c.delete("/api/v1/domains/ca.resa.example.net").status_code == 200
        assert c.delete("/api/v1/domains/%2A.teams.resa.example.net").status_code == 200
    with populated.client("provider") as c:
        assert c.delete("/api/v1/domains/voip.resb.example.net").status_code == 200
    left = {d.name for d in populated.store.list_domains()}
    assert left == set(OWNED) - {
        "ca.resa.example.net", "*.teams.resa.example.net", "voip.resb.example.net",
    }  # fmt: skip


# (who, name, owner or None, status): claims and assignments, refused or allowed.
CLAIMS = [
    ("resa", "x.teams.resb.example.net", None, 403),  # under another's wildcard
    ("cb", "x.teams.resa.example.net", None, 403),
    ("resa", "*.resb.example.net", None, 403),  # a wildcard over another's space
    ("resa", "*.example.net", None, 403),  # ... over the provider's zone
    ("resb", "*.teams.resa.example.net", None, 409),  # exists
    ("resa", "new.resa.example.net", "resb", 422),  # assign outside: reads as no such tenant
    ("ca", "x.ca.resa.example.net", "resa", 403),  # a customer assigns to its reseller
    ("ca", "other.resa.example.net", None, 403),  # outside its grants
    ("ca", "x.teams.resa.example.net", None, 403),  # under its reseller's wildcard
    ("cb", "x.example.net", None, 403),  # no grant at all
    ("resa", "nobody.example.net", "nobody", 422),  # no such tenant
    ("ca", "y.ca.resa.example.net", None, 201),  # inside its own rule
    ("resa", "z.resa.example.net", "ca", 201),  # for its customer, inside its grant
    ("resb", "x.teams.resb.example.net", "cb", 201),  # carved from its own wildcard
    ("provider", "anything.example.net", "resb", 201),  # the provider needs no grant
]


@pytest.mark.parametrize(("who", "name", "owner", "status"), CLAIMS)
def test_claims(populated: Api, who: str, name: str, owner: str | None, status: int) -> None:
    revision = populated.store.revision()
    with populated.client(who) as c:
        body = {"name": name, **({"owner": owner} if owner else {})}
        r = c.post("/api/v1/domains", json=body)
    if status == 201:
        assert r.status_code == 201, r.text
        assert r.json()["owner"] == (owner or who)
        assert populated.store.domain(name).owner == (owner or who)
    else:
        body = assert_problem(r, status, who, said=(owner,) if owner else ())
        assert populated.store.revision() == revision  # nothing changed
        if status == 422 and owner:
            assert body["detail"] == f"tenant {owner!r} does not exist"


def test_grants(populated: Api) -> None:
    with populated.client("ca") as c:  # a customer cannot grant itself more
        r = c.post("/api/v1/tenants/ca/grants", json={"namespace": "resa.example.net"})
        assert_problem(r, 403, "ca")
    with populated.client("resa") as c:
        r = c.post("/api/v1/tenants/cb/grants", json={"namespace": "cb.resa.example.net"})
        assert_problem(r, 404, "resa", said=("cb",))  # not its customer: not visible at all
        r = c.post("/api/v1/tenants/ca/grants", json={"namespace": "x.resb.example.net"})
        assert_problem(r, 403, "resa")  # it holds no such namespace
        assert c.get("/api/v1/tenants/ca/grants").json() == ["ca.resa.example.net"]


def test_cursors_and_guesses(populated: Api) -> None:
    with populated.client("resa") as c:
        # filters walk only the caller's subtree too
        assert names_listed(c, suffix="example.net") == sorted(
            visible("resa"), key=lambda n: n[::-1]
        )
        assert names_listed(c, wildcard="true") == ["*.teams.resa.example.net"]
        assert names_listed(c, prefix="voip.") == ["voip.resa.example.net"]
        assert names_listed(c, owner="ca") == ["ca.resa.example.net"]
        # another's tenant reads exactly as one that does not exist
        r = c.get("/api/v1/domains", params={"owner": "resb"})
        hidden = assert_problem(r, 422, "resa", said=("resb",))
        absent = assert_problem(c.get("/api/v1/domains", params={"owner": "zz"}), 422, "resa")
        assert hidden["detail"].replace("resb", "zz") == absent["detail"]
        # a forged cursor positions the walk, it never widens it
        for key in ("", "*", "a", "voip.resb.example.net"):
            raw = json.dumps({"by": "name", "after": key}).encode()
            forged = base64.urlsafe_b64encode(raw).decode().rstrip("=")
            r = c.get("/api/v1/domains", params={"cursor": forged, "limit": 1000})
            assert {i["name"] for i in r.json()["items"]} <= visible("resa")
        assert_problem(c.get("/api/v1/domains", params={"cursor": "garbage!"}), 422, "resa")
        # the audit trail, paged, holds nothing about the other reseller's subtree
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = c.get("/api/v1/audit", params=params).json()
            seen += page["items"]
            cursor = page["next"]
            if cursor is None:
                break
        assert seen
        for entry in seen:
            assert entry["tenant"] in SUBTREE["resa"] or entry["actor_tenant"] in SUBTREE["resa"]
            assert "resb" not in json.dumps(entry) and "cb." not in json.dumps(entry)


def test_revoked_and_unknown_tokens(populated: Api) -> None:
    [token] = [t for t in populated.store.list_tokens("resa")]
    with populated.client("resa") as c:
        assert c.get("/api/v1/domains").status_code == 200
        populated.store.revoke_token(token.id)
        body = assert_problem(c.get("/api/v1/domains"), 401, "resa")
        assert "revoked" in body["detail"]
        r = c.post("/api/v1/domains", json={"name": "after.resa.example.net"})
        assert_problem(r, 401, "resa")
    with populated.client("ca") as c:  # the customer's own token is untouched
        assert c.get("/api/v1/domains").status_code == 200
    with populated.client() as c:
        r = c.get("/api/v1/domains")
        assert_problem(r, 401, "ca")
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert "after.resa.example.net" not in {d.name for d in populated.store.list_domains()}


def test_outside_name_pending_until_proven(populated: Api, txt_server: TxtServer) -> None:
    with populated.client("resa") as c:
        r = c.post("/api/v1/domains", json={"name": "brand-a.example.org"})
        assert r.status_code == 202, r.text
        claim = r.json()
        assert claim["status"] == "pending"
        assert claim["challenge"]["name"] == "_sipzone-challenge.brand-a.example.org"
        token = claim["challenge"]["value"]
        # listed, not admitted
        assert "brand-a.example.org" in names_listed(c)
        assert c.get("/api/v1/check/brand-a.example.org").json()["admitted"] is False
        # the same claim again: still pending, the same challenge
        again = c.post("/api/v1/domains", json={"name": "brand-a.example.org"})
        assert again.status_code == 202 and again.json()["challenge"]["value"] == token
        # a wrong TXT proves nothing
        txt_server.records["_sipzone-challenge.brand-a.example.org"] = ["not-it"]
        r = c.post("/api/v1/domains/brand-a.example.org/verify")
        assert r.status_code == 200 and r.json()["status"] == "pending"
    with populated.client("resb") as c:  # another reseller cannot take it meanwhile
        r = c.post("/api/v1/domains", json={"name": "brand-a.example.org"})
        assert_problem(r, 409, "resb")
        assert c.get("/api/v1/check/brand-a.example.org").json()["admitted"] is False
    txt_server.records["_sipzone-challenge.brand-a.example.org"] = ["other", token]
    with populated.client("resa") as c:
        r = c.post("/api/v1/domains/brand-a.example.org/verify")
        assert r.status_code == 200 and r.json()["status"] == "active", r.text
        check = c.get("/api/v1/check/sub.brand-a.example.org").json()
        assert check["admitted"] is False  # an exact rule admits itself only
        check = c.get("/api/v1/check/brand-a.example.org").json()
        assert (check["admitted"], check["owner"]) == (True, "resa")
        ops = [e["op"] for e in c.get("/api/v1/audit").json()["items"][:2]]
        assert ops == ["domain.add", "domain.claim"]
    # the provider's own outside name needs no proof
    with populated.client("provider") as c:
        r = c.post("/api/v1/domains", json={"name": "*.brand-p.example.org"})
        assert r.status_code == 201 and r.json()["status"] == "active"
