"""The simulator's own words for a prediction's state, as Replicate's API writes them.

Written out here rather than imported from the adapters it is meant to test: if the
adapters' vocabulary changed, the oracle must not change with it.
"""

from __future__ import annotations

import enum


class WireStatus(enum.StrEnum):
    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self not in {WireStatus.STARTING, WireStatus.PROCESSING}


class WireFailure(enum.Enum):
    """How a failed prediction failed, in the words and codes the real providers use.

    Each value is (Replicate's ``error`` text, KIE's ``failCode``); the text is KIE's
    ``failMsg`` too. The random failure and ``simulate: fail`` are a model error on this
    input; ``fail_once`` and ``fail_transient`` one on the provider's side, which a
    client may retry; ``fail_nsfw`` a content refusal, which it must not.
    """

    MODEL = (
        (
            "simulated failure: CUDA out of memory while loading "
            "https://sim-user:sim-secret@weights.invalid/model.safetensors?sig=sim-signature"
        ),
        "501",
    )
    GARBLED = (
        "simulated failure:\x00 garbled\x1b[31m driver\x07 output\r\n" + "\x00" * 8 + "x" * 5000,
        "501",
    )
    TRANSIENT = ("Prediction interrupted; please retry (code: PA)", "500")
    NSFW = (
        "NSFW content detected. Try running it again, or try a different prompt.",
        "400",
    )

    @property
    def text(self) -> str:
        return self.value[0]

    @property
    def kie_code(self) -> str:
        return self.value[1]
