"""Trunks through the API on real HTTP: provider only (reads too: they name the nodes), stored
and replaced by PUT, listed with each target's state as the edges stored it, removed, and
every bad input a problem document in the CLI's words that changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from sipzone.model.trunks import TrunkState
from tests.api.conftest import Api

MS = "sip:sip.pstnhub.microsoft.com:5061;transport=tls"
MS2 = "sip:sip2.pstnhub.microsoft.com:5061;transport=tls"
TEAMS = {"targets": [MS, MS2], "base": "teams.example.net", "profile": "teams"}


def test_put_list_replace_remove(api: Api) -> None:
    with api.client("provider") as c:
        created = c.put("/api/v1/trunks/teams", json=TEAMS)
        assert created.status_code == 201, created.text
        assert created.json()["revision"] == api.store.revision()
        now = datetime.now(UTC)
        api.store.record_trunk_states(
            "node1",
            [
                TrunkState("teams", MS, True, "200 OK", 12.5, now, now),
                TrunkState("teams", MS2, False, "timeout", None, now, now),
            ],
        )
        [listed] = c.get("/api/v1/trunks").json()
        assert listed["name"] == "teams" and listed["base"] == "teams.example.net"
        assert listed["profile"] == "teams" and listed["options_interval"] == 60
        first, second = listed["targets"]
        assert first["uri"] == MS and second["uri"] == MS2
        assert [(s["node"], s["state"], s["latency_ms"]) for s in first["state"]] == [
            ("node1", "up", 12.5)
        ]
        assert [(s["state"], s["last_response"]) for s in second["state"]] == [("down", "timeout")]
        replaced = c.put(
            "/api/v1/trunks/teams", json={**TEAMS, "options_interval": 30, "sbc_header": "a/b/1"}
        )
        assert replaced.status_code == 200, replaced.text
        one = c.get("/api/v1/trunks/teams").json()
        assert one["options_interval"] == 30 and one["sbc_header"] == "a/b/1"
        assert api.store.list_trunks()[0].options_interval == 30  # what the edges read
        removed = c.delete("/api/v1/trunks/teams")
        assert removed.status_code == 200 and removed.json()["revision"] == api.store.revision()
        assert c.get("/api/v1/trunks").json() == []
        assert api.store.trunk_states() == []
        gone = c.get("/api/v1/trunks/teams")
        assert gone.status_code == 404 and gone.json()["detail"] == "trunk 'teams' does not exist"


def test_bad_input_is_a_problem_document_and_changes_nothing(api: Api) -> None:
    revision = api.store.revision()
    plain_target = {**TEAMS, "targets": ["sip:sip.pstnhub.microsoft.com:5061"]}
    cases = [
        (plain_target, 422, "the teams profile needs ;transport=tls"),
        ({**TEAMS, "targets": ["sips:sip.pstnhub.microsoft.com"]}, 422, "sips:"),
        ({**TEAMS, "targets": []}, 422, "at least one --target"),
        ({**TEAMS, "targets": [MS, MS]}, 422, "given twice"),
        ({**TEAMS, "base": "bad_name.example.net"}, 422, "'_'"),
        ({**TEAMS, "options_interval": 1}, 422, "give 2 to 3600 seconds"),
        ({**TEAMS, "profile": "skype"}, 422, "give one of sip, teams"),
        ({**TEAMS, "sbc_header": "a\nb"}, 422, "X-MS-SBC value"),
        ({"targets": [MS]}, 422, "body.base"),
        ({**TEAMS, "nmae": "x"}, 422, "body.nmae"),
    ]
    with api.client("provider") as c:
        for body, status, words in cases:
            r = c.put("/api/v1/trunks/teams", json=body)
            assert r.status_code == status, (body, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert words in r.json()["detail"], (body, r.json())
        bad_name = c.put("/api/v1/trunks/-x", json=TEAMS)
        assert bad_name.status_code == 422 and "trunk name '-x'" in bad_name.json()["detail"]
        missing = c.delete("/api/v1/trunks/nope")
        assert missing.status_code == 404 and missing.json()["type"].endswith(":not-found")
    assert api.store.revision() == revision
    assert api.store.list_trunks() == []


def test_only_the_provider_reads_or_writes_trunks(api: Api) -> None:
    api.store.add_trunk("teams", TEAMS["targets"], "teams.example.net", profile="teams")
    revision = api.store.revision()
    with api.client("resa") as c:
        for response, words in (
            (c.get("/api/v1/trunks"), "only the provider reads trunks; tenant 'resa' may not"),
            (c.get("/api/v1/trunks/teams"), "only the provider reads trunks"),
            (c.put("/api/v1/trunks/teams", json=TEAMS), "only the provider manages trunks"),
            (c.delete("/api/v1/trunks/teams"), "only the provider manages trunks"),
        ):
            assert response.status_code == 403, response.text
            assert response.json()["type"] == "urn:sipzone:problem:not-permitted"
            assert words in response.json()["detail"]
    assert api.store.revision() == revision
    assert [t.name for t in api.store.list_trunks()] == ["teams"]
