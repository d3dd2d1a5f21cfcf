"""What the messages are made of: message types, an execution's status and record, a server's
summary, an ack's outcome, a progress event. :mod:`zmqruntime.core.messages` re-exports them.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Final, final

import attrs

from zmqruntime.protocols import JSONObject

__all__ = [
    "MAX_BATCH_ITEMS",
    "AckOutcome",
    "ArrayLayout",
    "BatchEntry",
    "ControlMessageType",
    "ExecutionRecord",
    "ExecutionStatus",
    "ItemKind",
    "ProcessStats",
    "ProgressEvent",
    "ResponseType",
    "ServerSummary",
    "StreamMessageType",
]


class ControlMessageType(enum.Enum):
    """Requests a client sends on a server's control socket."""

    PING = "ping"
    SHUTDOWN = "shutdown"
    EXECUTE = "execute"
    STATUS = "status"
    CANCEL = "cancel"
    ATTACH = "attach"
    REQUEST = "request"
    LIST = "list"


class ResponseType(enum.Enum):
    """Replies a server sends on its control socket."""

    PONG = "pong"
    ERROR = "error"
    SHUTDOWN = "shutdown_reply"
    ACCEPTED = "accepted"
    RECORD = "record"
    SUMMARY = "summary"
    REPLY = "reply"
    RECORDS = "records"


class StreamMessageType(enum.Enum):
    """Messages that flow without a request: progress, events, completions, images, items,
    acks, and viewer commands (ordered with the items) and their replies."""

    PROGRESS = "progress"
    COMPLETION = "completion"
    IMAGE = "image"
    ACK = "ack"
    SENT = "sent"
    EVENT = "event"
    ITEM = "item"
    BATCH = "batch"
    COMMAND = "command"
    COMMAND_REPLY = "command_reply"


class ItemKind(enum.Enum):
    """What a streamed item other than an image is, named as napari names its layer types."""

    SHAPES = "shapes"
    POINTS = "points"
    LABELS = "labels"


class ExecutionStatus(enum.Enum):
    """Where an execution is in its life. COMPLETE, FAILED, CANCELLED and INTERRUPTED are
    terminal; INTERRUPTED: its server stopped (killed, crashed) while it ran, or before a queued
    task could be kept, and it was not run again (a durable store records it at restart)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    # Members are singletons compared by identity, so identity can hash them too: Enum's own
    # __hash__ is Python code, and the store counts statuses in dicts on every transition.
    __hash__ = object.__hash__

    @property
    def is_terminal(self) -> bool:
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


class AckOutcome(enum.Enum):
    """What became of an acknowledged item: PROCESSED (handled: displayed, written), SKIPPED
    (dropped on purpose, e.g. for a newer frame in latest-frame mode) or FAILED (the consumer
    raised; the ack carries the error text)."""

    PROCESSED = "processed"
    SKIPPED = "skipped"
    FAILED = "failed"


@final
@attrs.frozen(kw_only=True)
class ProgressEvent:
    """One progress report of a running execution (also published on the data socket).
    ``sequence`` counts up from 1 per execution, so a subscriber can see a gap; ``fields`` are
    the executor's extra JSON values."""

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
class ProcessStats:
    """One worker process of a server: its slot's ``name``, ``pid``, the CPU it used since the
    previous summary in percent of one core (None: the first look, or no psutil), and its
    resident memory in bytes (0: not known)."""

    name: str
    pid: int
    cpu_percent: float | None = None
    rss_bytes: int = 0


@final
@attrs.frozen(kw_only=True)
class ServerSummary:
    """A server's overview: queue length, running tasks, counts per status, workers, uptime, and
    in ``engine`` each worker that runs something (a thread, a process, a remote engine's
    worker) with the executions it runs."""

    queued: int
    running: int
    counts: dict[str, int] = attrs.field(factory=dict)
    workers: int = 0
    uptime: float = 0.0
    engine: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    processes: tuple[ProcessStats, ...] = ()
    """Its worker processes (owned ones; none for threads or an engine's workers)."""


MAX_BATCH_ITEMS: Final = 1024
"""Images and items in one batch (``BatchFrame.entries``)."""


@final
@attrs.frozen(kw_only=True)
class ArrayLayout:
    """One array of an item: its role in the item, dtype and shape (its raw C-ordered bytes
    are the buffer frame at the same position)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@final
@attrs.frozen(kw_only=True)
class BatchEntry:
    """One image or item of a batch: its id (acked on its own), ``kind`` (None: an image,
    whose one array is its pixels), its arrays' layouts (their bytes are the batch's next
    buffer frames) and its own ``metadata``."""

    image_id: str
    kind: ItemKind | None = None
    arrays: tuple[ArrayLayout, ...]
    metadata: JSONObject = attrs.field(factory=dict)
