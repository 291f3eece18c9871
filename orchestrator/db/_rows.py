"""Turn records into the lifecycle's values; the only place rows are decoded."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from orchestrator.core import Account, ErrorCode, Job, JobStatus

from ._connector import UndecodableJson


def job(row: asyncpg.Record) -> Job:
    params = row["params"]
    params_error = _params_error(params)
    return Job(
        id=row["id"],
        user_id=row["user_id"],
        prompt=row["prompt"],
        params=params if params_error is None else {},
        num_outputs=row["num_outputs"],
        status=JobStatus(row["status"]),
        cost=row["cost"],
        error_code=ErrorCode(row["error_code"]) if row["error_code"] else None,
        error_message=row["error_message"],
        idempotency_key=row["idempotency_key"],
        prediction_id=row["prediction_id"],
        deadline_at=row["deadline_at"],
        cancel_requested_at=row["cancel_requested_at"],
        partial=row["partial"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        admitted_at=row["admitted_at"],
        finished_at=row["finished_at"],
        params_error=params_error,
        slot=row.get("slot", 0),
        retry_of=row.get("retry_of"),
        traceparent=row.get("traceparent"),
        callback_url=row.get("callback_url"),
    )


def _params_error(params: object) -> str | None:
    if isinstance(params, Mapping):
        return None
    if isinstance(params, UndecodableJson):
        return params.problem
    return f"params must be a JSON object, not {_kind(params)}"


def _kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def account(row: asyncpg.Record) -> Account:
    return Account(user_id=row["user_id"], balance=row["balance"], plan=row["plan"])
