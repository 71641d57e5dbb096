"""`sipzone cert ...`: add, list (text and --json), default, remove; bad files exit 2."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import trustme

from tests.cli.conftest import Run
from tests.tlscerts import NOW, issue


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_add_list_default_remove(sipzone: Run, ca: trustme.CA, tmp_path: Path) -> None:
    sipzone("init", check=True)
    voip = issue(ca, tmp_path, "voip.example.com")
    teams = issue(ca, tmp_path, "*.teams.example.com", "teams.example.com")
    out = sipzone("cert", "add", "voip", "--cert", str(voip.chain), "--key", str(voip.key))
    assert out.returncode == 0, out.stderr
    assert "certificate voip added: voip.example.com" in out.stdout
    sipzone("cert", "add", "teams", "--cert", str(teams.chain), "--key", str(teams.key), check=True)
    listed = json.loads(sipzone("cert", "list", "--json", check=True).stdout)
    assert [(c["name"], c["default"]) for c in listed] == [("voip", True), ("teams", False)]
    assert listed[1]["names"] == ["*.teams.example.com", "teams.example.com"]
    assert listed[1]["serial"] == f"{teams.serial:x}"
    assert 88 <= listed[1]["days_left"] <= 90
    assert listed[1]["not_after"].startswith(str((NOW + timedelta(days=90)).date()))
    sipzone("cert", "default", "teams", check=True)
    text = sipzone("cert", "list", check=True).stdout
    assert text.splitlines()[0].startswith("teams (default)\t*.teams.example.com,teams.example.com")
    assert "days left" in text
    again = sipzone("cert", "add", "voip", "--cert", str(voip.chain), "--key", str(voip.key))
    assert "certificate voip replaced" in again.stdout
    sipzone("cert", "remove", "teams", check=True)
    listed = json.loads(sipzone("cert", "list", "--json", check=True).stdout)
    assert [(c["name"], c["default"]) for c in listed] == [("voip", True)]
    everything = text + json.dumps(listed) + again.stdout + again.stderr
    assert "PRIVATE" not in everything


def test_bad_files_exit_2_and_change_nothing(sipzone: Run, ca: trustme.CA, tmp_path: Path) -> None:
    sipzone("init", check=True)
    good = issue(ca, tmp_path, "voip.example.com")
    other = issue(ca, tmp_path, "other.example.com")
    expired = issue(
        ca, tmp_path, "old.example.com",
        not_before=NOW - timedelta(days=10), not_after=NOW - timedelta(minutes=1),
    )  # fmt: skip
    sipzone("cert", "add", "voip", "--cert", str(good.chain), "--key", str(good.key), check=True)
    before = sipzone("cert", "list", "--json", check=True).stdout
    cases = {
        "does not belong": ("voip", good.chain, other.key),
        "not now": ("old", expired.chain, expired.key),
        "cannot read the key file": ("voip", good.chain, tmp_path / "missing.key"),
        "holds no PEM certificate": ("voip", good.key, good.key),
        "must be a word": ("a b", good.chain, good.key),
    }
    for reason, (name, chain, key) in cases.items():
        result = sipzone("cert", "add", name, "--cert", str(chain), "--key", str(key))
        assert result.returncode == 2, (reason, result.stdout, result.stderr)
        assert reason in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert "PRIVATE" not in result.stderr
    assert sipzone("cert", "list", "--json", check=True).stdout == before
    for args in (("remove", "nope"), ("default", "nope")):
        result = sipzone("cert", *args)
        assert result.returncode == 2 and "does not exist" in result.stderr
    assert sipzone("cert", "list", "--json", check=True).stdout == before


def test_a_site_offering_tls_without_a_certificate_gets_a_note(
    sipzone: Run, ca: trustme.CA, tmp_path: Path
) -> None:
    sipzone("init", check=True)
    site = ("site", "add", "fra", "--vip", "192.0.2.1", "--region", "eu", "--port-tls", "5061")
    first = sipzone(*site)
    assert first.returncode == 0 and "no TLS certificate yet" in first.stderr
    cert = issue(ca, tmp_path, "voip.example.com")
    sipzone("cert", "add", "voip", "--cert", str(cert.chain), "--key", str(cert.key), check=True)
    second = sipzone(*site[:2], "ber", *site[3:])
    assert second.returncode == 0 and second.stderr == ""
