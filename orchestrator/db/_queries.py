"""Load the named statements of `queries.sql` once.

Keeping every statement in one SQL file makes the database contract
reviewable in one place and lets a test check that each name is used.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Mapping
from typing import Final, LiteralString, cast

from ._statuses import STATUS_SETS, sql_list

_HEADER: Final = re.compile(
    r"^-- (?P<kind>name|fragment): (?P<name>[a-z_][a-z0-9_]*)$", re.MULTILINE
)
# `{{columns}}`, or `{{j.columns}}` for the same list with every column prefixed `j.`.
_USE: Final = re.compile(r"\{\{(?:(?P<alias>[a-z]+)\.)?(?P<name>[a-z_][a-z0-9_]*)\}\}")
# `{{statuses:in_flight}}`: one of `_statuses.STATUS_SETS`, as the inside of an `IN (...)`.
_STATUSES: Final = re.compile(r"\{\{statuses:(?P<name>[a-z_]+)\}\}")


def parse(text: str) -> dict[str, LiteralString]:
    """Split a queries file on its `-- name:` headers, expanding `-- fragment:` blocks.

    A fragment is a comma-separated column list written once (the job's columns,
    which `_rows.job` decodes) and used as `{{name}}` or `{{alias.name}}`. A job
    status set is `{{statuses:name}}`.

    Raises:
        ValueError: a name appears twice, a block has no statement, or a statement
            uses a fragment or status set that is not defined.
    """
    blocks: dict[tuple[str, str], str] = {}
    matches = list(_HEADER.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        body = text[match.end() : end].strip()
        lines = [line for line in body.splitlines() if not line.startswith("--")]
        statement = "\n".join(lines).strip()
        key = (match["kind"], match["name"])
        if key in blocks:
            raise ValueError(f"{key[0]} {key[1]!r} is defined twice")
        if not statement:
            raise ValueError(f"{key[0]} {key[1]!r} has no statement")
        blocks[key] = statement
    fragments = {name: body for (kind, name), body in blocks.items() if kind == "fragment"}

    def expand(use: re.Match[str]) -> str:
        if use["name"] not in fragments:
            raise ValueError(f"fragment {use['name']!r} is not defined")
        columns = [column.strip() for column in fragments[use["name"]].split(",")]
        if use["alias"]:
            columns = [f"{use['alias']}.{column}" for column in columns]
        return ", ".join(columns)

    def statuses(use: re.Match[str]) -> str:
        if use["name"] not in STATUS_SETS:
            raise ValueError(f"status set {use['name']!r} is not defined")
        return sql_list(use["name"])

    return {
        # The file is ours and shipped with the package, never user input.
        name: cast(  # type: ignore[redundant-cast]
            "LiteralString", _USE.sub(expand, _STATUSES.sub(statuses, body))
        )
        for (kind, name), body in blocks.items()
        if kind == "name"
    }


@functools.cache
def queries() -> Mapping[str, LiteralString]:
    text = importlib.resources.files(__package__).joinpath("queries.sql").read_text("utf-8")
    return parse(text)
