"""The failed-auth limiter alone, on a fake clock."""

from __future__ import annotations

import pytest

from sipzone.api.auth import Caller, FailureLimiter, bearer, limit_key
from sipzone.model.errors import NotAuthenticated, TooManyAttempts


def test_limiter_window_slides() -> None:
    now = [0.0]
    limiter = FailureLimiter(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("192.0.2.1")
        limiter.failed("192.0.2.1")
        now[0] += 10
    with pytest.raises(TooManyAttempts, match="retry in 30 s"):
        limiter.check("192.0.2.1")
    limiter.check("192.0.2.2")  # another address is not held back
    now[0] = 60.5  # the first failure aged out
    limiter.check("192.0.2.1")
    limiter.failed("192.0.2.1")
    with pytest.raises(TooManyAttempts):
        limiter.check("192.0.2.1")


def test_bearer_header() -> None:
    assert bearer("Bearer sz_abc") == "sz_abc"
    assert bearer("bearer   sz_abc ") == "sz_abc"
    for bad in (None, "", "Basic dXNlcjpw", "Bearer", "Bearer a b"):
        with pytest.raises(NotAuthenticated):
            bearer(bad)


def test_hide_keeps_what_the_caller_said() -> None:
    caller = Caller("resa", "k", 1, frozenset({"resa"}), ("resa", "provider"), frozenset({"resb"}))
    text = "'x' is in the namespace of tenant 'resb'; 'resa' is not 'resb' or below it"
    assert caller.hide(text) == (
        "'x' is in the namespace of another tenant; 'resa' is not another tenant or below it"
    )
    assert caller.hide("tenant 'resb' does not exist", said={"resb"}) == (
        "tenant 'resb' does not exist"
    )


def test_limit_keys() -> None:
    assert limit_key("192.0.2.7") == "192.0.2.7"
    assert limit_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert (
        limit_key("2001:db8:1:2:aaaa::1")
        == limit_key("2001:db8:1:2:bbbb::9")
        == ("2001:db8:1:2::/64")
    )
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("unknown") == "unknown"
