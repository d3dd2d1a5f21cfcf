"""The per-task fast paths of issue 17 keep their contracts: a request answered to a callback
(no future), store transitions built without ``attrs.evolve``, and owned worker threads fed
from a queue of their own."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.recorder import WAIT, Recorder
from tests.test_backend_threads import Gates
from zmqruntime import TransportMode, ZMQClient, ZMQConfig
from zmqruntime.core import client as client_module
from zmqruntime.core.contexts import CLIENT_CONTEXT
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import ErrorReply, ExecutionStatus, Message, Pong, ProgressEvent
from zmqruntime.core.pending import PendingRequests
from zmqruntime.errors import ChannelClosed, ErrorCode, RemoteError, ZMQTimeoutError
from zmqruntime.execution.backends.threads import ThreadWorkers
from zmqruntime.execution.outcomes import Completed, Job
from zmqruntime.execution.records import ExecutionStore


def _pong(request_id: int) -> Pong:
    return Pong(
        request_id=request_id,
        role="r",
        app_name="a",
        pid=1,
        library_version="0",
        protocol_version=1,
        uptime=0.0,
    )


def test_a_callback_request_hears_its_reply_once_and_an_error_reply_as_remote_error() -> None:
    pending, heard = PendingRequests(), []
    first, second = pending.open_callback(heard.append), pending.open_callback(heard.append)
    assert len(pending) == 2
    assert pending.resolve(first, _pong(first))
    assert not pending.resolve(first, _pong(first))  # answered exactly once
    refusal = ErrorReply(request_id=second, code=ErrorCode.REFUSED, message="full")
    assert pending.resolve(second, refusal)
    assert isinstance(heard[0], Pong) and heard[0].request_id == first
    assert isinstance(heard[1], RemoteError) and heard[1].code is ErrorCode.REFUSED
    assert len(heard) == 2 and len(pending) == 0


def test_an_expired_callback_request_hears_a_timeout_described_only_then() -> None:
    pending, heard, described = PendingRequests(), [], []

    def describe() -> str:
        described.append(1)
        return "no reply to Ping within 1s"

    answered = pending.open_callback(heard.append)
    waiting = pending.open_callback(heard.append)
    pending.arm(answered, 10.0, describe)
    pending.arm(waiting, 10.0, describe)
    pending.resolve(answered, _pong(answered))
    assert described == []  # nothing built for a request that is answered
    assert pending.expire(now=11.0) == 1
    assert described == [1]
    assert isinstance(heard[1], ZMQTimeoutError) and "within 1s" in str(heard[1])


def test_a_failing_callback_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pending, heard = PendingRequests(), []

    def broken(_outcome: Message | BaseException) -> None:
        raise RuntimeError("the callback's own bug")

    pending.open_callback(broken)
    pending.open_callback(heard.append)
    with caplog.at_level(logging.ERROR, logger="zmqruntime.core.pending"):
        pending.fail_all(ChannelClosed("closed"))
    assert "reply callback failed" in caplog.text
    assert len(heard) == 1 and isinstance(heard[0], ChannelClosed)


def test_store_transitions_keep_every_field_they_do_not_change() -> None:
    now = [100.0]
    store = ExecutionStore(clock=lambda: now[0])
    store.submit("x", {"plate": "p1"}, b"d", "alice")
    now[0] = 101.0
    started = store.start("x")
    assert started is not None
    store.progress(ProgressEvent(execution_id="x", sequence=1, fraction=0.5))
    now[0] = 102.0
    failed = store.fail("x", "KeyError", "'k'", "Traceback …")
    assert failed is not None
    changed = {"status", "started_at", "finished_at", "progress"}
    changed |= {"error_type", "error_message", "traceback"}
    for field in attrs.fields(type(failed)):  # a field added later must be carried too
        if field.name not in changed:
            assert getattr(failed, field.name) == getattr(started, field.name), field.name
    assert (failed.labels, failed.submitted_at, failed.started_at) == ({"plate": "p1"}, 100, 101)
    assert failed.status is ExecutionStatus.FAILED and failed.finished_at == 102
    assert failed.progress is not None and failed.progress.fraction == 0.5
    assert (failed.error_type, failed.traceback) == ("KeyError", "Traceback …")


@pytest.mark.usefixtures("no_thread_leak")
def test_owned_worker_threads_survive_a_failing_report_and_end_at_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gates, recorder = Gates(), Recorder()
    sink = recorder.sink()
    broken = threading.Event()

    def finished(job: Job, outcome: Any) -> None:
        if job.execution_id == "first" and not broken.is_set():
            broken.set()
            raise RuntimeError("a listener's bug")
        sink.finished(job, outcome)

    workers = ThreadWorkers(1)
    workers.start(gates, attrs.evolve(sink, finished=finished))
    try:
        with caplog.at_level(logging.ERROR, logger="zmqruntime.execution.backends.threads"):
            gates.open("first")
            gates.open("second")
            workers.run([Job("first", "first")])
            workers.run([Job("second", "second")])  # the same, only thread runs it
            assert isinstance(recorder.outcome("second"), Completed)
        assert "reporting on execution first failed" in caplog.text
    finally:
        workers.close(WAIT)  # no_thread_leak: the owned thread has ended


def _zmq_threads() -> int:
    """libzmq's own threads in this process (the kernel names them ``ZMQbg/…``)."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    names = [(task / "comm").read_text().strip() for task in tasks.iterdir()]
    return sum(name.startswith("ZMQbg") for name in names)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc")
def test_clients_given_no_context_share_one_and_the_last_close_ends_it(
    start_server: Any, connect_client: Any
) -> None:
    server = start_server(TransportMode.TCP)
    before = _zmq_threads()
    clients = [connect_client(server) for _ in range(8)]
    assert all(isinstance(c.ping(WAIT), Pong) for c in clients)
    assert len({id(c.sockets.context) for c in clients}) == 1
    assert CLIENT_CONTEXT.users == 8
    assert _zmq_threads() - before == 2  # one I/O thread and one reaper for all eight
    context = clients[0].sockets.context
    for client in clients[:-1]:
        client.close()
    assert not context.closed and isinstance(clients[-1].ping(WAIT), Pong)
    clients[-1].close()
    assert context.closed and CLIENT_CONTEXT.users == 0
    assert _zmq_threads() == before
    fresh = connect_client(server)  # a new client makes a new context
    assert isinstance(fresh.ping(WAIT), Pong) and fresh.sockets.context is not context


def test_a_client_whose_connect_fails_gives_the_shared_context_back(
    config: ZMQConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_descriptors(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(24, "Too many open files")  # what a process at its limit sees

    monkeypatch.setattr(client_module.SocketPair, "connect", out_of_descriptors)
    users = CLIENT_CONTEXT.users
    endpoint = Endpoint.of(port=1, transport_mode=TransportMode.TCP, config=config)
    with pytest.raises(OSError, match="Too many open files"):
        ZMQClient(endpoint).connect()
    assert CLIENT_CONTEXT.users == users
