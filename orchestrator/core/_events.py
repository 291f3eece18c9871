"""The app's side of an ending: the event feed's values, and what a callback says and when.

Every ending appends one `JobEvent` to the feed (schema.sql, `job_events`) in the
transaction that sets the terminal status. An app that can LISTEN hears
`orchestrator_job_events` and reads `job_events_after(seq)`; one that cannot (a
serverless backend) names a `callback_url`, and the owner of the job's slot POSTs
the ending there, signed, at least once. The rules for that POST are pure and live
here: its body, and when to try again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Final
from uuid import UUID

import attrs

from ._lifecycle import ErrorCode, JobStatus

EVENTS_CHANNEL: Final = "orchestrator_job_events"
CALLBACK_EVENT_TYPE: Final = "job.ended"


@attrs.frozen
class JobEvent:
    """One ending in the feed, as `job_events_after` returns it.

    `seq` increases strictly in the order readers see events, and no event with a
    smaller one can appear later: resuming after the last `seq` read misses nothing.
    """

    seq: int
    job_id: UUID
    user_id: str
    status: JobStatus
    error_code: ErrorCode | None
    finished_at: datetime


@attrs.frozen
class CallbackOutput:
    """An output as a callback reports it: enough for the app to fetch and check it."""

    idx: int
    public_url: str | None
    sha256: str | None
    content_type: str | None
    size_bytes: int | None


@attrs.frozen
class CallbackDue:
    """A callback claimed for one attempt: where it goes, and the ending it reports.

    `attempt` counts from 1 across every daemon that tried (the claim counts it);
    `created_at` is when the ending was recorded, the start of the retry window.
    """

    seq: int
    attempt: int
    url: str
    created_at: datetime
    event: JobEvent
    message: str | None
    outputs: tuple[CallbackOutput, ...] = ()

    @property
    def webhook_id(self) -> str:
        """The Standard Webhooks message id: the same on every attempt and every daemon."""
        return f"evt_{self.seq}"


def callback_body(due: CallbackDue) -> bytes:
    """The POST body: the Standard Webhooks envelope around the event and its outputs.

    Built from stored values only, so every attempt of one callback sends the same
    bytes (unless an operator deleted its outputs meanwhile).
    """
    event = due.event
    data: Mapping[str, object] = {
        "seq": event.seq,
        "job_id": str(event.job_id),
        "user_id": event.user_id,
        "status": event.status.value,
        "error_code": None if event.error_code is None else event.error_code.value,
        "message": due.message,
        "finished_at": event.finished_at.isoformat(),
        "outputs": [attrs.asdict(output) for output in due.outputs],
    }
    envelope = {
        "type": CALLBACK_EVENT_TYPE,
        "timestamp": event.finished_at.isoformat(),
        "data": data,
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


@attrs.frozen
class CallbackPolicy:
    """How long to keep trying a callback and how far apart.

    The n-th retry waits `initial_s`·2ⁿ⁻¹, capped at `max_s`, times a jitter in
    [0.5, 1) so receivers that came back are not hit by every sender at once; a
    retry that would land past `window_s` after the ending is not made: the
    callback is given up (`failed_at`), visibly.
    """

    initial_s: float = 1.0
    max_s: float = 3600.0
    window_s: float = 86400.0
    timeout_s: float = 10.0

    def retry_in(self, attempt: int, age_s: float, jitter: float) -> float | None:
        """Seconds until the next attempt after failed attempt `attempt`, or None: give up.

        `age_s` is how long ago the ending was recorded; `jitter` is a draw in [0, 1).
        """
        exponent = min(max(attempt - 1, 0), 64)
        delay = min(self.initial_s * math.pow(2.0, exponent), self.max_s)
        delay *= 0.5 + 0.5 * min(max(jitter, 0.0), 1.0)
        if age_s + delay > self.window_s:
            return None
        return delay
