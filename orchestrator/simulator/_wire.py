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
