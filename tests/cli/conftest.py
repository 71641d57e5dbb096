"""The CLI's fixture: `sipzone ARGS` run in this process."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from sipzone.cli import main

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def sipzone(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Run:
    """``sipzone ARGS`` run by :func:`sipzone.cli.main` in this process, on this test's store."""
    monkeypatch.setenv("SIPZONE_DB", sqlite_url)

    def run(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out, err = capsys.readouterr()
        code = exited.value.code if isinstance(exited.value.code, int) else 0
        if check and code != 0:
            raise AssertionError(f"sipzone {' '.join(args)} failed: {err}")
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run
