"""User id → actor, with actors started on demand and retired when idle.

Virtual actors in the Orleans sense: a user's actor exists while it has
work. Delivery is synchronous and never blocks, and retirement happens in
the actor's own task without an await between "is my mailbox empty?" and
"remove me", so a message can never land in a retired actor's mailbox.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog
import trio

from orchestrator.providers import Provider

from ._capacity import Capacity
from ._config import ActorConfig
from ._mailbox import Offer
from ._messages import Cancel, Message
from ._ports import JobStore, NullObserver, Observer, OutputStore, UrlOnlyOutputs
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
    ) -> None:
        self.capacity = capacity or Capacity()
        self.watch = watch
        self._observer: Observer = observer or NullObserver()
        self._outputs: OutputStore = outputs or UrlOnlyOutputs()
        self._store = store
        self._provider = provider
        self._config = config
        self._actors: dict[str, UserActor] = {}
        self._nursery: trio.Nursery | None = None
        self._draining = False
        self._drained = trio.Event()
        self.epoch: int | None = None
        self.started = 0
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

    def deliver(self, user_id: str, message: Message) -> Offer:
        """Hand a message to the user's actor, starting one if needed. Never blocks."""
        if self._draining:
            return Offer.CLOSED
        actor = self._actors.get(user_id)
        if (
            isinstance(message, Cancel)
            and actor is not None
            and actor.cancel_running(message.job_id)
        ):
            # A running job's cancel never queues behind admissions waiting for capacity.
            return Offer.ACCEPTED
        if actor is None:
            if self._nursery is None:
                raise RuntimeError("the registry is not running")
            actor = UserActor(
                user_id,
                registry=self,
                store=self._store,
                provider=self._provider,
                config=self._config,
                observer=self._observer,
                outputs=self._outputs,
                capacity=self.capacity,
                watch=self.watch,
            )
            self._actors[user_id] = actor
            self.started += 1
            self._nursery.start_soon(actor.run, name=f"actor:{len(self._actors)}")
        return actor.mailbox.offer(message)

    def actor(self, user_id: str) -> UserActor | None:
        return self._actors.get(user_id)

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
