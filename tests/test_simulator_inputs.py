"""The simulator's ``image_input``: validated at create, fetched like Replicate, recorded.

The state machine under a fake clock: a prediction cannot end before its inputs are in,
and a bad input fails it, naming which.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestrator.core import PredictionStatus
from orchestrator.simulator import (
    InputFetch,
    InvalidPredictionInput,
    SimulatorConfig,
    SimulatorState,
)

from .test_simulator import FakeClock

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60
PHOTOS = ("http://127.0.0.1:9/a.png?sig=1", "http://127.0.0.1:9/b.png?sig=2")


def state_with(clock: FakeClock, **config: Any) -> SimulatorState:
    return SimulatorState(SimulatorConfig(**({"latency": (1.0, 1.0)} | config)), clock=clock)


def fetched(index: int, url: str, problem: str | None = None, status: int = 200) -> InputFetch:
    return InputFetch(
        index=index,
        url=url,
        started_at=time.time(),
        elapsed=0.01,
        status_code=status,
        content_type="image/png",
        size=len(PNG),
        problem=problem,
    )


def create(state: SimulatorState, *urls: str, model: str = "sim/image", **extra: Any) -> str:
    body = {"prompt": "put a hat on it", "image_input": list(urls)} | extra
    return state.create(body, model=model).id


def status_error(state: SimulatorState, prediction_id: str) -> tuple[str, str | None]:
    got = state.get(prediction_id)
    assert got is not None
    return got.status.value, got.error


# --- state, under a fake clock ----------------------------------------------------------


def test_a_prediction_cannot_end_before_its_inputs_are_fetched():
    """Past its drawn latency it still processes; the last good fetch lets it succeed."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, *PHOTOS)
    requests = state.take_input_fetches()
    assert [(r.prediction_id, r.index, r.url) for r in requests] == [
        (prediction_id, 0, PHOTOS[0]),
        (prediction_id, 1, PHOTOS[1]),
    ]
    assert state.take_input_fetches() == []

    clock.advance(5.0)
    state.record_input_fetch(prediction_id, fetched(1, PHOTOS[1]))
    assert status_error(state, prediction_id) == ("processing", None)
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0]))
    done = state.get(prediction_id)
    assert done is not None
    assert done.status == PredictionStatus.SUCCEEDED
    assert done.completed_at == pytest.approx(1005.0)
    inputs = state.image_inputs(prediction_id)
    assert inputs is not None
    assert inputs.urls == PHOTOS
    assert inputs.done
    assert [f.index for f in inputs.fetches if f is not None] == [0, 1]
    assert state.stats()["input_fetches"] == 2


def test_fast_fetches_leave_the_drawn_latency_in_place():
    """Inputs in early do not hurry the model: it succeeds at its drawn finish, not before."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, PHOTOS[0])
    clock.advance(0.1)
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0]))
    clock.advance(0.5)
    assert status_error(state, prediction_id) == ("processing", None)
    clock.advance(0.5)
    done = state.get(prediction_id)
    assert done is not None
    assert done.status == PredictionStatus.SUCCEEDED
    assert done.completed_at == pytest.approx(1001.0)


def test_the_first_unusable_input_by_position_fails_the_prediction_whatever_was_drawn():
    """A 403 at index 1 fails even a ``hang``; the error names the input and the reason."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, *PHOTOS, "http://127.0.0.1:9/c.png", simulate="hang")
    clock.advance(2.0)
    state.record_input_fetch(prediction_id, fetched(2, "c", "HTTP 404", 404))
    state.record_input_fetch(prediction_id, fetched(1, PHOTOS[1], "HTTP 403", 403))
    assert status_error(state, prediction_id)[0] == "processing"
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0]))

    assert status_error(state, prediction_id) == (
        "failed",
        "image_input[1] could not be fetched: HTTP 403",
    )
    assert state.output_png(prediction_id, 0) is None
    assert state.stats()["input_fetch_failures"] == 2


def test_a_bad_input_ends_the_prediction_no_earlier_than_its_start():
    """A fetch failing at once still reports a start first, as the start webhook says."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, PHOTOS[0])
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0], "HTTP 403", 403))
    assert status_error(state, prediction_id) == ("starting", None)
    clock.advance(0.25)
    failed = state.get(prediction_id)
    assert failed is not None
    assert failed.status == PredictionStatus.FAILED
    assert failed.started_at == failed.completed_at == pytest.approx(1000.25)


def test_a_prediction_cancelled_while_fetching_stays_cancelled_and_keeps_the_record():
    """Cancel wins over a fetch that lands later; what that fetch found is still kept."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, PHOTOS[0])
    clock.advance(0.5)
    state.cancel(prediction_id)
    clock.advance(0.5)
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0]))
    clock.advance(5.0)
    assert status_error(state, prediction_id) == ("canceled", None)
    inputs = state.image_inputs(prediction_id)
    assert inputs is not None
    assert inputs.fetches[0] is not None


def test_the_completed_webhook_falls_due_only_once_the_inputs_are_in():
    """Until the last fetch reports, no completed event is owed; then it is, at the end."""
    clock = FakeClock()
    state = state_with(clock, api="replicate")
    body = {"prompt": "x", "image_input": [PHOTOS[0]]}
    prediction_id = state.create(
        body,
        model="sim/image",
        webhook="http://127.0.0.1:9/h",
        webhook_events_filter=("completed",),
    ).id
    clock.advance(3.0)
    assert state.next_webhook_at() is None
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0], "HTTP 404", 404))
    assert state.next_webhook_at() == pytest.approx(1003.0)
    ((event,),) = state.take_due_webhooks()
    assert event.prediction.status == PredictionStatus.FAILED
    assert event.prediction.error == "image_input[0] could not be fetched: HTTP 404"


def test_a_duplicate_or_foreign_fetch_report_changes_nothing():
    """The first report of an input is the one acted on; nonsense reports are ignored."""
    clock = FakeClock()
    state = state_with(clock)
    prediction_id = create(state, PHOTOS[0])
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0]))
    state.record_input_fetch(prediction_id, fetched(0, PHOTOS[0], "HTTP 403", 403))
    state.record_input_fetch(prediction_id, fetched(7, PHOTOS[0], "HTTP 403", 403))
    state.record_input_fetch("unknown", fetched(0, PHOTOS[0]))
    clock.advance(1.0)
    assert status_error(state, prediction_id) == ("succeeded", None)
    assert state.stats()["input_fetches"] == 1


def test_fail_once_counts_a_retry_with_freshly_signed_urls_as_the_second_attempt():
    """Presigned URLs change per attempt; the output's identity must not."""
    clock = FakeClock()
    state = state_with(clock, latency=(0.1, 0.1))
    first = create(state, "http://127.0.0.1:9/a.png?sig=old", simulate="fail_once")
    again = create(state, "http://127.0.0.1:9/a.png?sig=new", simulate="fail_once")
    for prediction_id, request in zip((first, again), state.take_input_fetches(), strict=True):
        state.record_input_fetch(prediction_id, fetched(0, request.url))
    clock.advance(1.0)
    assert status_error(state, first)[0] == "failed"
    assert status_error(state, again) == ("succeeded", None)


@pytest.mark.parametrize(
    ("image_input", "message"),
    [
        ("http://127.0.0.1:9/a.png", "must be an array of uri, got str"),
        ({"url": "http://127.0.0.1:9/a.png"}, "must be an array of uri, got dict"),
        ([PHOTOS[0]] * 5, "must have at most 4 items, got 5"),
        ([PHOTOS[0], 3], "input.image_input[1] must be an http(s) uri: 3"),
        (["ftp://127.0.0.1/a.png"], "input.image_input[0] must be an http(s) uri"),
        (["/a.png"], "input.image_input[0] must be an http(s) uri"),
        (["http:///a.png"], "input.image_input[0] must be an http(s) uri"),
        (["data:image/png;base64," + "A" * 10_000], "..."),
    ],
    ids=["string", "object", "five", "number", "ftp", "relative", "no-host", "data-url"],
)
def test_an_invalid_image_input_is_refused_before_anything_is_created(
    image_input: object, message: str
):
    """Like Replicate's schema check: an array of at most 4 http(s) URLs, or a 422."""
    state = state_with(FakeClock())
    with pytest.raises(InvalidPredictionInput) as caught:
        state.create({"prompt": "x", "image_input": image_input}, model="google/nano-banana")
    assert message in str(caught.value)
    assert len(str(caught.value)) < 200
    assert state.stats()["created"] == 0
    assert state.take_input_fetches() == []


@pytest.mark.parametrize(
    ("api", "model"),
    [("kie", "google/nano-banana"), ("replicate", "black-forest-labs/flux-schnell")],
)
def test_models_without_image_input_keep_it_as_an_opaque_input(api: str, model: str):
    """Only Replicate's nano-banana and ``sim/image`` fetch; elsewhere the key is just echoed."""
    clock = FakeClock()
    state = state_with(clock, api=api, latency=(0.1, 0.1))
    prediction_id = create(state, "not even a url", model=model)
    clock.advance(1.0)
    assert state.take_input_fetches() == []
    assert status_error(state, prediction_id) == ("succeeded", None)
    assert state.all_image_inputs() == []
