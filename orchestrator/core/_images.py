"""A job's input images (`params.image_input`): whose they are, and what may be fetched.

An image-editing model (google/nano-banana) takes `image_input`, a list of image
URLs. Users' photos are private, so a job names them by key under its own user's
folder, `private/<user_id>/inputs/<name>`, and the daemon hands the provider a
presigned URL that expires within minutes, at each create. A job may also name an
https URL on an operator's allow-list (`ORCHESTRATOR_INPUT_HOSTS`). Anything else,
another user's key above all, is refused before the debit, as is an input that is
missing, is no image, or is too large (the `InputImages` port checks those).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import attrs

from ._hosts import HostList

IMAGE_INPUT: Final = "image_input"
MAX_IMAGE_INPUTS: Final = 4
MAX_INPUT_NAME_CHARS: Final = 128
INPUT_HOSTS_SETTING: Final = "ORCHESTRATOR_INPUT_HOSTS"
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_IMAGE_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
SNIFF_BYTES: Final = 16


@attrs.frozen
class PrivateInput:
    """One of the user's own uploads, by key; handed to the provider as a presigned URL."""

    key: str


@attrs.frozen
class RemoteInput:
    """An allow-listed URL, handed to the provider as it is."""

    url: str


ImageInput = PrivateInput | RemoteInput


def input_name_problem(name: str) -> str | None:
    """Why `name` cannot name an input (under `private/<user_id>/inputs/`), or None.

    1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit: no key a job names
    can leave its user's folder, and every name is safe in a URL as it is.
    """
    if _NAME.fullmatch(name) is None:
        return (
            f"an input's name is 1 to {MAX_INPUT_NAME_CHARS} of A-Z a-z 0-9 . _ - "
            "and starts with a letter or digit"
        )
    return None


def image_inputs(
    user_id: str, params: Mapping[str, object], hosts: HostList
) -> tuple[ImageInput, ...] | str:
    """The job's image inputs, or why they are refused (a message for the user).

    No `image_input` in the params is no inputs. Whether the model takes image
    inputs at all is the params allow-list's to say (`params_problem`).
    """
    raw = params.get(IMAGE_INPUT)
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw or len(raw) > MAX_IMAGE_INPUTS:
        return f"{IMAGE_INPUT} must be a list of 1 to {MAX_IMAGE_INPUTS} input keys or https URLs"
    found: list[ImageInput] = []
    own = f"private/{user_id}/inputs/"
    for n, entry in enumerate(raw):
        if not isinstance(entry, str):
            return f"{IMAGE_INPUT}[{n}] must be a string"
        if entry.startswith(("https://", "http://")):
            if (problem := hosts.problem(entry, setting=INPUT_HOSTS_SETTING)) is not None:
                return f"{IMAGE_INPUT}[{n}] is refused: {problem}"
            found.append(RemoteInput(entry))
        elif entry.startswith(own) and _NAME.fullmatch(entry.removeprefix(own)):
            found.append(PrivateInput(entry))
        else:
            return (
                f"{IMAGE_INPUT}[{n}] is neither one of this user's inputs "
                f"({own}<name>) nor an allowed URL"
            )
    return tuple(found)


def sniffed_type(head: bytes) -> str | None:
    """The image type the first bytes of a file announce (PNG, JPEG, GIF, WebP), or None."""
    for magic, content_type in _IMAGE_MAGIC:
        if head.startswith(magic):
            return content_type
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":  # noqa: PLR2004
        return "image/webp"
    return None
