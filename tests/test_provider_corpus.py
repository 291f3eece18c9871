"""Garbage provider answers through the real adapters, at their transport boundary.

Every file in tests/corpus/provider/<replicate|kie>/ is one HTTP answer to `submit` or
`get`: a status, headers and a body (`body` as JSON, `body_text`, or `body_b64`), and
what the adapter must make of it: one `ProviderError` subclass by name, or `"ok"`, a
parsed `Prediction` with sane fields. Never a ValueError, KeyError or RecursionError, and
never the token or the prompt in what it says. `"retry_after"` is the seconds a 429
must carry. In bodies, `{"$repeat": s, "times": n}` is a long string, `{"$nest": n}` a
value nested n lists deep, `{"$nesttext": n}` the text of one, and `$TOKEN` and
`$PROMPT` stand for the secrets.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import core
from orchestrator.core import Prediction, PredictionRequest, PredictionStatus
from orchestrator.providers import KieProvider, ReplicateProvider

CORPUS = Path(__file__).parent / "corpus" / "provider"
TOKENS = {  # fakes, to prove they never leak
    "replicate": "r8_SuperSecretTokenValue0123456789",
    "kie": "kie_SuperSecretTokenValue0123456789",
}
PROMPT = "a private prompt about my neighbour's red bicycle"
EXPECTED = {
    "ok",
    "ProviderProtocolError",
    "ProviderUnavailable",
    "ProviderRateLimited",
    "ProviderRejected",
}
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _expand(value: Any, token: str) -> Any:
    if isinstance(value, dict):
        return _expand_object(value, token)
    if isinstance(value, list):
        return [_expand(item, token) for item in value]
    if isinstance(value, str):
        return value.replace("$TOKEN", token).replace("$PROMPT", PROMPT)
    return value


def _expand_object(value: dict[str, Any], token: str) -> Any:
    if "$repeat" in value:
        return value["$repeat"] * value["times"]
    if "$nest" in value:
        return f"__NEST_{value['$nest']}__"  # spliced into the text: json.dumps would recurse
    if "$nesttext" in value:
        return "[" * value["$nesttext"] + "]" * value["$nesttext"]
    return {key: _expand(item, token) for key, item in value.items()}


def _content(case: dict[str, Any], token: str) -> bytes:
    if "body_b64" in case:
        return base64.b64decode(case["body_b64"])
    if "body_text" in case:
        return str(_expand(case["body_text"], token)).encode()
    text = json.dumps(_expand(case["body"], token))
    return re.sub(r'"__NEST_(\d+)__"', lambda m: "[" * int(m[1]) + "]" * int(m[1]), text).encode()


def _cases(provider: str) -> list[Any]:
    paths = sorted((CORPUS / provider).glob("*.json"))
    return [pytest.param(provider, path, id=f"{provider}-{path.stem}") for path in paths]


CASES = _cases("replicate") + _cases("kie")


def test_the_corpus_covers_every_outcome_for_both_providers():
    for provider in TOKENS:
        cases = [json.loads(p.read_text()) for p in (CORPUS / provider).glob("*.json")]
        assert len(cases) >= 40, provider
        assert {case["expect"] for case in cases} == EXPECTED, provider
        assert {case["operation"] for case in cases} == {"submit", "get"}, provider
        for case in cases:
            assert set(case) <= {
                "why",
                "operation",
                "status",
                "headers",
                "body",
                "body_text",
                "body_b64",
                "expect",
                "retry_after",
            }
            assert case["why"]
            assert sum(key in case for key in ("body", "body_text", "body_b64")) == 1


def _adapter(provider: str, client: httpx.AsyncClient) -> ReplicateProvider | KieProvider:
    token = TOKENS[provider]
    if provider == "replicate":
        return ReplicateProvider(client, base_url="https://api.test", token=token, model="o/m")
    return KieProvider(client, base_url="https://api.test", token=token, model="google/nano")


def _assert_clean(text: str, provider: str, where: str) -> None:
    assert TOKENS[provider] not in text, f"{where}: the token leaked: {text[:300]!r}"
    assert PROMPT not in text, f"{where}: the prompt leaked: {text[:300]!r}"
    assert text.isprintable(), f"{where}: {text[:300]!r}"
    assert len(text) <= 300, where


@pytest.mark.parametrize(("provider", "path"), CASES)
async def test_a_garbage_answer_is_a_provider_error_or_a_sane_prediction(provider: str, path: Path):
    case = json.loads(path.read_text())
    where = f"{provider}/{path.name}"
    content = _content(case, TOKENS[provider])
    headers = {"content-type": "application/json"} if "body" in case else {}
    headers |= case["headers"]

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(case["status"], content=content, headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        adapter = _adapter(provider, client)
        try:
            if case["operation"] == "submit":
                request = PredictionRequest(
                    job_id=uuid.uuid4(), prompt=PROMPT, params={}, num_outputs=1
                )
                outcome: Prediction | BaseException = await adapter.submit(request)
            else:
                outcome = await adapter.get("pred123" if provider == "replicate" else "task_123")
        except core.ProviderError as exc:
            outcome = exc

    if case["expect"] == "ok":
        assert isinstance(outcome, Prediction), f"{where}: {outcome!r}"
        assert _ID.fullmatch(outcome.id), where
        assert isinstance(outcome.status, PredictionStatus), where
        assert all(isinstance(url, str) for url in outcome.output), where
        if outcome.error is not None:
            _assert_clean(outcome.error, provider, where)
        return
    assert type(outcome).__name__ == case["expect"], f"{where}: {outcome!r}"
    assert isinstance(outcome, core.ProviderError)
    _assert_clean(outcome.summary, provider, where)
    _assert_clean(str(outcome), provider, where)
    if "retry_after" in case:
        assert isinstance(outcome, core.ProviderRateLimited)
        assert outcome.retry_after == case["retry_after"], where
