"""The provider edge: one `Provider` protocol, its values and errors, and its adapters.

Code lives in private modules (``_base`` for the values and the protocol, ``_errors`` for the
exception tree, ``_cancel`` for cancelling within a timeout, ``_http`` for what the HTTP
adapters share, ``_replicate`` and ``_kie`` for the adapters); import from here only.
"""

from ._base import Prediction as Prediction
from ._base import PredictionRequest as PredictionRequest
from ._base import PredictionStatus as PredictionStatus
from ._base import Provider as Provider
from ._base import TaggedPrediction as TaggedPrediction
from ._cancel import cancel_within as cancel_within
from ._errors import ProviderError as ProviderError
from ._errors import ProviderProtocolError as ProviderProtocolError
from ._errors import ProviderRateLimited as ProviderRateLimited
from ._errors import ProviderRejected as ProviderRejected
from ._errors import ProviderUnavailable as ProviderUnavailable
from ._errors import ProviderUnreachable as ProviderUnreachable
from ._kie import KieProvider as KieProvider
from ._replicate import ReplicateProvider as ReplicateProvider

__all__ = [
    "KieProvider",
    "Prediction",
    "PredictionRequest",
    "PredictionStatus",
    "Provider",
    "ProviderError",
    "ProviderProtocolError",
    "ProviderRateLimited",
    "ProviderRejected",
    "ProviderUnavailable",
    "ProviderUnreachable",
    "ReplicateProvider",
    "TaggedPrediction",
    "cancel_within",
]
