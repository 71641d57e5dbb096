"""Trunks in the store: validated once, replaced by name, in snapshots; the edges' observed
state kept beside them without a revision."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sipzone.model.errors import BadSipURI, BadWord, NotFound, NotPermitted, OutOfRange
from sipzone.model.trunks import TrunkState, trunk_json
from sipzone.store.repository import Store

MS = (
    "sip:sip.pstnhub.microsoft.com:5061;transport=tls",
    "sip:sip2.pstnhub.microsoft.com:5061;transport=tls",
    "sip:sip3.pstnhub.microsoft.com:5061;transport=tls",
)


def test_add_list_replace_remove_and_snapshot(store: Store) -> None:
    trunk, rev, replaced = store.add_trunk("teams", MS, "Teams.Example.COM", 30, "teams")
    assert not replaced
    assert trunk.base == "teams.example.com" and trunk.targets == MS and trunk.teams
    snap = store.load_snapshot()
    assert snap.revision == rev
    assert [t.name for t in snap.trunks] == ["teams"]
    _, rev2, replaced = store.add_trunk("teams", MS[:1], "teams.example.com", profile="teams")
    assert replaced and rev2 == rev + 1
    assert store.list_trunks()[0].targets == MS[:1]
    assert store.list_trunks()[0].options_interval == 60
    store.remove_trunk("teams")
    assert store.load_snapshot().trunks == ()
    with pytest.raises(NotFound):
        store.remove_trunk("teams")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": "bad name"}, BadWord),
        ({"targets": ()}, BadSipURI),
        ({"targets": ("http://x.example",)}, BadSipURI),
        ({"targets": ("sip:sip.pstnhub.microsoft.com:5061",)}, BadSipURI),  # teams: not TLS
        ({"targets": ("sips:sip.pstnhub.microsoft.com:5061;transport=tls",)}, BadSipURI),
        ({"targets": (MS[0], MS[0])}, BadSipURI),
        ({"options_interval": 1}, OutOfRange),
        ({"profile": "skype"}, BadWord),
        ({"base": "1.2.3.4"}, Exception),
    ],
)
def test_bad_trunks_change_nothing(store: Store, kwargs: dict[str, object], error: type) -> None:
    args: dict[str, object] = {
        "name": "teams", "targets": MS, "base": "teams.example.com",
        "options_interval": 60, "profile": "teams",
    }  # fmt: skip
    args.update(kwargs)
    before = store.revision()
    with pytest.raises(error):
        store.add_trunk(**args)  # type: ignore[arg-type]
    assert store.revision() == before
    assert store.list_trunks() == []


def test_only_the_provider_manages_trunks(store: Store) -> None:
    store.add_tenant("acme")
    with pytest.raises(NotPermitted):
        store.acting("acme", "test").add_trunk("t", MS, "teams.example.com")
    assert store.list_trunks() == []


def test_states_are_observations_without_a_revision(store: Store) -> None:
    store.add_trunk("teams", MS, "teams.example.com", profile="teams")
    rev = store.revision()
    now = datetime.now(UTC).replace(microsecond=0)
    down = TrunkState("teams", MS[0], False, "503 Service Unavailable", 2.5, now, now,
                      now + timedelta(seconds=30))  # fmt: skip
    store.record_trunk_states("node-a", [down])
    store.record_trunk_states("node-a", [replace(down, up=True)])
    assert store.revision() == rev
    seen = store.trunk_states()
    assert [(n, s.up, s.last_response) for n, s in seen] == [
        ("node-a", True, "503 Service Unavailable")
    ]
    data = trunk_json(store.list_trunks()[0], seen)
    assert data["targets"][0]["state"][0]["state"] == "up"
    assert data["targets"][1]["state"] == []
    store.remove_trunk("teams")
    assert store.trunk_states() == []
