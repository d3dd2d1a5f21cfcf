"""Dask distributed behind an :class:`~zmqruntime.execution.ExecutionServer`
(``pool=dask_pool(client)``): the executor function and each task are shipped to Dask
workers, so both must be picklable and importable there. Needs the ``dask`` extra.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Final, final

import attrs

from zmqruntime.errors import ChannelClosed, ConfigurationError
from zmqruntime.execution.pool import WorkerPool

__all__ = ["DaskEngine", "dask_pool"]

logger = logging.getLogger(__name__)

_STOP: Final = object()
_ONE_RESULT_TIMEOUT: Final = 60.0
"""Seconds to fetch the outcome of one task that did not simply finish (an error, a loss)."""


@final
@attrs.define(eq=False)
class DaskEngine:
    """A ``distributed.Client`` as a :class:`~zmqruntime.protocols.RemoteEngine`.

    ``submit`` is ``client.submit(fn, *args, pure=False)`` (two submissions of equal tasks
    are two executions, never one cached key) and returns a ``concurrent.futures.Future``.
    A thread of the engine's own takes every task that finished since it last looked and
    fetches their results with one ``client.gather`` (none for a result Dask knows is None).
    Cancelling a returned future cancels the Dask task. Build one with :meth:`start`;
    :meth:`close` stops the thread (the client stays yours).
    """

    client: Any
    _tasks: dict[Any, tuple[Any, concurrent.futures.Future[Any]]] = attrs.field(
        factory=dict, init=False
    )
    _done: queue.SimpleQueue[Any] = attrs.field(factory=queue.SimpleQueue, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @classmethod
    def start(cls, client: Any) -> DaskEngine:
        """An engine on ``client`` (a ``distributed.Client``), its collecting thread started."""
        _check_client(client, "DaskEngine", "submit", "gather")
        engine = cls(client)
        engine._thread = threading.Thread(
            target=engine._collect, name="zmqruntime-dask-results", daemon=True
        )
        engine._thread.start()
        return engine

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` on the cluster; the future resolves to its return value."""
        if not self._register(None, None):
            raise ChannelClosed("this DaskEngine is closed")
        task = self.client.submit(fn, *args, pure=False)
        mirror: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if not self._register(task, mirror):  # close() came meanwhile: it would miss it
            _cancel_task(task)
            raise ChannelClosed("this DaskEngine is closed")
        # Cancelling talks to the scheduler and waits: the collecting thread does it, not
        # the caller (often a server's I/O thread).
        mirror.add_done_callback(
            lambda done: self._done.put(_Cancel(task)) if done.cancelled() else None
        )
        task.add_done_callback(self._done.put)  # Dask calls it from a thread of its own
        return mirror

    def _register(self, task: Any, mirror: concurrent.futures.Future[Any] | None) -> bool:
        """Keep ``task`` and its mirror until it is done (if given); False once closed."""
        with self._lock:
            if self._closed:
                return False
            if mirror is not None:
                self._tasks[task.key] = (task, mirror)
            return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop collecting results and cancel the futures still waiting. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._done.put(_STOP)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._lock:
            left, self._tasks = self._tasks, {}
        for task, mirror in left.values():
            if mirror.cancel():
                _cancel_task(task)  # the collecting thread is gone

    def _collect(self) -> None:
        stop = False
        while not stop:
            batch = [self._done.get()]  # close() always puts _STOP
            while not self._done.empty():  # this thread is the only reader
                batch.append(self._done.get_nowait())
            stop = any(item is _STOP for item in batch)
            for item in batch:
                if isinstance(item, _Cancel):
                    _cancel_task(item.task)
            tasks = [item for item in batch if item is not _STOP and not isinstance(item, _Cancel)]
            try:
                self._settle(tasks)
            except Exception:  # the thread must outlive any one batch
                logger.exception("collecting %d Dask results failed", len(tasks))

    def _settle(self, tasks: list[Any]) -> None:
        """Resolve the futures of ``tasks`` (all done): the finished ones in one gather."""
        done = [task for task in tasks if task.status == "finished"]
        # Dask knows which results are None: nothing to fetch for them.
        values: dict[Any, Any] = {task.key: None for task in done if task.type is type(None)}
        finished = [task for task in done if task.key not in values]
        if finished:
            try:
                values.update(
                    zip([task.key for task in finished], self.client.gather(finished), strict=True)
                )
            except Exception as exc:  # a result lost since (a worker died): one at a time
                logger.debug("gathering %d Dask results failed: %r", len(finished), exc)
        for task in tasks:
            with self._lock:
                entry = self._tasks.pop(task.key, None)
            if entry is not None and not entry[1].done():  # else cancelled here, or closed
                _resolve(entry[1], task, values)


def _resolve(mirror: concurrent.futures.Future[Any], task: Any, values: dict[Any, Any]) -> None:
    """Set ``mirror`` to ``task``'s value (from ``values`` if gathered), its error, or
    cancelled — unless ``mirror`` was cancelled meanwhile."""
    try:
        value = values[task.key] if task.key in values else task.result(_ONE_RESULT_TIMEOUT)
    except BaseException as exc:  # Dask's CancelledError is asyncio's, not a subclass of Exception
        if task.status == "cancelled" or isinstance(exc, concurrent.futures.CancelledError):
            mirror.cancel()
        else:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                mirror.set_exception(exc)
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        mirror.set_result(value)


@final
@attrs.frozen
class _Cancel:
    """A request to the collecting thread: cancel this Dask task."""

    task: Any


def _check_client(client: Any, user: str, *methods: str) -> None:
    if not all(callable(getattr(client, name, None)) for name in methods):
        raise ConfigurationError(
            f"{user} needs a distributed.Client, got {type(client).__name__}; for a "
            "scheduler address, pass distributed.Client(address)"
        )


def _cancel_task(task: Any) -> None:
    try:
        task.cancel()
    except Exception as exc:  # the client closed, the scheduler went away …
        logger.warning("could not cancel Dask task %s: %r", task.key, exc)


def dask_pool(
    client: Any,
    *,
    max_workers: int | None = None,
    inlet_host: str | None = None,
    advertise_host: str | None = None,
) -> WorkerPool:
    """A remote :class:`WorkerPool` on a ``distributed.Client``, through a
    :class:`DaskEngine` the pool closes with itself; the client stays yours (close it after
    the server). At most ``max_workers`` tasks are in Dask at once (default: four per thread
    of the cluster when the pool is made, at least 8), the rest wait in the server's queue.
    ``inlet_host`` / ``advertise_host``: see :meth:`WorkerPool.remote`.
    """
    _check_client(client, "dask_pool", "nthreads")
    if max_workers is None:
        max_workers = max(8, 4 * sum(client.nthreads().values()))
    engine = DaskEngine.start(client)
    try:
        return WorkerPool.remote(
            engine,
            max_workers,
            inlet_host=inlet_host,
            advertise_host=advertise_host,
            on_close=engine.close,
        )
    except BaseException:
        engine.close()
        raise
