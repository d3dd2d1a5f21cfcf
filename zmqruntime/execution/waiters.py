"""Waiters: who hears how each execution ends, and the messages that tell them.

Every client that submitted an execution (first, or again with the same id) waits for its
:class:`~zmqruntime.core.messages.Completion`. A resubmission of an execution that has already
ended is answered at once from the store and the result cache: an id never runs twice, and
nobody waits forever. A resubmission costs constant time, and an execution has at most
:data:`MAX_WAITERS` waiters: more are refused.
"""

from __future__ import annotations

import logging
import threading
from typing import Final, final

import attrs

from zmqruntime.core.messages import Accepted, Completion, ErrorReply, ExecutionRecord, Message
from zmqruntime.core.serializers import serializer_name
from zmqruntime.core.server import Peer, ZMQServer
from zmqruntime.errors import ChannelClosed, ErrorCode
from zmqruntime.execution.results import ResultCache
from zmqruntime.protocols import Buffer, RecordStore

__all__ = ["MAX_WAITERS", "Waiter", "Waiters", "error_reply", "unknown_execution"]

logger = logging.getLogger(__name__)

MAX_WAITERS: Final = 64
"""Submissions of one execution (distinct peer and request id) waiting for its end."""

Waiter = tuple[Peer, "int | None"]
"""A peer, and the request id its Completion answers (None: pushed after an Accepted)."""


@final
@attrs.define(eq=False)
class Waiters:
    """The waiting clients of every execution that has not ended (thread-safe)."""

    server: ZMQServer
    store: RecordStore
    results: ResultCache
    _waiting: dict[str, dict[Waiter, None]] = attrs.field(factory=dict, init=False)
    """Each execution's waiters, as an ordered set."""
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def expect(self, execution_id: str, waiter: Waiter) -> None:
        """A new execution: ``waiter`` submitted it."""
        with self._lock:
            self._waiting[execution_id] = {waiter: None}

    def forget(self, execution_id: str) -> None:
        """The execution was never queued after all: nobody waits for it."""
        with self._lock:
            self._waiting.pop(execution_id, None)

    def join(self, request_id: int, record: ExecutionRecord, waiter: Waiter) -> Message | None:
        """A resubmitted id: never run twice; the new submitter hears the outcome too (refused
        past :data:`MAX_WAITERS`)."""
        with self._lock:
            waiting = self._waiting.get(record.execution_id)
            if waiting is not None and waiter not in waiting:
                if len(waiting) >= MAX_WAITERS:
                    return ErrorReply(
                        request_id=request_id,
                        code=ErrorCode.REFUSED,
                        message=f"execution {record.execution_id!r} already has {MAX_WAITERS} "
                        "waiting submissions; wait for one of them or ask its status instead",
                    )
                waiting[waiter] = None  # it hears the outcome with the others
        if waiting is None:
            # Its waiters were already served, so it has ended — even if ``record`` was read
            # just before a worker finished it: read it again, or this peer would never hear.
            current = self.store.get(record.execution_id)
            if current is None:
                return unknown_execution(request_id, record.execution_id)
            record = current
            completion = self.completion(record, self.results.get(record.execution_id))
            if waiter[1] is not None:
                return attrs.evolve(completion, request_id=waiter[1])
            self.send(waiter[0], completion)
        if waiter[1] is not None:
            return None
        return Accepted(
            request_id=request_id,
            execution_id=record.execution_id,
            status=record.status,
            duplicate=True,
        )

    def finish(self, record: ExecutionRecord, frames: list[Buffer] | None) -> None:
        """The execution ended as ``record`` says, with a result's ``frames`` (if any): answer
        its waiters, keep the frames for late resubmitters, publish the final record."""
        if frames is not None:
            self.results.put(record.execution_id, frames)
        completion = self.completion(record, frames)
        with self._lock:
            waiting = self._waiting.pop(record.execution_id, {})
        for peer, request_id in waiting:
            self.send(peer, completion, request_id)
        if self.server.has_subscribers(record.execution_id):
            final = Completion(record=record, serializer=completion.serializer)
            self.publish(final, record.execution_id)

    def completion(self, record: ExecutionRecord, frames: list[Buffer] | None) -> Completion:
        """The message that tells a waiter how an execution ended."""
        return Completion(
            record=record,
            serializer=serializer_name(self.server.serializer),
            result=tuple(frames or ()),
        )

    def send(self, peer: Peer, message: Message, request_id: int | None = None) -> None:
        """Send to one peer (a closed server only logs)."""
        try:
            self.server.send(peer, message, request_id=request_id)
        except ChannelClosed:
            logger.warning("server closed before a %s could be sent", message.TYPE.value)

    def publish(self, message: Message, topic: str | bytes) -> None:
        """Publish on an execution's topic; a closed server drops it."""
        try:
            self.server.publish(message, topic)
        except ChannelClosed:
            logger.debug("server closed; dropped a %s event", message.TYPE.value)


def error_reply(request_id: int, code: ErrorCode, text: str) -> ErrorReply:
    """The error reply to request ``request_id``: ``code`` and what to tell the client."""
    return ErrorReply(request_id=request_id, code=code, message=text)


def unknown_execution(request_id: int, execution_id: str) -> ErrorReply:
    """The error reply about an execution this server does not know."""
    why = f"no execution {execution_id!r} on this server (never submitted, or expired)"
    return error_reply(request_id, ErrorCode.NOT_FOUND, why)
