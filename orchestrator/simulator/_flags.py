"""`simulate-provider`'s flags, generated from `SimulatorConfig`: one list of knobs, one help.

Each field becomes `--field-name` with the field's default and the help its docstring gives
it, so a knob added to the config is a flag at once, documented, and never restated.
"""

from __future__ import annotations

import argparse
import re
import typing
from collections.abc import Mapping

import attrs

from ._config import SimulatorConfig

_ARG: typing.Final = re.compile(r"^ {8}(?P<name>[a-z_]+): (?P<text>.*)$")
_MORE: typing.Final = re.compile(r"^ {12}(?P<text>\S.*)$")


def field_help(cls: type) -> dict[str, str]:
    """The `Args:` section of a class docstring, field name → one line of help."""
    helps: dict[str, str] = {}
    current = None
    for line in (cls.__doc__ or "").splitlines():
        if (match := _ARG.match(line)) is not None:
            current = match["name"]
            helps[current] = match["text"]
        elif current is not None and (more := _MORE.match(line)) is not None:
            helps[current] += " " + more["text"]
        else:
            current = None
    return {name: text.replace("``", "'") for name, text in helps.items()}


def add_simulator_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `SimulatorConfig` field, with its default and its help text."""
    helps = field_help(SimulatorConfig)
    hints = typing.get_type_hints(SimulatorConfig)
    for field in attrs.fields(SimulatorConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        default = field.default
        text = helps.get(field.name, "")
        shown = f"{text} (default: {_shown(default)})"
        if typing.get_origin(hint) is tuple:
            low, high = typing.cast("tuple[float, float]", default)
            parser.add_argument(
                flag, type=float, nargs=2, default=(low, high), metavar=("LOW", "HIGH"), help=shown
            )
        elif typing.get_origin(hint) is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(hint), default=default, help=shown)
        else:
            kind = next(arg for arg in (*typing.get_args(hint), hint) if arg is not type(None))
            parser.add_argument(flag, type=kind, default=default, help=shown)


def simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    """The config the flags describe.

    Raises:
        ValueError: a value the config refuses (a rate outside [0, 1], a bad secret).
    """
    values: Mapping[str, object] = {
        field.name: getattr(args, field.name) for field in attrs.fields(SimulatorConfig)
    }
    return SimulatorConfig(**values)  # type: ignore[arg-type]


def _shown(default: object) -> str:
    if isinstance(default, tuple):
        return " ".join(f"{part:g}" for part in default)
    return "none" if default is None else str(default)
