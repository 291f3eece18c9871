"""The database edge: the only package that knows SQL or asyncpg.

Its code lives in private modules; this module is the front door:
`open_database` gives a `Database` whose methods each run one transaction
across the Trio/asyncio bridge, raising the `DbError` hierarchy.
"""

from orchestrator.core import EVENTS_CHANNEL as EVENTS_CHANNEL

from ._audit import AuditReport as AuditReport
from ._audit import CheckResult as CheckResult
from ._connector import DAEMON_ROLE as DAEMON_ROLE
from ._connector import OPERATOR_ROLE as OPERATOR_ROLE
from ._connector import Role as Role
from ._database import MEMBERS_CHANNEL as MEMBERS_CHANNEL
from ._database import Database as Database
from ._database import open_database as open_database
from ._database import slot_channel as slot_channel
from ._embedded import ensure_server as ensure_embedded_server
from ._embedded import is_running as embedded_server_running
from ._embedded import stop_server as stop_embedded_server
from ._errors import DbError as DbError
from ._errors import DbUnavailable as DbUnavailable
from ._errors import EventsPruned as EventsPruned
from ._errors import Fenced as Fenced
from ._errors import IdempotencyConflict as IdempotencyConflict
from ._errors import IntegrityViolation as IntegrityViolation
from ._errors import InvalidRequest as InvalidRequest
from ._errors import PermissionDenied as PermissionDenied
from ._errors import RoleUnavailable as RoleUnavailable
from ._errors import SchemaNotCurrent as SchemaNotCurrent
from ._errors import UnknownJob as UnknownJob
from ._errors import UnknownUser as UnknownUser
from ._errors import map_error as map_error
from ._events import CallbackRow as CallbackRow
from ._jobs import MAX_BULK_JOBS as MAX_BULK_JOBS
from ._jobs import SubmitResult as SubmitResult
from ._lease_session import LeaseSession as LeaseSession
from ._leases import HeldSlot as HeldSlot
from ._leases import MemberRow as MemberRow
from ._leases import OwnerSummary as OwnerSummary
from ._ledger import AccountSummary as AccountSummary
from ._ledger import Refund as Refund
from ._listener import Listener as Listener
from ._listener import Notification as Notification
from ._schema import schema_text as schema_text
from ._top import ProviderLoad as ProviderLoad
from ._top import SlowJob as SlowJob
from ._top import TopFigures as TopFigures
from ._views import JobTimeline as JobTimeline
from ._views import LedgerRow as LedgerRow
from ._views import OutputRow as OutputRow
from ._views import PredictionRow as PredictionRow
from ._views import UpstreamRow as UpstreamRow

__all__ = [
    "DAEMON_ROLE",
    "EVENTS_CHANNEL",
    "MAX_BULK_JOBS",
    "MEMBERS_CHANNEL",
    "OPERATOR_ROLE",
    "AccountSummary",
    "AuditReport",
    "CallbackRow",
    "CheckResult",
    "Database",
    "DbError",
    "DbUnavailable",
    "EventsPruned",
    "Fenced",
    "HeldSlot",
    "IdempotencyConflict",
    "IntegrityViolation",
    "InvalidRequest",
    "JobTimeline",
    "LeaseSession",
    "LedgerRow",
    "Listener",
    "MemberRow",
    "Notification",
    "OutputRow",
    "OwnerSummary",
    "PermissionDenied",
    "PredictionRow",
    "ProviderLoad",
    "Refund",
    "Role",
    "RoleUnavailable",
    "SchemaNotCurrent",
    "SlowJob",
    "SubmitResult",
    "TopFigures",
    "UnknownJob",
    "UnknownUser",
    "UpstreamRow",
    "embedded_server_running",
    "ensure_embedded_server",
    "map_error",
    "open_database",
    "schema_text",
    "slot_channel",
    "stop_embedded_server",
]
