"""The provider adapters: Replicate and KIE over httpx, behind `orchestrator.core.Provider`.

The protocol, its values (`Prediction`, `PredictionRequest`, `PredictionStatus`) and its
errors live in `orchestrator.core`, so that the actors and every other edge can use them
without loading an adapter. Code lives in private modules (``_http`` for what the HTTP
adapters share, ``_replicate`` and ``_kie`` for the adapters); import from here only.
Only the composition roots import this package.
"""

from ._kie import KieProvider as KieProvider
from ._replicate import ReplicateProvider as ReplicateProvider

__all__ = ["KieProvider", "ReplicateProvider"]
