"""The key layout, and the one check every key passes before any store touches it.

    public/renders/<job_id>/<idx>.<ext>    a delivered output, served to anyone with the URL
    private/<user_id>/inputs/<name>        a user's input image, reachable only presigned

A key is a relative, `/`-separated name. The same rules hold for every store so that
a key that works on the twin works on disk and in a bucket: no empty, `.` or `..`
segment, no leading `/`, no backslash (a separator on Windows and to some S3 tools),
no NUL or other control character, at most 1024 bytes (S3's limit).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import attrs

from ._errors import InvalidKey

MAX_KEY_BYTES: Final = 1024
PUBLIC_PREFIX: Final = "public/"
PRIVATE_PREFIX: Final = "private/"
RENDERS_PREFIX: Final = "public/renders/"
# The image types the store serves by extension (the filesystem keeps no content type).
IMAGE_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "png": "image/png",
        "jpg": "image/jpeg",
        "jpeg": "image/jpeg",
        "webp": "image/webp",
        "gif": "image/gif",
    }
)
# The extension each image type is stored under (the first of IMAGE_TYPES naming it).
EXTENSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_SEGMENT: Final = re.compile(r"[^/]+")
_RENDER: Final = re.compile(
    r"public/renders/(?P<job>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"/(?P<idx>0|[1-9][0-9]{0,5})\.(?P<ext>[a-z]+)"
)
_INPUT: Final = re.compile(r"private/(?P<user>[^/]+)/inputs/(?P<name>[^/]+)")


@attrs.frozen
class RenderKey:
    job_id: uuid.UUID
    idx: int
    extension: str


@attrs.frozen
class InputKey:
    user_id: str
    name: str


def check_key(key: str) -> str:
    """`key` itself when it is a safe relative object name.

    Raises:
        InvalidKey: empty, absolute, a `.`/`..`/empty segment, a backslash, a control
            character, or longer than 1024 bytes.
    """
    if not key:
        raise InvalidKey("an object key must not be empty")
    if _CONTROL.search(key):
        raise InvalidKey(f"object key {key!r} holds a control character")
    if "\\" in key:
        raise InvalidKey(f"object key {key!r} holds a backslash")
    if key.startswith("/"):
        raise InvalidKey(f"object key {key!r} is absolute")
    if any(segment in {"", ".", ".."} for segment in key.split("/")):
        raise InvalidKey(f"object key {key!r} has an empty, '.' or '..' segment")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidKey(f"object key is longer than {MAX_KEY_BYTES} bytes")
    return key


def render_key(job_id: uuid.UUID, idx: int, extension: str) -> str:
    """`public/renders/<job_id>/<idx>.<ext>`, the key of a delivered output.

    Raises:
        InvalidKey: a negative index or an extension not in `IMAGE_TYPES`.
    """
    if idx < 0:
        raise InvalidKey(f"output index {idx} is negative")
    if extension not in IMAGE_TYPES:
        raise InvalidKey(f"extension {extension!r} is not one of {sorted(IMAGE_TYPES)}")
    return f"{RENDERS_PREFIX}{job_id}/{idx}.{extension}"


def input_key(user_id: str, name: str) -> str:
    """`private/<user_id>/inputs/<name>`, the key of a user's input image.

    Raises:
        InvalidKey: a user id or name that is not one safe segment (`/`, `..`, NUL...).
    """
    for part, what in ((user_id, "user id"), (name, "input name")):
        if _SEGMENT.fullmatch(part) is None or part in {".", ".."}:
            raise InvalidKey(f"{what} {part!r} must be one path segment")
    return check_key(f"{PRIVATE_PREFIX}{user_id}/inputs/{name}")


def parse_render_key(key: str) -> RenderKey | None:
    """The parts of a render key in its one canonical spelling, else None."""
    found = _RENDER.fullmatch(key)
    if found is None or found["ext"] not in IMAGE_TYPES:
        return None
    return RenderKey(uuid.UUID(found["job"]), int(found["idx"]), found["ext"])


def parse_input_key(key: str) -> InputKey | None:
    """The user id and name of an input key, else None."""
    found = _INPUT.fullmatch(key)
    if found is None:
        return None
    try:
        check_key(key)
    except InvalidKey:
        return None
    return InputKey(found["user"], found["name"])


def type_for(key: str) -> str | None:
    """The image content type the key's extension names, or None."""
    _, dot, extension = key.rpartition("/")[2].rpartition(".")
    return IMAGE_TYPES.get(extension.lower()) if dot else None


def require_public(key: str) -> str:
    """`key` when it is a checked `public/...` key.

    Raises:
        InvalidKey: a bad key, or one outside `public/`.
    """
    check_key(key)
    if not key.startswith(PUBLIC_PREFIX):
        raise InvalidKey(f"{key!r} is not a public/ key; only those have a public URL")
    return key


def require_private(key: str) -> str:
    """`key` when it is a checked `private/...` key.

    Raises:
        InvalidKey: a bad key, or one outside `private/`.
    """
    check_key(key)
    if not key.startswith(PRIVATE_PREFIX):
        raise InvalidKey(f"{key!r} is not a private/ key; public ones need no signature")
    return key
