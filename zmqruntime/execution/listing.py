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

__all__ = [
    "MAX_LIST_BYTES",
    "MAX_SNAPSHOT_EVENTS",
    "list_page",
    "not_owner",
    "progress_snapshot",
]

MAX_LIST_BYTES: Final = 512 << 10
"""One page's records, encoded, past its first record (512 KiB: half of what a client takes in
a reply's header, ``ZMQConfig.max_header_bytes``)."""
MAX_SNAPSHOT_EVENTS: Final = 10_000
"""Events in one progress snapshot, at most (the most recently updated)."""


def not_owner(
    store: RecordStore, request_id: int, execution_id: str, peer: Peer, action: str
) -> ErrorReply | None:
    """The refusal of ``peer`` trying to ``action`` another client's execution; None when it
    submitted it or is an admin."""
    if peer.admin or store.owner(execution_id) == peer.user:
        return None
    why = (
        f"execution {execution_id!r} belongs to another client; only that client or an "
        f"admin may {action} it"
    )
    return error_reply(request_id, ErrorCode.REFUSED, why)


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
    """Request worker: the :data:`~zmqruntime.execution.progress.PROGRESS_SNAPSHOT` of
    ``payload["execution_id"]``, at most :data:`MAX_SNAPSHOT_EVENTS`; raises ``ValueError`` for
    a bad payload, ``LookupError`` for an execution the server does not hold,
    ``PermissionError`` for another client's."""
    execution_id = payload.get("execution_id") if isinstance(payload, dict) else None
    if not isinstance(execution_id, str):
        raise ValueError('a progress snapshot needs a payload {"execution_id": "<id>"}')
    if store.get(execution_id) is None:
        raise LookupError(f"no execution {execution_id!r} on this server (or it expired)")
    refusal = not_owner(store, 0, execution_id, peer, "read")
    if refusal is not None:
        raise PermissionError(refusal.message)
    events = registry.latest(execution_id)[-MAX_SNAPSHOT_EVENTS:]
    return [attrs.asdict(event) for event in events]
