"""The simulated provider's memory: predictions and counters, with no I/O and no own clock.

A prediction's whole future is drawn when it is created (when it starts, when and how it
ends), and its status is computed from the injected monotonic clock whenever it is read. So
nothing runs in the background, and tests drive time with a fake clock instead of sleeping.
Webhooks work the same way: `SimulatorState.next_webhook_at` says when the next one falls
due and `SimulatorState.take_due_webhooks` hands out what is due, with every misbehaviour
(drops, duplicates, stale reorderings) already drawn; the sender in ``_webhooks`` only does
the I/O. Image inputs too: a prediction with ``image_input`` queues one fetch per URL
(`SimulatorState.take_input_fetches`), the fetcher in ``_fetcher`` reports each outcome
(`SimulatorState.record_input_fetch`), and until every one is in the prediction cannot end.
"""

from __future__ import annotations

import enum
import heapq
import json
import random
import string
import types
from collections.abc import Callable, Mapping
from typing import Final, Literal

import attrs

from ._config import SimulatorConfig
from ._images import render_output
from ._inputs import (
    IMAGE_INPUT_MODELS,
    ImageInputs,
    InputFetch,
    InputFetchRequest,
    InvalidPredictionInput,
    image_input_urls,
)
from ._wire import WireFailure, WireStatus

MAX_OUTPUTS: Final = 30
_ID_ALPHABET: Final = string.ascii_lowercase + "234567"
_ID_LENGTH: Final = 26
_STARTING_SHARE: Final = 0.25
_SLOW_FACTOR: Final = 10.0
_MALFORMED_VARIANTS: Final = 4
WEBHOOK_RETRIES: Final = 3
_WEBHOOK_ID_LENGTH: Final = 26
SIMULATED_ERROR: Final = WireFailure.MODEL.text
GARBLED_ERROR: Final = WireFailure.GARBLED.text


class Directive(enum.StrEnum):
    """Per-prediction overrides of the random draw, sent as ``input["simulate"]``."""

    HANG = "hang"
    FAIL = "fail"
    FAIL_GARBLED = "fail_garbled"
    # The first prediction made for this output (same input, same webhook tag) fails on
    # the provider's side, retryably; every later one succeeds.
    FAIL_ONCE = "fail_once"
    FAIL_TRANSIENT = "fail_transient"
    FAIL_NSFW = "fail_nsfw"
    SUCCEED = "succeed"
    SLOW = "slow"


class FaultKind(enum.StrEnum):
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    MALFORMED = "malformed"


@attrs.frozen
class Fault:
    """A misbehaviour drawn for one API request; ``variant`` picks which malformed body."""

    kind: FaultKind
    status_code: int
    variant: int = 0


class WebhookKind(enum.StrEnum):
    """Why a webhook message exists; ``start`` and ``completed`` are Replicate's event names."""

    START = "start"
    COMPLETED = "completed"
    DUPLICATE = "duplicate"
    STALE = "stale"


WebhookCounter = Literal["attempted", "delivered", "failed", "refused", "abandoned"]
_WEBHOOK_COUNTERS: Final = (
    "attempted",
    "delivered",
    "failed",
    "duplicated",
    "reordered",
    "refused",
    "abandoned",
)


@attrs.frozen
class WebhookDelivery:
    """One webhook message the simulator owes a receiver, its fate drawn when it fell due.

    Drawing ``drops`` up front rather than per attempt keeps a seeded run reproducible
    however deliveries interleave on the network.

    Attributes:
        url: Where to POST it.
        webhook_id: Its Standard Webhooks ``webhook-id``; a duplicate repeats its original's.
        kind: Why it exists.
        prediction: What it reports.
        moment: Monotonic time of the event it reports; a stale message's predates the final.
        drops: How many leading attempts are dropped; above `WEBHOOK_RETRIES` it never arrives.
    """

    url: str
    webhook_id: str
    kind: WebhookKind
    prediction: SimulatedPrediction
    moment: float
    drops: int


class _Outcome(enum.Enum):
    SUCCEED = enum.auto()
    FAIL = enum.auto()
    FAIL_GARBLED = enum.auto()
    FAIL_TRANSIENT = enum.auto()
    FAIL_NSFW = enum.auto()
    HANG = enum.auto()


_DIRECTED: Final = {
    Directive.HANG: _Outcome.HANG,
    Directive.FAIL: _Outcome.FAIL,
    Directive.FAIL_GARBLED: _Outcome.FAIL_GARBLED,
    Directive.FAIL_TRANSIENT: _Outcome.FAIL_TRANSIENT,
    Directive.FAIL_NSFW: _Outcome.FAIL_NSFW,
    Directive.SUCCEED: _Outcome.SUCCEED,
    Directive.SLOW: _Outcome.SUCCEED,
}
_FAILURES: Final = {
    _Outcome.FAIL: WireFailure.MODEL,
    _Outcome.FAIL_GARBLED: WireFailure.GARBLED,
    _Outcome.FAIL_TRANSIENT: WireFailure.TRANSIENT,
    _Outcome.FAIL_NSFW: WireFailure.NSFW,
}


@attrs.define
class _Record:
    id: str
    seq: int
    model: str | None
    version: str | None
    input: Mapping[str, object]
    num_outputs: int
    webhook: str | None
    webhook_events_filter: tuple[str, ...]
    created_at: float
    started_at: float
    finish_at: float | None
    outcome: _Outcome
    canceled_at: float | None = None
    webhooks_sent: set[WebhookKind] = attrs.Factory(set)
    image_input: tuple[str, ...] = ()
    fetches: dict[int, InputFetch] = attrs.Factory(dict)
    # When the last input fetch reported; stays None while any is under way.
    inputs_done_at: float | None = None

    @property
    def inputs(self) -> ImageInputs:
        fetched = tuple(self.fetches.get(index) for index in range(len(self.image_input)))
        return ImageInputs(self.id, self.model, self.image_input, fetched)

    @property
    def input_failure(self) -> InputFetch | None:
        return self.inputs.failure if self.inputs_done_at is not None else None

    @property
    def ends_at(self) -> float | None:
        """When it ends on its own; ``None`` while undecided (inputs in flight, or a hang).

        The model cannot run before its inputs are in, so success waits for the last
        fetch; an unusable input ends it at once, whatever was drawn (a hang, a failure),
        but never before it reported starting, so the start event still comes first.
        """
        if self.image_input and self.inputs_done_at is None:
            return None
        if self.inputs_done_at is not None and self.input_failure is not None:
            return max(self.inputs_done_at, self.started_at)
        if self.finish_at is None or self.inputs_done_at is None:
            return self.finish_at
        return max(self.finish_at, self.inputs_done_at)

    @property
    def terminal_at(self) -> float | None:
        """When it ends: cancel only ever lands before the decided end, so it wins."""
        return self.canceled_at if self.canceled_at is not None else self.ends_at

    def status(self, now: float) -> WireStatus:
        if self.canceled_at is not None:
            return WireStatus.CANCELED
        ends_at = self.ends_at
        if ends_at is not None and now >= ends_at:
            if self.input_failure is not None or self.outcome in _FAILURES:
                return WireStatus.FAILED
            return WireStatus.SUCCEEDED
        if now >= self.started_at:
            return WireStatus.PROCESSING
        return WireStatus.STARTING


@attrs.frozen
class SimulatedPrediction:
    """A prediction as the simulator would report it at one moment (monotonic seconds)."""

    id: str
    seq: int
    model: str | None
    version: str | None
    input: Mapping[str, object]
    num_outputs: int
    status: WireStatus
    created_at: float
    started_at: float | None
    completed_at: float | None
    error: str | None
    webhook: str | None
    webhook_events_filter: tuple[str, ...]
    # KIE's failCode for a failed one; Replicate has only the error text.
    fail_code: str | None = None


def _snapshot(record: _Record, now: float) -> SimulatedPrediction:
    status = record.status(now)
    completed_at: float | None = None
    if status is WireStatus.CANCELED:
        completed_at = record.canceled_at
    elif status.terminal:
        completed_at = record.ends_at
    started = now >= record.started_at and (
        record.canceled_at is None or record.canceled_at >= record.started_at
    )
    return SimulatedPrediction(
        id=record.id,
        seq=record.seq,
        model=record.model,
        version=record.version,
        input=record.input,
        num_outputs=record.num_outputs,
        status=status,
        created_at=record.created_at,
        started_at=record.started_at if started else None,
        completed_at=completed_at,
        error=_error(record) if status is WireStatus.FAILED else None,
        webhook=record.webhook,
        webhook_events_filter=record.webhook_events_filter,
        fail_code=_failure(record).kie_code if status is WireStatus.FAILED else None,
    )


def _failure(record: _Record) -> WireFailure:
    """A garbled failure carries NUL, terminal escapes and 5,000 characters, as real ones can."""
    return _FAILURES.get(record.outcome, WireFailure.MODEL)


def _error(record: _Record) -> str:
    """An unusable input is reported instead of the drawn failure: it happened first."""
    failure = record.input_failure
    if failure is not None and failure.error is not None:
        return failure.error
    return _failure(record).text


def _processing_view(record: _Record) -> SimulatedPrediction:
    """The prediction as it was while running, even if its start and end coincide."""
    return attrs.evolve(
        _snapshot(record, record.started_at),
        status=WireStatus.PROCESSING,
        started_at=record.started_at,
        completed_at=None,
        error=None,
        fail_code=None,
    )


def _num_outputs(value: object) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPredictionInput("input.num_outputs must be an integer")
    if not 1 <= value <= MAX_OUTPUTS:
        raise InvalidPredictionInput(f"input.num_outputs must be between 1 and {MAX_OUTPUTS}")
    return value


def _directive(value: object) -> Directive | None:
    if value is None:
        return None
    try:
        return Directive(str(value))
    except ValueError:
        allowed = ", ".join(d.value for d in Directive)
        raise InvalidPredictionInput(f"input.simulate must be one of: {allowed}") from None


class SimulatorState:
    """Every prediction the simulator knows, and the counters `/_sim/stats` reports.

    Methods never await, so under Trio each one is atomic with respect to the others.

    Args:
        config: The misbehaviour to simulate; its seed fixes every random draw.
        clock: Monotonic seconds, e.g. ``trio.current_time``; a fake one in tests.
        on_change: Called after anything that may move the next webhook's due time (a
            create, a cancel), so a sleeping sender can wake and look again.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        clock: Callable[[], float],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.config: Final = config
        self._clock = clock
        self._on_change = on_change
        self._rng = random.Random(config.seed)  # noqa: S311 -- a simulator, not cryptography
        # Webhook draws have their own stream, so delivery timing never shifts API draws.
        self._webhook_rng = random.Random(  # noqa: S311 -- a simulator, not cryptography
            None if config.seed is None else f"webhooks-{config.seed}"
        )
        self._webhook_pending: dict[str, _Record] = {}
        # (due, seq, id) for every owed webhook with a known time; entries a cancel
        # made stale are dropped when they surface. Keeps each wake O(log n).
        self._webhook_heap: list[tuple[float, int, str]] = []
        self._webhook_counters: dict[str, int] = dict.fromkeys(_WEBHOOK_COUNTERS, 0)
        self._records: dict[str, _Record] = {}
        # (webhook, input) of every `fail_once` prediction made, for its first-time failure.
        self._attempted: set[tuple[str | None, str]] = set()
        self._order: list[_Record] = []
        self._input_queue: list[InputFetchRequest] = []
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "created",
                "input_fetches",
                "input_fetch_failures",
                "gets",
                "cancels",
                "canceled",
                "lists",
                "files",
                "unauthorized",
                *(kind.value for kind in FaultKind),
            ),
            0,
        )

    def now(self) -> float:
        return self._clock()

    def draw_fault(self) -> Fault | None:
        """Decide whether this API request misbehaves, counting it if so."""
        config = self.config
        fault: Fault | None = None
        if self._rng.random() < config.rate_limit_rate:
            fault = Fault(FaultKind.RATE_LIMITED, 429)
        elif self._rng.random() < config.server_error_rate:
            fault = Fault(FaultKind.SERVER_ERROR, self._rng.choice((500, 503)))
        elif self._rng.random() < config.malformed_rate:
            fault = Fault(FaultKind.MALFORMED, 200, self._rng.randrange(_MALFORMED_VARIANTS))
        if fault is not None:
            self._counters[fault.kind.value] += 1
        return fault

    def note_unauthorized(self) -> None:
        self._counters["unauthorized"] += 1

    def create(
        self,
        prediction_input: Mapping[str, object],
        *,
        model: str | None = None,
        version: str | None = None,
        webhook: str | None = None,
        webhook_events_filter: tuple[str, ...] = (),
    ) -> SimulatedPrediction:
        """Create a prediction and draw its future.

        The draws happen in the same order whatever the directive, so one request's
        directive never shifts the random stream seen by the next one.

        Raises:
            InvalidPredictionInput: Missing prompt, bad ``num_outputs``, ``simulate`` or
                ``image_input``.
        """
        if not isinstance(prediction_input.get("prompt"), str):
            raise InvalidPredictionInput("input.prompt is required and must be a string")
        num_outputs = _num_outputs(prediction_input.get("num_outputs"))
        directive = _directive(prediction_input.get("simulate"))
        image_input = self._image_input(prediction_input, model)
        low, high = self.config.latency
        duration = self._rng.uniform(low, high)
        fails = self._rng.random() < self.config.failure_rate
        hangs = self._rng.random() < self.config.hang_rate
        prediction_id = self._new_id()
        if directive is Directive.SLOW:
            duration *= _SLOW_FACTOR
        outcome = self._outcome(directive, prediction_input, webhook, hangs=hangs, fails=fails)
        now = self._clock()
        record = _Record(
            id=prediction_id,
            seq=len(self._order),
            model=model,
            version=version,
            input=types.MappingProxyType(dict(prediction_input)),
            num_outputs=num_outputs,
            webhook=webhook,
            webhook_events_filter=webhook_events_filter,
            created_at=now,
            started_at=now + duration * _STARTING_SHARE,
            finish_at=None if outcome is _Outcome.HANG else now + duration,
            outcome=outcome,
            image_input=image_input,
        )
        self._records[prediction_id] = record
        self._order.append(record)
        self._counters["created"] += 1
        self._input_queue.extend(
            InputFetchRequest(prediction_id, index, url) for index, url in enumerate(image_input)
        )
        if webhook is not None and self._owed_webhooks(record):
            self._webhook_pending[prediction_id] = record
            self._schedule(record)
        if image_input or record.id in self._webhook_pending:
            self._on_change()
        return _snapshot(record, now)

    def _image_input(
        self, prediction_input: Mapping[str, object], model: str | None
    ) -> tuple[str, ...]:
        """The URLs to fetch: only Replicate's models whose schema has ``image_input``.

        Elsewhere (KIE, other models) the key is an opaque input, echoed and not fetched.
        """
        if self.config.api != "replicate" or model not in IMAGE_INPUT_MODELS:
            return ()
        return image_input_urls(prediction_input.get("image_input"))

    def take_input_fetches(self) -> list[InputFetchRequest]:
        """Every input fetch queued since the last call, in creation order, each handed out once."""
        queued, self._input_queue = self._input_queue, []
        return queued

    def record_input_fetch(self, prediction_id: str, fetch: InputFetch) -> None:
        """Keep what one fetch found; the last one in decides when the prediction can end.

        A second report for the same input, or one for an unknown prediction, is ignored:
        what the provider saw first is what it acted on.
        """
        record = self._records.get(prediction_id)
        if record is None or fetch.index in record.fetches:
            return
        if not 0 <= fetch.index < len(record.image_input):
            return
        record.fetches[fetch.index] = fetch
        self._counters["input_fetches"] += 1
        if not fetch.ok:
            self._counters["input_fetch_failures"] += 1
        if len(record.fetches) == len(record.image_input):
            record.inputs_done_at = self._clock()
            if record.id in self._webhook_pending:
                self._schedule(record)
            self._on_change()

    def image_inputs(self, prediction_id: str) -> ImageInputs | None:
        """What this prediction was given as ``image_input`` and what fetching found.

        ``None`` for an unknown prediction; empty ``urls`` for one given no image input.
        """
        record = self._records.get(prediction_id)
        return None if record is None else record.inputs

    def all_image_inputs(self) -> list[ImageInputs]:
        """`image_inputs` of every prediction given any, oldest first."""
        return [record.inputs for record in self._order if record.image_input]

    def _outcome(
        self,
        directive: Directive | None,
        prediction_input: Mapping[str, object],
        webhook: str | None,
        *,
        hangs: bool,
        fails: bool,
    ) -> _Outcome:
        if directive is None:
            return _Outcome.HANG if hangs else _Outcome.FAIL if fails else _Outcome.SUCCEED
        if directive is Directive.FAIL_ONCE:
            first = self._first_attempt(prediction_input, webhook)
            return _Outcome.FAIL_TRANSIENT if first else _Outcome.SUCCEED
        return _DIRECTED[directive]

    def _first_attempt(self, prediction_input: Mapping[str, object], webhook: str | None) -> bool:
        """Whether no prediction was made before for this input and webhook (job and output).

        ``image_input`` is left out of the key: a retry carries freshly presigned URLs for
        the same photos, and must still count as the same output's second attempt.
        """
        stable = {key: value for key, value in prediction_input.items() if key != "image_input"}
        key = (webhook, json.dumps(stable, sort_keys=True, default=str))
        if key in self._attempted:
            return False
        self._attempted.add(key)
        return True

    def get(self, prediction_id: str) -> SimulatedPrediction | None:
        self._counters["gets"] += 1
        record = self._records.get(prediction_id)
        return None if record is None else _snapshot(record, self._clock())

    def cancel(self, prediction_id: str) -> SimulatedPrediction | None:
        """Cancel unless already finished; a finished prediction comes back unchanged."""
        self._counters["cancels"] += 1
        record = self._records.get(prediction_id)
        if record is None:
            return None
        now = self._clock()
        if not record.status(now).terminal:
            record.canceled_at = now
            self._counters["canceled"] += 1
            if record.id in self._webhook_pending:
                self._schedule(record)
            self._on_change()
        return _snapshot(record, now)

    def list_page(self, cursor: int | None = None) -> tuple[list[SimulatedPrediction], int | None]:
        """One page, newest first, and the cursor of the next page (``None`` at the end).

        The cursor is the sequence number of the last prediction returned, so predictions
        created while a client pages through never shift what it sees.
        """
        self._counters["lists"] += 1
        end = len(self._order) if cursor is None else max(0, min(cursor, len(self._order)))
        start = max(0, end - self.config.page_size)
        now = self._clock()
        page = [_snapshot(record, now) for record in reversed(self._order[start:end])]
        return page, (start if start > 0 else None)

    def output_png(self, prediction_id: str, idx: int) -> bytes | None:
        """The bytes of one output, or ``None`` unless the prediction succeeded with it."""
        self._counters["files"] += 1
        record = self._records.get(prediction_id)
        if record is None or not 0 <= idx < record.num_outputs:
            return None
        if record.status(self._clock()) is not WireStatus.SUCCEEDED:
            return None
        return render_output(prediction_id, idx)

    def stats(self) -> dict[str, object]:
        """Counters so far, plus how many predictions are in each status right now."""
        now = self._clock()
        statuses = dict.fromkeys((s.value for s in WireStatus), 0)
        for record in self._order:
            statuses[record.status(now).value] += 1
        return {
            **self._counters,
            "predictions": len(self._order),
            "statuses": statuses,
            "webhooks": dict(self._webhook_counters),
        }

    def note_webhook(self, counter: WebhookCounter) -> None:
        """Count what the sender did with a message, for `/_sim/stats`."""
        self._webhook_counters[counter] += 1

    def next_webhook_at(self) -> float | None:
        """When the earliest owed webhook falls due, or ``None`` if none has a known time."""
        while self._webhook_heap:
            due, _, prediction_id = self._webhook_heap[0]
            if self._still_owed(prediction_id, due):
                return due
            heapq.heappop(self._webhook_heap)
        return None

    def take_due_webhooks(self) -> list[tuple[WebhookDelivery, ...]]:
        """Every webhook due now, grouped per prediction in the order it must be sent.

        Each group is sent one message after the other: an event, then (drawn here) its
        duplicate and a stale ``processing`` event that must arrive after the final one.
        """
        now = self._clock()
        records: dict[str, _Record] = {}
        while self._webhook_heap and self._webhook_heap[0][0] <= now:
            due, _, prediction_id = heapq.heappop(self._webhook_heap)
            if self._still_owed(prediction_id, due):
                records[prediction_id] = self._webhook_pending[prediction_id]
        due_now = sorted(
            (at, record.seq, kind, record)
            for record in records.values()
            for at, kind in self._owed_webhooks(record)
            if at is not None and at <= now
        )
        groups: dict[str, list[WebhookDelivery]] = {}
        for at, _, kind, record in due_now:
            record.webhooks_sent.add(kind)
            groups.setdefault(record.id, []).extend(self._messages(record, kind, at, now))
        for prediction_id in groups:
            if not self._owed_webhooks(self._records[prediction_id]):
                del self._webhook_pending[prediction_id]
        return [tuple(messages) for messages in groups.values()]

    def _schedule(self, record: _Record) -> None:
        for due, _ in self._owed_webhooks(record):
            if due is not None:
                heapq.heappush(self._webhook_heap, (due, record.seq, record.id))

    def _still_owed(self, prediction_id: str, due: float) -> bool:
        record = self._webhook_pending.get(prediction_id)
        return record is not None and any(at == due for at, _ in self._owed_webhooks(record))

    def _owed_webhooks(self, record: _Record) -> list[tuple[float | None, WebhookKind]]:
        """Events still to send and when; ``None`` for an end that has not been decided yet."""
        wanted = record.webhook_events_filter
        owed: list[tuple[float | None, WebhookKind]] = []
        if (
            self.config.api == "replicate"
            and (not wanted or WebhookKind.START in wanted)
            and WebhookKind.START not in record.webhooks_sent
            and (record.canceled_at is None or record.canceled_at >= record.started_at)
        ):
            owed.append((record.started_at, WebhookKind.START))
        if (
            not wanted or WebhookKind.COMPLETED in wanted
        ) and WebhookKind.COMPLETED not in record.webhooks_sent:
            owed.append((record.terminal_at, WebhookKind.COMPLETED))
        return owed

    def _messages(
        self, record: _Record, kind: WebhookKind, at: float, now: float
    ) -> list[WebhookDelivery]:
        assert record.webhook is not None  # noqa: S101 -- only records with one are pending
        view = _processing_view(record) if kind is WebhookKind.START else _snapshot(record, now)
        event = WebhookDelivery(record.webhook, self._webhook_id(), kind, view, at, self._drops())
        messages = [event]
        if kind is not WebhookKind.COMPLETED:
            return messages
        duplicate = self._webhook_rng.random() < self.config.webhook_duplicate_rate
        stale = self._webhook_rng.random() < self.config.webhook_reorder_rate
        if duplicate:
            self._webhook_counters["duplicated"] += 1
            messages.append(attrs.evolve(event, kind=WebhookKind.DUPLICATE, drops=self._drops()))
        if stale:
            self._webhook_counters["reordered"] += 1
            messages.append(
                WebhookDelivery(
                    record.webhook,
                    self._webhook_id(),
                    WebhookKind.STALE,
                    _processing_view(record),
                    min(record.started_at, at),
                    self._drops(),
                )
            )
        return messages

    def _drops(self) -> int:
        drops = 0
        while (
            drops <= WEBHOOK_RETRIES
            and self._webhook_rng.random() < self.config.webhook_failure_rate
        ):
            drops += 1
        return drops

    def _webhook_id(self) -> str:
        return "msg_" + "".join(self._webhook_rng.choices(_ID_ALPHABET, k=_WEBHOOK_ID_LENGTH))

    def _new_id(self) -> str:
        while True:
            candidate = "".join(self._rng.choices(_ID_ALPHABET, k=_ID_LENGTH))
            if candidate not in self._records:
                return candidate
