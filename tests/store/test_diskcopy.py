"""The node's disk copy of its snapshot: everything a start without the store serves comes back
from it, a damaged or cut-short file is refused, and a write leaves the old copy or the new."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
import trustme

from sipzone.model.health import HealthCheck
from sipzone.model.snapshot import Snapshot
from sipzone.runtime import history_mark
from sipzone.store.diskcopy import BadCopy, copy_path, default_state_dir, read_copy, write_copy
from sipzone.store.repository import Store
from tests.tlscerts import issue


def full_store(store: Store, tmp_path: Path) -> None:
    """A store holding one of everything a snapshot carries."""
    store.add_tenant("acme", brand_name="Acme Voice", upstream="sip:core.acme.example")
    store.add_tenant("cust", parent="acme", support_email="help@cust.example")
    store.add_zone("example.com")
    store.add_site(
        "eu1", vips=["192.0.2.10", "2001:db8::10"], region="eu", networks=["10.1.0.0/16"],
        ports={"udp": 5060, "tcp": 5070, "tls": 0}, weight=7, upstream="sip:core.eu.example",
        check=HealthCheck(interval=1.5, timeout=1.0, failures=4, successes=1),
    )  # fmt: skip
    store.add_site("us1", vips=["192.0.2.20"], region="us", host="sip.us.example.com")
    store.set_site_drained("us1", True)
    store.add_domain("voip.example.com", owner="acme")
    store.add_domain("*.teams.example.com", owner="cust")
    store.add_domain("x.teams.example.com", owner="cust")
    store.set_email_domain("mail.example.com")
    store.ensure_secret("sip_branch_secret")
    cert = issue(trustme.CA(), tmp_path, "voip.example.com")
    store.add_certificate("voip", cert.chain.read_bytes(), cert.key.read_bytes())
    store.add_trunk("teams", ["sip:sip.pstnhub.microsoft.com:5061;transport=tls"], "example.com")
    store.publish_challenges("voip", [("_acme-challenge.voip.example.com", "v" * 43)])


def same(a: Snapshot, b: Snapshot) -> None:
    assert b.revision == a.revision
    assert sorted((t, o.name) for t, o in b.matcher.rules()) == sorted(
        (t, o.name) for t, o in a.matcher.rules()
    )
    assert list(b.tenants) == list(a.tenants)
    assert dict(b.tenants.views) == dict(a.tenants.views)
    assert b.sites == a.sites
    assert (b.zones, b.email_domain) == (a.zones, a.email_domain)
    assert dict(b.settings) == dict(a.settings)
    assert b.certificates == a.certificates
    assert (b.trunks, b.challenges) == (a.trunks, a.challenges)
    assert dict(b.zone_revisions) == dict(a.zone_revisions)  # each zone's SOA serial


def test_a_copy_gives_back_the_snapshot_and_its_history(store: Store, tmp_path: Path) -> None:
    full_store(store, tmp_path)
    snapshot = store.load_snapshot()
    mark = history_mark(store, snapshot.revision)
    path = str(tmp_path / "state" / "sipzone.db.snapshot")
    size = write_copy(path, snapshot, mark, store.url)
    assert size == os.path.getsize(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds the keys
    copy = read_copy(path)
    assert copy is not None
    same(snapshot, copy.snapshot)
    # The mark compares equal to the store's, so a node started on the copy follows the
    # change log from there.
    assert copy.mark == mark == history_mark(store, copy.snapshot.revision)
    assert copy.snapshot.check("a.teams.example.com").owner.name == "cust"  # type: ignore[union-attr]
    assert os.listdir(tmp_path / "state") == ["sipzone.db.snapshot"]  # no temporary left


def test_a_damaged_or_cut_copy_is_refused_and_a_missing_one_is_none(
    store: Store, tmp_path: Path
) -> None:
    full_store(store, tmp_path)
    path = tmp_path / "copy.snapshot"
    assert read_copy(str(path)) is None
    write_copy(str(path), store.load_snapshot(), None, store.url)
    data = path.read_bytes()
    at = data.index(b"voip.example.com\t")
    path.write_bytes(data[:at] + b"w" + data[at + 1 :])  # one byte changed
    with pytest.raises(BadCopy, match="checksum does not match"):
        read_copy(str(path))
    for cut in (len(data) - 10, len(data) // 2, 5):
        path.write_bytes(data[:cut])
        with pytest.raises(BadCopy):
            read_copy(str(path))
    path.write_bytes(b"")
    with pytest.raises(BadCopy, match="no checksum line"):
        read_copy(str(path))


def test_a_failed_write_leaves_the_old_copy(store: Store, tmp_path: Path) -> None:
    store.add_domain("old.example.com")
    path = str(tmp_path / "state" / "copy.snapshot")
    write_copy(path, store.load_snapshot(), None, store.url)
    store.add_domain("new.example.com")
    newer = store.load_snapshot()
    broken = dataclasses.replace(newer, settings={"k": object()})
    with pytest.raises(TypeError):
        write_copy(path, broken, None, store.url)  # fails after the header is written
    copy = read_copy(path)
    assert copy is not None and "old.example.com" in copy.snapshot.matcher
    assert "new.example.com" not in copy.snapshot.matcher
    assert os.listdir(tmp_path / "state") == ["copy.snapshot"]


def test_where_the_copy_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert default_state_dir("sqlite:////srv/sz/sipzone.db") == "/srv/sz"
    assert default_state_dir("postgresql://u:p@db.example:5433/sz") == "/var/lib/sipzone"
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/sipzone-a:/var/lib/other")
    assert default_state_dir("sqlite:////srv/sz/sipzone.db") == "/var/lib/sipzone-a"
    assert copy_path("/d", "sqlite:////srv/sz/sipzone.db") == "/d/sipzone.db.snapshot"
    pg = "postgresql://u:p@db.example:5433/sz"
    assert copy_path("/d", pg) == "/d/sz@db.example_5433.snapshot"
