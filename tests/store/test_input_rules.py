"""Issue 7's input rules at the store: every write validates inside its transaction, and every
read skips (and logs) a row that an older version or a hand edit left behind."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from sipzone.model import errors
from sipzone.model.names import MAX_SIP_DOMAIN, parse_rule
from sipzone.model.tenancy import (
    MAX_BRAND_NAME,
    MAX_EMAIL,
    MAX_TENANT_NAME,
    MAX_UPSTREAM,
    MAX_URL,
)
from sipzone.store import schema
from sipzone.store.repository import Store

# ---------------------------------------------------------------------------- import races


def race(store: Store, rival_write: Any) -> tuple[dict[str, Any], Any]:
    """A progress hook that, the first time the import reports progress (its validation is
    done, its rows not yet written), runs ``rival_write(Store)`` on a thread with its own
    connection and gives it a second to finish.  Returns (outcome, hook)."""
    outcome: dict[str, Any] = {}

    def rival() -> None:
        other = Store(store.url)
        try:
            outcome["rival"] = rival_write(other)
        except errors.SipzoneError as exc:
            outcome["rival"] = exc
        finally:
            other.close()

    thread = threading.Thread(target=rival)
    outcome["thread"] = thread

    def hook(_n: int) -> None:
        if "during" not in outcome:
            thread.start()
            thread.join(timeout=1.0)
            outcome["during"] = not thread.is_alive()

    return outcome, hook


def test_a_wildcard_added_while_an_import_runs_never_lands_inside_it(store: Store) -> None:
    store.add_tenant("acme")
    store.add_tenant("other")
    entries = [(i, parse_rule(f"n{i}.example.com"), None) for i in range(1, 120)]
    entries.append((120, parse_rule("cust.teams.example.com"), None))
    outcome, hook = race(store, lambda s: s.add_domain("*.teams.example.com", "other")[1])
    report = store.import_domains(entries, "acme", batch=25, progress=hook)
    outcome["thread"].join(timeout=60)
    assert report.added == 120
    rows = {d.name: d for d in store.list_domains()}
    wildcard = rows["*.teams.example.com"]
    assert wildcard.owner == "other" and outcome["rival"] == wildcard.revision
    # Serialisable: the name under the base existed before the wildcard, owned by acme.
    assert rows["cust.teams.example.com"].owner == "acme"
    assert rows["cust.teams.example.com"].revision < wildcard.revision
    # The rival had to wait for the import's transaction: validation and writes are one step.
    assert outcome["during"] is False


def test_a_name_taken_while_an_import_runs_is_never_skipped_silently(store: Store) -> None:
    store.add_tenant("acme")
    store.add_tenant("other")
    entries = [(i, parse_rule(f"n{i}.example.com"), None) for i in range(1, 121)]
    outcome, hook = race(store, lambda s: s.add_domain("n100.example.com", "other")[1])
    report = store.import_domains(entries, "acme", batch=25, progress=hook)
    outcome["thread"].join(timeout=60)
    assert report.added == 120  # every line of the file, none skipped
    owners = {d.name: d.owner for d in store.list_domains()}
    assert owners["n100.example.com"] == "acme" and len(owners) == 120
    assert isinstance(outcome["rival"], errors.Conflict)  # the rival came second
    assert outcome["during"] is False


def test_an_import_meeting_names_taken_before_it_is_refused_whole(store: Store) -> None:
    store.add_tenant("acme")
    store.add_tenant("other")
    store.add_domain("*.teams.example.com", "other")
    for i in (3, 5):
        store.add_domain(f"n{i}.example.com", "other")
    entries = [(i, parse_rule(f"n{i}.example.com"), None) for i in range(1, 9)]
    entries += [(9, parse_rule("x.teams.example.com"), None)]
    entries += [(10 + i, parse_rule(f"t{i}.teams.example.com"), None) for i in range(30)]
    before = store.revision()
    with pytest.raises(errors.ImportRefused) as info:
        store.import_domains(entries, "acme")
    message = str(info.value)
    assert "\n" not in message
    assert "line 3: 'n3.example.com' exists already (owner 'other')" in message
    assert "line 5:" in message and "line 9:" in message and "namespace" in message
    assert message.count("line ") == 20 and "first 20 shown" in message
    assert store.revision() == before
    assert len(store.list_domains()) == 3


# ---------------------------------------------------------------------------- writes


def test_writes_refuse_values_the_dns_cannot_carry(store: Store) -> None:
    store.add_tenant("acme")
    before = store.revision()
    refused: list[tuple[type[Exception], Any]] = [
        (errors.BadAddress, lambda: store.add_site("s2", vips=["fe80::1%eth0"], region="eu")),
        (errors.BadAddress, lambda: store.add_site("s2", vips=["0.0.0.0"], region="eu")),
        (errors.BadAddress, lambda: store.add_site("s2", vips=[], region="eu")),
        (
            errors.BadNetwork,
            lambda: store.add_site("s2", vips=["192.0.2.1"], region="eu", networks=["10.1.0.0/8"]),
        ),
        (
            errors.OutOfRange,
            lambda: store.add_site("s2", vips=["192.0.2.1"], region="eu", order=2**70),
        ),
        (
            errors.OutOfRange,
            lambda: store.add_site("s2", vips=["192.0.2.1"], region="eu", ports={"udp": 70000}),
        ),
        (errors.BadWord, lambda: store.add_site("s_2", vips=["192.0.2.1"], region="eu")),
        (
            errors.NoRoomForServiceNames,
            lambda: store.add_domain(
                "a" * 63 + "." * 1 + "b" * 63 + ".c" * 58 + ".example", "acme"
            ),
        ),
        (errors.NoRoomForServiceNames, lambda: store.add_zone("z" * 63 + ".y" * 90 + ".com")),
        (errors.MixedScript, lambda: store.add_domain("p\u0430ypal.example.com", "acme")),
        (errors.TenantCaseTwin, lambda: store.add_tenant("ACME")),
        (errors.BadText, lambda: store.add_tenant("x", brand_name="A\r\nB")),
        (errors.BadURL, lambda: store.update_tenant("acme", web_url="javascript:x")),
        (errors.BadEmail, lambda: store.update_tenant("acme", support_email="nobody")),
        (errors.InvalidValue, lambda: store.update_tenant("acme", colour="red")),
    ]
    for error, write in refused:
        with pytest.raises(error):
            write()
    assert store.revision() == before


def test_zones_and_host_less_sites_must_fit_together(store: Store) -> None:
    long_zone = "z" * 63 + "." + "y" * 63 + "." + "x" * 60 + ".example.com"  # 200 octets
    store.add_nameserver("ns1.example.org")
    store.add_zone(long_zone)
    with pytest.raises(errors.NoRoomForServiceNames, match="--host"):
        store.add_site("a" * 60, vips=["192.0.2.1"], region="eu")
    store.add_site("a" * 60, vips=["192.0.2.1"], region="eu", host="sip.example.com")
    store.add_site("short", vips=["192.0.2.2"], region="eu")
    store.add_zone("example.net")
    store.add_site("b" * 60, vips=["192.0.2.3"], region="eu", host="sip2.example.com")
    store.remove_zone(long_zone)
    store.add_site("c" * 60, vips=["192.0.2.4"], region="eu")
    with pytest.raises(errors.NoRoomForServiceNames, match=r"'c{60}'"):
        store.add_zone(long_zone)


def test_unsupported_database_urls_are_refused_without_a_password(tmp_path: Any) -> None:
    for url in ("mysql://root:secret@db.example/sipzone", "oracle://x", "not a url", ""):
        with pytest.raises(errors.UnsupportedDatabase) as info:
            Store(url)
        assert "secret" not in str(info.value)
        assert "sqlite:///FILE" in str(info.value)


def test_the_model_limits_fit_the_store_columns() -> None:
    columns = {
        (schema.tenants, "name"): MAX_TENANT_NAME,
        (schema.tenants, "brand_name"): MAX_BRAND_NAME,
        (schema.tenants, "support_email"): MAX_EMAIL,
        (schema.tenants, "web_url"): MAX_URL,
        (schema.tenants, "logo_url"): MAX_URL,
        (schema.tenants, "upstream"): MAX_UPSTREAM,
        (schema.sites, "upstream"): MAX_UPSTREAM,
        (schema.domains, "name"): MAX_SIP_DOMAIN,
    }
    for (table, column), limit in columns.items():
        assert limit <= table.c[column].type.length, (table.name, column)


# ---------------------------------------------------------------------------- reads


def raw_write(store: Store, op: str, subject: str, statement: Any, detail: Any = None) -> None:
    """Write a row as an older sipzone (or a hand edit) did: no validation at all."""
    with store.engine.begin() as conn:
        rev = conn.execute(
            schema.state.update()
            .values(revision=schema.state.c.revision + 1)
            .returning(schema.state.c.revision)
        ).scalar_one()
        if statement is not None:
            conn.execute(statement)
        conn.execute(
            schema.changelog.insert().values(
                revision=rev,
                at=datetime.now(UTC),
                actor="old",
                op=op,
                subject=subject,
                detail=detail,
            )
        )


def site_row(name: str, vips: list[str], **extra: Any) -> Any:
    values = dict(
        name=name,
        region="eu",
        host=None,
        vips=vips,
        networks=[],
        port_udp=5060,
        port_tcp=5060,
        port_tls=5061,
        weight=100,
        position=0,
        upstream=None,
        healthy=True,
    )
    return schema.sites.insert().values(**{**values, **extra})


def test_load_skips_bad_stored_values_with_one_line_each(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store.add_tenant("acme")
    store.add_nameserver("ns1.example.org")
    store.add_zone("example.com")
    store.add_domain("voip.example.com", "acme")
    store.add_site("s1", vips=["192.0.2.1"], region="eu")
    acme_id = store._tenant_id(store.engine.connect(), "acme")
    # 244 octets: a valid name before issue 7, too long for '_sips._tcp.' + it now.
    too_long = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 40 + ".example.com"
    raw_write(
        store,
        "site.add",
        "s2",
        site_row(
            "s2",
            ["fe80::1%eth0", "192.0.2.2", "ff02::1"],
            networks=["10.0.0.0/8", "zz"],
            position=1,
        ),
    )
    raw_write(store, "site.add", "s3", site_row("s3", ["::"], position=2))
    raw_write(store, "site.add", "s4", site_row("s4", ["192.0.2.4"], weight=70000, position=3))
    raw_write(
        store,
        "domain.add",
        too_long,
        schema.domains.insert().values(name=too_long, owner_id=acme_id, wildcard=False, revision=1),
    )
    raw_write(store, "zone.add", "z" * 250, schema.zones.insert().values(name="z" * 250))
    raw_write(
        store,
        "tenant.update",
        "acme",
        schema.tenants.update()
        .where(schema.tenants.c.name == "acme")
        .values(brand_name="ACME\r\nX: 1", web_url="https://a.example/"),
    )
    with caplog.at_level(logging.WARNING, logger="sipzone.store"):
        snap = store.load_snapshot()
        store.load_snapshot()  # a second read inside a minute adds no line
    lines = [r.getMessage() for r in caplog.records if r.name == "sipzone.store"]
    assert len(lines) == 9, lines
    assert [s.name for s in snap.sites] == ["s1", "s2"]
    s2 = snap.sites[1]
    assert [str(v) for v in s2.vips] == ["192.0.2.2"]
    assert [str(n) for n in s2.networks] == ["10.0.0.0/8"]
    assert snap.zones == ("example.com",)
    assert snap.check("voip.example.com") is not None
    assert snap.check(too_long) is None
    brand = snap.tenants.view("acme").brand
    assert brand.brand_name is None and brand.web_url == "https://a.example/"
    for fragment in (
        "fe80::1%eth0",
        "ff02::1",
        "'zz'",
        "'::' is the unspecified address",
        "site 's3' skipped",
        "site 's4' skipped",
        "1 stored SIP domain rule(s) skipped as invalid, such as 'aaa",
        "a SIP domain holds at most 242",
        "zone 'zzz",
        "brand_name",
    ):
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)
    assert all("\n" not in line for line in lines)


def test_advance_skips_a_bad_change_and_applies_the_rest(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store.add_tenant("acme")
    snap = store.load_snapshot()
    acme_id = store._tenant_id(store.engine.connect(), "acme")
    bad = "x" * 63 + "." + "y" * 63 + "." + "z" * 63 + "." + "w" * 52 + ".example"
    raw_write(
        store,
        "domain.add",
        bad,
        schema.domains.insert().values(name=bad, owner_id=acme_id, wildcard=False, revision=1),
        {"owner": "acme"},
    )
    store.add_domain("good.example.com", "acme")
    with caplog.at_level(logging.WARNING, logger="sipzone.store"):
        new = store.advance(snap)
    assert new.revision == store.revision()
    assert new.check("good.example.com") is not None and new.check(bad) is None
    assert new.delta is not None and new.delta.added == ("good.example.com",)
    lines = [r.getMessage() for r in caplog.records if r.name == "sipzone.store"]
    assert len(lines) == 1 and "skipped" in lines[0]
