"""Storage errors, mapped once at the edge from the filesystem and the S3 client.

    StorageError
     ├── StorageUnavailable     the store could not be reached, timed out, or answered
     │                          5xx/429 (also an ExpectedFault); retried with backoff
     │                          before it is raised
     ├── StorageRefused         the store said no for good: permission, credentials, a
     │                          missing bucket, a request it rejects (other 4xx)
     └── ObjectNotFound         read of a key that holds no object

    ValueError (a caller's mistake, never retried, never a storage fault)
     ├── StorageUrlError        ORCHESTRATOR_STORAGE_URL is not file:///abs or s3://bucket
     ├── InvalidKey             a key that could leave the store or its layout
     └── ForeignLocation        delete() of a location that is not in this store

Callers catch `StorageError` (or one leaf); anything else raised below is a bug and
travels up untouched, traceback and all.
"""

from __future__ import annotations

from orchestrator.core import ExpectedFault


class StorageError(Exception):
    """Something the object store could not or would not do."""


class StorageUnavailable(StorageError, ExpectedFault):
    """The store is unreachable or overloaded for now; a later attempt may work."""


class StorageRefused(StorageError):
    """The store refused the request; repeating it unchanged will not help."""


class ObjectNotFound(StorageError):
    """No object under that key."""


class StorageUrlError(ValueError):
    """ORCHESTRATOR_STORAGE_URL names no store this daemon can use."""


class InvalidKey(ValueError):
    """A key with `..`, an absolute path, NUL, a backslash, or outside the layout asked for."""


class ForeignLocation(ValueError):
    """A stored location that belongs to another store (another root, bucket or prefix)."""
