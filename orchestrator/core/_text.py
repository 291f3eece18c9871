"""Text from outside made fit to store: no NUL, no control characters, bounded length."""

from __future__ import annotations

import re
from typing import Final

MAX_STORED_TEXT: Final = 2000
# C0 and C1 controls except tab and newline, DEL, and lone surrogates: Postgres `text`
# cannot hold NUL, and a surrogate cannot be encoded as UTF-8 at all.
_UNSTORABLE: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(text: str, limit: int = MAX_STORED_TEXT) -> str:
    """Drop NUL and control characters (keeping newline and tab) and cap the length.

    Provider error texts are free-form and arbitrarily long; one NUL in them made
    finishing a job fail in Postgres and left it charged and unfinished. Cut texts end
    in an ellipsis, so the result is never longer than ``limit`` characters.
    """
    text = _UNSTORABLE.sub("", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
