"""What an ``Execute`` request must be before an :class:`~zmqruntime.execution.ExecutionServer`
queues it: a serializer the server uses, an id and labels within their bounds, and a payload
the serializer can take (decoded at once when small, see
:meth:`~zmqruntime.execution.outcomes.EncodedTask.receive`). Each refusal is the error reply
that tells the client why; the server's own state (draining, a known id, a full queue) is the
server's to check."""

from __future__ import annotations

from typing import Any, Final

from zmqruntime.core.messages import ErrorReply, Execute
from zmqruntime.core.requests import serializer_refusal
from zmqruntime.errors import ErrorCode, ProtocolError
from zmqruntime.execution.outcomes import EncodedTask
from zmqruntime.execution.records import labels_problem
from zmqruntime.execution.waiters import error_reply
from zmqruntime.protocols import TaskSerializer

__all__ = ["MAX_EXECUTION_ID_LENGTH", "decode_task", "refusal_of"]

MAX_EXECUTION_ID_LENGTH: Final = 256
"""Characters of an execution id (1 to this)."""


def refusal_of(request: Execute, serializer: TaskSerializer) -> ErrorReply | None:
    """Why ``request`` cannot be taken whatever the server holds, or None."""
    rid = request.request_id
    refusal = serializer_refusal(rid, request.serializer, serializer, "the task")
    if refusal is not None:
        return refusal
    if len(request.execution_id or "") > MAX_EXECUTION_ID_LENGTH:  # empty: the server names it
        return error_reply(rid, ErrorCode.MALFORMED, "execution_id must be 1..256 characters")
    if (problem := labels_problem(request.labels)) is not None:
        return error_reply(rid, ErrorCode.TOO_LARGE, f"{problem}; labels are short tags")
    return None


def decode_task(
    request: Execute, serializer: TaskSerializer, max_json_bytes: int, max_nodes: int
) -> tuple[Any, ErrorReply | None]:
    """The task of ``request`` for a worker (decoded, or an ``EncodedTask`` its worker
    decodes) and None; or None and the reply refusing its payload."""
    rid = request.request_id
    try:
        task = EncodedTask.receive(request.payload, serializer, max_json_bytes, max_nodes)
    except ProtocolError as exc:
        if exc.code is ErrorCode.TOO_LARGE:
            return None, error_reply(rid, exc.code, str(exc))
        return None, error_reply(rid, exc.code, f"the task payload cannot be decoded: {exc}")
    except (ValueError, TypeError) as exc:
        why = f"the task payload cannot be decoded: {exc}"
        return None, error_reply(rid, ErrorCode.MALFORMED, why)
    return task, None
