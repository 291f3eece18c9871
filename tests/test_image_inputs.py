"""Which input images and callback URLs a job may name: pure rules, checked before any charge."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from orchestrator.core import (
    ErrorCode,
    HostList,
    Job,
    JobStatus,
    PrivateInput,
    RemoteInput,
    default_allowed,
    image_inputs,
    input_name_problem,
    sniffed_type,
    validate,
)

HOSTS = HostList.parse(["images.example.com", "http://127.0.0.1:9000"])
NANO = default_allowed("replicate", "google/nano-banana")


def job(params: dict[str, object], **changes: object) -> Job:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "user_id": "ana",
        "prompt": "make it blue",
        "params": params,
        "num_outputs": 1,
        "status": JobStatus.QUEUED,
        "created_at": datetime(2026, 12, 1, tzinfo=UTC),
    }
    return Job(**(values | changes))  # type: ignore[arg-type]


def test_own_keys_and_allowed_urls_are_the_inputs_in_order():
    found = image_inputs(
        "ana",
        {
            "image_input": [
                "private/ana/inputs/cat.png",
                "https://images.example.com/a/b.jpg?x=1",
                "http://127.0.0.1:9000/bucket/x.png",
            ]
        },
        HOSTS,
    )
    assert found == (
        PrivateInput("private/ana/inputs/cat.png"),
        RemoteInput("https://images.example.com/a/b.jpg?x=1"),
        RemoteInput("http://127.0.0.1:9000/bucket/x.png"),
    )
    assert image_inputs("ana", {}, HOSTS) == ()


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        (["private/bob/inputs/cat.png"], "neither one of this user's inputs"),
        (["private/ana/inputs/../bob/inputs/cat.png"], "neither one of this user's inputs"),
        (["private/ana/inputs/.hidden"], "neither one of this user's inputs"),
        (["public/renders/x/0.png"], "neither one of this user's inputs"),
        (["https://evil.example.net/cat.png"], "https://evil.example.net is not on"),
        (["http://images.example.com/cat.png"], "http://images.example.com is not on"),
        (["https://user:pw@images.example.com/cat.png"], "credentials"),
        (["https://images.example.com/cat\x01.png"], "control character"),
        (["https://images.example.com/c at.png"], "whitespace"),
        (["file:///etc/passwd"], "neither one of this user's inputs"),
        ([1], "must be a string"),
        ([], "a list of 1 to 4"),
        (["private/ana/inputs/a.png"] * 5, "a list of 1 to 4"),
        ("private/ana/inputs/a.png", "a list of 1 to 4"),
    ],
)
def test_anything_else_is_refused_before_the_debit_with_a_reason(entries, why):
    problem = image_inputs("ana", {"image_input": entries}, HOSTS)
    assert isinstance(problem, str)
    assert why in problem
    refusal = validate(job({"image_input": entries}), NANO, input_hosts=HOSTS)
    assert refusal is not None
    assert refusal.code is ErrorCode.VALIDATION_ERROR
    assert why in refusal.message


def test_a_model_that_takes_no_image_input_refuses_one():
    flux = default_allowed("replicate", "black-forest-labs/flux-schnell")
    refusal = validate(job({"image_input": ["private/ana/inputs/a.png"]}), flux)
    assert refusal is not None
    assert "'image_input' is not an input of this model" in refusal.message
    assert validate(job({"image_input": ["private/ana/inputs/a.png"]}), NANO) is None


def test_a_callback_goes_only_to_an_allowed_host():
    hosts = HostList.parse(["app.example.com", "http://127.0.0.1:8000"])
    assert (
        validate(job({}, callback_url="https://app.example.com/hook"), callback_hosts=hosts) is None
    )
    assert validate(job({}, callback_url="http://127.0.0.1:8000/h"), callback_hosts=hosts) is None
    for url, why in [
        ("https://169.254.169.254/latest", "is not on ORCHESTRATOR_CALLBACK_HOSTS"),
        ("http://app.example.com/hook", "is not on ORCHESTRATOR_CALLBACK_HOSTS"),
        ("http://127.0.0.1:8001/h", "is not on ORCHESTRATOR_CALLBACK_HOSTS"),
        ("gopher://app.example.com/", "not an http(s) URL"),
    ]:
        refusal = validate(job({}, callback_url=url), callback_hosts=hosts)
        assert refusal is not None
        assert why in refusal.message, url
    off = validate(job({}, callback_url="https://app.example.com/hook"))
    assert off is not None
    assert "callbacks are off" in off.message


def test_an_input_name_stays_in_its_users_folder():
    assert input_name_problem("cat-2.png") is None
    for bad in ["../x", ".x", "a/b", "", "x" * 129, "a b", "-x"]:
        assert "an input's name" in (input_name_problem(bad) or ""), bad


def test_image_types_are_told_by_their_first_bytes():
    assert sniffed_type(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert sniffed_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniffed_type(b"GIF89a") == "image/gif"
    assert sniffed_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniffed_type(b"<html>") is None
    assert sniffed_type(b"") is None
