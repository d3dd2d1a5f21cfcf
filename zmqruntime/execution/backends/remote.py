"""Tasks on another engine's workers: the context they carry, and how they report.

The executor function, the task and a :class:`RemoteContext` travel to the engine's worker
by the engine's own means. The context connects (DEALER) to the pool's
:class:`~zmqruntime.execution.backends.inlet.RemoteWorkers` and sends an ``Attach``, the
progress events, and last the ``Completion``, its result encoded with the server's
serializer; the inlet answers ``Cancel`` when the execution is cancelled. One connection
keeps order: every progress event reaches the server before the outcome. The engine's own
return value is None, unless the outcome could not be sent: then it carries the outcome.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, cast, final

import attrs
import zmq

from zmqruntime.config import ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.credentials import ClientCredentials
from zmqruntime.core.messages import (
    Accepted,
    Attach,
    Cancel,
    Completion,
    ExecutionRecord,
    ExecutionStatus,
    Message,
    ProgressEvent,
)
from zmqruntime.core.push import open_connected_socket
from zmqruntime.core.serializers import SafeSerializer, serializer_name
from zmqruntime.core.socket_options import Context, Socket
from zmqruntime.core.sockets import receive_ready, send_frames
from zmqruntime.errors import ProtocolError
from zmqruntime.execution.context import ExecutionContext
from zmqruntime.execution.outcomes import Cancelled, Completed, Failed, Job, Outcome, run_job
from zmqruntime.protocols import Buffer, JSONValue, TaskExecutor, TaskSerializer

__all__ = ["RemoteContext", "outcome_of", "run_remote", "run_remote_batch"]

logger = logging.getLogger(__name__)

_CONTEXT_LOCK: Final = threading.Lock()
_LINKS: Final = threading.local()
_MAX_LINKS: Final = 4
_LINK_RECONNECT_MAX: Final = 5.0
_HEARD_CANCELS: Final = 256


@final
@attrs.define(eq=False)
class _Link:
    """A worker thread's connection to one inlet, and the executions it heard cancelled
    (a cancel may come for a task of a batch that has not started yet)."""

    socket: Socket
    cancelled: collections.deque[str] = attrs.field(
        factory=lambda: collections.deque(maxlen=_HEARD_CANCELS)
    )


def _thread_link(url: str, config: ZMQConfig, credentials: ClientCredentials | None) -> _Link:
    """This thread's connection to the inlet at ``url``, opened by its first task and kept
    for the next ones: at most ``_MAX_LINKS`` (one per inlet served, the oldest closed
    first); a link to an inlet that went away retries ever more rarely."""
    links: dict[tuple[Any, ...], _Link] = _LINKS.__dict__.setdefault("links", {})
    key = (os.getpid(), url, credentials)
    link = links.get(key)
    if link is None:
        with _CONTEXT_LOCK:  # one context per process, also when two threads start at once
            context = _process_context(os.getpid())
        dealer = open_connected_socket(  # the inlet sends it cancel notices: headers alone
            context,
            zmq.DEALER,
            url,
            config,
            credentials,
            reconnect_max=_LINK_RECONNECT_MAX,
            max_frame_bytes=config.max_header_bytes,
        )
        link = links[key] = _Link(dealer)
        while len(links) > _MAX_LINKS:
            links.pop(next(iter(links))).socket.close()
    return link


@functools.lru_cache(maxsize=1)
def _process_context(_pid: int) -> Context:
    """One zmq context per worker process, given ``os.getpid()`` (a fresh one after a fork),
    never terminated: its sockets, the threads' links, live as long as the process."""
    return zmq.Context()


@functools.lru_cache(maxsize=1)
def _worker_name(pid: int) -> str:
    """How this worker process, given ``os.getpid()``, is named in the server's status: the
    Dask worker's address when running under Dask, else ``host:pid``."""
    if "distributed" in sys.modules:
        with contextlib.suppress(ImportError, ValueError):
            from distributed import get_worker  # noqa: PLC0415 - only when Dask is in use

            return str(get_worker().address)
    return f"{socket.gethostname()}:{pid}"


@final
@attrs.define(eq=False)
class RemoteContext:
    """The :class:`~zmqruntime.TaskContext` a remote worker receives: picklable, it connects
    to the server's inlet when :meth:`open` is called in the worker (``run_remote`` does).
    Use it from the executor's thread (its socket belongs to that thread); a lock keeps a
    stray second thread from corrupting it."""

    execution_id: str
    labels: Mapping[str, str]
    control_url: str
    config: ZMQConfig = attrs.field(factory=ZMQConfig)
    credentials: ClientCredentials | None = None
    """What the worker presents to the inlet (it travels with the task through the engine)."""
    serializer: TaskSerializer = attrs.field(factory=SafeSerializer)
    """The server's serializer: :meth:`deliver` encodes the result with it."""

    _local: ExecutionContext | None = attrs.field(default=None, init=False)
    _link: _Link | None = attrs.field(default=None, init=False)
    _cancelled: bool = attrs.field(default=False, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Only what a connection needs travels, not the whole config; sockets are made there.
        settings = tuple(getattr(self.config, name) for name in _SHIPPED_SETTINGS)
        fields = (self.execution_id, dict(self.labels), self.control_url)
        return (_revive, (*fields, settings, self.credentials, self.serializer))

    def open(self) -> RemoteContext:
        """Connect to the inlet (or reuse this thread's link) and say which execution this
        worker runs. Idempotent."""
        with self._lock:
            if self._link is not None:
                return self
            self._link = _thread_link(self.control_url, self.config, self.credentials)
            self._cancelled = False
            self._take_notices(self._link)  # what came while earlier tasks ran
            self._local = ExecutionContext(
                self.execution_id, self.labels, report=self._send_progress
            )
            attach = Attach(
                request_id=0, execution_id=self.execution_id, worker=_worker_name(os.getpid())
            )
            if not self._send(attach):  # the task runs anyway; its completion tells the server
                logger.warning("%s: the inlet is not taking messages", self.execution_id)
        return self

    def deliver(self, outcome: Outcome, started: float | None = None) -> bool:
        """Send the outcome to the server behind the progress events, a result encoded with
        the server's serializer (if that fails, the task failed). ``started``: the task's
        ``time.time()`` at start. False if it could not be sent: the engine must carry it."""
        frames: tuple[Buffer, ...] = ()
        if isinstance(outcome, Completed):
            try:
                frames = tuple(self.serializer.dumps(outcome.result))
            except Exception as exc:
                outcome = Failed.from_exception(exc)
        message = Completion(
            record=_record(self.execution_id, outcome, started),
            serializer=serializer_name(self.serializer),
            result=frames,
        )
        with self._lock:
            sent = self._send(message)
        if not sent:
            logger.warning("%s: the inlet is not taking messages", self.execution_id)
        return sent

    def close(self) -> None:
        """Let go of the link (it stays open for the thread's next task). Idempotent."""
        with self._lock:
            self._link = None

    @property
    def cancelled(self) -> bool:
        """True once the server asked to cancel this execution."""
        return self.wait_cancelled(0.0)

    def wait_cancelled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a cancellation; True if one was requested."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._cancelled or self._link is None:
                    return self._cancelled
                link = self._link
                if self._take_notices(link):
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Waiting without the lock: progress from another thread is not held up.
            link.socket.poll(max(1, round(remaining * 1000)), zmq.POLLIN)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~zmqruntime.TaskCancelled` if a cancellation was requested."""
        if self.cancelled:
            assert self._local is not None
            self._local.cancel_event.set()
            self._local.raise_if_cancelled()

    def report_progress(
        self, fraction: float | None = None, message: str = "", **fields: JSONValue
    ) -> None:
        """Send a progress event to the server (validated here, like on a local worker)."""
        if self._local is None:
            self.open()
        assert self._local is not None
        self._local.report_progress(fraction, message, **fields)

    def _send_progress(self, event: ProgressEvent) -> None:
        with self._lock:
            if not self._send(event):
                logger.debug("progress %d of %s dropped", event.sequence, event)

    def _send(self, message: Message) -> bool:
        """Queue ``message`` for the inlet (lock held); False without a link or room in it."""
        if self._link is not None:
            with contextlib.suppress(zmq.Again):
                send_frames(self._link.socket, codec.encode(message), zmq.NOBLOCK)
                return True
        return False

    def _take_notices(self, link: _Link) -> bool:
        """Read what the inlet sent (lock held); True once this execution is cancelled."""
        while (frames := receive_ready(link.socket)) is not None:
            try:
                notice = codec.decode(
                    cast("list[Buffer]", frames), max_header_bytes=self.config.max_header_bytes
                )
            except ProtocolError as exc:
                logger.warning("dropped a malformed notice from the inlet: %s", exc)
                continue
            if isinstance(notice, Cancel) or (
                isinstance(notice, Accepted) and notice.status is ExecutionStatus.CANCELLED
            ):
                link.cancelled.append(getattr(notice, "execution_id", ""))
        if self.execution_id in link.cancelled:
            self._cancelled = True
        return self._cancelled


_SHIPPED_SETTINGS: Final = (
    "request_timeout",
    "linger",
    "heartbeat_interval",
    "heartbeat_timeout",
    "max_header_bytes",
    "send_high_water_mark",
)


def _revive(
    execution_id: str, labels: dict[str, str], url: str, settings: tuple[Any, ...], *rest: Any
) -> RemoteContext:
    """An unpickled :class:`RemoteContext`; ``rest``: its credentials and serializer."""
    return RemoteContext(execution_id, labels, url, _shipped_config(settings), *rest)


@functools.lru_cache(maxsize=8)
def _shipped_config(settings: tuple[Any, ...]) -> ZMQConfig:
    """The config ``settings`` describe, made once per distinct settings (tasks share it)."""
    return ZMQConfig(**dict(zip(_SHIPPED_SETTINGS, settings, strict=True)))


def _record(execution_id: str, outcome: Outcome, started: float | None) -> ExecutionRecord:
    """What a worker tells the inlet about how its task ended and how long it ran (the
    server keeps its own times in the record it publishes)."""
    error = attrs.asdict(outcome) if isinstance(outcome, Failed) else {}
    status = ExecutionStatus.FAILED if error else ExecutionStatus.COMPLETE
    if isinstance(outcome, Cancelled):
        status = ExecutionStatus.CANCELLED
    return ExecutionRecord(
        execution_id=execution_id,
        status=status,
        started_at=started,
        finished_at=time.time(),
        **error,
    )


def outcome_of(message: Completion, serializer: TaskSerializer) -> Outcome:
    """The outcome a worker's completion reports (a result stays encoded: it must be in
    ``serializer``'s format, the server's; else the job failed)."""
    record = message.record
    if record.status is ExecutionStatus.COMPLETE:
        if message.serializer == serializer_name(serializer):
            return Completed(None, frames=message.result)
        text = f"the worker encoded the result with {message.serializer!r}"
        return Failed("RemoteProtocolError", text, "")
    if record.status is ExecutionStatus.CANCELLED:
        return Cancelled()
    if record.status is ExecutionStatus.FAILED:
        return Failed(record.error_type or "", record.error_message or "", record.traceback or "")
    return Failed("RemoteProtocolError", f"a worker reported {record.status}", "")


def run_remote(executor: TaskExecutor, job: Job, context: RemoteContext) -> Outcome | None:
    """What the engine runs in its worker: the executor, with the context connected (a job
    cancelled before it starts does not run). None once the outcome went to the inlet, else
    the outcome itself."""
    context.open()
    try:
        started = time.time()
        if context.cancelled:
            outcome: Outcome = Cancelled()
        else:
            outcome = run_job(executor, job, context, lambda: context.cancelled)
        return None if context.deliver(outcome, started) else outcome
    finally:
        context.close()


def run_remote_batch(
    executor: TaskExecutor, jobs: list[Job], contexts: list[RemoteContext]
) -> list[Outcome | None] | None:
    """Several small jobs as one engine task, one after another, each as :func:`run_remote`
    runs it. None when every outcome went to the inlet, else each job's result there."""
    outcomes = [
        run_remote(executor, job, context) for job, context in zip(jobs, contexts, strict=True)
    ]
    return None if all(outcome is None for outcome in outcomes) else outcomes
