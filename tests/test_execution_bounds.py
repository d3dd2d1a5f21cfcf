"""The execution server's bounds against a hostile peer (issue 14, items 4 to 6), with real
sockets: task payloads decoded off the I/O thread within their JSON-byte and node limits,
duplicate submissions, labels, and the bytes of retained records. Where memory is measured the
server runs in a child process (``python -m tests.test_execution_bounds PORT IPC_ROOT
MAX_BYTES``) and its peak and current resident memory are read from ``/proc``.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import authenticate
from tests.executors import dispatch, echo
from tests.reliability_scripts import child_config
from tests.strategies import json_values
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import codec, wire
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import (
    Completion,
    ErrorReply,
    Execute,
    ExecutionRecord,
    ExecutionStatus,
    Message,
    Ping,
    Pong,
)
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.core.transport import find_free_port_pair
from zmqruntime.errors import ConfigurationError, ErrorCode, RemoteError, TaskFailed
from zmqruntime.execution import ExecutionClient, ExecutionServer, RetentionPolicy, WorkerPool
from zmqruntime.execution.outcomes import EncodedTask
from zmqruntime.execution.records import (
    MAX_LABELS,
    MAX_LABELS_BYTES,
    ExecutionStore,
    record_bytes,
)
from zmqruntime.execution.results import ResultCache
from zmqruntime.execution.waiters import MAX_WAITERS

WAIT = 20.0
PROMPT = 1.0
"""Seconds a ping may take while the server takes in a huge payload (it takes milliseconds)."""
MIB = 1 << 20
GROWTH = 64 * MIB
"""Memory an attack may add beyond the configured limits (issue 14)."""
REPO_ROOT = Path(__file__).resolve().parent.parent
SAFE = SafeSerializer()


# --- helpers ---------------------------------------------------------------------------------


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


class Peer:
    """A raw DEALER on a server's control socket: sends messages, reads replies."""

    def __init__(self, context: zmq.Context[Any], url: str, config: ZMQConfig) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDTIMEO, int(WAIT * 1000))
        authenticate(self.socket, url, config)
        self.socket.connect(url)

    def send(self, message: Message, *payload: bytes) -> None:
        frames = codec.encode(message)
        self.socket.send_multipart([*frames, *payload] if payload else frames)

    def receive(self, timeout: float = WAIT) -> Any:
        assert self.socket.poll(int(timeout * 1000)), f"no reply within {timeout}s"
        return codec.decode(self.socket.recv_multipart())

    def ask(self, message: Message, timeout: float = WAIT) -> Any:
        self.send(message)
        return self.receive(timeout)


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def execute(request_id: int, payload: bytes, **fields: Any) -> Execute:
    return Execute(request_id=request_id, payload=(payload,), **fields)


def json_lists(nbytes: int) -> bytes:
    """``[[],[],…,0]`` of about ``nbytes``: the most objects per JSON byte."""
    return b"[" + b"[]," * ((nbytes - 3) // 3) + b"0]"


def answer_with_prompt_pings(attacker: Peer, pinger: Peer) -> Message:
    """Wait for the attacker's reply while pinging from another client: every pong must come
    within :data:`PROMPT` seconds. Returns the reply."""
    deadline = time.monotonic() + WAIT
    reply = None
    for request_id in range(1_000_000):
        started = time.monotonic()
        pong = pinger.ask(Ping(request_id=request_id), timeout=PROMPT)
        assert isinstance(pong, Pong)
        assert time.monotonic() - started < PROMPT
        if reply is not None:
            return reply  # one more ping after it: the server took it in and still answers
        if attacker.socket.poll(0):
            reply = attacker.receive()
        assert time.monotonic() < deadline, "the attacker got no reply"
    raise AssertionError("unreachable")


@pytest.fixture
def serve(config: ZMQConfig, no_thread_leak: None) -> Iterator[Callable[..., ExecutionServer]]:
    """``serve(executor, **fields)``: a started ExecutionServer on a free TCP port."""
    servers: list[ExecutionServer] = []

    def factory(executor: Any, **fields: Any) -> ExecutionServer:
        endpoint = Endpoint.of(0, transport_mode=TransportMode.TCP, config=config)
        servers.append(ExecutionServer.bind(endpoint, executor, **fields).start())
        return servers[-1]

    yield factory
    for server in servers:
        server.close()


def control_url(server: ExecutionServer) -> str:
    return server.server.sockets.control_url


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Callable[[int], tuple[subprocess.Popen[bytes], int]]]:
    """``child(max_bytes)``: an execution server in a child process (running
    :func:`tests.executors.dispatch`, retention bounded to ``max_bytes``), ready; and its port."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(max_bytes: int) -> tuple[subprocess.Popen[bytes], int]:
        port = find_free_port_pair(child_config(str(tmp_path)))
        argv = [sys.executable, "-m", "tests.test_execution_bounds", str(port), str(tmp_path)]
        process = subprocess.Popen([*argv, str(max_bytes)], cwd=REPO_ROOT)
        processes.append(process)
        with ExecutionClient.to(child_endpoint(port, tmp_path)) as client:  # waits for the child
            assert client.submit({"op": "echo", "value": 1}).result(WAIT) == 1
        return process, port

    yield start
    for process in processes:
        process.terminate()
        process.wait(WAIT)


def child_endpoint(port: int, ipc_root: Path) -> Endpoint:
    return Endpoint.of(port, transport_mode=TransportMode.TCP, config=child_config(str(ipc_root)))


# --- item 4: task payloads are decoded off the I/O thread, within bounds ---------------------


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_huge_task_payload_costs_bounded_memory_and_never_delays_pings(
    child: Callable[[int], tuple[subprocess.Popen[bytes], int]],
    tmp_path: Path,
    zmq_context: zmq.Context[Any],
) -> None:
    process, port = child(64 * MIB)
    url = child_endpoint(port, tmp_path).control_url
    config = child_config(str(tmp_path))
    attacker, pinger = Peer(zmq_context, url, config), Peer(zmq_context, url, config)
    assert isinstance(pinger.ask(Ping(request_id=0)), Pong)
    before = memory(process.pid)

    # 16 MiB of "[]," (26x when decoded, 2.1 s on the I/O thread before): refused by its size.
    attacker.send(execute(1, json_lists(16 * MIB)))
    refused = answer_with_prompt_pings(attacker, pinger)
    assert isinstance(refused, ErrorReply) and refused.code is ErrorCode.TOO_LARGE
    assert f"over the limit of {8 * MIB}" in refused.message

    # Just under the byte limit, but 2.8 million values: the worker counts and refuses them.
    attacker.send(execute(2, json_lists(8 * MIB - 1)))
    failed = answer_with_prompt_pings(attacker, pinger)
    assert isinstance(failed, Completion) and failed.record.status is ExecutionStatus.FAILED
    assert "over the limit of 250000" in (failed.record.error_message or "")

    grown = memory(process.pid)["VmHWM"] - before["VmHWM"]
    assert grown <= GROWTH, f"the server grew by {grown / MIB:.0f} MiB"
    with ExecutionClient.to(child_endpoint(port, tmp_path)) as client:  # an honest client
        assert client.submit({"op": "echo", "value": 2}).result(PROMPT) == 2


def nodes(value: Any) -> int:
    """Values and object keys in ``value``, counted on the Python object."""
    if isinstance(value, list):
        return 1 + sum(nodes(item) for item in value)
    if isinstance(value, dict):
        return 1 + sum(1 + nodes(item) for item in value.values())
    return 1


@given(json_values(), st.sampled_from([None, 1]), st.booleans())
def test_count_nodes_is_exact(value: Any, indent: int | None, ascii_only: bool) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode()
    assert wire.count_nodes(text) == nodes(value)


@pytest.mark.parametrize("tricky", ['a"b\\', "\\", 'x,:[]{}"', '\\"', "[]", "é\n"])
def test_count_nodes_is_exact_across_its_steps(tricky: str) -> None:
    """Strings with escapes and brackets, and empty containers, astride its 64 KiB steps."""
    value = [[], {}, tricky, {"k" + tricky: [tricky, []]}] * 20_000
    assert wire.count_nodes(json.dumps(value).encode()) == nodes(value)


def test_the_json_byte_limit_holds_at_its_edge(
    serve: Callable[..., ExecutionServer], zmq_context: zmq.Context[Any]
) -> None:
    server = serve(lambda task, _ctx: len(task), max_task_json_bytes=100_000)
    peer = Peer(zmq_context, control_url(server), server.server.sockets.config)
    (at_limit,) = SAFE.dumps("a" * (100_000 - 2))
    done = peer.ask(execute(1, bytes(at_limit)))
    assert isinstance(done, Completion) and done.record.status is ExecutionStatus.COMPLETE
    refused = peer.ask(execute(2, b'"' + b"a" * 99_999 + b'"'))
    assert isinstance(refused, ErrorReply) and refused.code is ErrorCode.TOO_LARGE
    assert "100001 bytes, over the limit of 100000" in refused.message


@pytest.mark.parametrize("padding", [0, 70_000], ids=["decoded-inline", "decoded-by-worker"])
def test_the_node_limit_holds_at_its_edge(
    serve: Callable[..., ExecutionServer], zmq_context: zmq.Context[Any], padding: int
) -> None:
    """1000 values and keys pass, 1001 fail: refused at once when small, failed by the
    worker when frame 0 is above the inline size."""
    server = serve(lambda task, _ctx: len(task), max_task_nodes=1000)
    peer = Peer(zmq_context, control_url(server), server.server.sockets.config)

    def task(nodes: int) -> bytes:  # a list, a padded dict {"p": "..."} (3 nodes), and zeros
        pad = {"p": "x" * padding}
        return bytes(SAFE.dumps([pad, *[0] * (nodes - 4)])[0])

    done = peer.ask(execute(1, task(1000)))
    assert isinstance(done, Completion) and done.record.status is ExecutionStatus.COMPLETE
    over = peer.ask(execute(2, task(1001)))
    text = "1001 JSON values and keys, over the limit of 1000"
    if padding:
        assert isinstance(over, Completion) and over.record.status is ExecutionStatus.FAILED
        assert text in (over.record.error_message or "")
        assert over.record.error_type == "RemoteProtocolError"
    else:
        assert isinstance(over, ErrorReply) and over.code is ErrorCode.TOO_LARGE
        assert text in over.message


@pytest.mark.parametrize("padding", [0, 70_000], ids=["decoded-inline", "decoded-by-worker"])
def test_the_depth_limit_holds_at_its_edge(
    serve: Callable[..., ExecutionServer], zmq_context: zmq.Context[Any], padding: int
) -> None:
    server = serve(lambda _task, _ctx: "ran")
    peer = Peer(zmq_context, control_url(server), server.server.sockets.config)

    def nested(levels: int) -> bytes:  # lists ``levels`` deep, the outer one included
        inner = levels - 1
        return b'["' + b"x" * padding + b'",' + b"[" * inner + b"]" * inner + b"]"

    done = peer.ask(execute(1, nested(100)))
    assert isinstance(done, Completion) and done.record.status is ExecutionStatus.COMPLETE
    over = peer.ask(execute(2, nested(101)))
    if padding:
        assert isinstance(over, Completion) and over.record.status is ExecutionStatus.FAILED
        assert "deeper than 100" in (over.record.error_message or "")
    else:
        assert isinstance(over, ErrorReply) and over.code is ErrorCode.MALFORMED


def test_a_large_task_travels_encoded_to_a_worker_process(
    serve: Callable[..., ExecutionServer], config: ZMQConfig
) -> None:
    task = {"value": "x" * 100_000, "n": [1, 2, 3]}
    server = serve(echo, pool=WorkerPool.processes(1))
    endpoint = Endpoint.of(server.port_number, transport_mode=TransportMode.TCP, config=config)
    with ExecutionClient.to(endpoint) as client:
        assert client.submit(task).result(WAIT) == task


def test_an_encoded_task_pickles_its_frames_as_bytes() -> None:
    frames = tuple(memoryview(frame) for frame in SAFE.dumps({"a": [1, 2]}))
    again = pickle.loads(pickle.dumps(EncodedTask(frames, SAFE, 10)))
    assert again.decode() == {"a": [1, 2]}
    assert all(type(frame) is bytes for frame in again.frames)


# --- item 5: duplicate submissions ---------------------------------------------------------


def test_duplicates_of_a_running_execution_are_bounded(
    serve: Callable[..., ExecutionServer], zmq_context: zmq.Context[Any]
) -> None:
    gate, started = threading.Event(), threading.Event()

    def blocked(_task: Any, _ctx: Any) -> str:
        started.set()
        assert gate.wait(WAIT)
        return "done"

    server = serve(blocked)
    peer = Peer(zmq_context, control_url(server), server.server.sockets.config)
    task = bytes(SAFE.dumps(0)[0])
    peer.send(execute(1, task, execution_id="dup"))
    assert started.wait(WAIT)
    for request_id in range(2, MAX_WAITERS + 1):  # waiters 2..64 join the first
        peer.send(execute(request_id, task, execution_id="dup"))
    flood = 20_000
    for request_id in range(MAX_WAITERS + 1, MAX_WAITERS + 1 + flood):
        peer.send(execute(request_id, task, execution_id="dup"))
    refused = [peer.receive() for _ in range(flood)]
    assert [reply.request_id for reply in refused] == list(
        range(MAX_WAITERS + 1, MAX_WAITERS + 1 + flood)
    )
    assert all(isinstance(reply, ErrorReply) for reply in refused)
    first = refused[0]
    assert isinstance(first, ErrorReply) and first.code is ErrorCode.REFUSED
    assert f"already has {MAX_WAITERS} waiting submissions" in first.message
    gate.set()
    completions = [peer.receive() for _ in range(MAX_WAITERS)]
    assert sorted(reply.request_id for reply in completions) == list(range(1, MAX_WAITERS + 1))
    assert all(isinstance(reply, Completion) for reply in completions)


# --- item 6: labels and the bytes of retained records --------------------------------------


@pytest.mark.parametrize(
    ("labels", "accepted"),
    [
        pytest.param({f"k{i}": "" for i in range(MAX_LABELS)}, True, id="64-labels"),
        pytest.param({f"k{i}": "" for i in range(MAX_LABELS + 1)}, False, id="65-labels"),
        pytest.param({"kk": "é" * ((MAX_LABELS_BYTES - 2) // 2)}, True, id="4096-bytes"),
        pytest.param({"kk": "é" * ((MAX_LABELS_BYTES - 2) // 2), "x": ""}, False, id="4097-bytes"),
    ],
)
def test_labels_are_bounded_per_submission(
    serve: Callable[..., ExecutionServer],
    zmq_context: zmq.Context[Any],
    labels: dict[str, str],
    accepted: bool,
) -> None:
    server = serve(lambda _task, _ctx: "ran")
    peer = Peer(zmq_context, control_url(server), server.server.sockets.config)
    reply = peer.ask(execute(1, bytes(SAFE.dumps(0)[0]), labels=labels))
    if accepted:
        assert isinstance(reply, Completion) and reply.record.labels == labels
    else:
        assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.TOO_LARGE
        assert "over the limit of" in reply.message


def _finished(store: ExecutionStore, execution_id: str, text: str) -> ExecutionRecord:
    store.submit(execution_id, {})
    store.start(execution_id)
    record = store.fail(execution_id, "E", text, "")
    assert record is not None
    return record


@pytest.mark.parametrize("spare", [0, -1], ids=["at-the-limit", "one-byte-less"])
def test_retention_bounds_the_bytes_of_records_at_the_edge(spare: int) -> None:
    probe = ExecutionStore()
    size = record_bytes(_finished(probe, "a", "x" * 1000)) + record_bytes(
        _finished(probe, "b", "y" * 1000)
    )
    store = ExecutionStore(RetentionPolicy(max_bytes=size + spare))
    _finished(store, "a", "x" * 1000)
    _finished(store, "b", "y" * 1000)
    assert store.get("b") is not None
    assert (store.get("a") is None) == (spare < 0)


def test_retention_refuses_a_byte_limit_below_one() -> None:
    assert RetentionPolicy(max_bytes=1).max_bytes == 1
    with pytest.raises(ConfigurationError, match="max_bytes"):
        RetentionPolicy(max_bytes=0)


def test_a_record_over_the_byte_limit_is_not_kept() -> None:
    store = ExecutionStore(RetentionPolicy(max_bytes=2000))
    assert _finished(store, "big", "x" * 2000).status is ExecutionStatus.FAILED
    assert store.get("big") is None and len(store) == 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_retained_records_are_bounded_by_bytes(
    child: Callable[[int], tuple[subprocess.Popen[bytes], int]], tmp_path: Path
) -> None:
    """200 failures, each with 256 KiB of error text twice (message and traceback): about
    100 MiB kept before; with ``max_bytes`` of 4 MiB only the last few records stay."""
    process, port = child(4 * MIB)
    before = memory(process.pid)["VmRSS"]
    with ExecutionClient.to(child_endpoint(port, tmp_path)) as client:
        for n in range(200):  # one at a time: only what is retained may stay, not a queue
            task = {"op": "fail", "pad": "x" * (256 << 10)}
            execution = client.submit(task, execution_id=f"fail-{n}")
            with pytest.raises(TaskFailed):
                execution.result(WAIT)
        assert client.record("fail-199").status is ExecutionStatus.FAILED
        with pytest.raises(RemoteError) as gone:
            client.record("fail-0")
        assert gone.value.code is ErrorCode.NOT_FOUND
    grown = memory(process.pid)["VmRSS"] - before
    assert grown <= 4 * MIB + GROWTH, f"the server grew by {grown / MIB:.0f} MiB"


def _serve_in_child(port: str, ipc_root: str, max_bytes: str) -> None:
    ExecutionServer.bind(
        Endpoint.of(int(port), transport_mode=TransportMode.TCP, config=child_config(ipc_root)),
        dispatch,
        retention=RetentionPolicy(max_bytes=int(max_bytes)),
    ).serve_forever()


if __name__ == "__main__":
    _serve_in_child(*sys.argv[1:])


def test_a_forgotten_result_is_gone_and_its_bytes_are_free() -> None:
    """A new execution under an id whose old record expired must not inherit its result."""
    cache = ResultCache(budget=1 << 20)
    cache.put("plate-1/A01", [b"x" * 1000])
    used = cache._size
    cache.forget("plate-1/A01")
    cache.forget("never-there")
    assert used > 1000
    assert cache.get("plate-1/A01") is None and cache._size == 0
