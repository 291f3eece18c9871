"""What a user's actor can be told. Frozen values, handled with `match`."""

from __future__ import annotations

import uuid

import attrs


@attrs.frozen
class Submit:
    """A queued job to admit (or refuse)."""

    job_id: uuid.UUID


@attrs.frozen
class Cancel:
    """A job whose cancellation was requested."""

    job_id: uuid.UUID


@attrs.frozen
class Resume:
    """An in-flight job a previous run left behind, to re-attach or end."""

    job_id: uuid.UUID


Message = Submit | Cancel | Resume
