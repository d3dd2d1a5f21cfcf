"""The engine seam of remote pools: DaskEngine on its own, and engines that misbehave.

``WorkerPool.remote`` takes anything with ``submit(fn, *args) -> Future`` (the
``RemoteEngine`` protocol). These tests use a real in-process Dask cluster for
``DaskEngine``, and small engines of their own to show that an outcome the engine carries is
used, that one that never arrives fails the execution instead of hanging it, that a
completion forged by another peer on the inlet is dropped, that short jobs reach the engine
in batches, and that a job cancelled while it waits in a batch never runs. Real sockets
throughout.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import zmq

from tests import executors
from tests.test_remote import WAIT, wait_until
from zmqruntime import TransportMode, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.credentials import client_credentials
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Completion, ExecutionRecord, ExecutionStatus, Ping, Pong
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.errors import ChannelClosed, TaskCancelled, TaskFailed
from zmqruntime.execution import ExecutionClient, ExecutionServer, WorkerPool
from zmqruntime.execution.outcomes import Completed

pytestmark = pytest.mark.timeout(300)

RELEASE = threading.Event()
"""Lets ``held`` return (the in-process cluster's tasks run in this process)."""


def add(a: int, b: int) -> int:
    return a + b


def nothing() -> None:
    return None


def refuse(reason: str) -> None:
    raise ValueError(reason)


RAN: list[str] = []


def mark(name: str) -> str:
    RAN.append(name)
    return name


def held() -> str:
    if not RELEASE.wait(WAIT):
        raise TimeoutError("the test never released the task")
    return "released"


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed", reason="needs the dask extra")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_dask_engine_resolves_values_none_and_errors(dask_client: Any) -> None:
    from zmqruntime.execution.backends.dask import DaskEngine  # noqa: PLC0415 (optional extra)

    engine = DaskEngine.start(dask_client)
    try:
        futures = [engine.submit(add, n, 1) for n in range(20)]
        assert [f.result(WAIT) for f in futures] == list(range(1, 21))
        assert engine.submit(nothing).result(WAIT) is None  # known None: never fetched
        error = engine.submit(refuse, "no thanks").exception(WAIT)
        assert isinstance(error, ValueError) and str(error) == "no thanks"
    finally:
        engine.close()
    with pytest.raises(ChannelClosed):
        engine.submit(add, 1, 2)


def test_cancelling_a_dask_engine_future_keeps_the_task_from_running(dask_client: Any) -> None:
    from zmqruntime.execution.backends.dask import DaskEngine  # noqa: PLC0415 (optional extra)

    RELEASE.clear()
    RAN.clear()
    engine = DaskEngine.start(dask_client)
    try:
        busy = engine.submit(held)  # the cluster's one thread
        wait_until(lambda: any(dask_client.processing().values()), "the held task to start")
        queued = engine.submit(mark, "cancelled")
        assert queued.cancel()

        def cancelled() -> bool:  # the scheduler took the cancel, and no worker has it
            pending = [
                key
                for key, state in list(dask_client.futures.items())
                if str(key).startswith("mark") and state.status != "cancelled"
            ]
            scheduled = [key for keys in dask_client.processing().values() for key in keys]
            return not pending and not any("mark" in str(key) for key in scheduled)

        wait_until(cancelled, "the cancel")
        RELEASE.set()
        assert busy.result(WAIT) == "released"
        assert engine.submit(mark, "after").result(WAIT) == "after"  # one thread: FIFO
        assert RAN == ["after"]
        RELEASE.clear()
        left = engine.submit(held)  # still running when the engine closes
        engine.close()
        assert left.cancelled()
    finally:
        RELEASE.set()
        engine.close()


@attrs.define
class Vanishing:
    """An engine that says every job ended, without running it or carrying an outcome."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(None)
        return future


@attrs.define
class Carrier:
    """An engine that carries an outcome itself (as when a worker's link is full)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(Completed({"carried": True}))
        return future


def _serve(
    pool: WorkerPool, config: ZMQConfig, executor: Callable[[Any, Any], Any] = executors.dispatch
) -> tuple[ExecutionServer, ExecutionClient]:
    server = ExecutionServer.bind(
        Endpoint.of(port=0, transport_mode=TransportMode.TCP, config=config), executor, pool=pool
    ).start()
    client = ExecutionClient.to(
        Endpoint.of(port=server.port_number, transport_mode=TransportMode.TCP, config=config)
    ).connect()
    return server, client


def test_an_outcome_that_never_arrives_fails_the_execution_instead_of_hanging(
    config: ZMQConfig,
) -> None:
    quick = attrs.evolve(config, request_timeout=0.5)
    server, client = _serve(WorkerPool.remote(Vanishing(), 1), quick)
    try:
        error = client.submit({"op": "echo", "value": 1}).exception(WAIT)
        assert isinstance(error, TaskFailed) and error.error_type == "OutcomeLost", error
        assert "never reached the server" in error.error_message
    finally:
        client.close()
        server.close()


def test_an_outcome_the_engine_carries_is_used(config: ZMQConfig) -> None:
    closed: list[str] = []
    pool = WorkerPool.remote(Carrier(), 1, on_close=lambda: closed.append("closed"))
    server, client = _serve(pool, config)
    try:
        assert client.submit({"op": "echo", "value": 1}).result(WAIT) == {"carried": True}
    finally:
        client.close()
        server.close()
    assert closed == ["closed"]  # once, when the pool closed
    pool.close()
    assert closed == ["closed"]


def test_a_completion_forged_by_another_peer_is_dropped(config: ZMQConfig) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as threads:
        server, client = _serve(WorkerPool.remote(threads, 1), config)
        forger = zmq.Context.instance().socket(zmq.DEALER)
        forger.setsockopt(zmq.LINGER, 0)
        try:
            running = client.submit({"op": "wait"})
            wait_until(lambda: bool(client.summary().engine), "the worker to attach")
            address = server.pool.inlet_address
            assert address is not None
            credentials = client_credentials(Endpoint.parse(address, config=config))
            assert credentials is not None  # a peer of the same user, not the worker
            credentials.apply(forger)
            forger.connect(address)
            record = ExecutionRecord(
                execution_id=running.execution_id, status=ExecutionStatus.COMPLETE
            )
            forged = Completion(
                record=record, serializer="safe", result=tuple(SafeSerializer().dumps("forged"))
            )
            forger.send_multipart(codec.encode(forged))
            forger.send_multipart(codec.encode(Ping(request_id=7)))  # after the forgery
            assert forger.poll(int(WAIT * 1000)), "the inlet did not answer"
            assert isinstance(codec.decode(forger.recv_multipart()), Pong)
            assert client.record(running.execution_id).status is ExecutionStatus.RUNNING
            assert client.cancel(running.execution_id)
            assert isinstance(running.exception(WAIT), TaskCancelled)
        finally:
            forger.close()
            client.close()
            server.close()


@attrs.define
class Counting:
    """Threads of this process as a remote engine, counting the tasks it is given."""

    threads: concurrent.futures.ThreadPoolExecutor
    submitted: int = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]:
        self.submitted += 1
        return self.threads.submit(fn, *args)


def test_short_jobs_go_to_the_engine_in_batches(config: ZMQConfig) -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        engine = Counting(threads)
        server, client = _serve(WorkerPool.remote(engine, 2), config)
        try:
            executions = [client.submit({"op": "square", "n": n}) for n in range(300)]
            assert [e.result(WAIT) for e in executions] == [n * n for n in range(300)]
            # The first ones go one by one (how long jobs take is not known yet).
            assert engine.submitted < 150, engine.submitted
        finally:
            client.close()
            server.close()


def tracked(task: Any, ctx: Any) -> str:
    """Notes that ``task["name"]`` ran (in this process); waits for a cancel if asked to."""
    RAN.append(task["name"])
    if task.get("wait"):
        deadline = time.monotonic() + WAIT
        pause = threading.Event()
        while not ctx.cancelled and time.monotonic() < deadline:
            pause.wait(0.01)
        ctx.raise_if_cancelled()
    return str(task["name"])


def test_a_job_cancelled_while_it_waits_in_a_batch_never_runs(config: ZMQConfig) -> None:
    RAN.clear()
    with concurrent.futures.ThreadPoolExecutor(1) as threads:
        engine = Counting(threads)
        server, client = _serve(WorkerPool.remote(engine, 1), config, tracked)
        try:
            for n in range(5):  # alone: the pool learns that jobs are short
                assert client.submit({"name": f"warm-{n}"}).result(WAIT) == f"warm-{n}"
            first = client.submit({"name": "first", "wait": True})
            wait_until(lambda: _running(client) == {first.execution_id}, "the first job")
            second = client.submit({"name": "second", "wait": True})
            skipped = client.submit({"name": "skipped"})
            last = client.submit({"name": "last"})
            handed = engine.submitted
            assert client.cancel(first.execution_id)
            wait_until(lambda: _running(client) == {second.execution_id}, "the batch to start")
            assert engine.submitted == handed + 1, "the three did not go as one batch"
            assert client.cancel(skipped.execution_id)
            assert client.cancel(second.execution_id)
            assert isinstance(skipped.exception(WAIT), TaskCancelled)
            assert last.result(WAIT) == "last"
            assert "skipped" not in RAN
            assert RAN[-3:] == ["first", "second", "last"]
        finally:
            client.close()
            server.close()


def _running(client: ExecutionClient) -> set[str]:
    return {execution for ids in client.summary().engine.values() for execution in ids}


def test_an_ipv6_advertised_host_is_bracketed_in_the_inlet_address(config: ZMQConfig) -> None:
    pool = WorkerPool.remote(Carrier(), 1, advertise_host="::1")
    server, client = _serve(pool, config)
    try:
        address = pool.inlet_address
        assert address is not None and address.startswith("tcp://[::1]:"), address
        int(address.rsplit(":", 1)[1])  # a port follows
    finally:
        client.close()
        server.close()
