"""Typer's option values turned into Python values without Pydantic, for the plain types.

Typer (0.29) builds a Pydantic ``TypeAdapter`` for every parameter it converts, and importing
Pydantic and building those adapters costs about 0.1 s of every `sipzone` command, as much as
the command's own work.  :func:`install` gives plain ``str``, ``int``, ``float`` and ``bool``
values (and lists of them; ``min``/``max`` honoured) a converter of our own with Pydantic's
wording, and leaves every other annotation (paths, files, enums) to Typer's own.  It hooks Typer's
``build_runtime_param``; tests/cli/test_fast.py fails if a Typer upgrade moves that hook, so
the saving cannot silently vanish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from typer import core as typer_core
from typer._click.exceptions import BadParameter
from typer._coercion import RuntimeParam, TypeDescriptor

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off", ""})
_KINDS: dict[Any, tuple[str, str]] = {
    int: ("a valid integer", "unable to parse string as an integer"),
    float: ("a valid number", "unable to parse string as a number"),
}


def _number(kind: type, text: str) -> int | float:
    what, why = _KINDS[kind]
    try:
        value: int | float = kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"Input should be {what}, {why}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("Input should be a finite number")
    return value


@dataclass(frozen=True)
class PlainRuntimeParam(RuntimeParam):
    """str, int, float or bool, or a list of one of them: converted, bounds checked."""

    kind: type
    many: bool

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        if self.many:
            return [self._one(item, param, ctx) for item in value]
        return self._one(value, param, ctx)

    def _one(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if self.kind is str:
            return str(value)
        if self.kind is bool:
            word = str(value).strip().lower()
            if isinstance(value, bool) or word in _TRUE | _FALSE:
                return value if isinstance(value, bool) else word in _TRUE
            raise BadParameter("Input should be a valid boolean", ctx=ctx, param=param)
        try:
            number: Any = value if type(value) is self.kind else _number(self.kind, str(value))
            info = self.parameter_info
            if info.min is not None and number < info.min:
                raise ValueError(f"Input should be greater than or equal to {info.min}")
            if info.max is not None and number > info.max:
                raise ValueError(f"Input should be less than or equal to {info.max}")
        except ValueError as exc:
            raise BadParameter(str(exc), ctx=ctx, param=param) from None
        return number


def plain_runtime_param(descriptor: TypeDescriptor) -> RuntimeParam | None:
    """Our converter for ``descriptor``, or None when Typer's own must do it."""
    annotation: Any = descriptor.annotation
    info = descriptor.parameter_info
    many = get_origin(annotation) is list
    kind = get_args(annotation)[0] if many else annotation
    if kind not in (str, int, float, bool) or descriptor.file_annotation is not None:
        return None
    if info.parser is not None or info.clamp or descriptor.is_path or descriptor.is_choice:
        return None
    return PlainRuntimeParam(info, annotation, kind=kind, many=many)


def install() -> None:
    """Route Typer's plain parameters through :func:`plain_runtime_param` (idempotent)."""
    original = typer_core.build_runtime_param  # type: ignore[attr-defined]
    if getattr(original, "sipzone", False):
        return

    def build(descriptor: TypeDescriptor) -> RuntimeParam:
        return plain_runtime_param(descriptor) or original(descriptor)

    build.sipzone = True  # type: ignore[attr-defined]
    typer_core.build_runtime_param = build  # type: ignore[attr-defined]
