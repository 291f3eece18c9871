"""Whether a failed prediction is worth paying for again, and how long to wait first.

Pure rules, no I/O. A retry costs provider money and time inside the job's one deadline,
so only what the provider itself calls transient is retried; anything it calls final
(invalid input, a content refusal) or that cannot be read with confidence is not. The
adapters apply these to what their provider says and set `Prediction.retryable`.
"""

from __future__ import annotations

import random
import re
from typing import Final

# Checked before the transient patterns: a final word wins over a transient-sounding one
# ("invalid input: request timed out" is still invalid input).
_FINAL: Final = re.compile(
    r"nsfw|safety|content policy|flagged|moderat|prohibited|not allowed|validation|invalid"
    r"|unsupported|must be|out of memory",
    re.IGNORECASE,
)
# A CUDA OOM is listed as final on purpose: it follows from the input (size, steps) on a
# given model and GPU type, so a fresh prediction of the same request usually fails again.
_TRANSIENT: Final = re.compile(
    r"please retry|interrupted|timed out|timeout|internal (server )?error|unexpected error"
    r"|service unavailable|temporarily|try again|connection (reset|refused|closed)"
    r"|bad gateway|\b50[0234]\b",
    re.IGNORECASE,
)

# KIE's documented task failure codes: 5xx-class are its side, the rest are final.
# 501 is "generation failed" (the model refused or broke on this input), not a server fault.
_KIE_TRANSIENT_CODES: Final = frozenset({"455", "500", "502", "503", "504"})
_KIE_FINAL_CODES: Final = frozenset({"400", "401", "402", "403", "404", "413", "422", "501", "505"})


def failure_text_retryable(error: str | None) -> bool | None:
    """Read a provider's failure text: True transient, False final, None cannot tell.

    Replicate reports a failed prediction only as free text (``error``); this is its
    classification, and KIE's fallback when the code says nothing.
    """
    if not error:
        return None
    if _FINAL.search(error):
        return False
    if _TRANSIENT.search(error):
        return True
    return None


def kie_failure_retryable(fail_code: str | int | None, fail_msg: str | None) -> bool | None:
    """KIE's ``failCode`` decides when it is a known one; otherwise its ``failMsg`` text."""
    code = "" if fail_code is None else str(fail_code).strip()
    if code in _KIE_TRANSIENT_CODES:
        return True
    if code in _KIE_FINAL_CODES:
        return False
    return failure_text_retryable(fail_msg)


def retry_delay(
    attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before attempt number ``attempt`` (2 for the first retry).

    Exponential from ``base_s``, capped at ``max_s``, with jitter between half and all of
    it so a provider outage does not get every job's retry at the same instant.
    """
    exponent = max(attempt - 2, 0)
    ceiling = min(base_s * 2.0**exponent, max_s)
    draw = (rng or random).uniform(0.5, 1.0)  # jitter, not cryptography
    return ceiling * draw


def retry_margin(deadline_s: float, *, most_s: float = 5.0) -> float:
    """Seconds an attempt needs left before the deadline to be worth starting.

    A prediction started with less than this left would most likely be cut off by the
    deadline and cancelled: paid for upstream, delivering nothing. A quarter of the
    deadline, at most ``most_s`` (a fast model's typical run).
    """
    return min(most_s, deadline_s / 4)
