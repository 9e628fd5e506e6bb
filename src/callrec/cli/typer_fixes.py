"""Two adjustments to Typer, so ``callrec`` reads and starts like a Unix tool.

1. **Help shows plain metavars.** Typer renders every value's type as ``<type>`` and flags as
   ``<bool>``; help pages write PATH, TEXT, INTEGER, and nothing for a flag.
2. **No pydantic to parse a command line.** Typer 0.29 coerces each parameter through a pydantic
   ``TypeAdapter``: the first command run imports pydantic (~0.08 CPU-s, more than all of ``callrec mix``'s
   own start-up). Every parameter callrec declares is a str, int, float, bool, Path or str-enum (or one of
   those or None), which need no pydantic: those get a plain coercion with pydantic's wording for the same
   mistakes; anything else (lists, ...) keeps Typer's own.

Both replace a Typer internal; if Typer changes the names, help keeps Typer's look and parsing keeps
Typer's pydantic path (slower, still right) — ``tests/test_cli.py`` notices either.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Union, get_args, get_origin

_PLAIN_TYPES: tuple[type, ...] = (str, int, float, bool, Path)


def _plain(shown: str) -> str:
    # Typer's "<path>", "<list[str]>", "<int>" as a Unix help page writes them: PATH, TEXT, INTEGER
    inner = shown.removeprefix("<").removesuffix(">")
    inner = inner.removeprefix("list[").removesuffix("]")
    if "|" in inner:
        return inner  # choices stay as they are typed
    return {"str": "TEXT", "int": "INTEGER", "float": "NUMBER"}.get(inner, inner.upper())


def _option_type(self: Any, ctx: Any) -> str | None:
    if self.metavar is not None:
        return str(self.metavar)
    if self.is_flag:
        return None  # a flag takes no value: no "<bool>"
    return _plain(self.display_type(ctx))


def _argument_type(self: Any, ctx: Any) -> str | None:
    return None if self.metavar is not None else _plain(self.display_type(ctx))


def _simple(annotation: Any) -> type | None:
    """The one plain type a parameter holds (``X`` or ``X | None``), or None when it is anything else."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return None
        annotation = args[0]
    if not isinstance(annotation, type):
        return None
    if issubclass(annotation, Enum):
        return annotation if issubclass(annotation, str) else None
    return annotation if annotation in _PLAIN_TYPES else None


def _coerce(target: type, value: Any) -> Any:
    """``value`` (a string from the command line, or a default) as ``target``; ValueError in pydantic's words."""
    if isinstance(value, target):
        return value
    if issubclass(target, Enum):
        try:
            return target(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in target)
            raise ValueError(f"{value!r} is not one of {allowed}.") from None
    if target is bool:
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on", "y", "t"):
            return True
        if text in ("0", "false", "no", "off", "n", "f"):
            return False
        raise ValueError("Input should be a valid boolean, unable to interpret input")
    if target is int:
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError("Input should be a valid integer, unable to parse string as an integer") from None
    if target is float:
        try:
            return float(str(value).strip())
        except ValueError:
            raise ValueError("Input should be a valid number, unable to parse string as a number") from None
    make: Any = target  # str or Path: built from the text
    return make(value)


def _light_coercion() -> None:
    try:
        from typer import core
        from typer._click.exceptions import BadParameter
        from typer._coercion import RuntimeParam
    except ImportError:  # another Typer: its own coercion stays
        return
    typers_own = getattr(core, "build_runtime_param", None)
    if typers_own is None:
        return

    @dataclass(frozen=True)
    class PlainRuntimeParam(RuntimeParam):
        target: type

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                return _coerce(self.target, value)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None

    def build_runtime_param(descriptor: Any) -> Any:
        target = _simple(descriptor.annotation)
        if target is None or descriptor.file_annotation is not None or descriptor.is_ranged:
            return typers_own(descriptor)
        return PlainRuntimeParam(
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation, target=target
        )

    setattr(core, "build_runtime_param", build_runtime_param)  # noqa: B010 - Typer's module-level name


def adjust_typer() -> None:
    """Apply both adjustments (once, at import of the CLI)."""
    from typer.core import TyperArgument, TyperOption

    setattr(TyperOption, "display_type_rich", _option_type)  # noqa: B010 - a method of Typer's class
    setattr(TyperArgument, "display_type_rich", _argument_type)  # noqa: B010
    _light_coercion()
