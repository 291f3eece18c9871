"""A loopback stand-in for Replicate or KIE, for tests, benchmarks and the demo.

It speaks Replicate's predictions API or KIE's jobs API over real HTTP, misbehaves on request
(latency, failures, hangs, 429, 5xx, malformed bodies), serves real PNG outputs, delivers
signed, retried, sometimes duplicated or reordered webhooks, and fetches each prediction's
``image_input`` URLs as Replicate does, failing the prediction when one cannot be fetched.
Code lives in private modules: ``_config`` (the knobs), ``_state`` (predictions and owed
webhooks computed from a clock), ``_inputs`` (``image_input`` validation and fetch records),
``_images`` (the PNG encoder), ``_app`` (the raw ASGI app), ``_webhooks`` (the sender),
``_fetcher`` (the input fetcher) and ``_server`` (hypercorn).
"""

from ._app import SimulatorApp as SimulatorApp
from ._config import SimulatorConfig as SimulatorConfig
from ._fetcher import InputFetcher as InputFetcher
from ._flags import add_simulator_flags as add_simulator_flags
from ._flags import simulator_config as simulator_config
from ._inputs import ImageInputs as ImageInputs
from ._inputs import InputFetch as InputFetch
from ._inputs import InputFetchRequest as InputFetchRequest
from ._inputs import InvalidPredictionInput as InvalidPredictionInput
from ._server import serve_simulator as serve_simulator
from ._state import Directive as Directive
from ._state import Fault as Fault
from ._state import FaultKind as FaultKind
from ._state import SimulatedPrediction as SimulatedPrediction
from ._state import SimulatorState as SimulatorState
from ._state import WebhookDelivery as WebhookDelivery
from ._state import WebhookKind as WebhookKind
from ._webhooks import WebhookSender as WebhookSender

__all__ = [
    "Directive",
    "Fault",
    "FaultKind",
    "ImageInputs",
    "InputFetch",
    "InputFetchRequest",
    "InputFetcher",
    "InvalidPredictionInput",
    "SimulatedPrediction",
    "SimulatorApp",
    "SimulatorConfig",
    "SimulatorState",
    "WebhookDelivery",
    "WebhookKind",
    "WebhookSender",
    "add_simulator_flags",
    "serve_simulator",
    "simulator_config",
]
