"""Every extension point of zmqruntime, as structural ``typing.Protocol``\\ s: applications
pass objects that *have the right shape* into constructors; nothing here is to be subclassed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from typing_extensions import Buffer

if TYPE_CHECKING:
    import concurrent.futures

    import numpy

    from zmqruntime.core.listing_messages import ListRequest
    from zmqruntime.core.vocabulary import ExecutionRecord, ExecutionStatus, ProgressEvent

__all__ = [
    "BatchSink",
    "Buffer",
    "CommandHandler",
    "CommandSink",
    "Frames",
    "ImageSink",
    "ItemSink",
    "JSONObject",
    "JSONValue",
    "LaunchSpec",
    "RecordStore",
    "RemoteEngine",
    "RequestHandler",
    "TaskContext",
    "TaskExecutor",
    "TaskSerializer",
    "WorkerBackend",
]

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
"""A value that JSON can carry: what message fields, labels and progress fields may hold."""
JSONObject: TypeAlias = "dict[str, JSONValue]"
"""A JSON object with string keys."""
Frames: TypeAlias = "Sequence[Buffer]"
"""The frames of one multipart message: ``bytes``, ``memoryview``, ``zmq.Frame`` …"""


@runtime_checkable
class TaskContext(Protocol):
    """What an executor is handed next to its task: identity, progress and cancellation."""

    @property
    def execution_id(self) -> str:
        """The id of the execution this call serves."""

    @property
    def labels(self) -> Mapping[str, str]:
        """The labels the client attached at submission."""

    @property
    def cancelled(self) -> bool:
        """True once a cancellation was requested; a long task should check it and stop."""

    def report_progress(
        self, fraction: float | None = None, message: str = "", **fields: JSONValue
    ) -> None:
        """Publish a progress event; ``fields`` must be JSON values (``TypeError`` otherwise)."""

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~zmqruntime.TaskCancelled` if a cancellation was requested."""


class TaskExecutor(Protocol):
    """Runs one task. A plain ``def run(task, context): ...`` is a TaskExecutor.

    The return value is the task's result and must be something the server's
    :class:`TaskSerializer` can encode. An exception is the task's failure: the client gets
    its type, message and traceback as :class:`~zmqruntime.TaskFailed`.
    """

    def __call__(self, task: Any, context: TaskContext, /) -> object: ...


class RequestHandler(Protocol):
    """Answers one of an application's own named requests. A plain
    ``def catalog(payload, peer): ...`` is a RequestHandler.

    ``payload`` is what the client sent, decoded with the server's :class:`TaskSerializer`
    (so JSON values, bytes and numpy arrays by default); the return value is the reply's
    payload and must be something that serializer can encode. ``peer`` identifies the
    client (:class:`~zmqruntime.core.server.Peer`: its ``user`` and whether it is an
    ``admin``, for handlers that decide who may do what). Handlers run on worker threads, several
    at once, so they may block; an exception reaches the client as a
    :class:`~zmqruntime.RemoteError` with its type, message and traceback.
    """

    def __call__(self, payload: Any, peer: Any, /) -> object: ...


class RemoteEngine(Protocol):
    """Where a remote :class:`~zmqruntime.execution.WorkerPool` hands its jobs: anything
    with ``concurrent.futures.Executor.submit``'s shape (``ProcessPoolExecutor``, loky,
    ``mpi4py.futures``, Dask's ``client.get_executor()`` or
    :class:`~zmqruntime.execution.backends.dask.DaskEngine`).

    ``submit`` ships ``fn`` and ``args`` to a worker and returns a future of its return
    value; ``Future.cancel()`` on it must keep a job that has not started from running.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]: ...


class TaskSerializer(Protocol):
    """Turns task payloads and results into frames and back.

    ``loads`` receives frames straight from a socket, so it must treat them as hostile input:
    refuse what it does not understand with :class:`~zmqruntime.RemoteProtocolError` or
    ``ValueError``, and never execute anything. The default
    :class:`~zmqruntime.SafeSerializer` does that; :class:`~zmqruntime.PickleSerializer` does
    not and is for trusted setups only.
    """

    def dumps(self, obj: object, /) -> list[Buffer]: ...
    def loads(self, frames: Sequence[Buffer], /) -> object: ...


class ImageSink(Protocol):
    """Consumes one image: shows it, writes it, or hands it on.

    A plain ``def sink(image, metadata): ...`` is an ImageSink. It is called from one thread,
    in arrival order. If the object also has ``close()``, the server calls it on close.
    """

    def __call__(self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None: ...


@runtime_checkable
class ItemSink(Protocol):
    """An :class:`ImageSink` that also consumes shapes, points or labels items
    (:mod:`zmqruntime.streaming.items`): ``item_kinds`` names the kinds it takes (``"shapes"``,
    ``"points"``, ``"labels"``), and the viewer calls ``take_item(item, metadata)`` for each
    valid item of those kinds, in arrival order with the images, from the same thread. An item
    of another kind, or sent to a plain ImageSink, is acked as failed with a reason naming it.
    """

    @property
    def item_kinds(self) -> Collection[str]: ...

    def __call__(self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None: ...

    def take_item(self, item: Any, metadata: Mapping[str, Any], /) -> None: ...


class CommandHandler(Protocol):
    """Answers one viewer command. A plain ``def clear(args): ...`` is a CommandHandler.

    ``args`` is what the sender passed (decoded with the viewer's serializer: JSON values,
    bytes, numpy arrays by default; None when it passed none); the return value is the reply
    and must be something that serializer can encode. It runs on the viewer's sink thread, in
    order with the items, never at the same time as the sink; an exception reaches the sender
    as :class:`~zmqruntime.RemoteError` with its type, message and traceback.
    """

    def __call__(self, args: Any, /) -> object: ...


@runtime_checkable
class CommandSink(Protocol):
    """A sink that answers viewer commands: ``commands()`` maps each command name it answers
    (``"clear"``, ``"layers"``, ``"screenshot"``, ``"set_display"``, ``"close"``, its own) to
    its :class:`CommandHandler`. The viewer asks once, when it starts."""

    def commands(self) -> Mapping[str, CommandHandler]: ...


@runtime_checkable
class BatchSink(Protocol):
    """An :class:`ImageSink` that takes a batch (``ImageSender.send_batch``) in one call:
    ``take_batch(items, metadatas, batch_metadata)`` gets the batch's images (numpy arrays)
    and items in order, each one's own metadata, and the batch's. The viewer acks the batch's
    items and the batch "processed" once it returned, all "failed" with its error if it raised.
    Items of a kind not in its ``item_kinds`` (if any) make the whole batch fail before the
    call. A sink without ``take_batch`` is called per item, in order, with the batch's
    metadata merged under each item's own.
    """

    def __call__(self, image: numpy.ndarray[Any, Any], metadata: Mapping[str, Any], /) -> None: ...

    def take_batch(
        self,
        items: Sequence[Any],
        metadatas: Sequence[Mapping[str, Any]],
        batch_metadata: Mapping[str, Any],
        /,
    ) -> None: ...


@runtime_checkable
class LaunchSpec(Protocol):
    """How to start a process: its argument vector, extra environment and working folder."""

    @property
    def argv(self) -> Sequence[str]: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def cwd(self) -> str | None: ...


class WorkerBackend(Protocol):
    """Where a :class:`~zmqruntime.execution.WorkerPool` runs its jobs: threads, owned
    processes, a remote engine (:mod:`zmqruntime.execution.backends`).

    The pool keeps the FIFO queue, so a queued job can always be dropped on cancel; the
    backend runs only what it is handed. The job, sink and statistics types (typed ``Any``
    here) are ``Job``, ``JobSink`` and ``WorkerStatistics`` of :mod:`zmqruntime.execution.outcomes`.

    * ``start(executor, sink)``: once, before anything else. ``executor`` runs every job;
      the backend reports through ``sink``: ``started(job)`` just before the executor runs
      (False: it was cancelled, report it ``Cancelled`` without running it),
      ``progress(event)``, ``finished(job, outcome)`` exactly once per job handed over, and
      ``freed()`` once per ``run`` call, when it can take another. Never under its own lock.
    * ``capacity``: how many ``run`` calls it holds at once; the pool never exceeds it.
      ``batch_size()``: how many jobs one call may carry (1 but for engines that share a
      task among short jobs).
    * ``run(jobs)``: hand the jobs over; returns promptly (the caller may be a server's I/O
      thread). If it raises, nothing was handed over (the pool reports the jobs failed).
    * ``cancel(execution_id)``: a job handed over and not finished ends ``Cancelled``:
      dropped if it waits in the backend, asked to stop or killed if it runs. Unknown ids
      are ignored.
    * ``statistics()``: a tuple of ``WorkerStatistics``, one per worker.
    * ``close(timeout)``: cancel what it holds, wait up to ``timeout`` seconds for it to be
      reported, release the workers. Idempotent.
    """

    @property
    def capacity(self) -> int: ...
    def start(self, executor: TaskExecutor, sink: Any, /) -> None: ...
    def batch_size(self) -> int: ...
    def run(self, jobs: Sequence[Any], /) -> None: ...
    def cancel(self, execution_id: str, /) -> None: ...
    def statistics(self) -> tuple[Any, ...]: ...
    def close(self, timeout: float, /) -> None: ...


class RecordStore(Protocol):
    """Where an :class:`~zmqruntime.execution.ExecutionServer` keeps its executions (records,
    task digests, owners): ``ExecutionStore`` in memory (the default), or ``SqliteStore``, a file
    that keeps records and queued tasks across restarts (:mod:`zmqruntime.execution`). Every
    method is thread-safe and returns promptly; a transition that does not fit returns None
    (``progress``: False). The server closes it.

    * ``submit(...)`` → ``(record, created)``: a new QUEUED execution; ``payload`` is the task's
      encoded frames as received (a durable store keeps them until the task starts).
    * ``start`` QUEUED → RUNNING; ``complete`` RUNNING → COMPLETE; ``fail``, ``cancel`` QUEUED or
      RUNNING → FAILED, CANCELLED. ``progress(event)`` keeps a running execution's latest event.
    * ``get``, ``same_task``, ``owner``, ``counts``, ``active_ids``: what it holds now.
    * ``resume()``: the tasks to queue again, in order, as ``(record, payload)``; each once.
    """

    def submit(
        self,
        execution_id: str,
        labels: dict[str, str],
        digest: bytes = ...,
        owner: str | None = ...,
        payload: Sequence[Buffer] = ...,
    ) -> tuple[ExecutionRecord, bool]: ...
    def same_task(self, execution_id: str, digest: bytes) -> bool: ...
    def owner(self, execution_id: str) -> str | None: ...
    def get(self, execution_id: str) -> ExecutionRecord | None: ...
    def start(self, execution_id: str) -> ExecutionRecord | None: ...
    def progress(self, event: ProgressEvent) -> bool: ...
    def complete(self, execution_id: str) -> ExecutionRecord | None: ...
    def fail(
        self, execution_id: str, error_type: str, error_message: str, traceback: str
    ) -> ExecutionRecord | None: ...
    def cancel(self, execution_id: str) -> ExecutionRecord | None: ...
    def counts(self) -> dict[ExecutionStatus, int]: ...
    def select(
        self, query: ListRequest, owner: str | None, *, everyone: bool, max_bytes: int
    ) -> tuple[list[ExecutionRecord], str | None]: ...
    def active_ids(self) -> list[str]: ...
    def resume(self) -> list[tuple[ExecutionRecord, tuple[bytes, ...]]]: ...
    def close(self) -> None: ...
