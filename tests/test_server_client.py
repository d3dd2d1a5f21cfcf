"""ZMQServer and ZMQClient over real sockets: TCP on 127.0.0.1 and IPC files under tmp_path."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import zmq

import zmqruntime
from tests.conftest import authenticate
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.client import ZMQClient
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import (
    PROTOCOL_VERSION,
    Accepted,
    Cancel,
    Completion,
    ControlMessageType,
    ErrorReply,
    Execute,
    ExecutionRecord,
    ExecutionStatus,
    Message,
    Ping,
    Pong,
    ProgressEvent,
    RecordReply,
    ServerSummary,
    Shutdown,
    ShutdownReply,
    StatusRequest,
    SummaryReply,
)
from zmqruntime.core.pending import PendingRequests
from zmqruntime.core.security import (
    ClientCurve,
    ServerCurve,
    generate_curve_keypair,
    load_curve_keypair,
    load_public_key,
    write_curve_keypair,
)
from zmqruntime.core.server import Peer, ZMQServer
from zmqruntime.core.transport import (
    ensure_ipc_directory,
    find_free_ipc_port,
    find_free_port_pair,
    get_ipc_socket_path,
    is_port_in_use,
)
from zmqruntime.errors import (
    AddressInUseError,
    ChannelClosed,
    ConfigurationError,
    ErrorCode,
    RemoteError,
    RemoteProtocolError,
    ServerLost,
    ZMQTimeoutError,
)
from zmqruntime.streaming import StreamingServer

pytestmark = pytest.mark.usefixtures("no_thread_leak")

posix_only = pytest.mark.skipif(os.name == "nt", reason="IPC needs Unix domain sockets")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
needs_curve = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")

STATUS = ControlMessageType.STATUS
EXECUTE = ControlMessageType.EXECUTE
CANCEL = ControlMessageType.CANCEL
WAIT = 10.0  # generous deadline for things that normally take milliseconds
RawContext = zmq.Context[zmq.Socket[bytes]]
ServerFactory = Callable[..., ZMQServer]  # the conftest fixtures ``start_server`` ...
ClientFactory = Callable[..., ZMQClient]  # ... and ``connect_client``


def live_threads(prefix: str = "zmqruntime-") -> list[str]:
    """Names of the live threads zmqruntime started (they all carry this prefix)."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(prefix))


def echo_status(message: StatusRequest, _peer: Peer) -> Message:
    """Answer a StatusRequest with a record naming the execution id it asked about."""
    if message.execution_id is None:
        return SummaryReply(
            request_id=message.request_id, summary=ServerSummary(queued=0, running=0)
        )
    record = ExecutionRecord(execution_id=message.execution_id, status=ExecutionStatus.QUEUED)
    return RecordReply(request_id=message.request_id, record=record)


def free_port(mode: TransportMode, config: ZMQConfig) -> int:
    if mode is TransportMode.IPC:
        return find_free_ipc_port(config)
    return find_free_port_pair(config)


def ipc_paths(server: ZMQServer, config: ZMQConfig) -> list[Path]:
    port = server.bound_port
    paths = [get_ipc_socket_path(n, config) for n in (port, config.control_port(port))]
    return [p for p in paths if p is not None]


@pytest.fixture
def raw_context() -> Iterator[RawContext]:
    """A zmq context for hand-made sockets in tests; every socket on it dies at teardown."""
    context: RawContext = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


def raw_socket(context: RawContext, kind: int, url: str, config: ZMQConfig) -> zmq.Socket[bytes]:
    """A hand-made socket that presents this user's credentials, as an authenticated but
    hostile or foreign peer would."""
    sock = context.socket(kind)
    sock.linger = 0
    sock.sndhwm = sock.rcvhwm = 100_000
    sock.sndtimeo = sock.rcvtimeo = int(WAIT * 1000)
    authenticate(sock, url, config)
    sock.connect(url)
    return sock


# --- identity, handlers and errors ----------------------------------------------------------


def test_ping_reports_who_the_server_is(
    start_server: ServerFactory,
    connect_client: ClientFactory,
    transport_mode: TransportMode,
    config: ZMQConfig,
) -> None:
    server = start_server(transport_mode, role="tester", capabilities=("alpha", "beta"))
    client = connect_client(server)
    pong = client.ping()
    assert isinstance(pong, Pong)
    assert pong.role == "tester"
    assert pong.app_name == config.app_name
    assert pong.pid == os.getpid()
    assert pong.protocol_version == PROTOCOL_VERSION == 1
    assert pong.library_version == zmqruntime.__version__
    assert pong.capabilities == ("alpha", "beta")
    assert 0 <= pong.uptime < WAIT
    assert pong.request_id >= 1  # the client stamps its own ids
    again = client.ping()
    assert again.uptime >= pong.uptime
    assert again.request_id != pong.request_id
    assert client.wait_connected(WAIT)
    assert client.connected
    assert server.is_running


def test_handlers_answer_and_failures_become_error_replies(
    start_server: ServerFactory, connect_client: ClientFactory, transport_mode: TransportMode
) -> None:
    seen: list[int] = []

    def status(message: StatusRequest, _peer: Peer) -> Message:
        seen.append(message.request_id)
        name = message.execution_id or ""
        summary = ServerSummary(queued=len(name), running=7, counts={name: 1})
        return SummaryReply(request_id=message.request_id, summary=summary)

    def cancel(message: Cancel, _peer: Peer) -> Message:
        raise ValueError(f"cannot cancel {message.execution_id}")

    def confused(message: Execute, _peer: Peer) -> Any:
        return {"not": "a message"}

    server = start_server(transport_mode, {STATUS: status, CANCEL: cancel})
    client = connect_client(server)

    reply = client.request(StatusRequest(request_id=0, execution_id="abcd"))
    assert isinstance(reply, SummaryReply)
    assert seen == [reply.request_id]
    assert reply.summary == ServerSummary(queued=4, running=7, counts={"abcd": 1})

    with pytest.raises(RemoteError) as failed:
        client.request(Cancel(request_id=0, execution_id="e-17"))
    assert failed.value.code is ErrorCode.HANDLER_FAILED
    assert "ValueError: cannot cancel e-17" in failed.value.detail

    with pytest.raises(RemoteError) as refused:
        client.request(Execute(request_id=0, execution_id="x"))
    assert refused.value.code is ErrorCode.UNEXPECTED
    assert "execute" in refused.value.detail

    # The server is not hurt: the same client goes on being served.
    assert isinstance(client.ping(), Pong)
    again = client.request(StatusRequest(request_id=0, execution_id="zz"))
    assert isinstance(again, SummaryReply)
    assert again.summary.queued == 2
    stats = server.statistics()
    assert (stats.requests, stats.replies, stats.error_replies) == (5, 5, 2)
    assert client.statistics().in_flight == 0

    # A handler that returns something that is not a message is answered with an error too,
    # addressed to the request (not left to time out).
    odd = start_server(transport_mode, {EXECUTE: confused})
    odd_client = connect_client(odd)
    with pytest.raises(RemoteError) as bad_reply:
        odd_client.request(Execute(request_id=0), timeout=WAIT)
    assert bad_reply.value.code is ErrorCode.HANDLER_FAILED
    assert isinstance(odd_client.ping(), Pong)


def test_an_error_reply_with_the_handlers_exception_becomes_a_remote_error_carrying_it() -> None:
    pending = PendingRequests()
    request_id, future = pending.open()
    trace = "Traceback (most recent call last):\n  File \"app.py\", line 3\nKeyError: 'k'"
    failure = ErrorReply(
        request_id=request_id,
        code=ErrorCode.HANDLER_FAILED,
        message="'k'",
        error_type="KeyError",
        traceback=trace,
    )
    assert pending.resolve(request_id, failure)
    error = future.exception(timeout=0)
    assert isinstance(error, RemoteError)
    assert (error.code, error.detail) == (ErrorCode.HANDLER_FAILED, "'k'")
    assert (error.error_type, error.remote_traceback) == ("KeyError", trace)
    assert "KeyError: 'k'" in str(error)
    plain = RemoteError(ErrorCode.REFUSED, "shutting down")  # the two-argument form still works
    assert (plain.error_type, plain.remote_traceback) == (None, None)
    assert str(plain) == "server refused the request (refused): shutting down"


def test_concurrent_requests_from_four_clients(
    start_server: ServerFactory, connect_client: ClientFactory, transport_mode: TransportMode
) -> None:
    server = start_server(transport_mode, {STATUS: echo_status})
    clients = [connect_client(server) for _ in range(4)]
    start = threading.Barrier(8)

    def one(k: int) -> tuple[str, Message]:
        if k < 8:
            start.wait(WAIT)  # all eight threads fire together
        execution_id = f"c{k % 4}-r{k}"
        return execution_id, clients[k % 4].request(
            StatusRequest(request_id=0, execution_id=execution_id)
        )

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="test-requester") as pool:
        results = list(pool.map(one, range(50)))

    assert len(results) == 50
    for execution_id, reply in results:
        assert isinstance(reply, RecordReply)
        assert reply.record.execution_id == execution_id
        assert reply.record.status is ExecutionStatus.QUEUED
    for client in clients:
        stats = client.statistics()
        assert stats.requests == stats.replies
        assert (stats.in_flight, stats.timeouts, stats.dropped) == (0, 0, 0)
    assert sum(c.statistics().requests for c in clients) == 50
    assert server.statistics().requests == 50


def test_a_thousand_pipelined_requests_on_one_client(
    start_server: ServerFactory, connect_client: ClientFactory, transport_mode: TransportMode
) -> None:
    server = start_server(transport_mode, {STATUS: echo_status})
    client = connect_client(server)
    futures = [
        (f"p{i}", client.request_async(StatusRequest(request_id=0, execution_id=f"p{i}")))
        for i in range(1000)
    ]
    deadline = time.monotonic() + 30
    request_ids = set()
    for execution_id, future in futures:
        reply = future.result(timeout=max(0.0, deadline - time.monotonic()))
        assert isinstance(reply, RecordReply)
        assert reply.record.execution_id == execution_id
        request_ids.add(reply.request_id)
    assert len(request_ids) == 1000
    assert client.statistics().in_flight == 0
    assert client.statistics().replies == 1000
    assert server.statistics().replies == 1000


def test_timeout_with_nobody_listening_does_not_wedge_the_client(
    start_server: ServerFactory,
    connect_client: ClientFactory,
    transport_mode: TransportMode,
    config: ZMQConfig,
) -> None:
    port = free_port(transport_mode, config)
    client = connect_client(port, transport_mode)
    began = time.monotonic()
    with pytest.raises(ZMQTimeoutError) as timed_out:
        client.ping(timeout=0.3)
    elapsed = time.monotonic() - began
    assert isinstance(timed_out.value, TimeoutError)
    assert 0.25 <= elapsed < 3.0
    assert "0.3" in str(timed_out.value)
    stats = client.statistics()
    assert (stats.timeouts, stats.in_flight) == (1, 0)

    start_server(transport_mode, port=port)
    pong = client.ping(timeout=WAIT)
    assert pong.pid == os.getpid()
    assert client.statistics().timeouts == 1


# --- hostile input --------------------------------------------------------------------------


def _garbage(rng: random.Random, i: int) -> tuple[list[bytes], int | None, ErrorCode | None]:
    """Frames that are no valid request, the request id a reply must carry, and its code.

    Random bytes expect whatever id (almost always none) their header shows; the crafted kinds
    carry a readable id and a known error code.
    """
    kind = i % 5
    request_id = 1_000 + i
    if kind == 1:
        header = {"version": 99, "type": "ping", "frames": 0, "request_id": request_id}
        return [json.dumps(header).encode()], request_id, ErrorCode.UNSUPPORTED_VERSION
    if kind == 2:
        header = {"version": 1, "type": "ping", "frames": 3, "request_id": request_id}
        return [json.dumps(header).encode(), b"x"], request_id, ErrorCode.MALFORMED
    if kind == 3:
        header = {
            "version": 1,
            "type": f"bogus-{rng.random()}",
            "frames": 0,
            "request_id": request_id,
        }
        return [json.dumps(header).encode()], request_id, ErrorCode.UNKNOWN_TYPE
    if kind == 4:  # a real request with one byte of its header replaced
        good = bytearray(codec.encode(StatusRequest(request_id=request_id, execution_id="e"))[0])
        good[rng.randrange(len(good))] = rng.randrange(256)
        return [bytes(good)], codec.peek_request_id([bytes(good)]), None
    frames = [rng.randbytes(rng.randrange(0, 48)) for _ in range(rng.randrange(1, 5))]
    body = frames[1:] if frames[0] == b"" else frames  # an empty first frame reads as REQ's
    return frames, codec.peek_request_id(body), None


def _decodes(frames: list[bytes]) -> bool:
    try:
        codec.decode(frames)
    except RemoteProtocolError:
        return False
    return True


def test_garbage_on_the_control_socket_gets_error_replies(
    start_server: ServerFactory,
    connect_client: ClientFactory,
    transport_mode: TransportMode,
    raw_context: RawContext,
) -> None:
    server = start_server(transport_mode)  # no handlers: even a valid StatusRequest is refused
    dealer = raw_socket(raw_context, zmq.DEALER, server.sockets.control_url, server.sockets.config)
    rng = random.Random(20240601)
    sent = [_garbage(rng, i) for i in range(1000)]
    for frames, _request_id, _code in sent:
        dealer.send_multipart(frames)

    with_ids = 0
    for frames, request_id, code in sent:
        assert dealer.poll(int(WAIT * 1000)), "the server stopped answering garbage"
        reply_frames = dealer.recv_multipart()
        if frames[0] == b"":  # the server answered through the REQ-style envelope it saw
            assert reply_frames[0] == b""
            reply_frames = reply_frames[1:]
        reply = codec.decode(reply_frames)
        assert isinstance(reply, ErrorReply), frames
        assert reply.request_id == request_id, frames
        if code is not None:
            assert reply.code is code, (frames, reply)
        with_ids += request_id is not None
    assert with_ids >= 600  # the crafted kinds alone are 600
    assert dealer.poll(0) == 0  # exactly one reply each

    client = connect_client(server)
    assert isinstance(client.ping(), Pong)
    stats = server.statistics()
    assert stats.requests == 1001
    assert stats.error_replies == 1000
    assert stats.replies == 1001


def test_garbage_on_a_pull_data_socket_is_counted_and_dropped(
    start_server: ServerFactory,
    connect_client: ClientFactory,
    transport_mode: TransportMode,
    raw_context: RawContext,
) -> None:
    received: list[Message] = []
    sentinel_seen = threading.Event()

    def on_data(message: Message) -> None:
        received.append(message)
        if isinstance(message, ProgressEvent) and message.execution_id == "sentinel":
            sentinel_seen.set()

    server = start_server(transport_mode, data_socket_type=zmq.PULL, data_handler=on_data)
    push = raw_socket(raw_context, zmq.PUSH, server.sockets.data_url, server.sockets.config)
    rng = random.Random(7)
    garbage = (_garbage(rng, i)[0] for i in range(2000))
    undecodable = [frames for frames in garbage if not _decodes(frames)][:1000]
    assert len(undecodable) == 1000
    for frames in undecodable:
        push.send_multipart(frames)
    # One PUSH connection keeps order: when the sentinel arrives, all the garbage has.
    push.send_multipart(codec.encode(ProgressEvent(execution_id="sentinel", sequence=1)))
    assert sentinel_seen.wait(WAIT)

    assert len(received) == 1
    stats = server.statistics()
    assert stats.data_messages == 1001
    assert stats.data_errors == 1000
    client = connect_client(server, data_socket_type=zmq.PUSH)
    assert isinstance(client.ping(), Pong)
    # The ZMQClient's own PUSH data socket reaches the data handler too.
    client.send_data(ProgressEvent(execution_id="from-client", sequence=2, fraction=0.5))
    sentinel_seen.clear()
    client.send_data(ProgressEvent(execution_id="sentinel", sequence=3))
    assert sentinel_seen.wait(WAIT)
    assert [getattr(m, "execution_id", None) for m in received] == [
        "sentinel",
        "from-client",
        "sentinel",
    ]
    assert server.statistics().data_errors == 1000


def test_a_plain_req_socket_can_ping(
    start_server: ServerFactory, transport_mode: TransportMode, raw_context: RawContext
) -> None:
    server = start_server(transport_mode, role="req-friendly")
    req = raw_socket(raw_context, zmq.REQ, server.sockets.control_url, server.sockets.config)
    for request_id in (77, 78):  # twice: REQ must get each answer to send again
        req.send_multipart(codec.encode(Ping(request_id=request_id)))
        assert req.poll(int(WAIT * 1000))
        pong = codec.decode(req.recv_multipart())
        assert isinstance(pong, Pong)
        assert (pong.request_id, pong.role) == (request_id, "req-friendly")


# --- life cycle -----------------------------------------------------------------------------


@pytest.mark.parametrize("force", [True, False], ids=["force", "gentle"])
def test_shutdown_request_stops_the_server(
    start_server: ServerFactory,
    connect_client: ClientFactory,
    transport_mode: TransportMode,
    config: ZMQConfig,
    force: bool,
) -> None:
    calls: list[bool] = []
    disconnected = threading.Event()
    server = start_server(transport_mode, on_shutdown=calls.append)
    client = connect_client(server, on_disconnect=disconnected.set)
    port = server.bound_port
    paths = ipc_paths(server, config) if transport_mode is TransportMode.IPC else []
    reply = client.request(Shutdown(request_id=0, force=force))
    assert isinstance(reply, ShutdownReply)
    assert server.wait_stopped(WAIT)
    assert calls == [force]
    assert not server.is_running
    # Stopped means released: the address is free at once, for a successor to bind.
    assert not any(p.exists() for p in paths)
    # A request sent before the client has seen the old connection drop would fail with
    # ServerLost when it does; wait for that first.
    assert disconnected.wait(WAIT)
    successor = start_server(transport_mode, port=port, role="successor")
    assert client.ping().role == "successor"
    assert successor.bound_port == port
    with pytest.raises(ChannelClosed):
        server.publish(ProgressEvent(execution_id="late", sequence=1))
    server.close()
    server.close()


def _answer_everyone_then_stop(
    mode: TransportMode, config: ZMQConfig, clients: int, tag: str
) -> None:
    """``clients`` clients each wait on a request; the server answers all of them, then stops."""
    waiting: list[tuple[Peer, int, str]] = []
    server = ZMQServer(Endpoint.of(port=0, transport_mode=mode, config=config))

    def answer_all_then_stop(message: StatusRequest, peer: Peer) -> None:
        waiting.append((peer, message.request_id, message.execution_id or ""))
        if len(waiting) == clients:
            for who, request_id, execution_id in waiting:
                record = ExecutionRecord(execution_id=execution_id, status=ExecutionStatus.COMPLETE)
                server.send(who, RecordReply(request_id=request_id, record=record))
            server.request_stop()

    server.handlers = {STATUS: answer_all_then_stop}
    connected: list[ZMQClient] = []
    with server:
        try:
            for _ in range(clients):
                client = ZMQClient(
                    Endpoint.of(port=server.bound_port, transport_mode=mode, config=config)
                )
                connected.append(client.connect())
            futures = [
                (
                    f"{tag}-{k}",
                    c.request_async(StatusRequest(request_id=0, execution_id=f"{tag}-{k}")),
                )
                for k, c in enumerate(connected)
            ]
            for execution_id, future in futures:
                reply = future.result(timeout=WAIT)
                assert isinstance(reply, RecordReply)
                assert reply.record.execution_id == execution_id
            assert server.wait_stopped(WAIT)
        finally:
            for client in connected:
                client.close()


def test_replies_sent_just_before_the_server_goes_are_not_lost(
    transport_mode: TransportMode, config: ZMQConfig
) -> None:
    """Each reply and the disconnect behind it reach a client together; the reply must win.

    Regression: the client's poll could see the disconnect event a moment before the reply
    that preceded it and failed the request with ServerLost (about 1 round in 100), so this
    makes that race a few hundred times (it caught the bug in most runs).
    """
    for attempt in range(200):  # one client per round provokes the race best
        _answer_everyone_then_stop(transport_mode, config, clients=1, tag=str(attempt))


def test_serve_forever_in_a_thread_stops_on_request_stop(
    connect_client: ClientFactory, transport_mode: TransportMode, config: ZMQConfig
) -> None:
    server = ZMQServer(
        Endpoint.of(port=0, transport_mode=transport_mode, config=config), role="foreground"
    )
    try:
        server.bind()
        port = server.bound_port
        paths = ipc_paths(server, config) if transport_mode is TransportMode.IPC else []
        assert all(p.exists() for p in paths)
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                server.serve_forever()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve, name="test-serve-forever")
        thread.start()
        try:
            client = connect_client(port, transport_mode)
            assert client.ping().role == "foreground"
            assert server.is_running
            with pytest.raises(RuntimeError):
                server.start()  # already serving in another thread
            server.request_stop()
            thread.join(WAIT)
            assert not thread.is_alive()
        finally:
            server.request_stop()
            thread.join(WAIT)
        assert errors == []
        assert server.wait_stopped(0)
        assert not any(p.exists() for p in paths)
        with pytest.raises(ChannelClosed):
            server.start()  # serve_forever closed it on the way out
    finally:
        server.close()


def test_close_is_idempotent_joins_threads_and_removes_ipc_files(
    start_server: ServerFactory,
    connect_client: ClientFactory,
    transport_mode: TransportMode,
    config: ZMQConfig,
) -> None:
    before = set(live_threads())
    peers: list[Peer] = []

    def remember(message: StatusRequest, peer: Peer) -> Message:
        peers.append(peer)
        return echo_status(message, peer)

    server = start_server(transport_mode, {STATUS: remember}, role="closer")
    client = connect_client(server, name="closing-client")
    client.request(StatusRequest(request_id=0, execution_id="x"))
    running = set(live_threads()) - before
    assert any(name.startswith("zmqruntime-closer-") for name in running), running
    assert any(name.startswith("zmqruntime-closing-client-") for name in running), running
    paths = ipc_paths(server, config) if transport_mode is TransportMode.IPC else []
    assert all(p.exists() and stat.S_ISSOCK(p.stat().st_mode) for p in paths)

    client.close()
    client.close()
    server.close()
    server.close()
    assert set(live_threads()) - before == set()  # joined, not merely asked to stop
    assert not any(p.exists() for p in paths)
    assert not server.is_running

    with pytest.raises(ChannelClosed):
        client.ping()
    with pytest.raises(ChannelClosed):
        client.request_async(StatusRequest(request_id=0))
    with pytest.raises(ChannelClosed):
        client.send_data(ProgressEvent(execution_id="x", sequence=1))
    with pytest.raises(ChannelClosed):
        client.connect()
    with pytest.raises(ChannelClosed):
        server.send(
            peers[0],
            Completion(record=ExecutionRecord(execution_id="x", status=ExecutionStatus.COMPLETE)),
        )
    with pytest.raises(ChannelClosed):
        server.start()


def test_closing_a_client_fails_its_pending_requests(
    start_server: ServerFactory, connect_client: ClientFactory, transport_mode: TransportMode
) -> None:
    entered = threading.Event()

    def silent(_message: StatusRequest, _peer: Peer) -> None:
        entered.set()

    server = start_server(transport_mode, {STATUS: silent})
    client = connect_client(server)
    future = client.request_async(StatusRequest(request_id=0, execution_id="never"))
    assert entered.wait(WAIT)
    client.close()
    with pytest.raises(ChannelClosed):
        future.result(timeout=WAIT)
    assert server.is_running


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _thread_name(task: str) -> str:
    """A thread's name, as Python and the kernel know it (for a failure's message)."""
    python = [t.name for t in threading.enumerate() if str(t.native_id) == task]
    with contextlib.suppress(OSError):
        return f"{task}: {python} {Path(f'/proc/self/task/{task}/comm').read_text().strip()}"
    return f"{task}: {python} (ended)"


def _native_threads() -> set[str]:
    """The ids of this process's threads that a zmqruntime server could leave behind.

    libzmq's I/O and reaper threads are not Python threads; the kernel knows them by the name
    libzmq gives them (``ZMQbg/…``). Ours are Python threads named ``zmqruntime-…``. Any other
    thread is left out: Qt, BLAS or Dask start native threads of their own whenever they like
    (CI once saw one appear during this test) and would otherwise look like a leak of ours.
    """
    ours = {
        str(thread.native_id)
        for thread in threading.enumerate()
        if thread.name.startswith("zmqruntime-")
    }
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # it ended since the listing
            if Path(f"/proc/self/task/{task}/comm").read_text().startswith("ZMQbg/"):
                ours.add(task)
    return ours


@linux_only
def test_a_server_whose_start_failed_leaves_nothing_open(
    transport_mode: TransportMode, config: ZMQConfig, no_thread_leak: None
) -> None:
    zmq.Context().term()  # first use of libzmq may open process-wide files; do it before counting
    port = free_port(transport_mode, config)
    control = config.control_port(port)
    # Hold the control address with a plain listening socket. Over TCP the data socket binds
    # and then the control socket fails, so the bound data socket must be released again;
    # over IPC the live-listener probe refuses before any zmq socket is made.
    if transport_mode is TransportMode.TCP:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        blocker.bind(("127.0.0.1", control))
    else:
        ensure_ipc_directory(config)
        control_path = get_ipc_socket_path(control, config)
        assert control_path is not None
        blocker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        blocker.bind(os.fspath(control_path))
    with blocker:
        blocker.listen()
        fds, natives = _open_fds(), _native_threads()
        server = ZMQServer(Endpoint.of(port=port, transport_mode=transport_mode, config=config))
        with pytest.raises(AddressInUseError) as taken:
            server.start()
        assert isinstance(taken.value, OSError)
        server.close()
        server.close()
        # Threads of earlier tests may still be exiting, so compare by id, not by count.
        assert _open_fds() <= fds
        extra = _native_threads() - natives
        assert not extra, [_thread_name(task) for task in extra]
        with pytest.raises(ChannelClosed):
            _ = server.sockets
        if transport_mode is TransportMode.TCP:
            assert not is_port_in_use(port)
        else:
            data_path = get_ipc_socket_path(port, config)
            assert data_path is not None and not data_path.exists()


def test_a_viewer_that_cannot_bind_leaves_nothing_open(
    config: ZMQConfig, no_thread_leak: None
) -> None:
    """Over TCP a viewer makes a zmq context of its own; a start that fails ends it again,
    called directly or by a ``with`` (whose block never runs, so its exit would not)."""
    zmq.Context().term()  # first use of libzmq may open process-wide files; do it before counting
    port = free_port(TransportMode.TCP, config)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", config.control_port(port)))
    with blocker:
        blocker.listen()
        fds, natives = _open_fds(), _native_threads()
        endpoint = Endpoint.of(port=port, transport_mode=TransportMode.TCP, config=config)
        with (
            pytest.raises(AddressInUseError),
            StreamingServer.bind(endpoint, lambda _image, _metadata: None),
        ):
            pytest.fail("the block ran")
        viewer = StreamingServer.bind(endpoint, lambda _image, _metadata: None)
        with pytest.raises(AddressInUseError):
            viewer.start()
        assert _open_fds() <= fds
        extra = _native_threads() - natives
        assert not extra, [_thread_name(task) for task in extra]
        with pytest.raises(ChannelClosed):
            viewer.start()  # closed: it cannot be started again


def test_binding_a_taken_address_fails_and_steals_nothing(
    start_server: ServerFactory,
    connect_client: ClientFactory,
    transport_mode: TransportMode,
    config: ZMQConfig,
) -> None:
    first = start_server(transport_mode, role="first")
    second = ZMQServer(
        Endpoint.of(port=first.bound_port, transport_mode=transport_mode, config=config)
    )
    with pytest.raises(AddressInUseError):
        second.start()
    second.close()
    # A server whose control port is the first server's data port is refused as well.
    third = ZMQServer(
        Endpoint.of(
            port=first.bound_port - config.control_port_offset,
            transport_mode=transport_mode,
            config=config,
        )
    )
    with pytest.raises(AddressInUseError):
        third.start()
    third.close()
    assert first.is_running
    assert connect_client(first).ping().role == "first"


@posix_only
def test_a_stale_ipc_file_does_not_prevent_binding(
    start_server: ServerFactory, connect_client: ClientFactory, config: ZMQConfig
) -> None:
    port = find_free_ipc_port(config)
    ensure_ipc_directory(config)
    stale = [get_ipc_socket_path(n, config) for n in (port, config.control_port(port))]
    for path in stale:
        assert path is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as leftover:
            leftover.bind(os.fspath(path))
        assert stat.S_ISSOCK(path.stat().st_mode)  # closed, but the file stays behind
    server = start_server(TransportMode.IPC, port=port, role="phoenix")
    assert server.bound_port == port
    assert connect_client(server).ping().role == "phoenix"


# --- data and unsolicited messages ----------------------------------------------------------


def test_published_events_reach_subscribers_of_their_topic_only(
    start_server: ServerFactory, connect_client: ClientFactory, transport_mode: TransportMode
) -> None:
    server = start_server(transport_mode)  # PUB data socket by default
    topics: list[bytes | None] = []
    arrivals: queue.Queue[tuple[bytes | None, Message]] = queue.Queue()

    def on_data(message: Message, topic: bytes | None) -> None:
        topics.append(topic)
        arrivals.put((topic, message))

    client = connect_client(server, subscriptions=(b"topicA",), on_data=on_data)

    def publish_pair(sequence: int) -> None:
        # B goes first: one connection keeps order, so an unfiltered B would arrive before A.
        server.publish(ProgressEvent(execution_id="B", sequence=sequence), topic=b"topicB")
        server.publish(
            ProgressEvent(execution_id="A", sequence=sequence, fraction=0.25, fields={"k": [1]}),
            topic="topicA",
        )

    def next_arrival(timeout: float) -> tuple[bytes | None, Message] | None:
        try:
            return arrivals.get(timeout=timeout)
        except queue.Empty:
            return None

    # PUB/SUB slow joiner: publish until the subscription has reached the publisher.
    deadline = time.monotonic() + WAIT
    sequence = 0
    first = None
    while first is None:
        assert time.monotonic() < deadline, "no published event reached the subscriber"
        sequence += 1
        publish_pair(sequence)
        first = next_arrival(0.05)
    topic, message = first
    assert topic == b"topicA"
    assert isinstance(message, ProgressEvent)
    assert (message.execution_id, message.fraction, message.fields) == ("A", 0.25, {"k": [1]})

    # Now that the subscription is surely in place, one more pair: only A may arrive.
    sequence += 1
    publish_pair(sequence)
    while True:
        arrival = next_arrival(WAIT)
        assert arrival is not None, "the last A event never arrived"
        if arrival[1].sequence == sequence:  # type: ignore[union-attr]
            break
    assert set(topics) == {b"topicA"}

    # Subscribing at run time works too.
    client.subscribe(b"topicB")
    deadline = time.monotonic() + WAIT
    while b"topicB" not in topics:
        assert time.monotonic() < deadline, "subscribe(b'topicB') had no effect"
        sequence += 1
        publish_pair(sequence)
        next_arrival(0.05)


def test_server_send_from_another_thread_reaches_on_message(
    start_server: ServerFactory, connect_client: ClientFactory, transport_mode: TransportMode
) -> None:
    peers: queue.Queue[tuple[Peer, str]] = queue.Queue()

    def execute(message: Execute, peer: Peer) -> Message:
        execution_id = message.execution_id or "anonymous"
        peers.put((peer, execution_id))
        return Accepted(
            request_id=message.request_id,
            execution_id=execution_id,
            status=ExecutionStatus.QUEUED,
        )

    server = start_server(transport_mode, {EXECUTE: execute})
    inbox_a: queue.Queue[Message] = queue.Queue()
    inbox_b: queue.Queue[Message] = queue.Queue()
    client_a = connect_client(server, on_message=inbox_a.put)
    client_b = connect_client(server, on_message=inbox_b.put)

    reply_a = client_a.request(Execute(request_id=0, execution_id="job-a"))
    assert isinstance(reply_a, Accepted)
    assert (reply_a.execution_id, reply_a.status) == ("job-a", ExecutionStatus.QUEUED)
    peer_a, id_a = peers.get(timeout=WAIT)
    client_b.request(Execute(request_id=0, execution_id="job-b"))
    peer_b, id_b = peers.get(timeout=WAIT)
    assert peer_a.identity != peer_b.identity

    def finish() -> None:
        for peer, execution_id in ((peer_a, id_a), (peer_b, id_b)):
            record = ExecutionRecord(execution_id=execution_id, status=ExecutionStatus.COMPLETE)
            server.send(peer, Completion(record=record, result=(execution_id.encode(),)))

    worker = threading.Thread(target=finish, name="test-worker")
    worker.start()
    worker.join(WAIT)
    assert not worker.is_alive()

    got_a = inbox_a.get(timeout=WAIT)
    got_b = inbox_b.get(timeout=WAIT)
    assert isinstance(got_a, Completion) and isinstance(got_b, Completion)
    assert (got_a.record.execution_id, bytes(got_a.result[0])) == ("job-a", b"job-a")
    assert (got_b.record.execution_id, bytes(got_b.result[0])) == ("job-b", b"job-b")
    assert got_a.record.status is ExecutionStatus.COMPLETE
    # a's completion was sent first, so had it been misrouted it would have reached b first
    assert inbox_a.empty() and inbox_b.empty()
    assert client_a.statistics().unsolicited == 1
    assert client_b.statistics().unsolicited == 1


def test_a_vanishing_server_fails_pending_requests_with_server_lost(
    start_server: ServerFactory, connect_client: ClientFactory, transport_mode: TransportMode
) -> None:
    entered = threading.Event()
    disconnected = threading.Event()

    def silent(_message: StatusRequest, _peer: Peer) -> None:
        entered.set()  # and never answer

    server = start_server(transport_mode, {STATUS: silent})
    client = connect_client(server, on_disconnect=disconnected.set)
    assert isinstance(client.ping(), Pong)  # the connection is up
    future = client.request_async(StatusRequest(request_id=0, execution_id="forever"))
    assert entered.wait(WAIT)
    began = time.monotonic()
    server.close()
    with pytest.raises(ServerLost):
        future.result(timeout=30)
    assert time.monotonic() - began < 3.0  # the disconnect, not a timeout, ended it
    assert disconnected.is_set()
    assert client.statistics().disconnects >= 1
    assert not client.connected


# --- CURVE ------------------------------------------------------------------------------------


@needs_curve
def test_curve_lets_only_allowed_clients_in(
    start_server: ServerFactory, connect_client: ClientFactory
) -> None:
    server_keys, client_keys, stranger_keys = (generate_curve_keypair() for _ in range(3))
    curve = ServerCurve(server_keys, allowed_client_keys={client_keys.public_key})
    server = start_server(TransportMode.TCP, curve=curve, role="guarded")
    trusted = connect_client(server, curve=ClientCurve(client_keys, server_keys.public_key))
    assert trusted.ping().role == "guarded"

    stranger = connect_client(server, curve=ClientCurve(stranger_keys, server_keys.public_key))
    with pytest.raises((ZMQTimeoutError, ServerLost)):
        stranger.ping(timeout=0.5)
    plain = connect_client(server)
    with pytest.raises((ZMQTimeoutError, ServerLost)):
        plain.ping(timeout=0.5)

    assert trusted.ping().role == "guarded"
    assert server.statistics().requests == 2  # nothing of the others ever got through


@needs_curve
def test_curve_without_a_client_list_admits_any_keyed_client(
    start_server: ServerFactory, connect_client: ClientFactory, config: ZMQConfig
) -> None:
    server_keys = generate_curve_keypair()
    server = start_server(TransportMode.TCP, curve=ServerCurve(server_keys))
    anyone = connect_client(
        server, curve=ClientCurve(generate_curve_keypair(), server_keys.public_key)
    )
    assert isinstance(anyone.ping(), Pong)
    with pytest.raises(ConfigurationError):
        ZMQServer(
            Endpoint.of(
                port=0,
                transport_mode=TransportMode.IPC,
                config=config,
                curve=ServerCurve(server_keys),
            )
        ).start()


@needs_curve
def test_curve_keypair_files_round_trip(tmp_path: Path) -> None:
    public_path, secret_path = write_curve_keypair(tmp_path / "keys", "server")
    assert public_path.parent == secret_path.parent == tmp_path / "keys"
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    pair = load_curve_keypair(secret_path)
    assert len(pair.public_key) == len(pair.secret_key) == 40
    assert load_public_key(public_path) == pair.public_key
    assert load_public_key(secret_path) == pair.public_key
    assert zmq.curve_public(pair.secret_key) == pair.public_key  # the two keys belong together
    with pytest.raises(ConfigurationError):
        load_curve_keypair(public_path)
    _other_public, other_secret = write_curve_keypair(tmp_path / "keys", "client")
    assert load_curve_keypair(other_secret).public_key != pair.public_key
