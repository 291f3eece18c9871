"""Which `params` may reach the provider: the model's declared inputs, as scalars.

Whatever a job's params hold is merged into the model input the operator pays for. A
key the model does not declare is at best ignored and at worst multiplies the bill
(``num_images: 4``, ``batch_size: 8``, ``num_inference_steps: 50``) while the user pays
for one output. So admission passes only an allow-list of inputs per provider and
model, each a JSON scalar (but `image_input`, a list: see `_images`), and refuses
everything else with a message naming the key.

The database enforces the same outer limits at INSERT (schema.sql,
``check_submission_v1``); these checks also catch rows that predate them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Final

from ._images import IMAGE_INPUT

MAX_USER_ID_CHARS: Final = 128
MAX_PARAMS_BYTES: Final = 16 * 1024
MAX_PARAMS_DEPTH: Final = 32
USER_ID: Final = re.compile(r"[A-Za-z0-9._@:+-]{1,128}")
RESERVED_PARAMS: Final = frozenset({"prompt", "num_outputs"})

# Inputs that multiply what one prediction costs upstream; never allowed, even by
# configuration, because the price of a job counts outputs only.
COST_MULTIPLIERS: Final = frozenset(
    {
        "batch_size",
        "max_images",
        "n",
        "num_images",
        "num_inference_steps",
        "num_outputs",
        "num_samples",
        "samples",
        "steps",
    }
)

# (provider, model) -> the inputs a job may set. The model's own safety and
# price-changing inputs (disable_safety_checker, num_inference_steps, num_outputs)
# are deliberately absent.
DEFAULT_ALLOWED: Final[Mapping[tuple[str, str], frozenset[str]]] = {
    ("replicate", "black-forest-labs/flux-schnell"): frozenset(
        {"aspect_ratio", "go_fast", "megapixels", "output_format", "output_quality", "seed"}
    ),
    # An image editor: `image_input` is its list of input images (see _images).
    ("replicate", "google/nano-banana"): frozenset(
        {"image_input", "aspect_ratio", "output_format"}
    ),
    ("kie", "google/nano-banana"): frozenset({"image_size", "output_format"}),
    # The bundled simulator (`orchestrator simulate-provider`, the demo).
    ("replicate", "sim/image"): frozenset({"seed", "simulate", "variation", "image_input"}),
    ("kie", "sim/image"): frozenset({"seed", "simulate", "variation"}),
}

_SHOWN_KEY_CHARS: Final = 40
_INT64: Final = 2**63


def default_allowed(provider: str, model: str) -> frozenset[str]:
    """The documented inputs of a known model; none for a model this table does not know."""
    return DEFAULT_ALLOWED.get((provider, model), frozenset())


def params_problem(params: Mapping[str, object], allowed: frozenset[str]) -> str | None:
    """Why these params may not reach the provider, or None when they may."""
    return next(_problems(params, allowed), None)


def user_id_problem(user_id: str) -> str | None:
    if USER_ID.fullmatch(user_id) is None:
        return f"user_id must be 1 to {MAX_USER_ID_CHARS} characters of A-Z a-z 0-9 . _ @ : + -"
    return None


def _problems(params: Mapping[str, object], allowed: frozenset[str]) -> Iterator[str]:
    keys = sorted(params)
    if reserved := [key for key in keys if key in RESERVED_PARAMS]:
        yield f"params must not set {_shown(reserved[0])}: it comes from the job itself"
    for key in keys:
        if key in allowed:
            continue
        if key in COST_MULTIPLIERS:
            yield (
                f"params key {_shown(key)} would multiply the provider's cost; "
                "ask for more images with num_outputs"
            )
        else:
            yield f"params key {_shown(key)} is not an input of this model ({_listing(allowed)})"
    for key in keys:
        if key == IMAGE_INPUT and key in allowed:
            continue  # a list of keys or URLs, checked by `image_inputs`
        if not _scalar(params[key]):
            yield (
                f"params key {_shown(key)} must be a string, a number within 64 bits, "
                "a boolean or null"
            )
    size = len(json.dumps(params, ensure_ascii=False).encode())
    if size > MAX_PARAMS_BYTES:
        yield f"params are {size} bytes as JSON; at most {MAX_PARAMS_BYTES} are allowed"


def _scalar(value: object) -> bool:
    """JSON scalars that every provider can take: finite, and integers within 64 bits.

    jsonb keeps ``1e400`` exactly and hands it over as a 401-digit integer.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -_INT64 <= value < _INT64
    if isinstance(value, float):
        return math.isfinite(value)
    return False


def _shown(key: str) -> str:
    """A key as a message may quote it: repr escapes control characters; long ones are cut."""
    if len(key) > _SHOWN_KEY_CHARS:
        return repr(key[:_SHOWN_KEY_CHARS]) + "…"
    return repr(key)


def _listing(allowed: frozenset[str]) -> str:
    if not allowed:
        return "it accepts no params here"
    return "allowed: " + ", ".join(sorted(allowed))
