"""The actor runtime: one actor per user, admitting strictly one message at a time.

Code lives in private modules; this is the front door. The composition root
builds a `Registry` with a `JobStore`, a `Provider` and an `ActorConfig`,
runs it in a nursery, and delivers `Submit`, `Cancel` and `Resume` messages.
The ports it sees the world through (`JobStore`, `Observer`, `OutputStore`,
`Slots`) live in `orchestrator.core`, beside the values they carry.
"""

from ._capacity import Capacity as Capacity
from ._capacity import FairOrder as FairOrder
from ._capacity import InFlightGate as InFlightGate
from ._capacity import LoadMonitor as LoadMonitor
from ._capacity import RateBudget as RateBudget
from ._capacity import ServicePacer as ServicePacer
from ._config import ActorConfig as ActorConfig
from ._job import JobTask as JobTask
from ._mailbox import Mailbox as Mailbox
from ._mailbox import Offer as Offer
from ._messages import Cancel as Cancel
from ._messages import Message as Message
from ._messages import Resume as Resume
from ._messages import Submit as Submit
from ._registry import Registry as Registry
from ._routes import PROBE_ID as PROBE_ID
from ._routes import ROUTING_KEY as ROUTING_KEY
from ._routes import BreakerObserver as BreakerObserver
from ._routes import BreakerProvider as BreakerProvider
from ._routes import NullBreakerObserver as NullBreakerObserver
from ._routes import Routes as Routes
from ._user import UserActor as UserActor
from ._watch import ListingWatch as ListingWatch

__all__ = [
    "PROBE_ID",
    "ROUTING_KEY",
    "ActorConfig",
    "BreakerObserver",
    "BreakerProvider",
    "Cancel",
    "Capacity",
    "FairOrder",
    "InFlightGate",
    "JobTask",
    "ListingWatch",
    "LoadMonitor",
    "Mailbox",
    "Message",
    "NullBreakerObserver",
    "Offer",
    "RateBudget",
    "Registry",
    "Resume",
    "Routes",
    "ServicePacer",
    "Submit",
    "UserActor",
]
