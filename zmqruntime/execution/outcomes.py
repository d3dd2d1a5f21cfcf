"""What a worker pool and its backends tell each other: the jobs, how each ended, where a
backend reports, and what its workers do."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias, final

import attrs

from zmqruntime.core import wire
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import ProgressEvent
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.errors import ConfigurationError, ErrorCode, RemoteProtocolError, TaskCancelled
from zmqruntime.protocols import Buffer, TaskSerializer

__all__ = [
    "INLINE_DECODE_BYTES",
    "NO_SERVER",
    "SAFE",
    "Cancelled",
    "Completed",
    "EncodedTask",
    "Failed",
    "Job",
    "JobSink",
    "Outcome",
    "PoolListener",
    "WorkerStatistics",
    "check_workers",
    "run_job",
]


INLINE_DECODE_BYTES: Final = 64 << 10
"""Task payloads with a frame 0 up to this size are decoded on the I/O thread; larger ones by
the worker that runs them."""
NO_SERVER: Final = Endpoint.tcp(0)
"""The endpoint of a pool started without a server: loopback TCP, default configuration, no
keys (where a remote pool's inlet then binds)."""
SAFE: Final = SafeSerializer()
"""The serializer a pool started without a server gives its backend (the safe one)."""


@final
@attrs.frozen
class EncodedTask:
    """A task still in its payload ``frames``: :func:`run_job` decodes it in the worker, so a
    large payload never holds up the server's I/O thread, and a queued one costs its frames
    only. ``max_nodes`` (SafeSerializer payloads) bounds the JSON values and keys of frame 0;
    None: no bound. Pickles with its frames as bytes (the serializer must pickle too)."""

    frames: tuple[Buffer, ...]
    serializer: TaskSerializer
    max_nodes: int | None = None

    @classmethod
    def receive(
        cls, frames: tuple[Buffer, ...], serializer: TaskSerializer, max_json: int, max_nodes: int
    ) -> Any:
        """The task of a payload received on a server's I/O thread: decoded when frame 0 is
        at most :data:`INLINE_DECODE_BYTES` (a malformed one is refused at once), else an
        EncodedTask its worker decodes. With the SafeSerializer, frame 0 is refused past
        ``max_json`` bytes (:class:`~zmqruntime.RemoteProtocolError`, ``TOO_LARGE``) and
        bounded to ``max_nodes`` values and keys."""
        head = memoryview(frames[0]).nbytes if frames else 0
        safe = isinstance(serializer, SafeSerializer)
        if safe and head > max_json:
            raise RemoteProtocolError(
                f"the task's JSON is {head} bytes, over the limit of {max_json}; send bulk "
                "data as numpy arrays or bytes, or raise ExecutionServer(max_task_json_bytes=)",
                ErrorCode.TOO_LARGE,
            )
        task = cls(frames, serializer, max_nodes if safe else None)
        return task.decode() if head <= INLINE_DECODE_BYTES else task

    def decode(self) -> Any:
        """The task. Raises :class:`~zmqruntime.RemoteProtocolError` (code ``TOO_LARGE``) past
        ``max_nodes``, else what the serializer's ``loads`` raises."""
        head = memoryview(self.frames[0]).nbytes if self.frames else 0
        limit = self.max_nodes
        if (
            limit is not None
            and head > limit
            and (nodes := wire.count_nodes(self.frames[0])) > limit
        ):
            raise RemoteProtocolError(
                f"the task holds {nodes} JSON values and keys, over the limit of {limit}; "
                "send bulk data as numpy arrays or bytes, or raise "
                "ExecutionServer(max_task_nodes=)",
                ErrorCode.TOO_LARGE,
            )
        return self.serializer.loads(self.frames)

    def __reduce__(self) -> tuple[Any, ...]:
        frames = tuple(bytes(memoryview(frame)) for frame in self.frames)
        return EncodedTask, (frames, self.serializer, self.max_nodes)


@final
@attrs.frozen
class Job:
    """One task waiting for, or in, a worker; ``task`` is the task, or an :class:`EncodedTask`
    that :func:`run_job` decodes first."""

    execution_id: str
    task: Any
    labels: Mapping[str, str] = attrs.field(factory=dict)


@final
@attrs.frozen
class Completed:
    """The executor returned ``result``, or a remote worker encoded it as ``frames`` with the
    server's serializer (``result`` is then None) and the server sends them on as they are."""

    result: Any
    frames: tuple[Buffer, ...] | None = None


@final
@attrs.frozen
class Failed:
    """The executor raised (or its worker died): type name, message and formatted traceback."""

    error_type: str
    error_message: str
    traceback: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failed:
        """Describe ``exc`` with its traceback, as text a client can show."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__qualname__, str(exc), text)


@final
@attrs.frozen
class Cancelled:
    """The job was cancelled: dropped from the queue, stopped cooperatively, or killed."""


Outcome: TypeAlias = Completed | Failed | Cancelled
"""How a job ended."""


@final
@attrs.frozen
class PoolListener:
    """Where a pool reports, from its threads and never under its lock: ``started(job)`` just
    before the executor runs (False skips the job: it was cancelled meanwhile), ``progress``
    with each event, ``finished(job, outcome)`` exactly once per job the pool accepted.
    """

    started: Callable[[Job], bool]
    progress: Callable[[ProgressEvent], None]
    finished: Callable[[Job, Outcome], None]


@final
@attrs.frozen(kw_only=True)
class JobSink:
    """What a :class:`~zmqruntime.protocols.WorkerBackend` is given at start: where it reports
    (its pool), and the server's endpoint and serializer for a backend that opens sockets of
    its own (a remote engine's inlet; its workers encode results with ``serializer``)."""

    started: Callable[[Job], bool]
    progress: Callable[[ProgressEvent], None]
    finished: Callable[[Job, Outcome], None]
    freed: Callable[[], None]
    endpoint: Endpoint = NO_SERVER
    serializer: TaskSerializer = SAFE


@final
@attrs.frozen(kw_only=True)
class WorkerStatistics:
    """One worker of a pool: a thread, an owned process, or a remote engine's worker."""

    name: str
    """Threads: the thread's name; processes: ``process-<n>``; engines: the worker's address
    (Dask) or ``host:pid``."""
    pid: int | None = None
    """Owned processes: the current worker process (threads and engine workers: None)."""
    running: tuple[str, ...] = ()
    """The executions it runs now (at most one, but on an engine worker with threads)."""
    done: int = 0
    """Jobs it finished (an owned process's slot counts across replacements)."""
    replaced: int = 0
    """Owned processes: how often its process died or was killed, and a fresh one took over."""


def check_workers(_instance: object, _attribute: object, value: int) -> None:
    """attrs validator: a worker count is a whole number of 1 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"max_workers must be a whole number of 1 or more, got {value!r}")


def run_job(
    executor: Callable[[Any, Any], object], job: Job, context: Any, cancelled: Callable[[], bool]
) -> Outcome:
    """Decode the job's task if it is an :class:`EncodedTask` (failing the job if it cannot),
    run ``executor(task, context)`` and describe how it ended; a cancellation requested while
    it ran wins over its result or error."""
    try:
        task = job.task.decode() if isinstance(job.task, EncodedTask) else job.task
    except Exception as exc:  # the payload is the peer's fault: no traceback of ours
        return Failed(type(exc).__qualname__, f"the task payload cannot be decoded: {exc}", "")
    try:
        outcome: Outcome = Completed(executor(task, context))
    except TaskCancelled:
        return Cancelled()
    except BaseException as exc:  # a failing executor is data, not a crash
        outcome = Failed.from_exception(exc)
    return Cancelled() if cancelled() else outcome
