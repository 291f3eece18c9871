"""User id → actor, with actors started on demand and retired when idle.

Virtual actors in the Orleans sense: a user's actor exists while it has
work. Delivery is synchronous and never blocks, and retirement happens in
the actor's own task without an await between "is my mailbox empty?" and
"remove me", so a message can never land in a retired actor's mailbox.

A user's actor lives only while this daemon owns the user's partition slot
(`Slots`): a message for a slot it does not own is refused, and losing a
slot drops its actors and their job tasks at once, unsettled, for the
slot's next owner to resume.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import structlog
import trio

from orchestrator.core import (
    EverySlot,
    InputImages,
    JobStore,
    JobTracing,
    NullObserver,
    NullTracing,
    Observer,
    OutputStore,
    PassThroughInputs,
    Prediction,
    Provider,
    Slots,
    UrlOnlyOutputs,
)

from ._capacity import Capacity
from ._config import ActorConfig
from ._deps import Deps
from ._mailbox import Offer
from ._messages import Cancel, Message, Resume
from ._routes import Routes
from ._user import UserActor
from ._watch import ListingWatch

log = structlog.get_logger("actors.registry")


class Registry:
    def __init__(
        self,
        *,
        store: JobStore,
        provider: Provider,
        config: ActorConfig,
        observer: Observer | None = None,
        outputs: OutputStore | None = None,
        capacity: Capacity | None = None,
        watch: ListingWatch | None = None,
        slots: Slots | None = None,
        routes: Routes | None = None,
        tracing: JobTracing | None = None,
        inputs: InputImages | None = None,
    ) -> None:
        self.slots: Slots = slots or EverySlot()
        self.capacity = capacity or Capacity()
        self.watch = watch
        self._deps = Deps(
            store=store,
            provider=provider if routes is None else routes.providers[routes.primary],
            config=config,
            observer=observer or NullObserver(),
            outputs=outputs or UrlOnlyOutputs(),
            capacity=self.capacity,
            watch=watch,
            routes=routes,
            tracing=tracing or NullTracing(),
            inputs=inputs or PassThroughInputs(),
        )
        self._actors: dict[str, UserActor] = {}
        self._nursery: trio.Nursery | None = None
        self._draining = False
        self._drained = trio.Event()
        self.started = 0
        self.dropped = 0
        self._tasks = 0
        self._no_tasks = trio.Event()
        self.retired = 0

    def __len__(self) -> int:
        return len(self._actors)

    def __iter__(self) -> Iterator[UserActor]:
        return iter(list(self._actors.values()))

    async def run(
        self, *, task_status: trio.TaskStatus[Registry] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own every actor's task until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.watch is not None:
                nursery.start_soon(self.watch.run)
            task_status.started(self)
            await trio.sleep_forever()

    def deliver(self, user_id: str, message: Message, *, slot: int = 0) -> Offer:
        """Hand a message to the user's actor, starting one if needed. Never blocks.

        `slot` is the user's partition slot; unless this daemon owns it, nothing
        is delivered (CLOSED) and the job waits for its owner.
        """
        if self._draining:
            return Offer.CLOSED
        fence = self.slots.fence(slot)
        if not self.slots.owns(slot):
            return Offer.CLOSED
        actor = self._actors.get(user_id)
        if (
            isinstance(message, Cancel)
            and actor is not None
            and actor.cancel_running(message.job_id)
        ):
            # A running job's cancel never queues behind admissions waiting for capacity.
            return Offer.ACCEPTED
        if isinstance(message, Resume) and actor is not None and actor.resume_now(message.job_id):
            # A resume neither admits nor charges: it never queues behind admissions.
            return Offer.ACCEPTED
        if actor is None:
            if self._nursery is None:
                raise RuntimeError("the registry is not running")
            actor = UserActor(
                user_id,
                self._deps,
                slot=slot,
                fence=fence,
                retire=self.retire,
                job_ended=self.job_finished,
            )
            self._actors[user_id] = actor
            self.started += 1
            self._nursery.start_soon(self._run_actor, actor, name=f"actor:{len(self._actors)}")
        return actor.mailbox.offer(message)

    async def _run_actor(self, actor: UserActor) -> None:
        self._tasks += 1
        try:
            await actor.run()
        finally:
            self._tasks -= 1
            if not self._tasks:
                self._no_tasks.set()
                self._no_tasks = trio.Event()

    def actor(self, user_id: str) -> UserActor | None:
        return self._actors.get(user_id)

    def poke(self, user_id: str, job_id: uuid.UUID, prediction: Prediction | None = None) -> bool:
        """Wake a job's task for a webhook if one runs here; see `JobTask.poke`."""
        actor = self._actors.get(user_id)
        return actor is not None and actor.poke(job_id, prediction)

    def resume(self, user_id: str, job_id: uuid.UUID, *, slot: int) -> bool:
        """Resume a job left in flight, if its slot is ours; True once it is taken up."""
        return self.deliver(user_id, Resume(job_id), slot=slot) is Offer.ACCEPTED

    def stop_job(self, user_id: str, job_id: uuid.UUID) -> bool:
        """Stop a job's task if one runs here (its settle then finds the job ended)."""
        actor = self._actors.get(user_id)
        return actor is not None and actor.cancel_running(job_id)

    def drop_slots(self, slots: frozenset[int], *, graceful: bool = False) -> list[UserActor]:
        """Stop every actor of `slots` and its job tasks, settling nothing.

        Their jobs stay as the database has them; the slots' next owner resumes
        them and re-attaches to their recorded predictions. Graceful (a handover,
        the lease still ours), submits already sent are recorded first. Returns
        the actors stopped, whose `done` says when they are gone.
        """
        actors = [actor for actor in self if actor.slot in slots]
        jobs = 0
        for actor in actors:
            jobs += actor.running
            del self._actors[actor.user_id]
            actor.drop(graceful=graceful)
        self.dropped += jobs
        if jobs:
            log.warning("lease.jobs_dropped", jobs=jobs, slots=len(slots), graceful=graceful)
        self.job_finished()
        return actors

    async def hand_over(self, slots: frozenset[int]) -> None:
        """Stop the slots' actors gracefully and return once they are gone."""
        for actor in self.drop_slots(slots, graceful=True):
            await actor.done.wait()

    async def drop_all(self) -> int:
        """Hand every actor over and wait until they are gone: a handover's first half."""
        self._draining = True
        jobs = self.running_jobs
        self.drop_slots(frozenset(actor.slot for actor in self), graceful=True)
        if self._tasks:  # every actor task, those of an earlier hand-over included
            await self._no_tasks.wait()
        return jobs

    def retire(self, actor: UserActor) -> bool:
        """Remove an idle actor; refused while its mailbox holds anything."""
        if actor.mailbox.depth or self._actors.get(actor.user_id) is not actor:
            return False
        del self._actors[actor.user_id]
        actor.mailbox.close()
        self.retired += 1
        return True

    async def drain(self, grace_s: float) -> int:
        """Stop admitting, give running jobs up to `grace_s`, then leave the rest.

        Returns how many jobs were still running when the grace period ended;
        they stay in flight in the store and recovery resumes them.
        """
        self._draining = True
        for actor in self:
            actor.stop_admitting()
        self.job_finished()
        with trio.move_on_after(grace_s):
            await self._drained.wait()
        left = sum(actor.running for actor in self)
        if left:
            log.warning("daemon.grace_expired", jobs_left=left)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        return left

    def job_finished(self) -> None:
        """Called when a job task ends, so a drain can end as soon as nothing runs."""
        if self._draining and not self.running_jobs:
            self._drained.set()

    @property
    def mailbox_depth(self) -> int:
        return sum(actor.mailbox.depth for actor in self)

    @property
    def running_jobs(self) -> int:
        return sum(actor.running for actor in self)
