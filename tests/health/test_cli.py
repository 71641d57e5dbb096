"""The health commands through the real CLI: settings, drain, status; bad input changes
nothing and says why in one line."""

from __future__ import annotations

import json

from tests.conftest import Cli


def test_health_settings_drain_and_their_refusals(cli: Cli) -> None:
    cli("init", check=True)
    bad = cli("site", "add", "eu1", "--vip", "192.0.2.1", "--region", "eu", "--check-interval", "0")
    assert bad.returncode == 2 and "health-check interval 0 s" in bad.stderr
    assert json.loads(cli("site", "list", "--json", check=True).stdout) == []
    cli("site", "add", "eu1", "--vip", "192.0.2.1", "--region", "eu", "--check-failures", "5",
        check=True)  # fmt: skip
    out = cli("site", "health-check", "eu1", "--interval", "10", "--timeout", "3", check=True)
    assert "every 10 s, timeout 3 s, down after 5 failures, up after 2 successes" in out.stdout
    for args, says in (
        (["eu1", "--timeout", "11"], "outside 0.05 s to the interval"),
        (["eu1", "--successes", "0"], "successes to up 0 is outside 1-100"),
        (["nope", "--interval", "3"], "site 'nope' does not exist"),
        (["eu1", "--interval", "ten"], "--interval"),
    ):
        refused = cli("site", "health-check", *args)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    [site] = json.loads(cli("site", "list", "--json", check=True).stdout)
    assert site["health_check"] == {"interval": 10, "timeout": 3, "failures": 5, "successes": 2}
    assert (site["state"], site["drained"], site["views"]) == ("up", False, [])
    cli("site", "drain", "eu1", check=True)
    assert cli("site", "list", check=True).stdout.split()[-1] == "drained"
    cli("site", "undrain", "eu1", check=True)
    assert cli("site", "drain", "nope").returncode == 2
    assert cli("site", "drain", "eu1", "--as", "nobody").returncode == 2
    assert cli("site", "list", check=True).stdout.split()[-1] == "up"
    assert "no node has reported yet" in cli("status", check=True).stdout
    assert json.loads(cli("status", "--json", check=True).stdout)["nodes"] == []
    bad_node = cli("serve", "--dns", "127.0.0.1:1", "--node-name", "a b")
    assert bad_node.returncode == 2 and "node name 'a b'" in bad_node.stderr
