"""One frozen attrs type per message; :mod:`zmqruntime.core.codec` turns them into frames.

Each class names its wire type in ``TYPE``; its attrs fields are the header fields (named as in
:class:`MessageFields`), except fields marked as buffers, which travel as raw frames. A reply
carries the ``request_id`` of its request, so many requests can be in flight on one socket.
"""

from __future__ import annotations

import enum
import typing
from typing import ClassVar, TypeAlias, final

import attrs
from typing_extensions import Buffer

from zmqruntime.core.command_messages import CommandFrame, CommandReply
from zmqruntime.core.listing_messages import ListRequest, RecordList
from zmqruntime.core.vocabulary import (
    MAX_BATCH_ITEMS,
    AckOutcome,
    ArrayLayout,
    BatchEntry,
    ControlMessageType,
    ExecutionRecord,
    ExecutionStatus,
    ItemKind,
    ProcessStats,
    ProgressEvent,
    ResponseType,
    ServerSummary,
    StreamMessageType,
)
from zmqruntime.errors import ErrorCode
from zmqruntime.protocols import JSONObject

__all__ = [
    "MAX_BATCH_ITEMS",
    "PROTOCOL_VERSION",
    "Accepted",
    "Ack",
    "AckOutcome",
    "AppEvent",
    "AppReply",
    "AppRequest",
    "ArrayLayout",
    "Attach",
    "BatchEntry",
    "BatchFrame",
    "Cancel",
    "CommandFrame",
    "CommandReply",
    "Completion",
    "ControlMessageType",
    "ErrorReply",
    "Execute",
    "ExecutionRecord",
    "ExecutionStatus",
    "ImageFrame",
    "ImageSent",
    "ItemFrame",
    "ItemKind",
    "ListRequest",
    "Message",
    "MessageFields",
    "Ping",
    "Pong",
    "ProcessStats",
    "ProgressEvent",
    "RecordList",
    "RecordReply",
    "ResponseType",
    "ServerSummary",
    "Shutdown",
    "ShutdownReply",
    "StatusRequest",
    "StreamMessageType",
    "SummaryReply",
]

PROTOCOL_VERSION = 1
"""The wire protocol version this library speaks; sent in every header."""

_BUFFER = {"buffer": "one"}
_BUFFERS = {"buffer": "many"}


@final
@attrs.frozen(kw_only=True)
class Ping:
    """Asks a server who it is and whether it is alive; answered by :class:`Pong`."""

    TYPE: ClassVar[ControlMessageType] = ControlMessageType.PING
    request_id: int


@final
@attrs.frozen(kw_only=True)
class Shutdown:
    """Asks a server to stop; ``force`` also abandons work in progress."""

    TYPE: ClassVar[ControlMessageType] = ControlMessageType.SHUTDOWN
    request_id: int
    force: bool = False


@final
@attrs.frozen(kw_only=True)
class Execute:
    """Submits a task (``payload``: its frames, made by the serializer named ``serializer``); a
    client-chosen ``execution_id`` makes resubmission idempotent. The reply is the
    :class:`Completion` when it ends (an :class:`ErrorReply` if refused), or with ``confirm``
    :class:`Accepted` at once and the Completion pushed later."""

    TYPE: ClassVar[ControlMessageType] = ControlMessageType.EXECUTE
    request_id: int
    execution_id: str | None = None
    labels: dict[str, str] = attrs.field(factory=dict)
    serializer: str = "safe"
    confirm: bool = False
    payload: tuple[Buffer, ...] = attrs.field(default=(), metadata=_BUFFERS)


@final
@attrs.frozen(kw_only=True)
class StatusRequest:
    """Asks for one execution's record, or (``execution_id=None``) the server summary."""

    TYPE: ClassVar[ControlMessageType] = ControlMessageType.STATUS
    request_id: int
    execution_id: str | None = None


@final
@attrs.frozen(kw_only=True)
class Cancel:
    """Asks the server to cancel one execution; answered with its record."""

    TYPE: ClassVar[ControlMessageType] = ControlMessageType.CANCEL
    request_id: int
    execution_id: str


@final
@attrs.frozen(kw_only=True)
class AppRequest:
    """A named (1 to 128 characters) application request; ``payload`` holds the frames the
    serializer named ``serializer`` made of its argument. Answered by :class:`AppReply`, or by
    an :class:`ErrorReply` carrying the handler's exception."""

    TYPE: ClassVar[ControlMessageType] = ControlMessageType.REQUEST
    request_id: int
    name: str = attrs.field(validator=[attrs.validators.min_len(1), attrs.validators.max_len(128)])
    serializer: str = "safe"
    payload: tuple[Buffer, ...] = attrs.field(default=(), metadata=_BUFFERS)


@final
@attrs.frozen(kw_only=True)
class Attach:
    """A remote ``worker`` (engine address, or host and pid) tells a pool's inlet it runs
    ``execution_id``. The inlet replies :class:`Accepted` (status CANCELLED if a cancel already
    came) and sends :class:`Cancel` on the same connection if the execution is cancelled."""

    TYPE: ClassVar[ControlMessageType] = ControlMessageType.ATTACH
    request_id: int
    execution_id: str
    worker: str = ""


@final
@attrs.frozen(kw_only=True)
class Pong:
    """A server's answer to :class:`Ping`: what it is, which process, since when, what it can."""

    TYPE: ClassVar[ResponseType] = ResponseType.PONG
    request_id: int
    role: str
    app_name: str
    pid: int
    library_version: str
    protocol_version: int
    uptime: float
    capabilities: tuple[str, ...] = ()
    draining: bool = False
    """True once the server began shutting down: it is going, not ready for new work."""


@final
@attrs.frozen(kw_only=True)
class ErrorReply:
    """A refused request (``request_id`` None: the request could not be read). When a handler
    raised, ``error_type`` and ``traceback`` name its exception and show where."""

    TYPE: ClassVar[ResponseType] = ResponseType.ERROR
    request_id: int | None
    code: ErrorCode
    message: str
    error_type: str | None = None
    traceback: str | None = None


@final
@attrs.frozen(kw_only=True)
class ShutdownReply:
    """Confirms a :class:`Shutdown`; the server stops after sending it."""

    TYPE: ClassVar[ResponseType] = ResponseType.SHUTDOWN
    request_id: int


@final
@attrs.frozen(kw_only=True)
class Accepted:
    """Confirms an :class:`Execute`; ``duplicate`` is True when the id was already known."""

    TYPE: ClassVar[ResponseType] = ResponseType.ACCEPTED
    request_id: int
    execution_id: str
    status: ExecutionStatus
    duplicate: bool = False


@final
@attrs.frozen(kw_only=True)
class RecordReply:
    """Answers :class:`StatusRequest` (one id) and :class:`Cancel` with a record."""

    TYPE: ClassVar[ResponseType] = ResponseType.RECORD
    request_id: int
    record: ExecutionRecord


@final
@attrs.frozen(kw_only=True)
class SummaryReply:
    """Answers a :class:`StatusRequest` without an id."""

    TYPE: ClassVar[ResponseType] = ResponseType.SUMMARY
    request_id: int
    summary: ServerSummary


@final
@attrs.frozen(kw_only=True)
class AppReply:
    """Answers an :class:`AppRequest`: the frames of the handler's result (request's serializer)."""

    TYPE: ClassVar[ResponseType] = ResponseType.REPLY
    request_id: int
    payload: tuple[Buffer, ...] = attrs.field(default=(), metadata=_BUFFERS)


@final
@attrs.frozen(kw_only=True)
class AppEvent:
    """An application event published under ``topic``: the frames the serializer made of it."""

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.EVENT
    topic: str
    payload: tuple[Buffer, ...] = attrs.field(default=(), metadata=_BUFFERS)


@final
@attrs.frozen(kw_only=True)
class Completion:
    """How an execution ended, with the ``result``'s frames, sent to every client that submitted
    it: the reply to :class:`Execute` (``request_id`` set), or a push (``request_id`` None) after
    :class:`Accepted`; published without a result on the execution's progress topic."""

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.COMPLETION
    record: ExecutionRecord
    request_id: int | None = None
    serializer: str = "safe"
    result: tuple[Buffer, ...] = attrs.field(default=(), metadata=_BUFFERS)


@final
@attrs.frozen(kw_only=True)
class ImageFrame:
    """One image: dtype and shape in the header, the raw C-ordered pixels as one frame.
    ``tracker_key`` names the tracker that expects the ack; ``ack_to`` the
    :class:`~zmqruntime.AckChannel` the consumer sends it to (None: no ack wanted)."""

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.IMAGE
    image_id: str
    dtype: str
    shape: tuple[int, ...]
    pixels: Buffer = attrs.field(metadata=_BUFFER)
    tracker_key: str = ""
    metadata: JSONObject = attrs.field(factory=dict)
    ack_to: str | None = None


@final
@attrs.frozen(kw_only=True)
class ItemFrame:
    """One item other than an image (shapes, points, labels: :mod:`zmqruntime.streaming.items`):
    its ``kind``, one :class:`ArrayLayout` per array in the header and the arrays' raw bytes as
    the buffer frames, in the same order. Acknowledged like an :class:`ImageFrame`, whose
    ``image_id``, ``tracker_key``, ``metadata`` and ``ack_to`` it shares."""

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.ITEM
    image_id: str
    kind: ItemKind
    arrays: tuple[ArrayLayout, ...]
    buffers: tuple[Buffer, ...] = attrs.field(default=(), metadata=_BUFFERS)
    tracker_key: str = ""
    metadata: JSONObject = attrs.field(factory=dict)
    ack_to: str | None = None


@final
@attrs.frozen(kw_only=True)
class BatchFrame:
    """Several images and items sent as one unit (1 to :data:`MAX_BATCH_ITEMS`), with the
    batch's own ``metadata``: one :class:`BatchEntry` per item in the header, their arrays'
    raw bytes as the buffer frames, entry after entry. The viewer acknowledges each entry by
    its ``image_id`` and then the batch by ``batch_id``, all to ``ack_to``."""

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.BATCH
    batch_id: str
    entries: tuple[BatchEntry, ...] = attrs.field(
        validator=[attrs.validators.min_len(1), attrs.validators.max_len(MAX_BATCH_ITEMS)]
    )
    buffers: tuple[Buffer, ...] = attrs.field(default=(), metadata=_BUFFERS)
    tracker_key: str = ""
    metadata: JSONObject = attrs.field(factory=dict)
    ack_to: str | None = None


@final
@attrs.frozen(kw_only=True)
class Ack:
    """A consumer's acknowledgement of one item, sent to an :class:`~zmqruntime.AckChannel`."""

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.ACK
    image_id: str
    tracker_key: str
    outcome: AckOutcome = AckOutcome.PROCESSED
    error: str = ""
    timestamp: float = 0.0


@final
@attrs.frozen(kw_only=True)
class ImageSent:
    """Tells an :class:`~zmqruntime.AckChannel` that an item was sent, so its tracker expects
    an ack (when the sender is not the process that tracks)."""

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.SENT
    image_id: str
    tracker_key: str
    timestamp: float = 0.0


_Request: TypeAlias = (
    Ping | Shutdown | Execute | StatusRequest | Cancel | Attach | AppRequest | ListRequest
)
_Reply: TypeAlias = (
    Pong | ErrorReply | ShutdownReply | Accepted | RecordReply | SummaryReply | AppReply
) | RecordList
_Stream: TypeAlias = (
    (ProgressEvent | Completion | ImageFrame | ItemFrame | BatchFrame | Ack | ImageSent)
    | AppEvent
    | CommandFrame
    | CommandReply
)
Message: TypeAlias = _Request | _Reply | _Stream
"""Any message the codec can encode or decode."""

MESSAGE_CLASSES: tuple[type[Message], ...] = typing.get_args(Message)
"""Every message class, one per wire type."""


def _header_keys() -> dict[str, str]:
    names = ["version", "type", "frames"]
    nested = (ExecutionRecord, ServerSummary, ProcessStats, ArrayLayout, BatchEntry)
    for cls in (*MESSAGE_CLASSES, *nested):
        names += [field.name for field in attrs.fields(cls)]
    return {name.upper(): name for name in dict.fromkeys(names)}


MessageFields = enum.Enum("MessageFields", _header_keys(), module=__name__)  # type: ignore[misc]
MessageFields.__doc__ = """Every key that can appear in a message's JSON header, named by the key in
upper case (``MessageFields.EXECUTION_ID.value == "execution_id"``); made from the message
classes, so it cannot go stale."""
