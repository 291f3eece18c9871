"""The params allow-list: only the model's declared inputs, as scalars, reach the provider."""

from __future__ import annotations

import json
import uuid

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from orchestrator.core import (
    COST_MULTIPLIERS,
    DEFAULT_ALLOWED,
    MAX_PARAMS_BYTES,
    ErrorCode,
    Job,
    JobStatus,
    Reject,
    default_allowed,
    params_problem,
    user_id_problem,
    validate,
)
from orchestrator.settings import Settings, SettingsError, from_env

FLUX = default_allowed("replicate", "black-forest-labs/flux-schnell")
NANO = default_allowed("kie", "google/nano-banana")


def test_flux_schnell_allows_its_look_inputs_but_not_its_safety_or_cost_inputs():
    """The documented default: the safety checker and step and image counts stay closed."""
    assert {"aspect_ratio", "output_format", "output_quality", "seed", "go_fast"} <= FLUX
    assert "megapixels" in FLUX
    for closed in ("disable_safety_checker", "num_outputs", "num_inference_steps"):
        assert closed not in FLUX
        assert params_problem({closed: 1}, FLUX) is not None


def test_nano_banana_allows_image_size_and_output_format():
    assert params_problem({"image_size": "16:9", "output_format": "png"}, NANO) is None
    assert params_problem({"aspect_ratio": "16:9"}, NANO) is not None


def test_no_default_allows_a_cost_multiplier_or_a_reserved_key():
    for allowed in DEFAULT_ALLOWED.values():
        assert not allowed & (COST_MULTIPLIERS | {"prompt", "num_outputs"})


def test_an_unknown_model_accepts_no_params_until_configured():
    """Fail closed: nobody knows what a custom model's keys cost."""
    assert default_allowed("replicate", "someone/custom") == frozenset()
    problem = params_problem({"seed": 1}, frozenset())
    assert problem is not None
    assert "'seed'" in problem
    assert "accepts no params" in problem
    assert params_problem({}, frozenset()) is None


@pytest.mark.parametrize("key", sorted(COST_MULTIPLIERS - {"num_outputs"}))
def test_a_cost_multiplying_key_is_named_and_explained(key: str):
    problem = params_problem({key: 8}, FLUX)
    assert problem is not None
    assert repr(key) in problem
    assert "multiply the provider's cost" in problem


def test_reserved_keys_are_named():
    problem = params_problem({"num_outputs": 50}, FLUX)
    assert problem == "params must not set 'num_outputs': it comes from the job itself"
    assert params_problem({"prompt": "other"}, FLUX | {"prompt"}) is not None


@pytest.mark.parametrize(
    "value", [[1], {"a": 1}, [], {}, float("inf"), float("-inf"), 2**63, -(2**63) - 1, 10**400]
)
def test_allowed_keys_take_scalars_only(value: object):
    problem = params_problem({"seed": value}, FLUX)
    assert problem is not None
    assert "must be a string, a number within 64 bits, a boolean or null" in problem


@pytest.mark.parametrize("value", ["x", 7, 2.5, True, None, 2**63 - 1, -(2**63), 1e300])
def test_scalars_of_allowed_keys_pass(value: object):
    assert params_problem({"seed": value}, FLUX) is None


def test_params_over_sixteen_kib_as_json_are_refused_even_when_allowed():
    fits = {"seed": "é" * ((MAX_PARAMS_BYTES - len('{"seed": ""}')) // 2)}
    assert len(json.dumps(fits, ensure_ascii=False).encode()) <= MAX_PARAMS_BYTES
    assert params_problem(fits, FLUX) is None
    problem = params_problem({"seed": "é" * MAX_PARAMS_BYTES}, FLUX)
    assert problem is not None
    assert "at most 16384" in problem


def test_a_hostile_key_is_quoted_escaped_and_cut():
    problem = params_problem({"\x1b[31m" + "k" * 500: 1}, FLUX)
    assert problem is not None
    assert "\x1b" not in problem
    assert "k" * 41 not in problem


@pytest.mark.parametrize("user_id", ["", "u" * 129, "a b", "../x", "é", "a\nb", "a/b"])
def test_user_ids_outside_the_safe_charset_are_refused(user_id: str):
    assert user_id_problem(user_id) is not None


@pytest.mark.parametrize("user_id", ["alice", "u" * 128, "a.b_c-d@e:f+g", "42"])
def test_safe_user_ids_pass(user_id: str):
    assert user_id_problem(user_id) is None


def _job(params: dict[str, object], user_id: str = "alice") -> Job:
    return Job(
        id=uuid.uuid4(),
        user_id=user_id,
        prompt="a lighthouse",
        params=params,
        num_outputs=1,
        status=JobStatus.QUEUED,
    )


def test_validation_refuses_an_undeclared_key_as_a_validation_error():
    refusal = validate(_job({"batch_size": 8}), FLUX)
    assert isinstance(refusal, Reject)
    assert refusal.code is ErrorCode.VALIDATION_ERROR
    assert "'batch_size'" in refusal.message
    assert validate(_job({"seed": 8}), FLUX) is None
    assert validate(_job({"seed": 8})) is not None


def test_the_allow_list_follows_the_configured_model_and_the_override():
    assert Settings().allowed_params == FLUX
    assert Settings(provider="kie").allowed_params == NANO
    assert Settings(replicate_model="me/custom").allowed_params == frozenset()
    env = {"ORCHESTRATOR_PARAMS_ALLOWED": "seed, style ,"}
    assert from_env(env).allowed_params == {"seed", "style"}
    assert from_env({"ORCHESTRATOR_PARAMS_ALLOWED": "none"}).allowed_params == frozenset()


@pytest.mark.parametrize("name", ["num_outputs", "batch_size", "prompt", "steps"])
def test_configuration_cannot_allow_a_reserved_or_cost_multiplying_input(name: str):
    with pytest.raises(SettingsError, match=name):
        from_env({"ORCHESTRATOR_PARAMS_ALLOWED": f"seed,{name}"})


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)
_KEYS = st.sampled_from([*sorted(FLUX), *sorted(COST_MULTIPLIERS), "prompt"]) | st.text()


@settings(max_examples=2000, deadline=None)
@given(params=st.dictionaries(_KEYS, _JSON, max_size=6))
def test_params_pass_exactly_when_every_key_is_declared_and_scalar(params: dict[str, object]):
    """The rule's answer is a pure function of the keys and value kinds, never an exception."""
    problem = params_problem(params, FLUX)
    should_pass = (
        all(key in FLUX for key in params)
        and all(not isinstance(value, list | dict) for value in params.values())
        and all(abs(value) != float("inf") for value in params.values() if isinstance(value, float))
        and all(
            -(2**63) <= value < 2**63
            for value in params.values()
            if isinstance(value, int) and not isinstance(value, bool)
        )
        and len(json.dumps(params, ensure_ascii=False).encode()) <= MAX_PARAMS_BYTES
    )
    assert (problem is None) == should_pass
    if problem is not None:
        assert problem.startswith("params")
        assert len(problem) < 1000
        bad = [key for key in params if key not in FLUX]
        if bad:
            assert any(repr(key[:40]) in problem for key in bad)
