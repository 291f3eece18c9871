"""The outputs edge: delivered images and users' input images in an object store.

General layout: the actors' `OutputStore` (`Downloader`, `_downloads`: a provider's
output fetched safely and put in the store) and `InputImages` (`StoredInputs`,
`_inputs`: users' input images checked and presigned) over one `ObjectStore` protocol
(`_store`), keys laid out and checked once
(`_keys`), the store a storage URL names (`_location`), and its implementations:
`FileObjects` (`_files`, files under a root, the embedded default) with the daemon's
read-only routes for it (`FileRoutes`, `_serve`; signed URLs in `_signing`) and
`S3Objects` (`_s3`, any S3-compatible bucket through obstore). The in-memory twin is
`orchestrator.outputs.testing.MemoryObjects`. Errors are in `_errors`, drawn there as
a tree. Nothing here reads settings or the environment, nor touches the database: the
composition root parses ORCHESTRATOR_STORAGE_URL with `parse_storage_url` and builds
the store it names. Import from here only.
"""

from ._downloads import Downloader as Downloader
from ._errors import ForeignLocation as ForeignLocation
from ._errors import InvalidKey as InvalidKey
from ._errors import ObjectNotFound as ObjectNotFound
from ._errors import StorageError as StorageError
from ._errors import StorageRefused as StorageRefused
from ._errors import StorageUnavailable as StorageUnavailable
from ._errors import StorageUrlError as StorageUrlError
from ._files import FileObjects as FileObjects
from ._inputs import StoredInputs as StoredInputs
from ._keys import EXTENSIONS as EXTENSIONS
from ._keys import IMAGE_TYPES as IMAGE_TYPES
from ._keys import MAX_KEY_BYTES as MAX_KEY_BYTES
from ._keys import InputKey as InputKey
from ._keys import RenderKey as RenderKey
from ._keys import check_key as check_key
from ._keys import input_key as input_key
from ._keys import parse_input_key as parse_input_key
from ._keys import parse_render_key as parse_render_key
from ._keys import render_key as render_key
from ._location import FileLocation as FileLocation
from ._location import S3Location as S3Location
from ._location import StorageLocation as StorageLocation
from ._location import parse_storage_url as parse_storage_url
from ._s3 import Retries as Retries
from ._s3 import S3Access as S3Access
from ._s3 import S3Objects as S3Objects
from ._serve import FileRoutes as FileRoutes
from ._store import MAX_PRESIGN_S as MAX_PRESIGN_S
from ._store import NullStorageObserver as NullStorageObserver
from ._store import ObjectInfo as ObjectInfo
from ._store import ObjectStore as ObjectStore
from ._store import StorageObserver as StorageObserver
from ._store import StoredObject as StoredObject

__all__ = [
    "EXTENSIONS",
    "IMAGE_TYPES",
    "MAX_KEY_BYTES",
    "MAX_PRESIGN_S",
    "Downloader",
    "FileLocation",
    "FileObjects",
    "FileRoutes",
    "ForeignLocation",
    "InputKey",
    "InvalidKey",
    "NullStorageObserver",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "RenderKey",
    "Retries",
    "S3Access",
    "S3Location",
    "S3Objects",
    "StorageError",
    "StorageLocation",
    "StorageObserver",
    "StorageRefused",
    "StorageUnavailable",
    "StorageUrlError",
    "StoredInputs",
    "StoredObject",
    "check_key",
    "input_key",
    "parse_input_key",
    "parse_render_key",
    "parse_storage_url",
    "render_key",
]
