"""An execution server's answers about what it holds, each client seeing its own executions
(an admin every one): a page of records (a :class:`~zmqruntime.core.messages.ListRequest`) and
the latest progress per key of one execution (the built-in request :data:`PROGRESS_SNAPSHOT`,
when the server keeps a :class:`~zmqruntime.execution.ProgressRegistry`)."""

from __future__ import annotations

from typing import Any, Final

import attrs

from zmqruntime.core.messages import ErrorReply, ListRequest, RecordList
from zmqruntime.core.server import Peer
from zmqruntime.errors import ErrorCode
from zmqruntime.execution.progress import ProgressRegistry
from zmqruntime.execution.waiters import error_reply
from zmqruntime.protocols import RecordStore

__all__ = ["MAX_LIST_BYTES", "list_page", "progress_snapshot"]

MAX_LIST_BYTES: Final = 16 << 20
"""The records of one page, by their size in memory, past its first record (16 MiB)."""


def list_page(store: RecordStore, request: ListRequest, peer: Peer) -> RecordList | ErrorReply:
    """I/O thread: the page ``request`` asks for, of what ``peer`` may read."""
    try:
        records, next_after = store.select(
            request, peer.user, everyone=peer.admin, max_bytes=MAX_LIST_BYTES
        )
    except ValueError:
        why = f"no execution {request.after!r} to list after (expired?); list from the start"
        return error_reply(request.request_id, ErrorCode.NOT_FOUND, why)
    return RecordList(request_id=request.request_id, records=tuple(records), next_after=next_after)


def progress_snapshot(
    store: RecordStore, registry: ProgressRegistry, payload: Any, peer: Peer
) -> list[dict[str, Any]]:
    """Request worker: the :data:`PROGRESS_SNAPSHOT` of ``payload["execution_id"]``; raises
    ``ValueError`` for a bad payload, ``PermissionError`` for another client's execution."""
    execution_id = payload.get("execution_id") if isinstance(payload, dict) else None
    if not isinstance(execution_id, str):
        raise ValueError('a progress snapshot needs a payload {"execution_id": "<id>"}')
    if not peer.admin and store.owner(execution_id) != peer.user:
        raise PermissionError(f"execution {execution_id!r} belongs to another client")
    return [attrs.asdict(event) for event in registry.latest(execution_id)]
