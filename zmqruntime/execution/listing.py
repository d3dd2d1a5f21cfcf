"""An execution server's answer to a :class:`~zmqruntime.core.messages.ListRequest`: one page
of the records it holds, each client seeing its own executions (an admin every one)."""

from __future__ import annotations

from typing import Final

from zmqruntime.core.messages import ErrorReply, ListRequest, RecordList
from zmqruntime.core.server import Peer
from zmqruntime.errors import ErrorCode
from zmqruntime.execution.waiters import error_reply
from zmqruntime.protocols import RecordStore

__all__ = ["MAX_LIST_BYTES", "list_page"]

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
