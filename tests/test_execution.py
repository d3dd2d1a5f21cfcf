"""ExecutionServer / ExecutionClient over real sockets, real worker processes, real subprocesses.

TCP on 127.0.0.1 and IPC socket files under ``tmp_path``. Nothing sleeps: tests wait on
futures, events and conditions, each with a deadline. Executors that must run in another
process live in :mod:`tests.executors`; thread-mode tests also use local callables that let
the test open a gate or see which tasks ran.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

from tests import broken_worker_module, executors
from tests.conftest import authenticate, split_endpoint
from tests.strategies import garbage_frames, hostile_frames, image_dtypes, json_values
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import (
    Accepted,
    Completion,
    ErrorReply,
    Execute,
    Message,
    Pong,
    ProgressEvent,
    Shutdown,
)
from zmqruntime.core.serializers import PickleSerializer, SafeSerializer
from zmqruntime.core.subscriptions import MAX_FILTER_BYTES, MAX_FILTERS, SubscriberTopics
from zmqruntime.core.transport import find_free_ipc_port, find_free_port_pair
from zmqruntime.errors import (
    ChannelClosed,
    ErrorCode,
    RemoteError,
    RemoteProtocolError,
    ServerLost,
    TaskCancelled,
    TaskFailed,
)
from zmqruntime.execution import (
    Execution,
    ExecutionClient,
    ExecutionRecord,
    ExecutionServer,
    ExecutionStatus,
    RetentionPolicy,
    ServerSummary,
    ThreadWorkers,
    WorkerPool,
)
from zmqruntime.protocols import TaskContext

pytestmark = pytest.mark.usefixtures("no_thread_leak")

posix_only = pytest.mark.skipif(os.name == "nt", reason="signals and IPC need POSIX")

WAIT = 20.0
"""Generous deadline for things that normally take milliseconds."""
REPO_ROOT = Path(__file__).resolve().parent.parent
TCP = TransportMode.TCP

ServeFactory = Callable[..., ExecutionServer]
ConnectFactory = Callable[..., ExecutionClient]


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def serve(config: ZMQConfig, no_thread_leak: None) -> Iterator[ServeFactory]:
    """``serve(executor, mode=TCP, **fields)``: a started ExecutionServer on a free port."""
    servers: list[ExecutionServer] = []

    def factory(executor: Any, mode: TransportMode = TCP, **fields: Any) -> ExecutionServer:
        fields.setdefault("config", config)
        endpoint, rest = split_endpoint(fields, 0, mode)
        server = ExecutionServer.bind(endpoint, executor, **rest)
        servers.append(server)
        return server.start()

    yield factory
    errors: list[BaseException] = []
    for server in reversed(servers):
        try:
            server.close()
        except BaseException as exc:  # close every one, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def connect(config: ZMQConfig, serve: ServeFactory) -> Iterator[ConnectFactory]:
    """``connect(server_or_port, mode=None, **fields)``: a connected ExecutionClient.

    Closed at teardown, before the servers (this fixture depends on ``serve``).
    """
    clients: list[ExecutionClient] = []

    def factory(
        target: ExecutionServer | int, mode: TransportMode | None = None, **fields: Any
    ) -> ExecutionClient:
        if isinstance(target, ExecutionServer):
            port = target.port_number
            mode = target.server.sockets.mode if mode is None else mode
        else:
            port = target
        fields.setdefault("config", config)
        endpoint, rest = split_endpoint(fields, port, mode)
        client = ExecutionClient.to(endpoint, **rest)
        clients.append(client)
        return client.connect()

    yield factory
    errors: list[BaseException] = []
    for client in reversed(clients):
        try:
            client.close()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` in short bounded waits until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.01)


def record_of(client: ExecutionClient, execution_id: str) -> ExecutionRecord:
    record = client.status(execution_id)
    assert isinstance(record, ExecutionRecord)
    return record


def summary_of(client: ExecutionClient) -> ServerSummary:
    summary = client.status()
    assert isinstance(summary, ServerSummary)
    return summary


def reported_pid(client: ExecutionClient, execution_id: str) -> int:
    """Wait until the task has reported its process id as progress, and return it."""
    found: list[int] = []

    def has_pid() -> bool:
        progress = record_of(client, execution_id).progress
        if progress is not None and "pid" in progress.fields:
            found.append(int(progress.fields["pid"]))  # type: ignore[arg-type]
            return True
        return False

    wait_until(has_pid, f"execution {execution_id} to report its pid")
    return found[0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def error_of(execution: Execution, timeout: float = WAIT) -> BaseException:
    error = execution.exception(timeout)
    assert error is not None, f"execution {execution.execution_id} succeeded unexpectedly"
    return error


class Gate:
    """A thread-mode executor whose tasks may wait (cooperatively) for the test to open it.

    Task shape: ``{"value": v, "block": bool, "fail": bool}`` → returns ``v``. Remembers which
    executions started, in order, and how often each one ran.
    """

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.ran: collections.Counter[str] = collections.Counter()
        self.order: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, task: Any, ctx: TaskContext) -> Any:
        with self._changed:
            self.ran[ctx.execution_id] += 1
            self.order.append(ctx.execution_id)
            self._changed.notify_all()
        if task.get("block"):
            deadline = time.monotonic() + WAIT
            while not self.opened.wait(0.01):
                ctx.raise_if_cancelled()
                if time.monotonic() > deadline:
                    raise TimeoutError("the gate was never opened")
        if task.get("fail"):
            raise RuntimeError(f"failed on purpose: {task.get('value')!r}")
        return task.get("value")

    def wait_started(self, execution_id: str, timeout: float = WAIT) -> None:
        with self._changed:
            started = self._changed.wait_for(lambda: execution_id in self.ran, timeout)
        assert started, f"execution {execution_id} never started"


# --- the README tour ------------------------------------------------------------------------


def test_readme_usage(
    config: ZMQConfig, transport_mode: TransportMode, no_thread_leak: None
) -> None:
    before = time.time()
    with (
        ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=transport_mode, config=config), executors.answer
        ) as server,
        ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=transport_mode, config=config)
        ) as client,
    ):
        ex = client.submit({"x": 21}, labels={"plate": "A1"})
        assert ex.result(timeout=WAIT) == {"answer": 42}
        assert ex.done()
        # Unconfirmed, the outcome is the server's only answer, and it implies acceptance.
        answered = ex.accepted.result(WAIT)
        assert isinstance(answered, Completion)
        assert answered.record.execution_id == ex.execution_id

        confirmed = client.submit({"x": 1}, confirm=True)
        accepted = confirmed.accepted.result(WAIT)
        assert isinstance(accepted, Accepted)
        assert (accepted.execution_id, accepted.duplicate) == (confirmed.execution_id, False)
        assert confirmed.result(timeout=WAIT) == {"answer": 2}

        rec = client.status(ex.execution_id)
        assert isinstance(rec, ExecutionRecord)
        assert rec.execution_id == ex.execution_id
        assert rec.status is ExecutionStatus.COMPLETE
        assert rec.labels == {"plate": "A1"}
        assert rec.started_at is not None and rec.finished_at is not None
        assert before <= rec.submitted_at <= rec.started_at <= rec.finished_at <= time.time()
        assert rec.progress is not None
        assert rec.progress.execution_id == ex.execution_id
        assert rec.progress.sequence == 10
        assert rec.progress.fraction == 1.0
        assert rec.progress.message == "step 9"
        assert rec.progress.fields == {"step": 9}
        assert (rec.error_type, rec.error_message, rec.traceback) == (None, None, None)
        assert ex.status() == rec

        summary = summary_of(client)
        assert (summary.queued, summary.running, summary.workers) == (0, 0, 1)
        assert summary.counts["complete"] == 2
        assert summary.uptime > 0
        pong = client.ping()
        assert isinstance(pong, Pong)
        assert pong.pid == os.getpid()
        assert "execute" in pong.capabilities
    assert not serving(server)


def test_the_executor_runs_on_a_worker_thread_not_the_io_thread(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    client = connect(serve(executors.dispatch))
    name = client.submit({"op": "thread"}).result(WAIT)
    assert name.startswith("zmqruntime-worker")


# --- round trips ----------------------------------------------------------------------------


def assert_same(got: Any, want: Any, path: str = "result") -> None:
    """``got`` is ``want`` after a SafeSerializer round trip, bit for bit."""
    if isinstance(want, numpy.ndarray):
        assert isinstance(got, numpy.ndarray), path
        assert got.dtype.str == want.dtype.str, (path, got.dtype, want.dtype)
        assert got.shape == want.shape, path
        assert got.tobytes() == want.tobytes(), path
    elif isinstance(want, numpy.generic):
        assert type(got) is type(want), path
        assert got.tobytes() == want.tobytes(), path
    elif isinstance(want, (list, tuple)):
        assert type(got) is list, path
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert type(got) is dict, path
        assert list(got) == list(want), path
        for key, value in want.items():
            assert_same(got[key], value, f"{path}[{key!r}]")
    elif isinstance(want, float):
        assert type(got) is float, path
        if math.isnan(want):
            assert math.isnan(got), path
        else:
            assert struct.pack("<d", got) == struct.pack("<d", want), (path, got, want)
    elif isinstance(want, (bytes, bytearray, memoryview)):
        assert type(got) is bytes, path
        assert got == bytes(want), path
    else:
        assert type(got) is type(want), (path, got, want)
        assert got == want, path


def _shapes() -> list[Any]:
    rng = numpy.random.default_rng(20240601)
    grid = numpy.arange(48, dtype=numpy.float64).reshape(6, 8)
    arrays: list[Any] = [
        (numpy.arange(12) % 7).astype(dtype).reshape(3, 4)
        for dtype in (
            numpy.uint8,
            numpy.int8,
            numpy.uint16,
            numpy.int32,
            numpy.int64,
            numpy.uint64,
            numpy.float16,
            numpy.float32,
            numpy.float64,
            numpy.complex64,
            numpy.complex128,
            numpy.bool_,
        )
    ]
    arrays += [
        numpy.array(3.5),  # 0-d
        numpy.zeros((0, 5), dtype=numpy.int16),  # empty
        grid[:, ::2],  # non-contiguous
        grid.T,  # Fortran order
        grid[::-1, 1:7:3],  # negative strides
        numpy.arange(10, dtype=">f8"),  # big-endian
        numpy.arange(24, dtype=">i4").reshape(2, 3, 4)[:, ::-1],  # big-endian, strided
        numpy.array([math.nan, -math.inf, -0.0, 5e-324], dtype="<f8"),
        rng.integers(0, 256, size=(1024, 1024), dtype=numpy.uint8),  # 1 MiB
        numpy.float32(1.25),
        numpy.int64(-(2**62)),
    ]
    return [
        None,
        True,
        False,
        0,
        -1,
        2**100,
        -(2**70),
        1.5,
        -0.0,
        math.inf,
        math.nan,
        "",
        "ünïcødé ✓ \x00 \u2028",
        [],
        {},
        [1, "two", 3.0, None, True, [], {}],
        {"nested": {"deeper": [{"a": [None, 2.5, "x"]}, [[[]]]]}, "$zr": "not a tag"},
        b"",
        b"\x00\xff" * 1000,
        bytearray(b"mutable"),
        *arrays,
        {"image": arrays[8], "meta": {"plate": "A1", "z": [0.5, 1.0]}, "raw": b"\x01\x02"},
        [arrays[-5], arrays[-5]],  # one array referenced twice
    ]


def test_round_trips_are_bit_exact(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    client = connect(serve(executors.echo, transport_mode))
    shapes = _shapes()
    executions = [client.submit(shape) for shape in shapes]  # pipelined
    for i, (execution, shape) in enumerate(zip(executions, shapes, strict=True)):
        assert_same(execution.result(WAIT), shape, f"shape {i}")


def test_random_round_trips_are_bit_exact(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    client = connect(serve(executors.echo, transport_mode))
    arrays = npst.arrays(
        image_dtypes(), npst.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
    )
    trees = st.recursive(
        json_values(6) | arrays | st.binary(max_size=64),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=8,
    )

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(task=trees)
    def round_trip(task: Any) -> None:
        assert_same(client.submit(task).result(WAIT), task)

    round_trip()


# --- progress -------------------------------------------------------------------------------


class Collector:
    """A progress callback that keeps what it gets and lets the test wait for it."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent | Completion] = []
        self._changed = threading.Condition()

    def __call__(self, event: ProgressEvent | Completion) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def of(self, execution_id: str) -> list[ProgressEvent]:
        with self._changed:
            return [
                e
                for e in self.events
                if isinstance(e, ProgressEvent) and e.execution_id == execution_id
            ]

    def wait_for(self, execution_id: str, count: int, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.of(execution_id)) >= count, timeout)


def steps(task: Any, ctx: TaskContext) -> int:
    n = task["n"]
    for i in range(n):
        ctx.report_progress(
            (i + 1) / n,
            f"step {i}",
            step=i,
            info={"even": i % 2 == 0, "items": [i, "x", None, 1.5]},
        )
    return int(n)


def subscribe_live(client: ExecutionClient, collector: Collector) -> None:
    """Subscribe to all progress and make sure the subscription has reached the server
    (PUB/SUB slow joiner): submit probe tasks until one's progress arrives."""
    client.on_progress(collector)
    deadline = time.monotonic() + WAIT
    while True:
        probe = client.submit({"n": 1})
        probe.result(WAIT)
        if collector.wait_for(probe.execution_id, 1, timeout=0.5):
            return
        if time.monotonic() > deadline:
            pytest.fail("the progress subscription never became live")


def test_progress_events_arrive_in_order_with_their_fields(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    client = connect(serve(steps, transport_mode))
    collector = Collector()
    subscribe_live(client, collector)

    ex = client.submit({"n": 25})
    assert ex.result(WAIT) == 25
    assert collector.wait_for(ex.execution_id, 25), collector.of(ex.execution_id)
    events = collector.of(ex.execution_id)
    assert [e.sequence for e in events] == list(range(1, 26))
    assert [e.fraction for e in events] == [(i + 1) / 25 for i in range(25)]
    assert [e.message for e in events] == [f"step {i}" for i in range(25)]
    for i, event in enumerate(events):
        assert event.fields == {
            "step": i,
            "info": {"even": i % 2 == 0, "items": [i, "x", None, 1.5]},
        }
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    assert record_of(client, ex.execution_id).progress == events[-1]


def test_progress_subscriptions_filter_by_id_and_stop_when_closed(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    client = connect(serve(steps, transport_mode))
    everything = Collector()
    subscribe_live(client, everything)
    only_wanted = Collector()
    closed = Collector()
    client.on_progress(only_wanted, execution_id="wanted")
    client.on_progress(closed).close()

    other = client.submit({"n": 3}, execution_id="other")
    wanted = client.submit({"n": 4}, execution_id="wanted")
    assert (other.result(WAIT), wanted.result(WAIT)) == (3, 4)
    assert everything.wait_for("other", 3) and everything.wait_for("wanted", 4)
    # ``everything`` saw both, and callbacks run in order on one thread: the others had their turn
    assert [e.sequence for e in only_wanted.of("wanted")] == [1, 2, 3, 4]
    assert only_wanted.of("other") == []
    assert closed.events == []


def test_the_server_knows_which_progress_topics_anybody_subscribes_to(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    """Unobserved progress is never encoded: the XPUB hears every (un)subscription."""
    server = serve(steps, transport_mode)
    watched = server.server.has_subscribers
    client = connect(server)
    assert not watched("job-1")
    one = client.on_progress(Collector(), execution_id="job-1")
    wait_until(lambda: watched("job-1"), "the subscription to reach the server")
    assert not watched("job-2")
    assert client.submit({"n": 2}, execution_id="job-2").result(WAIT) == 2  # runs unobserved
    everything = client.on_progress(Collector())
    wait_until(lambda: watched("job-2"), "the catch-all subscription")
    one.close()
    everything.close()
    wait_until(lambda: not watched("job-1"), "the unsubscriptions")
    again = client.on_progress(Collector(), execution_id="job-3")
    wait_until(lambda: watched("job-3"), "a new subscription")
    client.close()  # a subscriber that leaves takes its filters with it
    wait_until(lambda: not watched("job-3"), "the departed subscriber's filters to go")
    again.close()


def test_subscriber_topics_match_by_prefix_like_zmq() -> None:
    topics = SubscriberTopics()
    assert not topics.note(b"") and not topics.note(b"\x02abc")  # not notices: ignored
    assert not topics.wanted(b"abc")
    assert topics.note(b"\x01ab")
    assert topics.wanted(b"abc") and topics.wanted(b"ab") and not topics.wanted(b"a")
    topics.note(b"\x01")
    assert topics.wanted(b"zzz") and topics.filters == {b"", b"ab"}
    topics.note(b"\x00")
    topics.note(b"\x00ab")
    topics.note(b"\x00never-subscribed")
    assert topics.filters == frozenset() and not topics.wanted(b"abc")


@pytest.mark.parametrize("confirm", [False, True])
def test_closing_the_client_fails_waiting_executions_with_channel_closed(
    serve: ServeFactory, connect: ConnectFactory, confirm: bool
) -> None:
    """Closed here, so ChannelClosed, whether the server had confirmed the task or not; never
    ServerLost, which says the server went."""
    gate = Gate()
    server = serve(gate)
    client = connect(server)
    execution = client.submit({"value": 1, "block": True}, confirm=confirm)
    gate.wait_started(execution.execution_id)
    if confirm:
        execution.accepted.result(WAIT)
    client.close()
    with pytest.raises(ChannelClosed, match="closed"):
        execution.result(WAIT)
    gate.opened.set()


def test_subscriber_topics_past_their_bounds_want_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer that subscribes to ever more topics costs the server no more memory: past the
    bounds every topic is wanted (published), and later notices change nothing."""
    topics = SubscriberTopics()
    for number in range(MAX_FILTERS):
        topics.note(b"\x01topic-%d" % number)
    assert topics.wanted(b"topic-7") and not topics.wanted(b"other") and not topics.overflowed
    topics.note(b"\x01one-too-many")
    assert topics.overflowed and topics.wanted(b"other") and topics.filters == frozenset()
    assert "every event is published" in caplog.text
    topics.note(b"\x00topic-7")
    assert topics.wanted(b"topic-7") and topics.filters == frozenset()

    by_bytes = SubscriberTopics()
    by_bytes.note(b"\x01" + b"a" * (MAX_FILTER_BYTES - 1))
    assert not by_bytes.overflowed
    by_bytes.note(b"\x01" + b"bc")  # one byte over
    assert by_bytes.overflowed and by_bytes.wanted(b"zzz")

    churn = SubscriberTopics()  # unsubscribed filters give their room back
    for number in range(3 * MAX_FILTERS):
        churn.note(b"\x01t%d" % number)
        churn.note(b"\x00t%d" % number)
    assert not churn.overflowed and not churn.wanted(b"t1")


def test_non_json_progress_raises_in_the_executor_and_fails_the_task(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    client = connect(serve(executors.dispatch))
    expected = {
        "set": "TypeError",
        "int64": "TypeError",
        "object": "TypeError",
        "bytes": "TypeError",
        "nested-set": "TypeError",
        "nan-field": "TypeError",
        "nan-fraction": "ValueError",
        "string-fraction": "TypeError",
        "bytes-message": "TypeError",
    }
    runs = {kind: client.submit({"op": "bad_progress", "kind": kind}) for kind in expected}
    for kind, execution in runs.items():
        error = error_of(execution)
        assert isinstance(error, TaskFailed), (kind, error)
        assert error.error_type == expected[kind], (kind, error)
        assert "report_progress" in error.remote_traceback, kind
        record = record_of(client, execution.execution_id)
        assert record.status is ExecutionStatus.FAILED
        assert record.progress is None  # nothing bad was kept or published
    # the server keeps serving
    assert client.submit({"op": "echo", "value": "fine"}).result(WAIT) == "fine"
    assert isinstance(client.ping(), Pong)


def test_non_json_progress_can_be_caught_by_the_executor(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    def careful(_task: Any, ctx: TaskContext) -> str:
        try:
            ctx.report_progress(0.5, "bad", tags={"a"})  # type: ignore[arg-type]
        except TypeError as exc:
            ctx.report_progress(1.0, "good", error=str(exc))
            return "caught"
        return "not raised"

    client = connect(serve(careful))
    ex = client.submit(None)
    assert ex.result(WAIT) == "caught"
    progress = record_of(client, ex.execution_id).progress
    assert progress is not None
    assert (progress.sequence, progress.message) == (1, "good")
    assert "set" in str(progress.fields["error"])


# --- failures -------------------------------------------------------------------------------


def check_failure(client: ExecutionClient, execution: Execution) -> TaskFailed:
    error = error_of(execution)
    assert isinstance(error, TaskFailed)
    assert error.execution_id == execution.execution_id
    assert error.error_type == "ValueError"
    assert "exploded on purpose" in error.error_message
    assert "explode_on_purpose" in error.remote_traceback
    assert "Traceback (most recent call last)" in error.remote_traceback
    with pytest.raises(TaskFailed):
        execution.result(WAIT)
    assert execution.cancel() is False  # it has ended
    record = record_of(client, execution.execution_id)
    assert record.status is ExecutionStatus.FAILED
    assert (record.error_type, record.error_message, record.traceback) == (
        error.error_type,
        error.error_message,
        error.remote_traceback,
    )
    return error


def test_failure_carries_the_remote_traceback(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    client = connect(serve(executors.dispatch, transport_mode))
    check_failure(client, client.submit({"op": "fail"}))
    assert client.submit({"op": "echo", "value": 7}).result(WAIT) == 7


def test_failure_in_a_process_worker_carries_the_remote_traceback(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    server = serve(executors.dispatch, pool=WorkerPool.processes(1))
    client = connect(server)
    error = check_failure(client, client.submit({"op": "fail"}))
    assert "tests/executors.py" in error.remote_traceback.replace(os.sep, "/")
    worker = client.submit({"op": "pid"}).result(WAIT)
    assert worker != os.getpid()
    (slot,) = server.pool.statistics().workers
    assert (slot.pid, slot.replaced) == (worker, 0)  # a failure is not a dead worker


# --- cancellation ---------------------------------------------------------------------------


def test_cancel_a_queued_task(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    gate = Gate()
    client = connect(serve(gate, transport_mode))
    blocker = client.submit({"block": True, "value": "first"})
    gate.wait_started(blocker.execution_id)
    queued = client.submit({"value": "never"})
    assert record_of(client, queued.execution_id).status is ExecutionStatus.QUEUED

    assert client.cancel(queued.execution_id) is True
    assert isinstance(error_of(queued), TaskCancelled)
    with pytest.raises(TaskCancelled):
        queued.result(WAIT)
    record = record_of(client, queued.execution_id)
    assert record.status is ExecutionStatus.CANCELLED
    assert record.started_at is None and record.finished_at is not None

    gate.opened.set()
    assert blocker.result(WAIT) == "first"
    assert client.submit({"value": "after"}).result(WAIT) == "after"
    assert queued.execution_id not in gate.ran
    # cancelling what has ended changes nothing; like Future.cancel, a cancelled one says True
    assert queued.cancel() is True
    assert client.cancel(blocker.execution_id) is False
    assert record_of(client, queued.execution_id) == record
    assert record_of(client, blocker.execution_id).status is ExecutionStatus.COMPLETE
    with pytest.raises(RemoteError) as info:
        client.cancel("no-such-execution")
    assert info.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(RemoteError) as info:
        client.status("no-such-execution")
    assert info.value.code is ErrorCode.NOT_FOUND


def test_cancel_a_running_cooperative_task_and_the_next_starts_promptly(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    client = connect(serve(executors.dispatch, transport_mode))
    running = client.submit({"op": "wait"})
    reported_pid(client, running.execution_id)  # it runs
    following = client.submit({"op": "echo", "value": "next"})
    assert record_of(client, following.execution_id).status is ExecutionStatus.QUEUED

    began = time.monotonic()
    assert running.cancel() is True
    assert isinstance(error_of(running), TaskCancelled)
    assert following.result(WAIT) == "next"
    assert time.monotonic() - began < 5.0  # the cancel, not the task's own 60 s limit, ended it
    stopped = record_of(client, running.execution_id)
    assert stopped.status is ExecutionStatus.CANCELLED
    assert stopped.started_at is not None and stopped.finished_at is not None
    nxt = record_of(client, following.execution_id)
    assert nxt.started_at is not None and nxt.started_at >= stopped.finished_at - 0.001


def test_cancel_a_process_task_that_ignores_it_kills_its_worker(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    server = serve(executors.dispatch, pool=WorkerPool.processes(1))
    client = connect(server)
    stubborn = client.submit({"op": "ignore"})
    pid = reported_pid(client, stubborn.execution_id)
    assert pid != os.getpid()
    assert [w.pid for w in server.pool.statistics().workers] == [pid]
    following = client.submit({"op": "pid"})

    began = time.monotonic()
    assert client.cancel(stubborn.execution_id) is True
    assert isinstance(error_of(stubborn), TaskCancelled)
    assert not pid_alive(pid), "the worker process still runs"
    replacement = following.result(WAIT)
    assert time.monotonic() - began < 10.0  # a fresh worker took over promptly
    assert replacement != pid
    (slot,) = server.pool.statistics().workers
    assert (slot.pid, slot.replaced) == (replacement, 1)
    assert record_of(client, stubborn.execution_id).status is ExecutionStatus.CANCELLED
    assert record_of(client, following.execution_id).status is ExecutionStatus.COMPLETE


class HeldExecutor(concurrent.futures.Executor):
    """An injected executor that holds every job until the test runs it (in its own thread).

    Lets a test cancel a job after the pool handed it to a worker but before it started.
    """

    def __init__(self) -> None:
        self.held: list[Callable[[], object]] = []
        self.arrived = threading.Event()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.held.append(lambda: fn(*args, **kwargs))
        self.arrived.set()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        return future

    def run_held(self) -> None:
        held, self.held = self.held, []
        for job in held:
            job()


def test_a_task_cancelled_between_dispatch_and_start_never_runs(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    gate = Gate()
    held = HeldExecutor()
    client = connect(serve(gate, pool=WorkerPool.from_executor(held, max_workers=1)))
    doomed = client.submit({"value": "doomed"})
    assert held.arrived.wait(WAIT)  # handed to the "worker", which has not started it
    assert record_of(client, doomed.execution_id).status is ExecutionStatus.QUEUED

    assert client.cancel(doomed.execution_id) is True
    held.run_held()
    assert isinstance(error_of(doomed), TaskCancelled)
    assert doomed.execution_id not in gate.ran
    record = record_of(client, doomed.execution_id)
    assert record.status is ExecutionStatus.CANCELLED and record.started_at is None
    nxt = client.submit({"value": "next"})
    wait_until(lambda: bool(held.held), "the next job to reach the executor")
    held.run_held()
    assert nxt.result(WAIT) == "next"


@posix_only
def test_a_worker_killed_from_outside_fails_its_task_and_is_replaced(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    server = serve(executors.dispatch, pool=WorkerPool.processes(1))
    client = connect(server)
    victim = client.submit({"op": "ignore"})
    pid = reported_pid(client, victim.execution_id)
    os.kill(pid, signal.SIGKILL)

    error = error_of(victim)
    assert isinstance(error, TaskFailed)
    assert error.error_type == "WorkerDied"
    assert str(pid) in error.error_message
    assert record_of(client, victim.execution_id).status is ExecutionStatus.FAILED
    assert not pid_alive(pid)
    replacement = client.submit({"op": "pid"}).result(WAIT)
    assert replacement not in (pid, os.getpid())
    assert server.pool.statistics().workers[0].replaced == 1
    assert client.submit({"op": "echo", "value": [1, 2]}).result(WAIT) == [1, 2]


# --- many clients, random cancels, idempotent resubmission --------------------------------


def test_four_clients_with_random_cancels_lose_nothing_and_run_nothing_twice(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    ran: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def work(task: Any, ctx: TaskContext) -> dict[str, int]:
        with lock:
            ran[ctx.execution_id] += 1
        if task["kind"] == "fail":
            raise RuntimeError(f"failing {task['i']} on purpose")
        if task["kind"] == "slow":  # a few ms, long enough for a cancel to catch it running
            pause = threading.Event()
            for _ in range(5):
                ctx.raise_if_cancelled()
                pause.wait(0.001)
        return {"i": task["i"], "double": 2 * task["i"]}

    server = serve(work, transport_mode, pool=WorkerPool.threads(2))
    clients = [connect(server) for _ in range(4)]
    retriers = [connect(server) for _ in range(4)]  # resubmit some ids, as after a timeout
    per_client = 500
    Submitted = list[tuple[Execution, str, int]]

    def drive(c: int) -> tuple[Submitted, dict[str, bool], list[tuple[Execution, Execution]]]:
        rng = random.Random(1000 + c)
        client = clients[c]
        submitted: Submitted = []
        cancels: dict[str, bool] = {}
        retries: list[tuple[Execution, Execution]] = []
        for i in range(per_client):
            kind = rng.choices(["ok", "fail", "slow"], weights=[75, 10, 15])[0]
            execution = client.submit({"i": i, "kind": kind}, execution_id=f"c{c}-{i}")
            submitted.append((execution, kind, i))
            if rng.random() < 0.15:
                target = rng.choice(submitted[-30:])[0]
                if target.execution_id not in cancels:
                    cancels[target.execution_id] = client.cancel(target.execution_id)
            if rng.random() < 0.1:
                original, kind, j = rng.choice(submitted[-10:])
                again = retriers[c].submit(
                    {"i": j, "kind": kind}, execution_id=original.execution_id
                )
                retries.append((original, again))
        return submitted, cancels, retries

    with concurrent.futures.ThreadPoolExecutor(4) as drivers:
        outcomes = list(drivers.map(drive, range(4)))

    everything = [item for submitted, _c, _r in outcomes for item in submitted]
    cancels = {k: v for _s, c, _r in outcomes for k, v in c.items()}
    retries = [pair for _s, _c, r in outcomes for pair in r]
    futures = [e.future for e, _k, _i in everything] + [again.future for _o, again in retries]
    _done, pending = concurrent.futures.wait(futures, timeout=60)
    assert not pending, f"{len(pending)} executions never ended"
    assert len(everything) == 4 * per_client
    assert len(retries) > 50
    for original, again in retries:  # a retry gets the outcome of the one run
        first, second = original.future.exception(), again.future.exception()
        assert type(first) is type(second), (original.execution_id, first, second)
        if first is None:
            assert again.future.result() == original.future.result()

    tally: collections.Counter[str] = collections.Counter()
    for execution, kind, i in everything:
        eid = execution.execution_id
        error = execution.future.exception()
        record = server.record(eid)
        assert record is not None, eid
        assert record.status.is_terminal, (eid, record.status)
        assert ran[eid] <= 1, f"{eid} ran {ran[eid]} times"
        if eid not in cancels:
            assert ran[eid] == 1, f"{eid} was never cancelled but ran {ran[eid]} times"
        if error is None:
            assert execution.future.result() == {"i": i, "double": 2 * i}, eid
            assert kind != "fail" and record.status is ExecutionStatus.COMPLETE, eid
            assert ran[eid] == 1, eid
            tally["complete"] += 1
        elif isinstance(error, TaskFailed):
            assert kind == "fail" and error.error_type == "RuntimeError", (eid, error)
            assert f"failing {i} on purpose" in error.error_message
            assert record.status is ExecutionStatus.FAILED and ran[eid] == 1, eid
            tally["failed"] += 1
        elif isinstance(error, TaskCancelled):
            assert cancels.get(eid) is True, f"{eid} cancelled without (a successful) cancel"
            assert record.status is ExecutionStatus.CANCELLED, eid
            tally["cancelled"] += 1
        else:
            pytest.fail(f"{eid} ended with {error!r}")
        if eid in cancels and not cancels[eid]:  # the cancel came after the end
            assert not isinstance(error, TaskCancelled), eid
        if eid in cancels and cancels[eid] and eid not in ran:
            assert isinstance(error, TaskCancelled), eid  # dropped from the queue
    assert set(ran) <= {e.execution_id for e, _k, _i in everything}
    assert tally["cancelled"] > 0 and tally["failed"] > 0 and tally["complete"] > 0, tally
    summary = summary_of(clients[0])
    assert (summary.queued, summary.running) == (0, 0)
    assert summary.counts["complete"] == tally["complete"]
    assert summary.counts["failed"] == tally["failed"]
    assert summary.counts["cancelled"] == tally["cancelled"]


def test_resubmitting_an_execution_id_never_runs_it_twice(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    gate = Gate()
    server = serve(gate, transport_mode)
    first, second, late = connect(server), connect(server), connect(server)

    task = {"block": True, "value": "original"}
    original = first.submit(task, execution_id="same")
    gate.wait_started("same")
    again = first.submit(task, execution_id="same")  # same client, still waiting
    assert again is original
    other = second.submit(task, execution_id="same", confirm=True)  # another client
    duplicate = other.accepted.result(WAIT)
    assert isinstance(duplicate, Accepted)
    assert duplicate.duplicate and duplicate.status is ExecutionStatus.RUNNING

    gate.opened.set()
    assert original.result(WAIT) == "original"
    assert other.result(WAIT) == "original"
    # after completion: from the same client and from a newcomer
    after = first.submit(task, execution_id="same")
    assert after is not original
    assert after.result(WAIT) == "original"
    newcomer = late.submit(task, execution_id="same", confirm=True)
    assert newcomer.result(WAIT) == "original"
    accepted = newcomer.accepted.result(WAIT)
    assert isinstance(accepted, Accepted)
    assert accepted.duplicate and accepted.status is ExecutionStatus.COMPLETE
    assert gate.ran["same"] == 1

    # failures and cancellations are replayed, not rerun
    failing = first.submit({"fail": True, "value": 1}, execution_id="fails")
    assert isinstance(error_of(failing), TaskFailed)
    assert isinstance(
        error_of(second.submit({"fail": True, "value": 1}, execution_id="fails")), TaskFailed
    )
    gate.opened.clear()
    blocker = first.submit({"block": True, "value": 2})
    gate.wait_started(blocker.execution_id)
    doomed = first.submit({"value": 3}, execution_id="doomed")
    assert doomed.cancel() is True
    assert isinstance(error_of(doomed), TaskCancelled)
    assert isinstance(error_of(second.submit({"value": 3}, execution_id="doomed")), TaskCancelled)
    gate.opened.set()
    assert blocker.result(WAIT) == 2
    assert gate.ran["fails"] == 1 and "doomed" not in gate.ran
    assert sum(1 for eid in gate.order if eid == "same") == 1


def test_resubmitting_an_execution_id_with_another_task_is_refused(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    server = serve(executors.echo)
    first, second = connect(server), connect(server)
    big = numpy.arange(100_000, dtype=numpy.int64)  # 800 KB: sampled, not hashed whole
    assert first.submit({"n": 1}, execution_id="mine").result(WAIT) == {"n": 1}
    assert second.submit({"n": 1}, execution_id="mine").result(WAIT) == {"n": 1}  # the same
    with pytest.raises(RemoteError, match="submitted with another task") as refused:
        second.submit({"n": 2}, execution_id="mine").result(WAIT)
    assert refused.value.code is ErrorCode.REFUSED
    assert numpy.array_equal(first.submit(big, execution_id="big").result(WAIT), big)
    changed = big.copy()
    changed[-1] = -1  # the last bytes are among those sampled
    with pytest.raises(RemoteError, match="submitted with another task"):
        second.submit(changed, execution_id="big").result(WAIT)
    assert numpy.array_equal(second.submit(big, execution_id="big").result(WAIT), big)


# --- a server in another process ------------------------------------------------------------

SERVER_SCRIPT = """
import sys
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.execution import ExecutionServer
from tests.conftest import split_endpoint
from zmqruntime.core.endpoint import Endpoint
from tests.executors import dispatch

port, mode, root = int(sys.argv[1]), TransportMode(sys.argv[2]), sys.argv[3]
config = ZMQConfig(
    ipc_root=root,
    heartbeat_interval=0.2,
    heartbeat_timeout=1.0,
    close_timeout=5.0,
    linger=0.5,
)
endpoint = Endpoint.of(port, transport_mode=mode, config=config)
ExecutionServer.bind(endpoint, dispatch).serve_forever()
"""


class ServerProcesses:
    """Starts execution-server subprocesses and kills whatever is left at teardown."""

    def __init__(self, tmp_path: Path, config: ZMQConfig) -> None:
        self.tmp_path, self.config = tmp_path, config
        self.started: list[subprocess.Popen[bytes]] = []

    def free_port(self, mode: TransportMode) -> int:
        if mode is TransportMode.IPC:
            return find_free_ipc_port(self.config)
        return find_free_port_pair(self.config)

    def start(self, port: int, mode: TransportMode) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        log = (self.tmp_path / f"server-{len(self.started)}.log").open("wb")
        with log:
            process = subprocess.Popen(
                [sys.executable, "-c", SERVER_SCRIPT, str(port), mode.value, str(self.tmp_path)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        return process

    def wait_ready(self, client: ExecutionClient, process: subprocess.Popen[bytes]) -> Pong:
        deadline = time.monotonic() + WAIT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server process exited with {process.returncode}: {self.logs()}")
            try:
                pong = client.ping(timeout=0.5)
            except (TimeoutError, ServerLost):
                if time.monotonic() > deadline:
                    pytest.fail(f"the server process never answered: {self.logs()}")
                continue
            assert pong.pid == process.pid
            return pong

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.tmp_path.glob("server-*.log"))

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(WAIT)


@pytest.fixture
def server_processes(tmp_path: Path, config: ZMQConfig) -> Iterator[ServerProcesses]:
    processes = ServerProcesses(tmp_path, config)
    try:
        yield processes
    finally:
        processes.cleanup()


def wait_running(client: ExecutionClient, execution: Execution) -> None:
    reported_pid(client, execution.execution_id)


@posix_only
def test_a_killed_server_process_fails_waiting_executions_with_server_lost(
    server_processes: ServerProcesses,
    connect: ConnectFactory,
    config: ZMQConfig,
    transport_mode: TransportMode,
) -> None:
    port = server_processes.free_port(transport_mode)
    process = server_processes.start(port, transport_mode)
    client = connect(port, transport_mode)
    server_processes.wait_ready(client, process)
    long_task = client.submit({"op": "wait"})
    wait_running(client, long_task)
    queued = client.submit({"op": "echo", "value": "never"})
    assert record_of(client, queued.execution_id).status is ExecutionStatus.QUEUED

    began = time.monotonic()
    process.kill()
    error = error_of(long_task, timeout=config.heartbeat_timeout + WAIT)
    elapsed = time.monotonic() - began
    assert isinstance(error, ServerLost), error
    assert elapsed <= config.heartbeat_timeout + 0.5, f"ServerLost after {elapsed:.2f}s"
    assert isinstance(error_of(queued), ServerLost)
    process.wait(WAIT)

    # the same client works with a server restarted on the same port
    restarted = server_processes.start(port, transport_mode)
    server_processes.wait_ready(client, restarted)
    assert client.submit({"op": "echo", "value": [1, "two"]}).result(WAIT) == [1, "two"]
    client.shutdown()
    assert restarted.wait(WAIT) == 0


@posix_only
@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_frozen_server_process_is_lost_within_the_heartbeat_deadline(
    server_processes: ServerProcesses, connect: ConnectFactory, config: ZMQConfig
) -> None:
    port = server_processes.free_port(TCP)
    process = server_processes.start(port, TCP)
    client = connect(port, TCP)
    server_processes.wait_ready(client, process)
    long_task = client.submit({"op": "wait"})
    wait_running(client, long_task)

    began = time.monotonic()
    os.kill(process.pid, signal.SIGSTOP)  # no FIN, no RST: only heartbeats can tell
    try:
        error = error_of(long_task, timeout=config.heartbeat_timeout + WAIT)
        elapsed = time.monotonic() - began
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert isinstance(error, ServerLost), error
    assert elapsed <= config.heartbeat_timeout + 1.0, f"ServerLost after {elapsed:.2f}s"


@posix_only
def test_sigterm_stops_a_server_process_cleanly(
    server_processes: ServerProcesses,
    connect: ConnectFactory,
    config: ZMQConfig,
    transport_mode: TransportMode,
) -> None:
    port = server_processes.free_port(transport_mode)
    process = server_processes.start(port, transport_mode)
    client = connect(port, transport_mode)
    server_processes.wait_ready(client, process)
    assert client.submit({"op": "echo", "value": 1}).result(WAIT) == 1
    running = client.submit({"op": "wait"})
    wait_running(client, running)
    if transport_mode is TransportMode.IPC:
        assert sorted(config.ipc_directory().glob("*.sock"))

    process.send_signal(signal.SIGTERM)
    assert process.wait(WAIT) == 0, server_processes.logs()
    # the running task was stopped; its client hears of it instead of hanging
    assert isinstance(error_of(running), (ServerLost, TaskCancelled))
    assert not list(config.ipc_directory().glob("*.sock"))
    assert "Traceback" not in server_processes.logs()


# --- backpressure, retention, shutdown ------------------------------------------------------


def test_a_full_queue_refuses_submissions(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    gate = Gate()
    client = connect(serve(gate, transport_mode, queue_limit=2))
    running = client.submit({"block": True, "value": 0})
    waiting = [client.submit({"value": i}) for i in (1, 2)]
    refused = client.submit({"value": 3})
    error = error_of(refused)
    assert isinstance(error, RemoteError), error
    assert error.code is ErrorCode.REFUSED
    assert "queue is full" in error.detail
    with pytest.raises(RemoteError):
        refused.accepted.result(WAIT)
    gate.wait_started(running.execution_id)
    summary = summary_of(client)
    assert (summary.queued, summary.running) == (2, 1)

    gate.opened.set()
    assert [e.result(WAIT) for e in (running, *waiting)] == [0, 1, 2]
    assert client.submit({"value": 4}).result(WAIT) == 4  # room again
    assert refused.execution_id not in gate.ran


def test_retention_keeps_memory_bounded(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    server = serve(executors.echo, transport_mode, retention=RetentionPolicy(max_records=50))
    client = connect(server)
    executions = [client.submit(i) for i in range(200)]
    assert [e.result(WAIT) for e in executions] == list(range(200))
    summary = summary_of(client)
    assert sum(summary.counts.values()) <= 50 + summary.queued + summary.running
    assert summary.counts["complete"] <= 50
    for expired in executions[:100]:
        assert server.record(expired.execution_id) is None
    with pytest.raises(RemoteError) as info:
        client.status(executions[0].execution_id)
    assert info.value.code is ErrorCode.NOT_FOUND
    assert record_of(client, executions[-1].execution_id).status is ExecutionStatus.COMPLETE


def test_graceful_shutdown_finishes_queued_tasks_then_stops(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    gate = Gate()
    server = serve(gate, transport_mode)
    client = connect(server)
    running = client.submit({"block": True, "value": "a"})
    queued = [client.submit({"value": v}) for v in ("b", "c")]
    gate.wait_started(running.execution_id)

    client.shutdown(graceful=True)
    late = client.submit({"value": "late"})
    error = error_of(late)
    assert isinstance(error, RemoteError) and error.code is ErrorCode.REFUSED
    assert serving(server)  # still working through the queue
    gate.opened.set()
    assert [e.result(WAIT) for e in (running, *queued)] == ["a", "b", "c"]
    assert server.server.wait_stopped(WAIT)
    assert not serving(server)
    assert gate.order == [running.execution_id, *(e.execution_id for e in queued)]


def serving(server: ExecutionServer) -> bool:
    return server.server.is_running


def test_forced_shutdown_cancels_everything_and_stops(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    server = serve(executors.dispatch, transport_mode)
    client = connect(server)
    running = client.submit({"op": "wait"})
    wait_running(client, running)
    queued = [client.submit({"op": "echo", "value": v}) for v in range(3)]

    client.shutdown(graceful=False)
    for execution in (running, *queued):
        assert isinstance(error_of(execution), TaskCancelled), execution.execution_id
    assert server.server.wait_stopped(WAIT)
    for execution in (running, *queued):
        record = server.record(execution.execution_id)
        assert record is not None and record.status is ExecutionStatus.CANCELLED
    assert record_started(server, running) and not record_started(server, queued[0])


def record_started(server: ExecutionServer, execution: Execution) -> bool:
    record = server.record(execution.execution_id)
    return record is not None and record.started_at is not None


# --- serializers ----------------------------------------------------------------------------


def test_serializer_mismatch_is_refused(serve: ServeFactory, connect: ConnectFactory) -> None:
    safe_server = serve(executors.echo)
    pickling_client = connect(safe_server, serializer=PickleSerializer())
    error = error_of(pickling_client.submit({"x": 1}))
    assert isinstance(error, RemoteError) and error.code is ErrorCode.REFUSED
    assert "'pickle'" in error.detail and "'safe'" in error.detail

    pickle_server = serve(executors.echo, serializer=PickleSerializer())
    safe_client = connect(pickle_server)
    error = error_of(safe_client.submit({"x": 1}))
    assert isinstance(error, RemoteError) and error.code is ErrorCode.REFUSED
    # and the servers still serve clients that match
    assert connect(safe_server).submit({"x": 2}).result(WAIT) == {"x": 2}


def test_pickle_on_both_sides_carries_any_picklable_object(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    server = serve(executors.echo, serializer=PickleSerializer())
    client = connect(server, serializer=PickleSerializer())
    point = executors.Point(3, 4.5, frozenset({"a", "b"}))
    task = {"point": point, "set": frozenset({1, 2}), "tuple": (1, (2, 3)), "array": numpy.eye(3)}
    got = client.submit(task).result(WAIT)
    assert got["point"] == point and type(got["point"]) is executors.Point
    assert got["set"] == frozenset({1, 2}) and got["tuple"] == (1, (2, 3))
    assert numpy.array_equal(got["array"], numpy.eye(3))
    # the safe serializer refuses the same object before anything is sent
    with pytest.raises(TypeError):
        connect(serve(executors.echo), serializer=SafeSerializer()).submit(point)


# --- hostile input --------------------------------------------------------------------------


def _body(frames: list[bytes]) -> list[bytes]:
    """What the server decodes: an empty first frame reads as a REQ envelope delimiter."""
    return frames[1:] if frames and frames[0] == b"" else frames


def test_garbage_on_the_control_socket_gets_error_replies(
    serve: ServeFactory, connect: ConnectFactory, transport_mode: TransportMode
) -> None:
    server = serve(executors.echo, transport_mode)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.sndtimeo = 10_000  # a send that cannot go fails the test instead of hanging it
    authenticate(dealer, server.server.sockets.control_url, server.server.sockets.config)
    dealer.connect(server.server.sockets.control_url)
    counts: collections.Counter[str] = collections.Counter()

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(frames=st.one_of(hostile_frames(), garbage_frames()))
    def fuzz(frames: list[bytes]) -> None:
        if not frames:
            return  # nothing to send
        try:
            message: Message | None = codec.decode(_body(frames))
        except RemoteProtocolError:
            message = None
        if isinstance(message, (Shutdown, Execute)):
            return  # valid requests that would stop the server or run a task
        dealer.send_multipart(frames)
        assert dealer.poll(int(WAIT * 1000)), "the server stopped answering"
        reply_frames = dealer.recv_multipart()
        if frames[0] == b"":
            assert reply_frames[0] == b""
            reply_frames = reply_frames[1:]
        reply = codec.decode(reply_frames)
        if message is None:
            assert isinstance(reply, ErrorReply), frames
            counts["errors"] += 1
        else:
            counts["valid"] += 1
        assert dealer.poll(0) == 0  # exactly one reply

    try:
        fuzz()
    finally:
        context.destroy(linger=0)
    assert counts["errors"] >= 100, counts
    client = connect(server)
    assert client.submit({"still": ["serving", 1]}).result(WAIT) == {"still": ["serving", 1]}
    assert server.server.statistics().error_replies >= counts["errors"]


# --- futures in the standard library's tools ------------------------------------------------


def test_futures_work_with_concurrent_futures_and_asyncio(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    client = connect(serve(executors.dispatch))
    executions = [client.submit({"op": "echo", "value": i}) for i in range(5)]
    futures = {e.future: i for i, e in enumerate(executions)}
    seen = {futures[f]: f.result() for f in concurrent.futures.as_completed(futures, WAIT)}
    assert seen == {i: i for i in range(5)}
    done, pending = concurrent.futures.wait(futures, WAIT)
    assert (len(done), pending) == (5, set())

    async def gather() -> list[Any]:
        more = [client.submit({"op": "echo", "value": f"a{i}"}) for i in range(3)]
        results = await asyncio.wait_for(
            asyncio.gather(*(asyncio.wrap_future(e.future) for e in more)), WAIT
        )
        failing = client.submit({"op": "fail"})
        with pytest.raises(TaskFailed):
            await asyncio.wait_for(asyncio.wrap_future(failing.future), WAIT)
        return results

    assert asyncio.run(gather()) == ["a0", "a1", "a2"]


def test_client_wait_first_completed(serve: ServeFactory, connect: ConnectFactory) -> None:
    gate = Gate()
    client = connect(serve(gate, pool=WorkerPool.threads(2)))
    slow = client.submit({"block": True, "value": "slow"})
    fast = client.submit({"value": "fast"})
    done, not_done = client.wait([slow, fast], WAIT, return_when=concurrent.futures.FIRST_COMPLETED)
    assert (done, not_done) == ({fast}, {slow})
    done, not_done = client.wait([slow], timeout=0.05)
    assert (done, not_done) == (set(), {slow})
    gate.opened.set()
    done, not_done = client.wait([slow, fast], WAIT)
    assert (done, not_done) == ({slow, fast}, set())
    assert slow.result(0) == "slow"


def test_an_injected_executor_runs_tasks_and_is_not_shut_down(
    serve: ServeFactory, connect: ConnectFactory
) -> None:
    backend = concurrent.futures.ThreadPoolExecutor(3, thread_name_prefix="injected")
    try:
        barrier = threading.Barrier(3)

        def together(_task: Any, _ctx: TaskContext) -> str:
            barrier.wait(WAIT)  # only passes if three tasks run at once
            return threading.current_thread().name

        pool = WorkerPool.from_executor(backend)
        assert isinstance(pool.backend, ThreadWorkers) and pool.backend.executor is backend
        assert pool.max_workers == 3
        server = serve(together, pool=pool)
        client = connect(server)
        names = [e.result(WAIT) for e in [client.submit(None) for _ in range(3)]]
        assert all(name.startswith("injected") for name in names), names
        workers = server.pool.statistics().workers  # the injected executor's threads
        assert workers and all(w.name.startswith("injected") for w in workers), workers
        server.close()
        assert backend.submit(lambda: 41 + 1).result(WAIT) == 42
    finally:
        backend.shutdown(wait=True)


def test_process_workers_that_keep_dying_at_start_stop_being_replaced(config) -> None:
    with (
        ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=TransportMode.TCP, config=config),
            broken_worker_module.run,
            pool=WorkerPool.processes(1),
        ) as server,
        ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=TransportMode.TCP, config=config)
        ) as client,
    ):
        errors = []
        for number in range(6):
            with pytest.raises(TaskFailed) as failed:
                client.submit(number).result(timeout=60)
            errors.append(failed.value.error_type)
        assert errors[-1] == "WorkerStartFailed"
        assert set(errors) <= {"WorkerDied", "WorkerStartFailed"}
        # at most three workers died (and two were replaced); none is started any more
        assert errors.count("WorkerDied") <= 3
        assert server.pool.statistics().workers == ()
        assert client.ping().role == "execution"  # the server itself is fine
