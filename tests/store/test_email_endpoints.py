"""The email domain's voicemail endpoints in the store, on SQLite and PostgreSQL: written whole,
checked against the sites, read into snapshots, and a bad stored value skipped, not fatal."""

from __future__ import annotations

import logging

import pytest

from sipzone.model.errors import BadAddress, NotFound
from sipzone.store.repository import Store
from sipzone.store.schema import settings


def test_endpoints_are_written_whole_and_reach_the_snapshot(store: Store) -> None:
    store.add_site("eu1", vips=["192.0.2.10"], region="eu")
    revision = store.revision()
    store.set_email_domain("mail.example.com", imap=["993", "eu1=vm.example.com:993"],
                           submission=["smtp.example.com:465"])  # fmt: skip
    assert store.revision() == revision + 1
    snap = store.load_snapshot()
    assert snap.settings["email_imap"] == "993 eu1=vm.example.com:993"
    assert snap.settings["email_submission"] == "smtp.example.com:465"
    [change] = store.changes_since(revision)
    assert change.op == "email.set" and "eu1=vm.example.com:993" in str(change.detail)
    with pytest.raises(NotFound, match="site 'us1' does not exist"):
        store.set_email_domain("mail.example.com", imap=["us1=993"])
    with pytest.raises(BadAddress):
        store.set_email_domain("mail.example.com", submission=["[::1]:465"])
    assert store.revision() == revision + 1  # refused: nothing written
    store.set_email_domain("mail.example.com")
    assert "email_imap" not in store.settings()


def test_a_bad_stored_value_is_skipped(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    store.set_email_domain("mail.example.com", imap=["993"])
    with store.engine.begin() as conn:
        conn.execute(settings.update().where(settings.c.key == "email_imap").values(value="x:y"))
    with caplog.at_level(logging.WARNING):
        snap = store.load_snapshot()
    assert "email_imap" not in snap.settings
    assert snap.email_domain == "mail.example.com"
    assert "email_imap ignored" in caplog.text
