"""`serve`'s configuration file: TOML whose top-level keys are the options of `sipzone serve`.

Theory of operation:

- A key is the option's name without its dashes: ``sip = "udp:0.0.0.0:5060,tcp:0.0.0.0:5060"``,
  ``dns = "0.0.0.0:53"``, ``workers = 2``, ``tcp-idle-timeout = 300`` (``tcp_idle_timeout``
  is the same key), ``notify = ["192.0.2.53:53"]``, ``naptr = false``.  ``db`` is the store
  URL; ``db-file`` names a file holding it (so the password is in no unit file or process
  list).  An unknown key, a value of the wrong type or a file that is not TOML stops the start
  with one line naming the file and the key.
- Precedence, lowest first: the option's default, the file, the environment (``SIPZONE_`` and
  the option's name in capitals with ``_``: ``SIPZONE_WORKERS=4``), the command line.  The CLI
  gets this from Click: the file becomes the command's ``default_map``, which Click consults
  only after the command line and the environment.
- ``serve`` re-reads the file on SIGHUP (:func:`reload`): what can change in a running process
  (:data:`RELOADABLE`: the log level and format) is applied unless the command line or the
  environment fixed it; every other key that changed is logged as needing a restart.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sipzone.model.errors import SipzoneError
from sipzone.store.url import ENV_URL, ENV_URL_FILE, read_url_file

ENV_PREFIX = "SIPZONE"
# What SIGHUP applies without a restart, with the value it takes when the file drops the key.
RELOADABLE = {"log_level": "info", "log_format": "text"}


class BadConfig(SipzoneError):
    """A configuration file that cannot be read, is not TOML, or has a key or value we refuse."""


def key_name(key: str) -> str:
    """A file key as the option's parameter name: ``tcp-idle-timeout`` -> ``tcp_idle_timeout``."""
    return key.replace("-", "_")


def load(
    path: str, known: Mapping[str, bool], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The file's values by parameter name, checked against ``known`` (parameter name -> takes
    several values).  ``db-file`` is read here into ``db``, unless the environment names the
    store itself (it overrides the file)."""
    env = os.environ if env is None else env
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise BadConfig(f"cannot read the configuration {path!r}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadConfig(f"configuration {path!r} is not valid TOML: {exc}") from None
    names = [key_name(k) for k in data]
    if "db" in names and "db_file" in names:
        raise BadConfig(f"configuration {path!r}: give db or db-file, not both")
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key_name(key)
        if name == "db_file":
            if ENV_URL in env or ENV_URL_FILE in env:
                continue  # the environment names the store: it overrides the file
            try:
                values["db"] = read_url_file(str(value))
            except OSError as exc:
                raise BadConfig(f"configuration {path!r}: {exc}") from None
            continue
        if name not in known or name == "config":
            options = ", ".join(sorted(k.replace("_", "-") for k in known if k != "config"))
            raise BadConfig(
                f"configuration {path!r}: unknown key {key!r}; the keys are serve's options: "
                f"{options}, db-file"
            )
        if isinstance(value, dict):
            raise BadConfig(f"configuration {path!r}: {key!r} must be a value, not a table")
        if known[name]:
            value = list(value) if isinstance(value, list) else [value]
        elif isinstance(value, list):
            raise BadConfig(f"configuration {path!r}: {key!r} takes one value, not a list")
        values[name] = value
    return values


@dataclass(frozen=True)
class Reload:
    """What a re-read of the file means for a running server."""

    values: dict[str, Any]  # the file as read now (compare the next re-read with these)
    apply: dict[str, Any]  # reloadable settings that changed: apply them now
    need_restart: tuple[str, ...]  # keys whose change only a restart applies


def reload(
    path: str, known: Mapping[str, bool], before: Mapping[str, Any], fixed: Iterable[str]
) -> Reload:
    """The file re-read and compared with the values it had (``before``).  Keys in ``fixed``
    were set on the command line or in the environment, which override the file; a reloadable
    key removed from the file goes back to its default."""
    values = load(path, known)
    fixed = set(fixed)
    apply: dict[str, Any] = {}
    restart: list[str] = []
    for name in sorted(set(values) | set(before)):
        default = RELOADABLE.get(name)
        new, old = values.get(name, default), before.get(name, default)
        if name in fixed or _same(new, old):
            continue
        if name in RELOADABLE:
            apply[name] = new
        else:
            restart.append(name.replace("_", "-"))
    return Reload(values, apply, tuple(restart))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return bool(a == b)
