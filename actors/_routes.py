"""Provider failover: a circuit breaker around each provider, and the choice of one per job.

`BreakerProvider` wraps an adapter: every call goes through unchanged (a job already
running is never cut off by its provider's breaker), and its outcome feeds the breaker
(`orchestrator.core.Breaker`). Admission asks `Routes.choose` which provider a new job
runs on: its provider while that breaker admits, else the configured fallback while
that one does, else none, and the job stays queued, uncharged, until a later offer.

The half-open probe is not a user's job, so nobody is charged for it: a `get` of an
id that cannot exist. A 404 (or any answer) means the provider is up again; a 5xx,
timeout, refused connection or 429 means it is not.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Final, Protocol, TypeVar

import attrs
import structlog
import trio

from orchestrator.core import (
    DEFAULT_POLICY,
    Breaker,
    BreakerPolicy,
    BreakerState,
    Job,
    Prediction,
    PredictionRequest,
    Provider,
    ProviderError,
    ProviderUnavailable,
    TaggedPrediction,
    breaker_failure,
    breaker_probe,
    breaker_success,
    breaker_tick,
    params_problem,
)

log = structlog.get_logger("actors.breaker")

PROBE_ID: Final = "orchestratorbreakerprobe0"
# The params key that picks a job's provider; routing only, never sent upstream.
ROUTING_KEY: Final = "provider"
_PROBE_TIMEOUT_S: Final = 10.0
_T = TypeVar("_T")


class BreakerObserver(Protocol):
    """Where breakers report, for metrics; `orchestrator.metrics.BreakerMetrics` counts it."""

    def breaker_changed(self, provider: str, state: BreakerState) -> None: ...

    def job_held(self, provider: str) -> None: ...

    def job_failed_over(self, provider: str, fallback: str) -> None: ...


class NullBreakerObserver:
    def breaker_changed(self, provider: str, state: BreakerState) -> None:
        pass

    def job_held(self, provider: str) -> None:
        pass

    def job_failed_over(self, provider: str, fallback: str) -> None:
        pass


class BreakerProvider:
    """A `Provider` whose calls feed one breaker; `admits()` says whether new jobs may start."""

    def __init__(
        self,
        name: str,
        inner: Provider,
        *,
        policy: BreakerPolicy = DEFAULT_POLICY,
        observer: BreakerObserver | None = None,
    ) -> None:
        self.name = name
        self.inner = inner
        self.policy = policy
        self.breaker = Breaker()
        self._observer = observer or NullBreakerObserver()
        self._probed = trio.Event()

    @property
    def state(self) -> BreakerState:
        return breaker_tick(self.breaker, trio.current_time()).state

    def _set(self, breaker: Breaker) -> None:
        before = self.breaker.state
        self.breaker = breaker
        if breaker.state is not before:
            log.warning(
                "provider.breaker_changed",
                provider=self.name,
                state=breaker.state.name.lower(),
                was=before.name.lower(),
                cooldown_s=breaker.cooldown_s or None,
            )
            self._observer.breaker_changed(self.name, breaker.state)

    def _failed(self) -> None:
        self._set(breaker_failure(self.breaker, self.policy, trio.current_time()))

    def _answered(self) -> None:
        self._set(breaker_success(self.breaker, self.policy, trio.current_time()))

    async def admits(self) -> bool:
        """Whether a new job may start on this provider now; sends the half-open probe.

        Closed: yes. Open: no. Half-open: the first caller sends the probe and every
        other waits for its outcome.
        """
        self._set(breaker_tick(self.breaker, trio.current_time()))
        if self.breaker.state is BreakerState.HALF_OPEN:
            breaker, mine = breaker_probe(self.breaker)
            self._set(breaker)
            if mine:
                self._probed = trio.Event()
                try:
                    await self._probe()
                finally:
                    if self.breaker.probing:  # cut off (a drain): the next caller probes
                        self._set(attrs.evolve(self.breaker, probing=False))
                    self._probed.set()
            else:
                await self._probed.wait()
        return self.breaker.state is BreakerState.CLOSED

    async def _probe(self) -> None:
        log.info("provider.breaker_probe", provider=self.name)
        with trio.move_on_after(_PROBE_TIMEOUT_S) as timed_out:
            try:
                await self.inner.get(PROBE_ID)
            except ProviderUnavailable:
                self._failed()
                return
            except ProviderError:
                pass  # a 404 for an id that cannot exist: the provider answers
            except Exception:
                log.exception("provider.breaker_probe_failed", provider=self.name)
                self._failed()
                return
            self._answered()
        if timed_out.cancelled_caught:
            self._failed()

    async def _call(self, call: Callable[[], Awaitable[_T]]) -> _T:
        try:
            result = await call()
        except ProviderUnavailable:
            self._failed()
            raise
        except ProviderError:
            self._answered()
            raise
        self._answered()
        return result

    async def submit(self, request: PredictionRequest) -> Prediction:
        return await self._call(lambda: self.inner.submit(request))

    async def get(self, prediction_id: str) -> Prediction:
        return await self._call(lambda: self.inner.get(prediction_id))

    async def cancel(self, prediction_id: str) -> None:
        await self._call(lambda: self.inner.cancel(prediction_id))

    def parse_webhook(self, body: bytes) -> Prediction:
        return self.inner.parse_webhook(body)

    async def find_for_job(
        self, job_id: uuid.UUID, output_index: int = 0, *, since: datetime | None = None
    ) -> Prediction | None:
        return await self._call(lambda: self.inner.find_for_job(job_id, output_index, since=since))

    async def list_page(
        self, cursor: str | None = None
    ) -> tuple[tuple[Prediction, ...], str | None]:
        return await self._call(lambda: self.inner.list_page(cursor))

    async def recent(self) -> tuple[TaggedPrediction, ...]:
        return await self._call(self.inner.recent)


class Routes:
    """Every configured provider behind its breaker, the default one and the fallback.

    `webhook_urls` is where each provider calls back (`/webhooks/<name>`), or None;
    `allowed_params` the params each provider's model takes (a job goes to the fallback
    only when its params suit the fallback's model too).
    """

    def __init__(
        self,
        providers: Mapping[str, BreakerProvider],
        *,
        primary: str,
        fallback: str | None = None,
        webhook_urls: Mapping[str, str | None] | None = None,
        allowed_params: Mapping[str, frozenset[str]] | None = None,
        observer: BreakerObserver | None = None,
    ) -> None:
        if primary not in providers or (fallback is not None and fallback not in providers):
            raise ValueError("the primary and the fallback must be configured providers")
        self.providers = dict(providers)
        self.primary = primary
        self.fallback = fallback if fallback != primary else None
        self.webhook_urls = dict(webhook_urls or {})
        self.allowed_params = dict(allowed_params or {})
        self._observer = observer or NullBreakerObserver()

    def wanted(self, job: Job) -> str:
        """The provider the job asked for (`params.provider`), else the default one.

        Raises:
            ValueError: it names no configured provider; the message says which are.
        """
        name = job.params.get(ROUTING_KEY)
        if name is None:
            return self.primary
        if not isinstance(name, str) or name not in self.providers:
            shown = name if isinstance(name, str) and len(name) <= 40 else "that"  # noqa: PLR2004
            raise ValueError(
                f"params.provider {shown!r} is not a configured provider"
                f" ({', '.join(sorted(self.providers))})"
            )
        return name

    def allowed(self, name: str, default: frozenset[str]) -> frozenset[str]:
        return self.allowed_params.get(name, default)

    async def choose(self, job: Job, name: str) -> str | None:
        """The provider a new job runs on now, or None: it waits, queued and uncharged.

        `job` has its routing key stripped already; `name` is the provider it wants.
        """
        if await self.providers[name].admits():
            return name
        fallback = self.fallback
        if (
            fallback is not None
            and fallback != name
            and (
                fallback not in self.allowed_params
                or params_problem(job.params, self.allowed_params[fallback]) is None
            )
            and await self.providers[fallback].admits()
        ):
            log.info("job.failed_over", provider=name, fallback=fallback)
            self._observer.job_failed_over(name, fallback)
            return fallback
        self._observer.job_held(name)
        return None


def without_routing(job: Job) -> Job:
    """The job as a provider may see it: no routing key in its params."""
    if ROUTING_KEY not in job.params:
        return job
    return attrs.evolve(job, params={k: v for k, v in job.params.items() if k != ROUTING_KEY})
