"""Reconciliation: provider money still being spent, or spent, for nothing.

A prediction can outlive its job: its cancel timed out, its submit was cut off before the
id came back, a crash fell between submit and recording, or a resubmission replaced it.
Such a prediction bills the operator and delivers to nobody. A pass looks at every
prediction the database knows delivered nothing (recorded on jobs that ended without that
output, and the strays), plus what the provider lists with our tag. It cancels what still
runs and counts what succeeded for nothing, exactly once per prediction.

The sweeper runs a bounded pass every interval; ``orchestrator reconcile`` runs one on
demand (``--dry-run`` only looks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, Protocol

import attrs
import structlog
import trio

from orchestrator.core import (
    ListedClaim,
    Prediction,
    PredictionStatus,
    Provider,
    ProviderError,
    UpstreamRef,
    cancel_upstream,
)
from orchestrator.db import Database

log = structlog.get_logger("orchestrator.reconcile")

DEFAULT_WINDOW_S: Final = 86_400.0

Verdict = Literal["cancel", "undelivered", "ended"]


def verdict(status: PredictionStatus) -> Verdict:
    """What a prediction that delivers to nobody needs, given its upstream status."""
    if not status.terminal:
        return "cancel"
    if status is PredictionStatus.SUCCEEDED:
        return "undelivered"
    return "ended"


def is_stray(claim: ListedClaim, *, running: bool = False) -> bool:
    """Whether a listed prediction bills for one of our jobs without delivering to it.

    Never one we cannot attribute (no such job: another deployment sharing the account).
    A prediction still running for a job that has ended always is, whatever we recorded:
    nothing will ever read it. Otherwise: not one we already track, nor the recorded one
    (the database side checks those); and for a job still in flight with nothing
    recorded for that output, the id may be on its way to the database, so it is left
    for a later pass.
    """
    if claim.job_status is None:
        return False
    if running and claim.job_status.terminal:
        return True
    if claim.noted or claim.recorded == claim.prediction_id:
        return False
    return claim.job_status.terminal or claim.recorded is not None


@attrs.frozen
class ReconcileReport:
    """One pass: how many predictions were looked at, and what was found."""

    checked: int = 0
    canceled: int = 0
    cancel_failed: int = 0
    undelivered: int = 0
    unreadable: int = 0
    listed: int = 0
    dry_run: bool = False

    @property
    def running(self) -> int:
        """Predictions found still running for nothing (cancelled or not)."""
        return self.canceled + self.cancel_failed


@attrs.define
class _Tally:
    seen: set[str] = attrs.Factory(set)
    checked: int = 0
    canceled: int = 0
    cancel_failed: int = 0
    undelivered: int = 0
    unreadable: int = 0
    listed: int = 0


class ReconcileObserver(Protocol):
    """Where each pass's counts go; `orchestrator.metrics.UpkeepMetrics` keeps them."""

    def reconciled(self, outcomes: Mapping[str, int], *, running: int) -> None: ...


class Reconciler:
    """Runs reconciliation passes for the default provider and any others.

    Args:
        db: The database, as a role that may call ``note_upstream_v1``.
        provider: The adapter to ask and to cancel through.
        provider_name: The name predictions are recorded under (``replicate``, ``kie``).
        others: Further providers by name (failover): each prediction is asked about and
            cancelled on the provider it was recorded under, and each one's listing is read.
        window_s: How far back ended jobs are looked at.
        limit: At most this many predictions are asked about per pass.
        concurrency: Provider requests in flight at once.
        cancel_timeout_s: Each get and cancel gives up after this long.
        dry_run: Only look: no cancel, nothing stored.
    """

    def __init__(
        self,
        db: Database,
        provider: Provider,
        *,
        provider_name: str,
        window_s: float = DEFAULT_WINDOW_S,
        limit: int = 500,
        concurrency: int = 8,
        cancel_timeout_s: float = 5.0,
        dry_run: bool = False,
        observer: ReconcileObserver | None = None,
        others: Mapping[str, Provider] | None = None,
    ) -> None:
        self._db = db
        self._providers = {**(others or {}), provider_name: provider}
        self._provider_name = provider_name
        self._window_s = window_s
        self._limit = limit
        self._concurrency = concurrency
        self._timeout_s = cancel_timeout_s
        self._dry_run = dry_run
        self._observer = observer

    async def run_once(self) -> ReconcileReport:
        """One bounded pass; provider trouble is counted, database trouble raises.

        Raises:
            DbError: the database could not be read or written.
        """
        tally = _Tally()
        refs = await self._db.upstream_to_check(window_s=self._window_s, limit=self._limit)
        limiter = trio.CapacityLimiter(self._concurrency)
        async with trio.open_nursery() as nursery:
            for ref in refs:
                nursery.start_soon(self._check, ref, tally, limiter)
        strays = [found for name in self._providers for found in await self._listed_strays(name)]
        for ref, prediction in strays:
            if ref.prediction_id in tally.seen:
                continue  # already looked at through the database this pass
            tally.listed += 1
            await self._act(ref, prediction.status, tally)
        counts = attrs.asdict(tally, filter=lambda a, _: a.name != "seen")
        report = ReconcileReport(**counts, dry_run=self._dry_run)
        self._observe(report)
        return report

    async def _check(self, ref: UpstreamRef, tally: _Tally, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            status: PredictionStatus | None = None
            with trio.move_on_after(self._timeout_s):
                try:
                    status = (await self._on(ref.provider).get(ref.prediction_id)).status
                except ProviderError as exc:
                    log.info(
                        "reconcile.unreadable", prediction_id=ref.prediction_id, error=exc.summary
                    )
            if status is None:
                tally.unreadable += 1
                return
            await self._act(ref, status, tally)

    def _on(self, name: str) -> Provider:
        return self._providers.get(name, self._providers[self._provider_name])

    async def _listed_strays(self, name: str) -> list[tuple[UpstreamRef, Prediction]]:
        """Tagged predictions upstream that no job follows; empty if the listing fails."""
        try:
            with trio.fail_after(self._timeout_s * 4):
                listed = await self._providers[name].recent()
        except (ProviderError, trio.TooSlowError) as exc:
            error = exc.summary if isinstance(exc, ProviderError) else "timed out"
            log.info("reconcile.listing_failed", error=error)
            return []
        if not listed:
            return []
        by_id = {tagged.prediction.id: tagged for tagged in listed}
        claims = await self._db.listed_claims(
            name,
            [(t.prediction.id, t.job_id, t.output_index) for t in by_id.values()],
        )
        return [
            (
                UpstreamRef(name, c.prediction_id, c.job_id, c.idx, "listed"),
                by_id[c.prediction_id].prediction,
            )
            for c in claims
            if is_stray(c, running=not by_id[c.prediction_id].prediction.status.terminal)
        ]

    async def _act(self, ref: UpstreamRef, status: PredictionStatus, tally: _Tally) -> None:
        tally.seen.add(ref.prediction_id)
        tally.checked += 1
        action = verdict(status)
        with structlog.contextvars.bound_contextvars(
            job_id=str(ref.job_id), idx=ref.idx, prediction_id=ref.prediction_id
        ):
            if self._dry_run:
                if action == "cancel":
                    tally.canceled += 1
                elif action == "undelivered":
                    tally.undelivered += 1
                return
            sent = action == "cancel" and await self._cancel(ref)
            if action == "cancel":
                if sent:
                    tally.canceled += 1
                else:
                    tally.cancel_failed += 1
                log.warning("reconcile.running_for_nothing", found_by=ref.found_by, canceled=sent)
            before = await self._db.note_upstream(ref, status=status.value, cancel_sent=sent)
            if action == "undelivered" and before != PredictionStatus.SUCCEEDED.value:
                tally.undelivered += 1
                log.warning("reconcile.succeeded_undelivered", found_by=ref.found_by)

    async def _cancel(self, ref: UpstreamRef) -> bool:
        cancel = self._on(ref.provider).cancel
        return await cancel_upstream(cancel, ref.prediction_id, self._timeout_s)

    def _observe(self, report: ReconcileReport) -> None:
        if self._observer is None or report.dry_run:
            return
        outcomes = ("canceled", "cancel_failed", "undelivered", "unreadable")
        self._observer.reconciled(
            {outcome: getattr(report, outcome) for outcome in outcomes}, running=report.running
        )
