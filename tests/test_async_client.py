"""AsyncExecutionClient on a real ExecutionServer: real sockets (TCP on 127.0.0.1, IPC under
``tmp_path``), thread workers. Each test runs its coroutine with ``asyncio.run`` under one
``wait_for`` deadline; nothing sleeps: the tests await futures and progress events.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Completion, ProgressEvent
from zmqruntime.errors import (
    ChannelClosed,
    ConfigurationError,
    ErrorCode,
    RemoteError,
    TaskCancelled,
    TaskFailed,
    ZMQTimeoutError,
)
from zmqruntime.execution import (
    AsyncExecution,
    AsyncExecutionClient,
    ExecutionRecord,
    ExecutionServer,
    ExecutionStatus,
    ProgressStream,
    ServerSummary,
)
from zmqruntime.execution.progress_stream import COMPLETION_GRACE
from zmqruntime.execution.records import MAX_LABELS
from zmqruntime.protocols import TaskContext

pytestmark = pytest.mark.usefixtures("no_thread_leak")

WAIT = 20.0
"""Deadline of a whole test's coroutine; things normally take milliseconds."""
_T = TypeVar("_T")
Serve = Callable[..., ExecutionServer]


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` in a new event loop, failing after :data:`WAIT` seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, WAIT))


@pytest.fixture
def serve(config: ZMQConfig, no_thread_leak: None) -> Iterator[Serve]:
    """``serve(executor, mode=TCP, **fields)``: a started ExecutionServer, closed at teardown."""
    servers: list[ExecutionServer] = []

    def factory(
        executor: Any, mode: TransportMode = TransportMode.TCP, **fields: Any
    ) -> ExecutionServer:
        endpoint = Endpoint.of(port=0, transport_mode=mode, config=config)
        server = ExecutionServer.bind(endpoint, executor, **fields)
        servers.append(server)
        return server.start()

    yield factory
    for server in reversed(servers):
        server.close()


def client_of(server: ExecutionServer, config: ZMQConfig, **options: Any) -> AsyncExecutionClient:
    mode = server.server.sockets.mode
    at = Endpoint.of(port=server.port_number, transport_mode=mode, config=config)
    return AsyncExecutionClient.to(at, **options)


def steps(task: Any, ctx: TaskContext) -> int:
    """``{"n": n}``: reports n progress events (``step`` = 0..n-1), returns n; raises if asked."""
    if task.get("fail"):
        raise ValueError(f"exploded on purpose: {task['fail']}")
    n = int(task["n"])
    for i in range(n):
        ctx.report_progress((i + 1) / n, f"step {i}", step=i)
    return n


class Hold:
    """An executor whose task says it started, then waits (cooperatively) to be released."""

    def __init__(self) -> None:
        self.started: concurrent.futures.Future[str] = concurrent.futures.Future()
        self.release = threading.Event()

    def __call__(self, _task: Any, ctx: TaskContext) -> str:
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self.started.set_result(ctx.execution_id)
        deadline = time.monotonic() + WAIT
        while not self.release.wait(0.01):
            ctx.raise_if_cancelled()
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
        return "released"


def id_of(event: ProgressEvent | Completion) -> str:
    return event.execution_id if isinstance(event, ProgressEvent) else event.record.execution_id


async def go_live(client: AsyncExecutionClient) -> None:
    """Submit probes until one's progress arrives: every subscription made before this one has
    reached the server then (PUB/SUB slow joiner; subscriptions travel in order)."""
    async with client.progress(timeout=0.5) as everything:
        for _ in range(100):
            probe = await client.submit({"n": 1})
            assert await probe == 1
            with contextlib.suppress(ZMQTimeoutError):
                async for event in everything:
                    if id_of(event) == probe.execution_id:
                        return
    pytest.fail("the progress subscription never became live")


def test_submit_and_await_the_result(
    serve: Serve, config: ZMQConfig, transport_mode: TransportMode
) -> None:
    server = serve(steps, transport_mode)

    async def scenario() -> None:
        async with client_of(server, config) as client:
            execution = await client.submit({"n": 3}, labels={"plate": "P1"})
            assert isinstance(execution, AsyncExecution)
            assert await execution == 3
            assert await execution.result() == 3 and execution.done()
            confirmed = await client.submit({"n": 2}, execution_id="mine", confirm=True)
            assert confirmed.execution.accepted.done()  # submit returned once it was queued
            assert (confirmed.execution_id, await confirmed) == ("mine", 2)
            results = await asyncio.gather(*[await client.submit({"n": n}) for n in range(1, 6)])
            assert results == [1, 2, 3, 4, 5]

    run(scenario())


def test_a_failed_task_raises_task_failed_with_the_remote_traceback(
    serve: Serve, config: ZMQConfig
) -> None:
    server = serve(steps)

    async def scenario() -> None:
        async with client_of(server, config) as client:
            execution = await client.submit({"fail": "A01"})
            with pytest.raises(TaskFailed) as failed:
                await execution
            assert failed.value.error_type == "ValueError"
            assert failed.value.error_message == "exploded on purpose: A01"
            assert "in steps" in failed.value.remote_traceback
            record = await execution.status()
            assert record.status is ExecutionStatus.FAILED

    run(scenario())


def test_a_result_await_times_out_and_cancel_stops_the_task(
    serve: Serve, config: ZMQConfig
) -> None:
    hold = Hold()
    server = serve(hold)

    async def scenario() -> None:
        async with client_of(server, config) as client:
            execution = await client.submit({})
            assert await asyncio.wrap_future(hold.started) == execution.execution_id
            with pytest.raises(ZMQTimeoutError, match=r"did not finish within 0\.1s"):
                await execution.result(timeout=0.1)
            assert not execution.done()  # the timeout left it running
            waiter = asyncio.ensure_future(execution.result())
            await asyncio.sleep(0)  # one turn of the loop: the waiter awaits the result now
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert not execution.done()  # so did a cancelled await
            assert (await execution.status()).status is ExecutionStatus.RUNNING
            assert await execution.cancel() is True
            with pytest.raises(TaskCancelled):
                await execution
            assert (await client.record(execution.execution_id)).status is (
                ExecutionStatus.CANCELLED
            )
            assert await client.cancel(execution.execution_id) is True  # it is cancelled
            hold.release.set()
            finished = await client.submit({})
            assert await finished == "released"
            assert await finished.cancel() is False  # it had ended

    run(scenario())


def test_status_gives_records_the_summary_and_unknown_ids_fail(
    serve: Serve, config: ZMQConfig
) -> None:
    server = serve(steps)

    async def scenario() -> None:
        async with client_of(server, config) as client:
            execution = await client.submit({"n": 2}, labels={"well": "B03"})
            await execution
            record = await client.status(execution.execution_id)
            assert isinstance(record, ExecutionRecord)
            assert record.status is ExecutionStatus.COMPLETE
            assert record.labels == {"well": "B03"}
            summary = await client.status()
            assert isinstance(summary, ServerSummary)
            with pytest.raises(RemoteError) as unknown:
                await client.status("no-such-id")
            assert unknown.value.code is ErrorCode.NOT_FOUND
            page = await client.list(labels={"well": "B03"}, status=[ExecutionStatus.COMPLETE])
            assert [r.execution_id for r in page.records] == [execution.execution_id]
            assert page.next_after is None

    run(scenario())


def test_application_requests_answer_and_fail_with_the_handler_error(
    serve: Serve, config: ZMQConfig
) -> None:
    def add(payload: Any, _peer: Any) -> Any:
        if payload == "boom":
            raise KeyError("no such layer")
        return sum(payload)

    server = serve(steps, requests={"add": add})

    async def scenario() -> None:
        async with client_of(server, config) as client:
            assert await client.request("add", [1, 2, 39]) == 42
            with pytest.raises(RemoteError) as failed:
                await client.request("add", "boom")
            assert failed.value.error_type == "KeyError"
            assert "in add" in (failed.value.remote_traceback or "")
            with pytest.raises(RemoteError):
                await client.request("no-such-request")
            assert await client.request("add", [1, 1], timeout=5.0) == 2

    run(scenario())


def test_progress_is_an_async_iterator_that_ends_with_the_completion(
    serve: Serve, config: ZMQConfig, transport_mode: TransportMode
) -> None:
    server = serve(steps, transport_mode)

    async def scenario() -> None:
        async with client_of(server, config) as client:
            stream = client.progress("job-1")
            assert isinstance(stream, ProgressStream)
            await go_live(client)
            execution = await client.submit({"n": 25}, execution_id="job-1")
            events = [event async for event in stream]
            assert await execution == 25
        *progress, last = events
        assert all(isinstance(e, ProgressEvent) for e in progress)
        assert [e.sequence for e in progress] == list(range(1, 26))  # type: ignore[union-attr]
        assert [e.fields["step"] for e in progress] == list(range(25))  # type: ignore[union-attr]
        assert isinstance(last, Completion) and last.record.status is ExecutionStatus.COMPLETE
        assert stream.dropped == 0

    run(scenario())


def test_a_stream_ends_soon_after_its_execution_when_no_completion_comes(
    serve: Serve, config: ZMQConfig
) -> None:
    """The server refuses the task (too many labels): no Completion is ever published, and
    the stream ends COMPLETION_GRACE after the refusal instead of waiting out its timeout."""
    server = serve(steps)

    async def scenario() -> None:
        async with client_of(server, config) as client:
            stream = client.progress("refused")
            labels = {f"k{i}": "v" for i in range(MAX_LABELS + 1)}
            execution = await client.submit({"n": 1}, execution_id="refused", labels=labels)
            with pytest.raises(RemoteError):
                await execution
            started = time.monotonic()
            assert [event async for event in stream] == []
            assert time.monotonic() - started < COMPLETION_GRACE + 2.0 < stream.timeout

    run(scenario())


def test_a_reader_that_falls_behind_keeps_only_the_newest_events(
    serve: Serve, config: ZMQConfig
) -> None:
    server = serve(steps)

    async def scenario() -> None:
        async with client_of(server, config, progress_buffer=5) as client:
            stream = client.progress("job-2")
            # Registered after the stream, this callback runs after it on the I/O thread: once
            # it has the Completion, so has the stream (which nobody reads meanwhile).
            completed: concurrent.futures.Future[None] = concurrent.futures.Future()
            client.client.on_progress(
                lambda e: isinstance(e, Completion) and completed.set_result(None), "job-2"
            )
            await go_live(client)
            assert await (await client.submit({"n": 50}, execution_id="job-2")) == 50
            await asyncio.wrap_future(completed)
            assert stream.dropped == 46  # 50 events and the Completion, 5 kept
            events = [event async for event in stream]
        assert [e.sequence for e in events[:-1]] == [47, 48, 49, 50]  # type: ignore[union-attr]
        assert isinstance(events[-1], Completion)

    run(scenario())
    with pytest.raises(ConfigurationError, match="progress_buffer"):
        client_of(server, config, progress_buffer=0)


def test_aclose_fails_pending_work_and_ends_progress_streams(
    serve: Serve, config: ZMQConfig
) -> None:
    hold = Hold()
    server = serve(hold)

    async def collect(stream: ProgressStream) -> list[Any]:
        return [event async for event in stream]

    async def scenario() -> None:
        async with client_of(server, config) as client:
            watching = asyncio.create_task(collect(client.progress()))
            execution = await client.submit({})
            await asyncio.wrap_future(hold.started)
            waiting = asyncio.ensure_future(execution.result())
            await client.aclose()
            with pytest.raises(ChannelClosed, match="closed"):
                await waiting
            assert await watching == []  # ended, not hung
            with pytest.raises(ChannelClosed):
                await execution
        # leaving the block closed it again: idempotent

    try:
        run(scenario())
    finally:
        hold.release.set()
