"""The vocabulary of the wire: enums and one frozen attrs type per message.

Nothing here encodes or decodes; :mod:`zmqruntime.core.codec` turns these values into frames and
back. Each message class names its wire type in ``TYPE``; its attrs fields are the header
fields (named as in :class:`MessageFields`), except fields marked as buffers, which travel as
raw frames after the header.

Every request carries a ``request_id`` chosen by the client; the reply carries the same id, so
a client can keep many requests in flight on one socket.
"""

from __future__ import annotations

import enum
from typing import ClassVar, TypeAlias, final

import attrs
from typing_extensions import Buffer

from zmqruntime.errors import ErrorCode
from zmqruntime.protocols import JSONObject

__all__ = [
    "PROTOCOL_VERSION",
    "Accepted",
    "Ack",
    "AckOutcome",
    "Attach",
    "Cancel",
    "Completion",
    "ControlMessageType",
    "ErrorReply",
    "Execute",
    "ExecutionRecord",
    "ExecutionStatus",
    "ImageFrame",
    "ImageSent",
    "Message",
    "MessageFields",
    "Ping",
    "Pong",
    "ProgressEvent",
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


class ControlMessageType(enum.Enum):
    """Requests a client sends on a server's control socket."""

    PING = "ping"
    SHUTDOWN = "shutdown"
    EXECUTE = "execute"
    STATUS = "status"
    CANCEL = "cancel"
    ATTACH = "attach"


class ResponseType(enum.Enum):
    """Replies a server sends on its control socket."""

    PONG = "pong"
    ERROR = "error"
    SHUTDOWN = "shutdown_reply"
    ACCEPTED = "accepted"
    RECORD = "record"
    SUMMARY = "summary"


class StreamMessageType(enum.Enum):
    """Messages that flow without a request: progress, completions, images and acks."""

    PROGRESS = "progress"
    COMPLETION = "completion"
    IMAGE = "image"
    ACK = "ack"
    SENT = "sent"


class ExecutionStatus(enum.Enum):
    """Where an execution is in its life. COMPLETE, FAILED and CANCELLED are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for the three states an execution never leaves."""
        return self in _TERMINAL


_TERMINAL = frozenset({ExecutionStatus.COMPLETE, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})


class AckOutcome(enum.Enum):
    """What became of an acknowledged item (image)."""

    PROCESSED = "processed"
    """The consumer handled it (displayed, written)."""
    SKIPPED = "skipped"
    """The consumer dropped it on purpose (e.g. a newer frame arrived in latest-frame mode)."""
    FAILED = "failed"
    """The consumer tried and raised; the ack carries the error text."""


class MessageFields(enum.Enum):
    """Every key that can appear in a message's JSON header."""

    VERSION = "version"
    TYPE = "type"
    FRAMES = "frames"
    REQUEST_ID = "request_id"
    CODE = "code"
    MESSAGE = "message"
    ROLE = "role"
    APP_NAME = "app_name"
    PID = "pid"
    LIBRARY_VERSION = "library_version"
    PROTOCOL_VERSION = "protocol_version"
    UPTIME = "uptime"
    CAPABILITIES = "capabilities"
    FORCE = "force"
    CONFIRM = "confirm"
    WORKER = "worker"
    ENGINE = "engine"
    EXECUTION_ID = "execution_id"
    LABELS = "labels"
    SERIALIZER = "serializer"
    PAYLOAD = "payload"
    STATUS = "status"
    DUPLICATE = "duplicate"
    RECORD = "record"
    SUMMARY = "summary"
    SEQUENCE = "sequence"
    FRACTION = "fraction"
    FIELDS = "fields"
    TIMESTAMP = "timestamp"
    SUBMITTED_AT = "submitted_at"
    STARTED_AT = "started_at"
    FINISHED_AT = "finished_at"
    PROGRESS = "progress"
    ERROR_TYPE = "error_type"
    ERROR_MESSAGE = "error_message"
    TRACEBACK = "traceback"
    QUEUED = "queued"
    RUNNING = "running"
    COUNTS = "counts"
    WORKERS = "workers"
    RESULT = "result"
    IMAGE_ID = "image_id"
    TRACKER_KEY = "tracker_key"
    DTYPE = "dtype"
    SHAPE = "shape"
    METADATA = "metadata"
    ACK_TO = "ack_to"
    PIXELS = "pixels"
    OUTCOME = "outcome"
    ERROR = "error"


# --- values carried inside messages -------------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class ProgressEvent:
    """One progress report of a running execution (also published on the data socket).

    ``sequence`` counts up from 1 per execution, so a subscriber can see a gap; ``fields`` are
    the executor's extra JSON values.
    """

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.PROGRESS
    execution_id: str
    sequence: int
    fraction: float | None = None
    message: str = ""
    fields: JSONObject = attrs.field(factory=dict)
    timestamp: float = 0.0


@final
@attrs.frozen(kw_only=True)
class ExecutionRecord:
    """Everything the server knows about one execution; times are Unix timestamps."""

    execution_id: str
    status: ExecutionStatus
    labels: dict[str, str] = attrs.field(factory=dict)
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    progress: ProgressEvent | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None


@final
@attrs.frozen(kw_only=True)
class ServerSummary:
    """A server's overview: queue length, running tasks, counts per status, workers, uptime."""

    queued: int
    running: int
    counts: dict[str, int] = attrs.field(factory=dict)
    workers: int = 0
    uptime: float = 0.0
    engine: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    """For a pool on a remote engine: each worker's address and the executions it runs."""


# --- control requests -----------------------------------------------------------------------


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
    """Submits a task: ``payload`` holds the frames of the serialized task.

    ``execution_id`` may be chosen by the client, which makes resubmission idempotent;
    ``serializer`` names the serializer that produced the payload. The reply is the
    execution's :class:`Completion` when it ends (an :class:`ErrorReply` if it is refused);
    with ``confirm`` the server replies :class:`Accepted` at once instead and pushes the
    Completion later.
    """

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


# --- control replies ------------------------------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class Attach:
    """A remote worker announces that it runs ``execution_id`` (sent to a pool's inlet).

    ``worker`` names the worker (its engine address, or host and pid). The inlet replies
    :class:`Accepted` (status CANCELLED if a cancel already came) and later sends
    :class:`Cancel` on the same connection when the execution is cancelled.
    """

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


@final
@attrs.frozen(kw_only=True)
class ErrorReply:
    """A refused request. ``request_id`` is None when the request could not even be read."""

    TYPE: ClassVar[ResponseType] = ResponseType.ERROR
    request_id: int | None
    code: ErrorCode
    message: str


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


# --- stream messages ------------------------------------------------------------------------


@final
@attrs.frozen(kw_only=True)
class Completion:
    """How an execution ended, sent to every client that submitted it; ``result`` holds the
    result's frames.

    It is the reply to the :class:`Execute` request (``request_id`` set), or a push
    (``request_id`` None) after an :class:`Accepted` reply; published without a result on the
    execution's progress topic.
    """

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.COMPLETION
    record: ExecutionRecord
    request_id: int | None = None
    serializer: str = "safe"
    result: tuple[Buffer, ...] = attrs.field(default=(), metadata=_BUFFERS)


@final
@attrs.frozen(kw_only=True)
class ImageFrame:
    """One image: dtype and shape in the header, the raw C-ordered pixels as one frame.

    ``tracker_key`` names the tracker that expects the ack; ``ack_to`` is the address of the
    :class:`~zmqruntime.AckChannel` the consumer should send it to (None: no ack wanted).
    """

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
    an ack for it (used when the sender is not the process that tracks)."""

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.SENT
    image_id: str
    tracker_key: str
    timestamp: float = 0.0


Message: TypeAlias = (
    Ping
    | Shutdown
    | Execute
    | StatusRequest
    | Cancel
    | Attach
    | Pong
    | ErrorReply
    | ShutdownReply
    | Accepted
    | RecordReply
    | SummaryReply
    | ProgressEvent
    | Completion
    | ImageFrame
    | Ack
    | ImageSent
)
"""Any message the codec can encode or decode."""

MESSAGE_CLASSES: tuple[type[Message], ...] = (
    Ping,
    Shutdown,
    Execute,
    StatusRequest,
    Cancel,
    Attach,
    Pong,
    ErrorReply,
    ShutdownReply,
    Accepted,
    RecordReply,
    SummaryReply,
    ProgressEvent,
    Completion,
    ImageFrame,
    Ack,
    ImageSent,
)
"""Every message class, one per wire type."""
