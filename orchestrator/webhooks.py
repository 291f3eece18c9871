"""Provider webhooks: verified, deduplicated, and only ever a wake-up.

A webhook never sets a job's state by itself: it wakes the job's task, which
asks the provider for the prediction and settles from that. So duplicates
and out-of-order deliveries (a `processing` after `succeeded`) cannot move a
job backwards or pay twice. What a webhook adds beyond speed: it names the
job in its URL, so a prediction whose id was never stored (a crash between
submit and store) is matched, recorded and resumed.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Final, Protocol

import attrs
import structlog
from standardwebhooks import Webhook, WebhookVerificationError

from orchestrator.core import (
    MAX_OUTPUTS,
    Job,
    Prediction,
    Provider,
    ProviderProtocolError,
    RunningJobs,
)
from orchestrator.db import Database, DbUnavailable, Fenced

log = structlog.get_logger("orchestrator.webhooks")

_SIGNATURE_HEADERS: Final = ("webhook-id", "webhook-timestamp", "webhook-signature")
_INDEX_DIGITS: Final = len(str(MAX_OUTPUTS))
_MAX_EVENT_ID: Final = 256


@attrs.frozen
class Reply:
    status: int
    result: str


def output_index(raw: str | None) -> int | None:
    """The output index a webhook URL names (0 when absent), or None when it is not one.

    `str.isdigit` accepts "²" and any number of digits; only a short run of ASCII
    digits below the largest job's output count is an index.
    """
    if raw is None or raw == "":
        return 0
    if len(raw) > _INDEX_DIGITS or not (raw.isascii() and raw.isdigit()):
        return None
    idx = int(raw)
    return idx if idx < MAX_OUTPUTS else None


def _checked_delivery(idx_param: str | None, event_id: str) -> int | Reply:
    """The output index, or the refusal of a delivery we will not even record."""
    if len(event_id) > _MAX_EVENT_ID:
        # Unsigned mode takes the id as sent; a btree key cannot hold kilobytes.
        return Reply(400, "bad_webhook_id")
    idx = output_index(idx_param)
    return Reply(400, "bad_output_index") if idx is None else idx


class WebhookObserver(Protocol):
    """What the handler reports for metrics; `orchestrator.metrics.Metrics` counts it."""

    def webhook(self, provider: str, result: str) -> None: ...

    def write_fenced(self, write: str) -> None: ...


class NullWebhookObserver:
    def webhook(self, provider: str, result: str) -> None:
        pass

    def write_fenced(self, write: str) -> None:
        pass


class WebhookHandler:
    def __init__(
        self,
        db: Database,
        registry: RunningJobs,
        providers: Mapping[str, Provider],
        *,
        secret: str | None,
        observer: WebhookObserver | None = None,
    ) -> None:
        self._db = db
        self._registry = registry
        self._providers = providers
        self._verifier = Webhook(secret) if secret else None
        self._observer = observer or NullWebhookObserver()

    async def handle(
        self,
        provider_name: str,
        headers: Mapping[str, str],
        job_param: str | None,
        body: bytes,
        *,
        idx_param: str | None = None,
    ) -> Reply:
        provider = self._providers.get(provider_name)
        if provider is None:
            return Reply(404, "unknown_provider")
        try:
            reply = await self._handle(provider_name, provider, headers, job_param, body, idx_param)
        except DbUnavailable:
            # Postgres is restarting: the provider retries a 5xx, so nothing is lost.
            reply = Reply(503, "database_unavailable")
        except Fenced:
            # The slot moved while we looked: the retry reaches the new owner's view.
            reply = Reply(503, "slot_moved")
            self._observer.write_fenced("webhook")
        self._observer.webhook(provider_name, reply.result)
        if reply.status >= 400:  # noqa: PLR2004
            log.warning("webhook.rejected", provider=provider_name, result=reply.result)
        return reply

    async def _handle(
        self,
        provider_name: str,
        provider: Provider,
        headers: Mapping[str, str],
        job_param: str | None,
        body: bytes,
        idx_param: str | None,
    ) -> Reply:
        request = self._authentic(provider, headers, job_param, body)
        if isinstance(request, Reply):
            return request
        job_id, prediction = request
        event_id = headers.get("webhook-id") or hashlib.sha256(body).hexdigest()
        idx = _checked_delivery(idx_param, event_id)
        if isinstance(idx, Reply):
            return idx
        delivery = await self._db.webhook_delivery(job_id, provider_name, event_id, idx)
        if delivery is None:
            return Reply(200, "unknown_job")
        job, fresh = delivery
        if idx >= job.num_outputs:
            return Reply(400, "bad_output_index")
        if not fresh:
            return Reply(200, "duplicate")
        return await self._wake(provider_name, job, prediction, idx)

    def _authentic(
        self, provider: Provider, headers: Mapping[str, str], job_param: str | None, body: bytes
    ) -> Reply | tuple[uuid.UUID, Prediction]:
        """Signature, job id and body checked, or the refusal to send back."""
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return Reply(400, "body_not_utf8")
        if self._verifier is not None:
            try:
                self._verifier.verify(
                    body, {k: headers.get(k, "") for k in _SIGNATURE_HEADERS}, json_parse=False
                )
            except (WebhookVerificationError, ValueError):
                # The library unpacks and base64-decodes the signature before checking it:
                # no comma, extra fields or bad base64 raise ValueError. Not ours either way.
                return Reply(401, "bad_signature")
        try:
            job_id = uuid.UUID(job_param or "")
        except ValueError:
            return Reply(400, "no_job_id")
        try:
            return job_id, provider.parse_webhook(body)
        except ProviderProtocolError:
            return Reply(400, "malformed")

    async def _wake(self, provider_name: str, job: Job, prediction: Prediction, idx: int) -> Reply:
        job_id = job.id
        if not job.status.in_flight:
            return Reply(200, "ignored")
        with structlog.contextvars.bound_contextvars(job_id=str(job_id), user_id=job.user_id):
            # A verified webhook is the provider's word; an unsigned one only a hint.
            told = prediction if self._verifier is not None else None
            if self._registry.poke(job.user_id, job_id, told):
                return Reply(200, "accepted")
            slots = self._registry.slots
            if not slots.owns(job.slot):
                # Another daemon owns the job: wake it, and it asks the provider itself.
                await self._db.notify_slot(job_id)
                return Reply(200, "forwarded")
            if job.prediction_id is None:
                # The crash-between-phases case: the webhook tells us the lost id.
                await self._db.mark_processing(
                    job_id,
                    provider=provider_name,
                    prediction_id=prediction.id,
                    idx=idx,
                    fence=slots.fence(job.slot),
                )
                log.info("webhook.matched_lost_prediction")
            self._registry.resume(job.user_id, job_id, slot=job.slot)
            return Reply(200, "accepted")
