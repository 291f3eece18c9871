"""A loopback stand-in for Replicate, for tests, benchmarks and the demo.

It speaks Replicate's predictions API over real HTTP, misbehaves on request (latency,
failures, hangs, 429, 5xx, malformed bodies) and serves real PNG outputs. Code lives in
private modules: ``_config`` (the knobs), ``_state`` (predictions computed from a clock),
``_images`` (the PNG encoder), ``_app`` (the raw ASGI app) and ``_server`` (hypercorn).
"""

from ._app import SimulatorApp as SimulatorApp
from ._config import SimulatorConfig as SimulatorConfig
from ._server import serve_simulator as serve_simulator
from ._state import Directive as Directive
from ._state import Fault as Fault
from ._state import FaultKind as FaultKind
from ._state import InvalidPredictionInput as InvalidPredictionInput
from ._state import SimulatedPrediction as SimulatedPrediction
from ._state import SimulatorState as SimulatorState

__all__ = [
    "Directive",
    "Fault",
    "FaultKind",
    "InvalidPredictionInput",
    "SimulatedPrediction",
    "SimulatorApp",
    "SimulatorConfig",
    "SimulatorState",
    "serve_simulator",
]
