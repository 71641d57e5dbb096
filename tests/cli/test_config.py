"""`serve --config FILE` (issue 13): precedence file < environment < command line, bad files
refused in one line, and SIGHUP re-reading the file in a running server."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipzone.config import BadConfig, load, reload
from tests.cli.conftest import Run
from tests.conftest import Cli, Server, free_port
from tests.test_observability import wait_until
from tests.test_runtime import per_worker

KNOWN = {"dns": False, "workers": False, "ttl": False, "notify": True, "log_level": False}


def test_file_then_environment_then_command_line(
    sipzone: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "sipzone.toml"
    conf.write_text(
        'dns = "127.0.0.1:5353"\nworkers = 2\nttl = 100\nnegative-ttl = 30\n'
        'log_level = "debug"\nnotify = "192.0.2.53:53"\nnaptr = false\n'
    )
    monkeypatch.setenv("SIPZONE_WORKERS", "3")
    monkeypatch.setenv("SIPZONE_TTL", "200")
    out = sipzone("serve", "--config", str(conf), "--ttl", "300", "--print-config", check=True)
    settings = json.loads(out.stdout)
    assert settings["workers"] == 3  # environment over file
    assert settings["dns"]["ttl"] == 300  # command line over both
    assert settings["dns"]["negative_ttl"] == 30  # the file, '-' or '_' alike
    assert settings["log_level"] == "debug"
    assert settings["dns"]["notify"] == ["192.0.2.53:53"]  # one value for a repeatable option
    assert settings["dns"]["naptr"] is False
    assert settings["dns"]["listen"] == "127.0.0.1:5353"
    monkeypatch.delenv("SIPZONE_WORKERS")
    settings = json.loads(sipzone("serve", "--config", str(conf), "--print-config").stdout)
    assert settings["workers"] == 2


def test_the_store_url_from_the_file_never_shows_its_password(
    sipzone: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "db-url"
    secret.write_text("postgresql://sipzone:pa55word@db.example:5432/sipzone\n")
    conf = tmp_path / "sipzone.toml"
    conf.write_text(f'dns = "127.0.0.1:5353"\ndb-file = "{secret}"\n')
    monkeypatch.delenv("SIPZONE_DB")
    out = sipzone("serve", "--config", str(conf), "--print-config", check=True)
    assert json.loads(out.stdout)["db"] == "postgresql://sipzone:***@db.example:5432/sipzone"
    assert "pa55word" not in out.stdout + out.stderr
    monkeypatch.setenv("SIPZONE_DB", "sqlite:///elsewhere.db")  # the environment wins
    out = sipzone("serve", "--config", str(conf), "--print-config", check=True)
    assert json.loads(out.stdout)["db"] == "sqlite:///elsewhere.db"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("dns = ", "not valid TOML"),
        ('dnss = "127.0.0.1:53"', "unknown key 'dnss'"),
        ("workers = [1, 2]", "takes one value"),
        ('workers = "many"', "'--workers'"),
        ("workers = 0", "greater than or equal to 1"),
        ("[sip]\nlisten = 1", "not a table"),
        ('log-level = "loud"', "log level 'loud'"),
        ('db = "sqlite:///a.db"\ndb-file = "x"', "not both"),
    ],
)
def test_a_bad_file_is_one_line_and_nothing_starts(
    sipzone: Run, tmp_path: Path, text: str, reason: str
) -> None:
    conf = tmp_path / "sipzone.toml"
    conf.write_text('dns = "127.0.0.1:5353"\n' + text + "\n")
    result = sipzone("serve", "--config", str(conf))
    assert result.returncode == 2
    assert reason in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1
    missing = sipzone("serve", "--config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and "cannot read the configuration" in missing.stderr


def test_reload_applies_the_log_settings_and_names_the_rest(tmp_path: Path) -> None:
    conf = tmp_path / "sipzone.toml"
    conf.write_text('dns = "127.0.0.1:5353"\nworkers = 1\nttl = 5\n')
    before = load(str(conf), KNOWN)
    conf.write_text('dns = "127.0.0.1:5353"\nworkers = 2\nlog-level = "warning"\nttl = 6\n')
    result = reload(str(conf), KNOWN, before, fixed={"ttl"})
    assert result.apply == {"log_level": "warning"}
    assert result.need_restart == ("workers",)  # ttl was set above the file: not its to change
    conf.write_text("workers = [\n")
    with pytest.raises(BadConfig):
        reload(str(conf), KNOWN, before, fixed=())


def wait_for(server: Server, text: str, start: int = 0, timeout: float = 10) -> int:
    """The index of the first line from ``start`` on that holds ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, line in enumerate(server.lines[start:], start):
            if text in line:
                return i
        time.sleep(0.05)
    raise AssertionError(f"no line with {text!r}:\n" + "".join(server.lines))


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_applies_a_changed_log_level_and_keeps_serving(
    serve: Callable[..., Server], cli: Cli, tmp_path: Path, workers: int
) -> None:
    cli("init", check=True)
    conf = tmp_path / "sipzone.toml"
    metrics = free_port()
    conf.write_text(
        f'dns = "127.0.0.1:{free_port()}"\nworkers = {workers}\nlog-level = "warning"\n'
        f'metrics = "127.0.0.1:{metrics}"\n'
    )
    server = serve("--config", str(conf))
    cli("domain", "add", "quiet.example.com", check=True)  # revision 2: not logged at warning
    # Every worker serves it before the level changes (the command returns before they poll).
    wait_until(lambda: set(per_worker(metrics, "sipzone_revision").values()) == {2.0})
    conf.write_text(conf.read_text().replace('"warning"', '"info"').replace(
        f"workers = {workers}", f"workers = {workers + 1}"
    ))  # fmt: skip
    os.kill(server.proc.pid, signal.SIGHUP)
    said = wait_for(server, "SIGHUP: log-level is now info")
    wait_for(server, "SIGHUP: workers changed", said)
    time.sleep(0.3)  # the workers got the signal after the supervisor (workers=2)
    cli("domain", "add", "loud.example.com", check=True)
    wait_for(server, "revision 3 published", said)
    assert not any("revision 2 published" in line for line in server.lines)
    assert all(" INFO " in line or " WARNING " in line for line in server.lines if "SIGHUP" in line)
    assert server.proc.poll() is None
    conf.write_text("workers = [\n")
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_for(server, "not valid TOML", said)
    assert server.proc.poll() is None


def test_the_disk_copy_goes_where_the_file_the_environment_or_the_command_line_say(
    sipzone: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "sipzone.toml"
    conf.write_text('dns = "127.0.0.1:5353"\nstate-dir = "/srv/file"\n')
    monkeypatch.setenv("SIPZONE_DB", f"sqlite:///{tmp_path}/sz.db")

    def copy(*args: str) -> str:
        out = sipzone("serve", "--dns", "127.0.0.1:5353", *args, "--print-config", check=True)
        return str(json.loads(out.stdout)["copy_path"])

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert copy() == f"{tmp_path}/sz.db.snapshot"  # beside a SQLite store
    assert copy("--config", str(conf)) == "/srv/file/sz.db.snapshot"
    monkeypatch.setenv("SIPZONE_STATE_DIR", "/srv/env")
    assert copy("--config", str(conf)) == "/srv/env/sz.db.snapshot"
    assert copy("--state-dir", "/srv/cli") == "/srv/cli/sz.db.snapshot"
