"""The actor runtime: one actor per user, admitting strictly one message at a time.

Code lives in private modules; this is the front door. The composition root
builds a `Registry` with a `JobStore`, a `Provider` and an `ActorConfig`,
runs it in a nursery, and delivers `Submit`, `Cancel` and `Resume` messages.
"""

from ._capacity import Capacity as Capacity
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
from ._ports import EverySlot as EverySlot
from ._ports import JobStore as JobStore
from ._ports import NullObserver as NullObserver
from ._ports import Observer as Observer
from ._ports import OutputStore as OutputStore
from ._ports import OutputUnavailable as OutputUnavailable
from ._ports import Slots as Slots
from ._ports import UrlOnlyOutputs as UrlOnlyOutputs
from ._registry import Registry as Registry
from ._user import UserActor as UserActor
from ._watch import ListingWatch as ListingWatch

__all__ = [
    "ActorConfig",
    "Cancel",
    "Capacity",
    "EverySlot",
    "InFlightGate",
    "JobStore",
    "JobTask",
    "ListingWatch",
    "LoadMonitor",
    "Mailbox",
    "Message",
    "NullObserver",
    "Observer",
    "Offer",
    "OutputStore",
    "OutputUnavailable",
    "RateBudget",
    "Registry",
    "Resume",
    "ServicePacer",
    "Slots",
    "Submit",
    "UrlOnlyOutputs",
    "UserActor",
]
