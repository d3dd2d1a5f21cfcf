"""An ExecutionServer in front of another engine: Dask distributed and ProcessPoolExecutor.

Every test body runs against both engines (the ``engine`` fixture), which is what shows the
seam is generic: a ``concurrent.futures`` executor whose workers are other processes, the
executor function and tasks shipped by that engine, progress and cancellation through the
pool's zmq inlet. Real worker processes, real sockets; the Dask half needs the ``dask`` extra.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from tests import executors
from zmqruntime import ClientCurve, ServerCurve, TransportMode, ZMQConfig, generate_curve_keypair
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Completion, ExecutionStatus, ProgressEvent
from zmqruntime.errors import ConfigurationError, TaskCancelled, TaskFailed
from zmqruntime.execution import ExecutionClient, ExecutionServer, RemoteWorkers, WorkerPool
from zmqruntime.execution.backends.dask import dask_pool
from zmqruntime.execution.backends.remote import RemoteContext

WAIT = 60.0
"""Generous: worker processes start, and Dask schedules, on a loaded 2-core machine."""
WORKERS = 2

pytestmark = pytest.mark.timeout(300)


@attrs.define
class Engine:
    """One engine behind the server: how to make a pool on it, and its workers' names."""

    name: str
    make_pool: Callable[[], WorkerPool]
    worker_names: Callable[[], set[str]]


@pytest.fixture(scope="module", params=["process-pool", "dask"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    if request.param == "process-pool":
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=spawn) as pool:

            def names() -> set[str]:  # the pool starts its processes as work arrives
                host = socket.gethostname()
                return {f"{host}:{pid}" for pid in pool._processes}

            yield Engine("process-pool", lambda: WorkerPool.remote(pool), names)
        return
    distributed = pytest.importorskip("distributed", reason="needs the dask extra")

    with (
        distributed.LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(WORKERS, timeout=WAIT)
        yield Engine(
            "dask",
            lambda: dask_pool(client),
            lambda: set(client.scheduler_info()["workers"]),
        )


class Events:
    """A progress callback that keeps everything it hears, in arrival order."""

    def __init__(self) -> None:
        self.heard: list[ProgressEvent | Completion] = []
        self._changed = threading.Condition()

    def __call__(self, message: ProgressEvent | Completion) -> None:
        with self._changed:
            self.heard.append(message)
            self._changed.notify_all()

    def of(self, execution_id: str) -> list[ProgressEvent | Completion]:
        with self._changed:
            return [m for m in self.heard if _id_of(m) == execution_id]

    def wait_ended(self, execution_ids: set[str]) -> bool:
        def ended() -> bool:
            done = {m.record.execution_id for m in self.heard if isinstance(m, Completion)}
            return execution_ids <= done

        with self._changed:
            return self._changed.wait_for(ended, WAIT)


def _id_of(message: ProgressEvent | Completion) -> str:
    return (
        message.execution_id if isinstance(message, ProgressEvent) else message.record.execution_id
    )


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT}s waiting for {what}")
        pause.wait(0.02)


@pytest.fixture
def serve(engine: Engine, config: ZMQConfig) -> Iterator[Callable[..., ExecutionClient]]:
    """``serve(**server_options)`` → a connected client of a server on a new engine pool."""
    opened: list[Any] = []

    def start(curve: ServerCurve | None = None, client_curve: ClientCurve | None = None) -> Any:
        server = ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=TransportMode.TCP, config=config, curve=curve),
            executors.dispatch,
            pool=engine.make_pool(),
        ).start()
        opened.append(server)
        client = ExecutionClient.to(
            Endpoint.of(
                port=server.port_number,
                transport_mode=TransportMode.TCP,
                config=config,
                curve=client_curve,
            )
        ).connect()
        opened.append(client)
        return server, client

    yield start
    for thing in reversed(opened):
        thing.close()


def test_200_tasks_with_their_progress_in_order_before_their_end(
    serve: Callable[..., Any], engine: Engine
) -> None:
    server, client = serve()
    assert isinstance(server.pool.backend, RemoteWorkers)
    events = Events()
    client.on_progress(events)
    wait_until(lambda: server.server.has_subscribers("any id"), "the subscription")

    executions = [client.submit({"op": "square", "n": n, "steps": 3}) for n in range(200)]
    assert [e.result(WAIT) for e in executions] == [n * n for n in range(200)]
    assert events.wait_ended({e.execution_id for e in executions})
    pids: set[int] = set()
    for execution in executions:
        heard = events.of(execution.execution_id)
        progress = [m for m in heard if isinstance(m, ProgressEvent)]
        assert [e.sequence for e in progress] == [1, 2, 3], execution.execution_id
        assert [e.fields["step"] for e in progress] == [0, 1, 2]
        assert isinstance(heard[-1], Completion)  # every event came before the end
        assert heard[-1].record.progress == progress[-1]
        pids.update(int(e.fields["pid"]) for e in progress)  # type: ignore[arg-type]
    assert pids and os.getpid() not in pids, "the tasks ran in the server's process"


def test_a_running_task_is_cancelled_through_the_client_and_stops(
    serve: Callable[..., Any], engine: Engine
) -> None:
    _server, client = serve()
    running = client.submit({"op": "wait"})

    def engine_runs_it() -> bool:
        return any(running.execution_id in ids for ids in client.summary().engine.values())

    wait_until(engine_runs_it, "the worker to attach")
    summary = client.summary()
    assert set(summary.engine) <= engine.worker_names(), summary.engine
    assert client.record(running.execution_id).status is ExecutionStatus.RUNNING

    assert client.cancel(running.execution_id) is True
    assert isinstance(running.exception(WAIT), TaskCancelled)
    # the worker stopped the task (else it would hold one of the two workers for a minute)
    wait_until(lambda: not client.summary().engine, "the worker to let go")
    again = [client.submit({"op": "square", "n": n}) for n in range(2 * WORKERS)]
    assert [e.result(WAIT) for e in again] == [n * n for n in range(2 * WORKERS)]


def test_a_queued_task_is_dropped_and_never_runs(serve: Callable[..., Any]) -> None:
    _server, client = serve()
    busy = [client.submit({"op": "wait"}) for _ in range(WORKERS)]

    def running() -> int:
        return sum(len(ids) for ids in client.summary().engine.values())

    wait_until(lambda: running() == WORKERS, "every worker to be busy")
    # It waits: in the server's queue (a process pool gets 2 at a time) or in Dask's.
    queued = client.submit({"op": "square", "n": 7, "steps": 1})
    assert client.cancel(queued.execution_id) is True
    assert isinstance(queued.exception(WAIT), TaskCancelled)
    assert client.record(queued.execution_id).progress is None  # it would have reported
    for execution in busy:
        client.cancel(execution.execution_id)
        assert isinstance(execution.exception(WAIT), TaskCancelled)
    assert client.submit({"op": "square", "n": 4}).result(WAIT) == 16


def test_a_failing_task_carries_its_remote_traceback(serve: Callable[..., Any]) -> None:
    _server, client = serve()
    failing = client.submit({"op": "fail", "why": "remote"})
    error = failing.exception(WAIT)
    assert isinstance(error, TaskFailed), error
    assert error.error_type == "ValueError"
    assert "exploded on purpose" in error.error_message
    assert "explode_on_purpose" in error.remote_traceback
    assert client.submit({"op": "square", "n": 3}).result(WAIT) == 9  # the pool goes on


def test_with_curve_the_workers_report_over_an_encrypted_authenticated_inlet(
    serve: Callable[..., Any],
) -> None:
    server_keys, user_keys = generate_curve_keypair(), generate_curve_keypair()
    server, client = serve(
        curve=ServerCurve(server_keys, allowed_client_keys={user_keys.public_key}),
        client_curve=ClientCurve(user_keys, server_keys.public_key),
    )
    events = Events()
    client.on_progress(events)
    wait_until(lambda: server.server.has_subscribers("any id"), "the subscription")
    execution = client.submit({"op": "square", "n": 5, "steps": 2})
    assert execution.result(WAIT) == 25
    assert events.wait_ended({execution.execution_id})
    assert len(events.of(execution.execution_id)) == 3
    running = client.submit({"op": "wait"})
    wait_until(lambda: bool(client.summary().engine), "the worker to attach")
    assert client.cancel(running.execution_id)
    assert isinstance(running.exception(WAIT), TaskCancelled)


def test_the_remote_context_travels_without_sockets_and_validates_progress() -> None:
    context = RemoteContext("abc", {"plate": "A1"}, "tcp://127.0.0.1:1")
    copy = pickle.loads(pickle.dumps(context))  # what an engine does with it
    assert (copy.execution_id, dict(copy.labels), copy.control_url) == (
        "abc",
        {"plate": "A1"},
        "tcp://127.0.0.1:1",
    )
    assert copy.cancelled is False  # not connected: nothing can have cancelled it
    copy.open()
    try:
        with pytest.raises(TypeError):
            copy.report_progress(0.5, fields={1, 2})  # type: ignore[arg-type]
    finally:
        copy.close()


def test_a_process_pool_given_as_a_local_executor_is_refused() -> None:
    with (
        concurrent.futures.ProcessPoolExecutor(1) as pool,
        pytest.raises(ConfigurationError, match="remote"),
    ):
        WorkerPool.from_executor(pool)
