"""The leaf core: the job lifecycle's values and pure rules, the ports and their errors.

It imports nothing of ours. The actors and every edge (the database, the provider
adapters, downloads, webhooks, HTTP, the simulator) depend on it and on nothing of each
other's; only the composition roots (`orchestrator.daemon`, `orchestrator.cli`) wire the
concrete adapters in. Code lives in private modules; import from here only.
"""

from ._breaker import DEFAULT_POLICY as DEFAULT_POLICY
from ._breaker import Breaker as Breaker
from ._breaker import BreakerPolicy as BreakerPolicy
from ._breaker import BreakerState as BreakerState
from ._breaker import breaker_failure as breaker_failure
from ._breaker import breaker_probe as breaker_probe
from ._breaker import breaker_success as breaker_success
from ._breaker import breaker_tick as breaker_tick
from ._cancel import cancel_upstream as cancel_upstream
from ._events import CALLBACK_EVENT_TYPE as CALLBACK_EVENT_TYPE
from ._events import EVENTS_CHANNEL as EVENTS_CHANNEL
from ._events import CallbackDue as CallbackDue
from ._events import CallbackOutput as CallbackOutput
from ._events import CallbackPolicy as CallbackPolicy
from ._events import JobEvent as JobEvent
from ._events import callback_body as callback_body
from ._exceptions import ExpectedFault as ExpectedFault
from ._exceptions import FencedOff as FencedOff
from ._exceptions import is_expected as is_expected
from ._exceptions import sole_exception as sole_exception
from ._finish import finish as finish
from ._hosts import HostList as HostList
from ._hosts import origin as origin
from ._images import IMAGE_INPUT as IMAGE_INPUT
from ._images import INPUT_HOSTS_SETTING as INPUT_HOSTS_SETTING
from ._images import MAX_IMAGE_INPUTS as MAX_IMAGE_INPUTS
from ._images import SNIFF_BYTES as SNIFF_BYTES
from ._images import ImageInput as ImageInput
from ._images import PrivateInput as PrivateInput
from ._images import RemoteInput as RemoteInput
from ._images import image_inputs as image_inputs
from ._images import input_name_problem as input_name_problem
from ._images import sniffed_type as sniffed_type
from ._inputs import COST_MULTIPLIERS as COST_MULTIPLIERS
from ._inputs import DEFAULT_ALLOWED as DEFAULT_ALLOWED
from ._inputs import MAX_PARAMS_BYTES as MAX_PARAMS_BYTES
from ._inputs import MAX_PARAMS_DEPTH as MAX_PARAMS_DEPTH
from ._inputs import MAX_USER_ID_CHARS as MAX_USER_ID_CHARS
from ._inputs import RESERVED_PARAMS as RESERVED_PARAMS
from ._inputs import USER_ID as USER_ID
from ._inputs import default_allowed as default_allowed
from ._inputs import params_problem as params_problem
from ._inputs import user_id_problem as user_id_problem
from ._lifecycle import CALLBACK_HOSTS_SETTING as CALLBACK_HOSTS_SETTING
from ._lifecycle import MAX_OUTPUTS as MAX_OUTPUTS
from ._lifecycle import MAX_PRIORITY as MAX_PRIORITY
from ._lifecycle import MAX_PROMPT_CHARS as MAX_PROMPT_CHARS
from ._lifecycle import MIN_PRIORITY as MIN_PRIORITY
from ._lifecycle import Abandoned as Abandoned
from ._lifecycle import Account as Account
from ._lifecycle import Admission as Admission
from ._lifecycle import AdmissionContext as AdmissionContext
from ._lifecycle import AdmissionOutcome as AdmissionOutcome
from ._lifecycle import Admit as Admit
from ._lifecycle import CanceledByUser as CanceledByUser
from ._lifecycle import Delivered as Delivered
from ._lifecycle import Ending as Ending
from ._lifecycle import ErrorCode as ErrorCode
from ._lifecycle import Fence as Fence
from ._lifecycle import Finish as Finish
from ._lifecycle import FoundBy as FoundBy
from ._lifecycle import InFlight as InFlight
from ._lifecycle import Job as Job
from ._lifecycle import JobRef as JobRef
from ._lifecycle import JobStatus as JobStatus
from ._lifecycle import ListedClaim as ListedClaim
from ._lifecycle import Plan as Plan
from ._lifecycle import Reject as Reject
from ._lifecycle import Settlement as Settlement
from ._lifecycle import StoredOutput as StoredOutput
from ._lifecycle import Stuck as Stuck
from ._lifecycle import TimedOut as TimedOut
from ._lifecycle import UpstreamFailed as UpstreamFailed
from ._lifecycle import UpstreamRef as UpstreamRef
from ._lifecycle import Usage as Usage
from ._lifecycle import callback_problem as callback_problem
from ._lifecycle import cost_of as cost_of
from ._lifecycle import decide_admission as decide_admission
from ._lifecycle import poll_delays as poll_delays
from ._lifecycle import refund_for_delivery as refund_for_delivery
from ._lifecycle import settle as settle
from ._lifecycle import validate as validate
from ._ports import EverySlot as EverySlot
from ._ports import InputImages as InputImages
from ._ports import InputsUnavailable as InputsUnavailable
from ._ports import JobStore as JobStore
from ._ports import NullObserver as NullObserver
from ._ports import Observer as Observer
from ._ports import OutputStore as OutputStore
from ._ports import OutputUnavailable as OutputUnavailable
from ._ports import PassThroughInputs as PassThroughInputs
from ._ports import RunningJobs as RunningJobs
from ._ports import Slots as Slots
from ._ports import UrlOnlyOutputs as UrlOnlyOutputs
from ._provider import RESERVED_INPUTS as RESERVED_INPUTS
from ._provider import Prediction as Prediction
from ._provider import PredictionRequest as PredictionRequest
from ._provider import PredictionStatus as PredictionStatus
from ._provider import Provider as Provider
from ._provider import TaggedPrediction as TaggedPrediction
from ._provider_errors import ProviderError as ProviderError
from ._provider_errors import ProviderProtocolError as ProviderProtocolError
from ._provider_errors import ProviderRateLimited as ProviderRateLimited
from ._provider_errors import ProviderRejected as ProviderRejected
from ._provider_errors import ProviderUnavailable as ProviderUnavailable
from ._provider_errors import ProviderUnreachable as ProviderUnreachable
from ._provider_errors import safe_summary as safe_summary
from ._retry import failure_text_retryable as failure_text_retryable
from ._retry import kie_failure_retryable as kie_failure_retryable
from ._retry import retry_delay as retry_delay
from ._retry import retry_margin as retry_margin
from ._slots import ALL_SLOTS as ALL_SLOTS
from ._slots import SLOTS as SLOTS
from ._text import MAX_STORED_TEXT as MAX_STORED_TEXT
from ._text import clean_text as clean_text
from ._tracing import NULL_SPAN as NULL_SPAN
from ._tracing import NULL_TRACE as NULL_TRACE
from ._tracing import Attributes as Attributes
from ._tracing import AttributeValue as AttributeValue
from ._tracing import JobTrace as JobTrace
from ._tracing import JobTracing as JobTracing
from ._tracing import NullTracing as NullTracing
from ._tracing import Span as Span

__all__ = [
    "ALL_SLOTS",
    "CALLBACK_EVENT_TYPE",
    "CALLBACK_HOSTS_SETTING",
    "COST_MULTIPLIERS",
    "DEFAULT_ALLOWED",
    "DEFAULT_POLICY",
    "EVENTS_CHANNEL",
    "IMAGE_INPUT",
    "INPUT_HOSTS_SETTING",
    "MAX_IMAGE_INPUTS",
    "MAX_OUTPUTS",
    "MAX_PARAMS_BYTES",
    "MAX_PARAMS_DEPTH",
    "MAX_PRIORITY",
    "MAX_PROMPT_CHARS",
    "MAX_STORED_TEXT",
    "MAX_USER_ID_CHARS",
    "MIN_PRIORITY",
    "NULL_SPAN",
    "NULL_TRACE",
    "RESERVED_INPUTS",
    "RESERVED_PARAMS",
    "SLOTS",
    "SNIFF_BYTES",
    "USER_ID",
    "Abandoned",
    "Account",
    "Admission",
    "AdmissionContext",
    "AdmissionOutcome",
    "Admit",
    "AttributeValue",
    "Attributes",
    "Breaker",
    "BreakerPolicy",
    "BreakerState",
    "CallbackDue",
    "CallbackOutput",
    "CallbackPolicy",
    "CanceledByUser",
    "Delivered",
    "Ending",
    "ErrorCode",
    "EverySlot",
    "ExpectedFault",
    "Fence",
    "FencedOff",
    "Finish",
    "FoundBy",
    "HostList",
    "ImageInput",
    "InFlight",
    "InputImages",
    "InputsUnavailable",
    "Job",
    "JobEvent",
    "JobRef",
    "JobStatus",
    "JobStore",
    "JobTrace",
    "JobTracing",
    "ListedClaim",
    "NullObserver",
    "NullTracing",
    "Observer",
    "OutputStore",
    "OutputUnavailable",
    "PassThroughInputs",
    "Plan",
    "Prediction",
    "PredictionRequest",
    "PredictionStatus",
    "PrivateInput",
    "Provider",
    "ProviderError",
    "ProviderProtocolError",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderUnavailable",
    "ProviderUnreachable",
    "Reject",
    "RemoteInput",
    "RunningJobs",
    "Settlement",
    "Slots",
    "Span",
    "StoredOutput",
    "Stuck",
    "TaggedPrediction",
    "TimedOut",
    "UpstreamFailed",
    "UpstreamRef",
    "UrlOnlyOutputs",
    "Usage",
    "breaker_failure",
    "breaker_probe",
    "breaker_success",
    "breaker_tick",
    "callback_body",
    "callback_problem",
    "cancel_upstream",
    "clean_text",
    "cost_of",
    "decide_admission",
    "default_allowed",
    "failure_text_retryable",
    "finish",
    "image_inputs",
    "input_name_problem",
    "is_expected",
    "kie_failure_retryable",
    "origin",
    "params_problem",
    "poll_delays",
    "refund_for_delivery",
    "retry_delay",
    "retry_margin",
    "safe_summary",
    "settle",
    "sniffed_type",
    "sole_exception",
    "user_id_problem",
    "validate",
]
