"""TLS certificates in the store: add, replace, default, remove, and into snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trustme

from sipzone.model.errors import KeyMismatch, NotFound, NotPermitted
from sipzone.model.snapshot import Snapshot
from sipzone.store.repository import Store
from tests.tlscerts import Issued, issue


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def add(store: Store, name: str, cert: Issued) -> int:
    return store.add_certificate(name, cert.chain.read_bytes(), cert.key.read_bytes())[1]


def names(snapshot: Snapshot) -> list[str]:
    return [c.name for c in snapshot.certificates]


def test_first_added_is_default_until_another_is_named(
    store: Store, ca: trustme.CA, tmp_path: Path
) -> None:
    add(store, "voip", issue(ca, tmp_path, "voip.example.com"))
    add(store, "teams", issue(ca, tmp_path, "*.teams.example.com"))
    assert names(store.load_snapshot()) == ["voip", "teams"]
    store.set_default_certificate("teams")
    assert names(store.load_snapshot()) == ["teams", "voip"]
    assert [c.name for c in store.list_certificates()] == ["teams", "voip"]
    store.remove_certificate("teams")
    assert names(store.load_snapshot()) == ["voip"]
    with pytest.raises(NotFound):
        store.set_default_certificate("teams")
    with pytest.raises(NotFound):
        store.remove_certificate("teams")


def test_adding_a_name_again_replaces_it_and_keeps_its_default_mark(
    store: Store, ca: trustme.CA, tmp_path: Path
) -> None:
    old = issue(ca, tmp_path, "voip.example.com")
    add(store, "voip", old)
    add(store, "teams", issue(ca, tmp_path, "*.teams.example.com"))
    store.set_default_certificate("voip")
    new = issue(ca, tmp_path, "voip.example.com", "sip.example.com")
    _, _, replaced = store.add_certificate("voip", new.chain.read_bytes(), new.key.read_bytes())
    assert replaced
    snapshot = store.load_snapshot()
    assert names(snapshot) == ["voip", "teams"]
    assert snapshot.certificates[0].serial == new.serial != old.serial
    assert snapshot.certificates[0].names == ("voip.example.com", "sip.example.com")


def test_the_key_never_enters_the_change_log(store: Store, ca: trustme.CA, tmp_path: Path) -> None:
    cert = issue(ca, tmp_path, "voip.example.com")
    rev = add(store, "voip", cert)
    [change] = store.changes_since(rev - 1)
    assert (change.op, change.subject) == ("cert.add", "voip")
    assert change.detail is not None and change.detail["names"] == ["voip.example.com"]
    assert "PRIVATE" not in json.dumps(change.detail)
    assert "PRIVATE" not in repr(store.load_snapshot())


def test_a_refused_certificate_changes_nothing(
    store: Store, ca: trustme.CA, tmp_path: Path
) -> None:
    one = issue(ca, tmp_path, "a.example.com")
    two = issue(ca, tmp_path, "b.example.com")
    add(store, "a", one)
    rev = store.revision()
    with pytest.raises(KeyMismatch):
        store.add_certificate("a", two.chain.read_bytes(), one.key.read_bytes())
    assert store.revision() == rev
    assert store.load_snapshot().certificates[0].serial == one.serial


def test_only_the_provider_manages_certificates(
    store: Store, ca: trustme.CA, tmp_path: Path
) -> None:
    store.add_tenant("acme")
    cert = issue(ca, tmp_path, "a.example.com")
    add(store, "a", cert)
    acme = Store(store.url, actor="acme")
    try:
        rev = store.revision()
        with pytest.raises(NotPermitted):
            add(acme, "b", cert)
        with pytest.raises(NotPermitted):
            acme.set_default_certificate("a")
        with pytest.raises(NotPermitted):
            acme.remove_certificate("a")
        assert store.revision() == rev
    finally:
        acme.close()


def test_a_certificate_change_reaches_an_advanced_snapshot(
    store: Store, ca: trustme.CA, tmp_path: Path
) -> None:
    store.add_tenant("acme")
    before = store.load_snapshot()
    store.add_domain("voip.example.com", "provider")
    add(store, "voip", issue(ca, tmp_path, "voip.example.com"))
    after = store.advance(before)
    assert names(after) == ["voip"]
    assert after.check("voip.example.com") is not None


def test_a_stored_row_that_breaks_is_skipped_with_a_log_line(
    store: Store, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sipzone.store.schema import certificates

    add(store, "a", issue(ca, tmp_path, "a.example.com"))
    add(store, "b", issue(ca, tmp_path, "b.example.com"))
    other = issue(ca, tmp_path, "c.example.com")
    with store.engine.begin() as conn:  # a hand edit: b's key swapped for another
        conn.execute(
            certificates.update()
            .where(certificates.c.name == "b")
            .values(key_pem=other.key.read_text())
        )
    assert names(store.load_snapshot()) == ["a"]
    assert "certificate 'b' skipped" in caplog.text
    assert "PRIVATE" not in caplog.text
