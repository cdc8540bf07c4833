"""The probe-facing websocket ``/ws/ingest``: validate, store, then acknowledge.

Each text frame holds one JSON message (:mod:`curvscope.server.protocol`). A valid snapshot
is committed to the store *before* its :class:`AckMessage` is sent; a duplicate key is
acknowledged again (``duplicate: true``) and stored once. Bad input is answered with an
:class:`ErrorMessage` whose ``code`` is one of the ``ERROR_*`` names below; whether the
connection then continues or closes (and with which close code) is the table in
``docs/protocol.md`` and :data:`BAD_INPUT`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from curvscope.server import protocol
from curvscope.server.auth import origin_allowed, presented_token, token_matches
from curvscope.server.executors import ByteBudget, writing
from curvscope.server.fanout import Fanout
from curvscope.server.params import app_fanout, app_settings, app_store
from curvscope.server.protocol import (
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_INTERNAL_ERROR,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED_DATA,
    CLOSE_UNSUPPORTED_SCHEMA,
    AckMessage,
    ErrorMessage,
    EventMessage,
    SnapshotMessage,
)
from curvscope.server.stores import (
    RunTaken,
    SnapshotRecord,
    StepConflict,
    Store,
    snapshot_payload_json,
)

__all__ = [
    "BAD_INPUT",
    "ERROR_BINARY_FRAME",
    "ERROR_FORBIDDEN_ORIGIN",
    "ERROR_INVALID_MESSAGE",
    "ERROR_INVALID_RUN_NAME",
    "ERROR_MALFORMED_JSON",
    "ERROR_MESSAGE_TOO_BIG",
    "ERROR_MISSING_FIELD",
    "ERROR_NON_FINITE",
    "ERROR_NOT_AN_OBJECT",
    "ERROR_RUN_TAKEN",
    "ERROR_SHAPE_MISMATCH",
    "ERROR_STEP_CONFLICT",
    "ERROR_STORE_FAILED",
    "ERROR_TOO_MANY_CONNECTIONS",
    "ERROR_UNAUTHORIZED",
    "ERROR_UNKNOWN_TYPE",
    "ERROR_UNSUPPORTED_SCHEMA",
    "Reply",
    "handle_text",
    "router",
]

log = logging.getLogger("curvscope.server.routes.ingest")

ERROR_MALFORMED_JSON = "malformed_json"
ERROR_NOT_AN_OBJECT = "not_an_object"
ERROR_UNKNOWN_TYPE = "unknown_type"
ERROR_UNSUPPORTED_SCHEMA = "unsupported_schema_version"
ERROR_MISSING_FIELD = "missing_field"
ERROR_SHAPE_MISMATCH = "shape_mismatch"
ERROR_NON_FINITE = "non_finite_number"
ERROR_INVALID_RUN_NAME = "invalid_run_name"
ERROR_INVALID_MESSAGE = "invalid_message"
ERROR_MESSAGE_TOO_BIG = "message_too_big"
ERROR_BINARY_FRAME = "binary_frame"
ERROR_UNAUTHORIZED = "unauthorized"
ERROR_FORBIDDEN_ORIGIN = "forbidden_origin"
ERROR_STORE_FAILED = "store_failed"
ERROR_TOO_MANY_CONNECTIONS = "too_many_connections"
ERROR_RUN_TAKEN = "run_taken"
ERROR_STEP_CONFLICT = "step_conflict"

BAD_INPUT: dict[str, int | None] = {
    ERROR_MALFORMED_JSON: None,
    ERROR_NOT_AN_OBJECT: None,
    ERROR_UNKNOWN_TYPE: None,
    ERROR_MISSING_FIELD: None,
    ERROR_SHAPE_MISMATCH: None,
    ERROR_NON_FINITE: None,
    ERROR_INVALID_RUN_NAME: None,
    ERROR_INVALID_MESSAGE: None,
    ERROR_UNSUPPORTED_SCHEMA: CLOSE_UNSUPPORTED_SCHEMA,
    ERROR_MESSAGE_TOO_BIG: CLOSE_MESSAGE_TOO_BIG,
    ERROR_BINARY_FRAME: CLOSE_UNSUPPORTED_DATA,
    ERROR_UNAUTHORIZED: CLOSE_UNAUTHORIZED,
    ERROR_FORBIDDEN_ORIGIN: CLOSE_FORBIDDEN_ORIGIN,
    ERROR_STORE_FAILED: CLOSE_INTERNAL_ERROR,
    ERROR_RUN_TAKEN: None,
    ERROR_STEP_CONFLICT: None,
    ERROR_TOO_MANY_CONNECTIONS: CLOSE_TRY_AGAIN_LATER,
}
"""Error code -> close code; ``None``: the connection continues with the next message."""

router = APIRouter()


@dataclass(frozen=True)
class Reply:
    """What to answer one frame with, and whether to close afterwards."""

    message: AckMessage | ErrorMessage
    close_code: int | None = None


def _error(code: str, message: str, data: Any = None) -> Reply:
    run = step = None
    if isinstance(data, dict):
        run = data.get("run") if isinstance(data.get("run"), str) else None
        step = data.get("step") if type(data.get("step")) is int else None
        if run is not None and len(run) > protocol.MAX_RUN_NAME_LENGTH:
            run = run[: protocol.MAX_RUN_NAME_LENGTH] + "..."
    return Reply(ErrorMessage(code=code, message=message, run=run, step=step), BAD_INPUT[code])


def _classify(exc: ValidationError) -> str:
    """The error code of a validation failure (first error decides)."""
    first = exc.errors(include_url=False)[0]
    loc, kind = first["loc"], first["type"]
    if kind == "missing":
        return ERROR_MISSING_FIELD
    if kind == "finite_number":
        return ERROR_NON_FINITE
    if kind == "shape_mismatch":
        return ERROR_SHAPE_MISMATCH
    if len(loc) >= 2 and loc[1] == "run":
        return ERROR_INVALID_RUN_NAME
    return ERROR_INVALID_MESSAGE


def _describe(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in err["loc"][1:]) or "message"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse(text: str) -> SnapshotMessage | EventMessage | Reply:
    """Decode and validate one frame: the message, or the :class:`Reply` refusing it."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError; an int of > 4300 digits
        return _error(ERROR_MALFORMED_JSON, f"not valid JSON: {exc}")
    if not isinstance(data, dict):
        return _error(ERROR_NOT_AN_OBJECT, "a message must be a JSON object")
    kind = data.get("type")
    if kind not in ("snapshot", "event"):
        return _error(
            ERROR_UNKNOWN_TYPE,
            f"unknown message type {kind!r}: expected 'snapshot' or 'event'"[:300],
            data,
        )
    version = data.get("schema_version", protocol.SCHEMA_VERSION)
    if version != protocol.SCHEMA_VERSION:
        return _error(
            ERROR_UNSUPPORTED_SCHEMA,
            f"schema_version {version!r} is not supported: this server speaks "
            f"{protocol.SCHEMA_VERSION}"[:300],
            data,
        )
    try:
        return protocol.parse_ingest_message(data)
    except ValidationError as exc:
        return _error(_classify(exc), _describe(exc), data)


OFF_LOOP_BYTES = 64 * 1024
"""Frames at least this long are parsed and validated off the event loop."""

Blocking = Callable[..., Awaitable[Any]]
"""Runs ``fn(*args)`` in a thread and awaits it (the app's ingest pool)."""


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def handle_text(
    text: str,
    store: Store,
    fanout: Fanout,
    *,
    blocking: Blocking = _in_thread,
) -> Reply:
    """Validate, store and publish one text frame; never raises for bad input.

    The store write (and the parsing of a frame of :data:`OFF_LOOP_BYTES` or more) runs in
    ``blocking``, so the event loop keeps serving everyone else meanwhile. Browsers hear
    of a stored message through ``fanout`` (from here, or from the store's feed).
    """
    parsed = parse(text) if len(text) < OFF_LOOP_BYTES else await blocking(parse, text)
    if isinstance(parsed, Reply):
        return parsed
    received_at = time.time()
    try:
        if isinstance(parsed, SnapshotMessage):
            inserted = await blocking(store.append_snapshot, parsed, received_at)
        else:
            inserted = await blocking(store.append_event, parsed, received_at)
    except RunTaken as taken:
        owner = f"instance {taken.owner}" if taken.owner else "a probe from before instances"
        return Reply(
            ErrorMessage(
                code=ERROR_RUN_TAKEN,
                message=f"run {parsed.run!r} belongs to another probe ({owner}): continue it "
                "with Probe(..., resume=True) (curvscope upload --resume), or choose another "
                "run name",
                run=parsed.run,
                step=parsed.step,
            )
        )
    except StepConflict:
        return Reply(
            ErrorMessage(
                code=ERROR_STEP_CONFLICT,
                message=f"run {parsed.run!r} already has a different snapshot at step "
                f"{parsed.step}; the stored one is kept",
                run=parsed.run,
                step=parsed.step,
            )
        )
    except Exception:
        log.exception("could not store %s for run %r", parsed.type, parsed.run)
        return _error(
            ERROR_STORE_FAILED,
            "the server could not store the message; resend later",
            {"run": parsed.run, "step": parsed.step},
        )
    if inserted and not fanout.cross_worker:
        if isinstance(parsed, SnapshotMessage):
            payload = snapshot_payload_json(parsed)
            await fanout.snapshot(SnapshotRecord(parsed.run, parsed.step, received_at, payload))
        else:
            fields = parsed.model_dump(mode="json", exclude={"schema_version", "type", "resume"})
            await fanout.event(fields | {"received_at": received_at})
    return Reply(
        AckMessage(kind=parsed.type, run=parsed.run, step=parsed.step, duplicate=not inserted)
    )


def _too_big(text: str, limit: int) -> bool:
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8")) > limit)


async def _refuse(ws: WebSocket, reply: Reply) -> None:
    await ws.send_text(reply.message.model_dump_json())
    await ws.close(code=reply.close_code or CLOSE_INTERNAL_ERROR, reason=reply.message.code)


@router.websocket("/ws/ingest")
async def ingest(ws: WebSocket) -> None:
    """Receive probe messages until the probe disconnects or a closing error occurs."""
    settings = app_settings(ws)
    store = app_store(ws)
    await ws.accept()
    if not origin_allowed(ws):
        await _refuse(ws, _error(ERROR_FORBIDDEN_ORIGIN, "websocket from a foreign Origin"))
        return
    if not token_matches(settings.token_value(), presented_token(ws, allow_query=True)):
        await _refuse(
            ws,
            _error(
                ERROR_UNAUTHORIZED,
                "a valid token is required: 'Authorization: Bearer <token>' or ?token=",
            ),
        )
        return
    state = ws.app.state
    if state.ingest_connections >= settings.max_ingest_connections:
        await _refuse(
            ws,
            _error(
                ERROR_TOO_MANY_CONNECTIONS,
                f"the server takes {settings.max_ingest_connections} probe connections at "
                "once; reconnect later",
            ),
        )
        return
    state.ingest_connections += 1
    budget: ByteBudget = state.ingest_budget

    async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
        return await writing(ws, fn, *args)

    try:
        while True:
            frame = await ws.receive()
            if frame["type"] == "websocket.disconnect":
                return
            text = frame.get("text")
            if text is None:
                await _refuse(
                    ws,
                    _error(ERROR_BINARY_FRAME, "binary frames are not supported; send JSON text"),
                )
                return
            if _too_big(text, settings.max_message_bytes):
                await _refuse(
                    ws,
                    _error(
                        ERROR_MESSAGE_TOO_BIG,
                        f"message larger than the limit of {settings.max_message_bytes} bytes",
                    ),
                )
                return
            async with budget.take(len(text)):  # frames beyond the budget wait their turn
                reply = await handle_text(text, store, app_fanout(ws), blocking=blocking)
            if reply.close_code is not None:
                await _refuse(ws, reply)
                return
            await ws.send_text(reply.message.model_dump_json())
    except WebSocketDisconnect:
        return
    finally:
        state.ingest_connections -= 1
