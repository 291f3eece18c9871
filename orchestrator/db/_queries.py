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

_NAME: Final = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)$", re.MULTILINE)


def parse(text: str) -> dict[str, LiteralString]:
    """Split a queries file on its `-- name:` headers.

    Raises:
        ValueError: a name appears twice or a block has no statement.
    """
    queries: dict[str, LiteralString] = {}
    matches = list(_NAME.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        body = text[match.end() : end].strip()
        lines = [line for line in body.splitlines() if not line.startswith("--")]
        statement = "\n".join(lines).strip()
        name = match["name"]
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        if not statement:
            raise ValueError(f"query {name!r} has no statement")
        # The file is ours and shipped with the package, never user input.
        queries[name] = cast("LiteralString", statement)  # type: ignore[redundant-cast]
    return queries


@functools.cache
def queries() -> Mapping[str, LiteralString]:
    text = importlib.resources.files(__package__).joinpath("queries.sql").read_text("utf-8")
    return parse(text)
