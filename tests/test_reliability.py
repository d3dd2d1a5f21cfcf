"""Reliability and security, proven with real sockets and real subprocesses (issue 7).

* Hostile input on every socket every server binds — the execution server's ROUTER and PUB,
  the viewer's ROUTER and PULL, the AckChannel's ROUTER and PULL: thousands of Hypothesis-made
  multipart messages plus targeted ones (pickles that would create a file, huge declared
  shapes over tiny buffers, frames over ``max_message_bytes``). Afterwards every server still
  answers, still works, holds no more threads or memory, and nothing was unpickled.
* Killed peers: a SIGKILLed execution server with three clients waiting, a SIGKILLed viewer
  mid-stream, a SIGKILLed client process.
* Nothing lost under load (8 clients x 2,500 tasks; 4 senders x 5,000 images), flat memory
  over a 100,000-task soak (``@pytest.mark.soak``), no thread or IPC-file leaks.
* CURVE end to end over TCP (execution, streaming, acks), strangers get nothing, and a TCP
  relay in the middle sees no plaintext.

What other modules already prove is not repeated here: garbage on a bare ZMQServer's sockets
and on the execution control socket, one client losing a killed or frozen server, a killed
process worker (tests/test_server_client.py, tests/test_execution.py), CURVE on a bare
ZMQServer (tests/test_security.py). Nothing sleeps as synchronisation: tests wait on futures,
events and conditions, each with a deadline.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import pickle
import queue
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zmq.utils.monitor import parse_monitor_message

from tests.conftest import authenticate
from tests.executors import answer, dispatch, echo
from tests.strategies import garbage_frames, hostile_frames, to_wire
from zmqruntime import (
    AckChannel,
    ClientCurve,
    CurveKeyPair,
    GlobalQueueTrackerRegistry,
    QueueTracker,
    ServerCurve,
    TransportMode,
    ZMQClient,
    ZMQConfig,
    ZMQTimeoutError,
    generate_curve_keypair,
)
from zmqruntime.core import codec
from zmqruntime.core.ack import AckSender
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import (
    Accepted,
    Ack,
    AckOutcome,
    BatchFrame,
    Cancel,
    Completion,
    ErrorReply,
    Execute,
    ExecutionRecord,
    ImageFrame,
    ImageSent,
    Message,
    Ping,
    Pong,
    ProgressEvent,
    Shutdown,
)
from zmqruntime.core.serializers import PickleSerializer, SafeSerializer
from zmqruntime.core.transport import find_free_ipc_port, find_free_port_pair
from zmqruntime.core.zap import ZapHandler
from zmqruntime.errors import RemoteProtocolError, ServerLost, TaskCancelled, TaskFailed
from zmqruntime.execution import (
    Execution,
    ExecutionClient,
    ExecutionServer,
    ExecutionStatus,
    RetentionPolicy,
    WorkerPool,
)
from zmqruntime.protocols import TaskContext
from zmqruntime.streaming import ImageSender, StreamingServer, StreamMode

pytestmark = pytest.mark.usefixtures("no_thread_leak")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
needs_curve = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")

WAIT = 20.0
"""Deadline for what normally takes milliseconds; reached only when something is broken."""
REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).with_name("reliability_scripts.py")
TCP, IPC = TransportMode.TCP, TransportMode.IPC
SIZE_LIMIT = 64 * 1024
"""``max_message_bytes`` in the size-limit test: a larger frame drops the peer that sent it.
(The fuzzed servers keep the default limit, so that every hostile message reaches the
decoder.)"""

Image = numpy.ndarray[Any, Any]
RawContext = zmq.Context[zmq.Socket[bytes]]
RawSocket = zmq.Socket[bytes]


# --- small helpers --------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` in short bounded waits until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.005)


def free_port(mode: TransportMode, config: ZMQConfig) -> int:
    if mode is TCP:
        return find_free_port_pair(config)
    return find_free_ipc_port(config)


def rss_kib(pid: int | str = "self") -> int:
    """Resident memory of a process in KiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def task_count(pid: int | str = "self") -> int:
    """Native threads of a process (libzmq's I/O threads included)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def traced_zmqruntime_bytes() -> int:
    """Bytes of live Python objects allocated with zmqruntime code on the stack."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, "*zmqruntime*", all_frames=True)]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


THREAD_PREFIX = "zmqruntime-"
"""Every thread zmqruntime starts with ``threading.Thread`` is named with this prefix."""


def is_ours(thread: threading.Thread) -> bool:
    """True for a thread zmqruntime started: named ``zmqruntime-…``; or running (a Timer:
    about to call) zmqruntime code under another name, as the remote pool's inlet's unnamed
    ``threading.Timer``s that wait for a worker's outcome."""
    if thread.name.startswith(THREAD_PREFIX):
        return True
    if isinstance(thread, threading.Timer):
        target = thread.function
    else:
        target = getattr(thread, "_target", None)  # deleted once the thread's run ended
    module = getattr(target, "__module__", None) or ""
    return module == "zmqruntime" or module.startswith("zmqruntime.")


def our_threads() -> frozenset[threading.Thread]:
    return frozenset(t for t in threading.enumerate() if t.is_alive() and is_ours(t))


def native_threads() -> dict[int, str]:
    """This process's native threads that no Python thread accounts for, by id, with their
    names: libzmq's I/O and reaper threads (``ZMQbg/…``, a pair per context) and anything
    else native. Other libraries' Python threads (a process pool's manager and queue feeder,
    pyzmq's garbage collector …) are not counted: they come and go on their own."""
    tasks = os.listdir("/proc/self/task")
    python = {t.native_id for t in threading.enumerate()}
    natives = {}
    for task in tasks:
        if int(task) in python:
            continue
        with contextlib.suppress(OSError):  # it ended since the listing
            natives[int(task)] = Path(f"/proc/self/task/{task}/comm").read_text().strip()
    return natives


@attrs.frozen
class Resources:
    """What a process holds: zmqruntime's threads, native threads (libzmq's), open files,
    memory. Threads of other libraries are left out: a process pool's manager thread that
    ends during a test is not a leak, and must not make a leak check fail."""

    threads: frozenset[threading.Thread]
    natives: frozenset[int]
    fds: int
    rss_kib: int
    traced: int

    @classmethod
    def now(cls) -> Resources:
        return cls(
            threads=our_threads(),
            natives=frozenset(native_threads()),
            fds=fd_count(),
            rss_kib=rss_kib(),
            traced=traced_zmqruntime_bytes() if tracemalloc.is_tracing() else 0,
        )


def leaks(before: Resources, *, extra_fds: int) -> list[str]:
    """What the process holds now beyond ``before``: zmqruntime threads and native threads
    that were not there before, files beyond ``extra_fds`` more. Compared by identity, not
    by count: a thread that ended cannot hide one that was left behind."""
    found = [f"thread {t!r}" for t in our_threads() - before.threads]
    found += [
        f"native thread {tid} {name!r}"
        for tid, name in native_threads().items()
        if tid not in before.natives
    ]
    if (fds := fd_count()) > before.fds + extra_fds:
        found.append(f"{fds} open files, {before.fds} + {extra_fds} allowed")
    return found


def left_behind(before: Resources, *, extra_fds: int, timeout: float = 5.0) -> list[str]:
    """:func:`leaks` after up to ``timeout`` seconds for them to go: a joined thread's native
    thread ends a moment after the join returned, and sockets closed a moment ago keep their
    files for up to ``linger`` seconds. What leaked is still there at the deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while (found := leaks(before, extra_fds=extra_fds)) and time.monotonic() < deadline:
        pause.wait(0.005)
    return found


def assert_bounded(
    before: Resources, after: Resources, *, extra_fds: int = 4, settle: float = 5.0
) -> None:
    """Hostile input left no thread, no native thread and (almost) no memory behind."""
    # at once: no zmqruntime thread started since ``before`` (one ending is not a leak)
    assert after.threads <= before.threads, sorted(map(repr, after.threads - before.threads))
    assert not (found := left_behind(before, extra_fds=extra_fds, timeout=settle)), found
    # Python objects that zmqruntime allocated and still holds: records of the few valid
    # requests among the garbage at most — never one per message.
    assert after.traced - before.traced < 512 * 1024, (before, after)
    # The whole process (Hypothesis, the test's own sockets …): coarse, but no runaway.
    assert after.rss_kib - before.rss_kib < 64 * 1024, (before, after)


def raw_socket(context: RawContext, kind: int, url: str, config: ZMQConfig) -> RawSocket:
    """A hand-made socket presenting this user's credentials (see ``authenticate``)."""
    sock = context.socket(kind)
    sock.linger = 0
    sock.sndhwm = sock.rcvhwm = 100_000
    authenticate(sock, url, config)
    sock.connect(url)
    return sock


@contextlib.contextmanager
def raw_context() -> Iterator[RawContext]:
    context: RawContext = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


@pytest.fixture
def quiet_zmqruntime() -> Iterator[None]:
    """Keep the thousands of "dropped a malformed message" warnings out of the log capture
    (pytest would keep every record in memory and blur the memory measurement). Errors and
    logged exceptions still show."""
    logger = logging.getLogger("zmqruntime")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@pytest.fixture
def traced_memory() -> Iterator[None]:
    tracemalloc.start(6)
    try:
        yield
    finally:
        tracemalloc.stop()


# --- the leak checks can fail, and only leaks fail them ------------------------------------
#
# Each scenario prepares, yields (``before`` is taken), then acts; what it leaves running is
# ended through the ExitStack once the check was made.

Scenario = Callable[[contextlib.ExitStack], Iterator[None]]


def _idle_thread(stack: contextlib.ExitStack, name: str) -> threading.Thread:
    """A started thread that waits until the stack closes."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name=name, daemon=True)
    thread.start()
    stack.callback(thread.join)
    stack.callback(stop.set)
    return thread


def _a_zmqruntime_thread_starts(stack: contextlib.ExitStack) -> Iterator[None]:
    yield
    _idle_thread(stack, f"{THREAD_PREFIX}leaked")


def _an_unnamed_timer_of_zmqruntime_starts(stack: contextlib.ExitStack) -> Iterator[None]:
    yield  # as the inlet's outcome timers: unnamed, they call zmqruntime when they fire
    timer = threading.Timer(3600, codec.encode, (Ping(request_id=1),))
    timer.start()
    stack.callback(timer.join)
    stack.callback(timer.cancel)


def _a_zap_handler_starts(stack: contextlib.ExitStack) -> Iterator[None]:
    context: RawContext = stack.enter_context(raw_context())
    context.socket(zmq.PAIR).close()  # the context's native threads start before ``before``
    yield
    handler = ZapHandler.start(context)
    stack.callback(handler.stop, 10.0)


def _a_zmq_context_is_left_open(stack: contextlib.ExitStack) -> Iterator[None]:
    yield
    context: RawContext = stack.enter_context(raw_context())
    context.socket(zmq.PAIR).close()  # libzmq starts its I/O and reaper threads


def _zmq_sockets_are_left_open(stack: contextlib.ExitStack) -> Iterator[None]:
    context: RawContext = stack.enter_context(raw_context())
    context.socket(zmq.PAIR).close()  # no new native threads below: only the sockets leak
    yield
    for _ in range(3):  # two files each: its mailbox and its listening TCP socket
        sock = context.socket(zmq.ROUTER)
        sock.bind_to_random_port("tcp://127.0.0.1")
        stack.callback(sock.close, linger=0)  # kept: pyzmq closes a socket it collects


def _os_sockets_are_left_open(stack: contextlib.ExitStack) -> Iterator[None]:
    yield
    for _ in range(3):
        for sock in socket.socketpair():
            stack.callback(sock.close)


def _a_foreign_thread_ends(stack: contextlib.ExitStack) -> Iterator[None]:
    # the flake this check had: a process pool's manager thread in ``before``, gone after
    substack = stack.enter_context(contextlib.ExitStack())
    _idle_thread(substack, "Thread-foreign")
    yield
    substack.close()


def _a_foreign_thread_starts(stack: contextlib.ExitStack) -> Iterator[None]:
    yield
    _idle_thread(stack, "Thread-foreign")


def _a_zmqruntime_thread_ends(stack: contextlib.ExitStack) -> Iterator[None]:
    # as an inlet's outcome timer, cancelled as ``before`` was taken
    timer = threading.Timer(3600, codec.encode, (Ping(request_id=1),))
    timer.start()
    yield
    timer.cancel()
    timer.join()


def _a_zmq_context_is_closed(stack: contextlib.ExitStack) -> Iterator[None]:
    substack = stack.enter_context(contextlib.ExitStack())
    context: RawContext = substack.enter_context(raw_context())
    router = context.socket(zmq.ROUTER)
    router.bind_to_random_port("tcp://127.0.0.1")
    yield
    substack.close()


def _bounds_after(scenario: Scenario, check: Callable[[Resources, Resources], None]) -> None:
    with contextlib.ExitStack() as stack:
        steps = scenario(stack)
        next(steps)
        before = Resources.now()
        next(steps, None)
        check(before, Resources.now())


@linux_only
@pytest.mark.parametrize(
    ("scenario", "shown"),
    [
        pytest.param(scenario, shown, id=scenario.__name__.strip("_"))
        for scenario, shown in [
            (_a_zmqruntime_thread_starts, r"zmqruntime-leaked"),
            (_an_unnamed_timer_of_zmqruntime_starts, r"<Timer\("),
            (_a_zap_handler_starts, r"zmqruntime-zap"),
            (_a_zmq_context_is_left_open, r"native thread \d+ 'ZMQbg/"),
            (_zmq_sockets_are_left_open, r"open files, \d+ \+ 4 allowed"),
            (_os_sockets_are_left_open, r"open files, \d+ \+ 4 allowed"),
        ]
    ],
)
def test_the_leak_check_fails_on_a_leak(scenario: Scenario, shown: str) -> None:
    """assert_bounded can fail: each leak the hostile-input tests look for fails it, named.
    (A leak stays: half a second to let it go proves as much as five.)"""

    def check(before: Resources, after: Resources) -> None:
        with pytest.raises(AssertionError, match=shown):
            assert_bounded(before, after, settle=0.5)

    _bounds_after(scenario, check)


@linux_only
@pytest.mark.parametrize(
    "scenario",
    [
        _a_foreign_thread_ends,
        _a_foreign_thread_starts,
        _a_zmqruntime_thread_ends,
        _a_zmq_context_is_closed,
    ],
    ids=lambda scenario: scenario.__name__.strip("_"),
)
def test_the_leak_check_ignores_what_is_not_a_leak(scenario: Scenario) -> None:
    """Threads of other libraries come and go, and ours may end: none of that is a leak."""
    _bounds_after(scenario, assert_bounded)


# --- pickles that must never be unpickled ---------------------------------------------------


@attrs.frozen
class Trap:
    """Unpickling this runs ``os.mkdir(path)``: the marker appears if anything unpickles it."""

    path: str

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


@pytest.fixture
def pickle_spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every call of ``pickle.loads`` in this process, counted (the call still happens)."""
    calls: list[int] = []
    real_loads = pickle.loads

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_loads(*args, **kwargs)

    monkeypatch.setattr(pickle, "loads", spy)
    return calls


def trap_pickles(marker: Path) -> list[bytes]:
    """The trap in every pickle protocol, and as PickleSerializer frames it."""
    blobs = [
        pickle.dumps(Trap(str(marker)), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)
    ]
    blobs += [bytes(memoryview(f)) for f in PickleSerializer().dumps({"task": Trap(str(marker))})]
    return blobs


def test_the_trap_works(tmp_path: Path) -> None:
    """The proof below can fail: unpickling a trap does create its marker."""
    marker = tmp_path / "unpickled"
    for blob in trap_pickles(marker):
        pickle.loads(blob)
        assert marker.is_dir()
        marker.rmdir()


def _image_header(shape: Any, dtype: Any, pixels: bytes) -> list[bytes]:
    """An image message as a peer could write it: any declared dtype and shape."""
    base = ImageFrame(image_id="hostile", dtype="|u1", shape=(1,), pixels=b"\0")
    frames = to_wire(codec.encode(base))
    header = json.loads(frames[0])
    header["shape"], header["dtype"] = shape, dtype
    return [json.dumps(header).encode(), pixels]


def targeted_frames(marker: Path) -> list[list[bytes]]:
    """Hand-made attacks on top of the Hypothesis ones: trap pickles in every place a buffer
    or a frame can travel, huge declared shapes over tiny buffers, ill-typed fields, wrong
    versions, truncated and extra frames, ack addresses that lead nowhere."""
    frames: list[list[bytes]] = []
    pickles = trap_pickles(marker)
    for blob in pickles:
        frames.append([blob])
        frames.append([blob, blob])
        for name in ("safe", "pickle", "Pickle", "json-only"):
            frames.append(
                to_wire(codec.encode(Execute(request_id=1, serializer=name, payload=(blob,))))
            )
        # a valid safe payload whose bytes happen to be a pickle: carried, never loaded
        safe = SafeSerializer().dumps({"blob": blob})
        frames.append(to_wire(codec.encode(Execute(request_id=2, payload=tuple(safe)))))
        frames.append(
            to_wire(
                codec.encode(Completion(record=_record("x"), serializer="pickle", result=(blob,)))
            )
        )
        frames.append(_image_header([len(blob)], "|u1", blob))  # a valid image of the bytes
        frames.append(_image_header([len(blob) // 8], "|O", blob[: len(blob) // 8 * 8]))
        frames.append(_image_header([len(blob) // 8], "O", blob[: len(blob) // 8 * 8]))
        frames.append(to_wire(codec.encode(Ack(image_id=blob.hex(), tracker_key="t"))))
        frames.append(to_wire(codec.encode(ImageSent(image_id=blob.hex()[:64], tracker_key="t"))))
    tiny = bytes(16)
    for shape, dtype in (
        ([65536, 65536], "<u2"),
        ([2**31, 2**31], "|u1"),
        ([10**12], "<f8"),
        ([100_000, 100_000, 100], "<f8"),
        ([2, 2**62], "<c16"),
        ([4], "<u4"),  # 16 bytes: the one that is right
    ):
        frames.append(_image_header(shape, dtype, tiny))
        array_payload = [
            json.dumps({"$zr": "array", "dtype": dtype, "shape": shape, "frame": 1}).encode(),
            tiny,
        ]
        frames.append(to_wire(codec.encode(Execute(request_id=3, payload=tuple(array_payload)))))
    ping = json.loads(to_wire(codec.encode(Ping(request_id=7)))[0])
    for version in (0, 2, "1", 1.0, None, -1, 2**64, [1]):
        frames.append([json.dumps({**ping, "version": version}).encode()])
    execute = json.loads(to_wire(codec.encode(Execute(request_id=9, payload=(b"{}",))))[0])
    for key, value in (
        ("request_id", "9"),
        ("request_id", 9.0),
        ("request_id", True),
        ("request_id", -9),
        ("labels", ["a", "b"]),
        ("labels", {"a": 1}),
        ("execution_id", 12),
        ("execution_id", "x" * 300),
        ("serializer", None),
        ("frames", 0),
        ("frames", 5),
        ("payload", "AAAA"),
    ):
        frames.append([json.dumps({**execute, key: value}).encode(), b"{}"])
    cancel = to_wire(codec.encode(Cancel(request_id=4, execution_id="nobody")))
    frames += [[cancel[0][: len(cancel[0]) // 2]], [*cancel, b"extra"], [b"", *cancel, b""]]
    for address in (
        "tcp://10.255.255.1:9",  # unroutable: the connect just never completes
        "tcp://127.0.0.1:1",
        "ipc:///nonexistent/zmqruntime-test.sock",
        "inproc://nowhere",
        "udp://127.0.0.1:5",
        "tcp://[::1",
        "tcp://",
    ):
        image = ImageFrame(
            image_id=f"to-{address}", dtype="|u1", shape=(2,), pixels=b"ab", ack_to=address
        )
        frames.append(to_wire(codec.encode(image)))
    return frames


def _record(execution_id: str) -> ExecutionRecord:
    return ExecutionRecord(execution_id=execution_id, status=ExecutionStatus.COMPLETE)


# --- the hostile corpus ---------------------------------------------------------------------

CORPUS_BATCH = 25
CORPUS_EXAMPLES = 80
"""80 Hypothesis examples of 25 messages: 2,000 hostile messages, shared by every socket."""


@pytest.fixture(scope="module")
def hostile_corpus() -> list[list[bytes]]:
    """Two thousand messages from :func:`hostile_frames` and :func:`garbage_frames`.

    Drawing them costs several milliseconds each, so they are drawn once per module and
    thrown at every socket (the targeted ones are added per test).
    """
    corpus: list[list[bytes]] = []

    @settings(
        max_examples=CORPUS_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )
    @given(
        batch=st.lists(
            st.one_of(hostile_frames(), garbage_frames()),
            min_size=CORPUS_BATCH,
            max_size=CORPUS_BATCH,
        )
    )
    def draw(batch: list[list[bytes]]) -> None:
        corpus.extend(frames for frames in batch if frames)

    draw()
    assert len(corpus) > 1500
    return corpus


def _decoded(frames: Sequence[bytes]) -> Message | None:
    try:
        return codec.decode(frames)
    except RemoteProtocolError:
        return None


def _body(frames: list[bytes]) -> list[bytes]:
    """What a ROUTER server decodes: an empty first frame reads as a REQ envelope delimiter."""
    return frames[1:] if frames and frames[0] == b"" else frames


def _show(batch: Sequence[list[bytes]]) -> str:
    """A failing batch, short enough to read."""
    return "; ".join(repr([frame[:80] for frame in frames]) for frames in batch)


def _batches(items: Sequence[list[bytes]], size: int = 100) -> Iterator[Sequence[list[bytes]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fuzz_control(
    url: str, messages: Sequence[list[bytes]], config: ZMQConfig
) -> collections.Counter[str]:
    """Send every message to a ROUTER from one DEALER; each gets exactly one reply.

    Valid shutdown requests are left out (they would stop the server). An execute that
    happened to be valid is answered by its Completion (a reply: it carries the request id);
    Completions pushed without one (after a confirmed execute) are counted apart.
    """
    counts: collections.Counter[str] = collections.Counter()
    with raw_context() as context:
        dealer = raw_socket(context, zmq.DEALER, url, config)
        for batch in _batches(messages):
            expected = 0
            for frames in batch:
                message = _decoded(_body(frames))
                if isinstance(message, Shutdown):
                    continue
                dealer.send_multipart(frames)
                expected += 1
                counts["valid" if message is not None else "invalid"] += 1
            got = 0
            while got < expected:
                assert dealer.poll(int(WAIT * 1000)), (
                    f"the server stopped answering: {expected - got} replies missing after "
                    f"this batch: {_show(batch)}"
                )
                reply_frames = dealer.recv_multipart()
                reply = codec.decode(_body(reply_frames))  # servers only send valid messages
                if isinstance(reply, Completion) and reply.request_id is None:
                    counts["completions"] += 1
                    continue
                got += 1
                counts["errors" if isinstance(reply, ErrorReply) else "answers"] += 1
    return counts


def fuzz_pull(
    url: str,
    messages: Sequence[list[bytes]],
    sentinel: Callable[[int], list[bytes]],
    arrived: Callable[[int], bool],
    config: ZMQConfig,
) -> int:
    """Push every message to a PULL socket; after each batch a valid sentinel must arrive
    (one PUSH connection keeps order, so by then the whole batch has been taken in)."""
    sent = 0
    with raw_context() as context:
        push = raw_socket(context, zmq.PUSH, url, config)
        for number, batch in enumerate(_batches(messages)):
            for frames in batch:
                push.send_multipart(frames)
                sent += 1
            push.send_multipart(sentinel(number))
            wait_until(
                lambda n=number: arrived(n),  # type: ignore[misc]
                f"sentinel {number}: the server stopped taking messages after {_show(batch)}",
            )
    return sent


# --- 1. hostile input: the execution server's control (ROUTER) and data (PUB) sockets -------


@linux_only
def test_execution_server_survives_hostile_input_on_both_sockets(
    config: ZMQConfig,
    tmp_path: Path,
    hostile_corpus: list[list[bytes]],
    pickle_spy: list[int],
    quiet_zmqruntime: None,
    traced_memory: None,
) -> None:
    marker = tmp_path / "unpickled"
    targeted = targeted_frames(marker)
    with (
        ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=TCP, config=config), echo
        ) as server,
        ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=TCP, config=config)
        ) as client,
    ):
        assert client.submit({"warm": "up"}).result(WAIT) == {"warm": "up"}
        before = Resources.now()

        counts = fuzz_control(
            server.server.sockets.control_url, [*hostile_corpus, *targeted], config
        )
        assert counts["invalid"] >= 1500, counts
        assert counts["errors"] >= counts["invalid"], counts

        # The PUB socket only ever hears subscriptions from its peers: an XSUB can send it
        # anything. Each batch ends with a subscription to a fresh topic and a task published
        # on it, which must reach the XSUB: the PUB took in the batch and still publishes.
        subscriptions = [
            [flag + topic]
            for flag in (b"\x00", b"\x01", b"\x02", b"")
            for topic in (b"", b"x", b"\xff" * 300, bytes(range(256)))
        ]
        published = 0
        with raw_context() as context:
            xsub = raw_socket(context, zmq.XSUB, server.server.sockets.data_url, config)
            corpus = [*hostile_corpus, *targeted, *subscriptions * 10]
            random.Random(7).shuffle(corpus)
            for number, batch in enumerate(_batches(corpus, 200)):
                for frames in batch:
                    xsub.send_multipart(frames)
                topic = f"probe-{number}/"
                xsub.send(b"\x01" + topic.encode())
                # the subscription travels on the same pipe as the batch, behind it
                wait_until(
                    lambda t=topic: _published_to(client, xsub, t),  # type: ignore[misc]
                    f"publication on {topic} after {len(batch)} hostile subscriptions",
                )
                published += 1
        assert published >= 10
        after = Resources.now()

        assert_bounded(before, after)
        assert client.ping().role == "execution"
        task = {"after": ["hostile", 1, 2.5], "array": numpy.arange(6, dtype="<u2")}
        result = client.submit(task).result(WAIT)
        assert result["after"] == task["after"]
        assert numpy.array_equal(result["array"], task["array"])
    assert not marker.exists(), "a pickle received from a socket was unpickled"
    assert pickle_spy == []


@linux_only
def test_a_remote_pools_inlet_survives_hostile_input(
    config: ZMQConfig,
    tmp_path: Path,
    hostile_corpus: list[list[bytes]],
    pickle_spy: list[int],
    quiet_zmqruntime: None,
) -> None:
    """The inlet a remote pool binds for its workers is one more socket exposed to a network."""
    marker = tmp_path / "unpickled"
    spawn = multiprocessing.get_context("spawn")
    with (
        concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as engine,
        ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=TCP, config=config),
            dispatch,
            pool=WorkerPool.remote(engine),
        ) as server,
        ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=TCP, config=config)
        ) as client,
    ):
        assert client.submit({"op": "square", "n": 2, "steps": 1}).result(WAIT) == 4
        address = server.pool.inlet_address
        assert address is not None
        before = Resources.now()
        pongs = 0
        with raw_context() as context:
            dealer = raw_socket(context, zmq.DEALER, address, config)
            corpus = [*hostile_corpus, *targeted_frames(marker)]
            for number, batch in enumerate(_batches(corpus)):
                for frames in batch:
                    dealer.send_multipart(frames)
                # one connection keeps order: the pong comes once the batch was handled
                dealer.send_multipart(codec.encode(Ping(request_id=10**9 + number)))
                while True:
                    assert dealer.poll(int(WAIT * 1000)), f"the inlet went quiet: {_show(batch)}"
                    reply = codec.decode(_body(dealer.recv_multipart()))
                    if isinstance(reply, Pong) and reply.request_id == 10**9 + number:
                        pongs += 1
                        break
        assert pongs >= 10
        assert_bounded(before, Resources.now())
        execution = client.submit({"op": "square", "n": 3, "steps": 2})
        assert execution.result(WAIT) == 9
        assert execution.status().progress is not None
        assert client.summary().counts["complete"] == 2  # nothing hostile became a record
    assert not marker.exists(), "a pickle received from a socket was unpickled"
    assert pickle_spy == []


def _published_to(client: ExecutionClient, xsub: RawSocket, topic: str) -> bool:
    """Run a task whose id starts with ``topic``; True if the XSUB received its completion.

    A subscription reaches the PUB asynchronously: a completion published before it did is
    not seen, so the caller tries again with a new task.
    """
    execution_id = f"{topic}{uuid.uuid4().hex[:8]}"
    assert client.submit(None, execution_id=execution_id).result(WAIT) is None
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        if xsub.poll(50):
            frames = xsub.recv_multipart()
            if frames[0].startswith(topic.encode()):
                assert isinstance(codec.decode(frames[1:]), Completion)
                return True
    return False


# --- 1. hostile input: the viewer's control (ROUTER) and data (PULL) sockets ----------------


SENTINEL = "zmqruntime-test-sentinel"


class Recorder:
    """A sink that keeps a copy of every image it was shown, in order — or, with
    ``keep_all=False``, of the last one only (so that what the sink holds does not count as
    memory the viewer kept) and notes any image that is not plain numbers or is huge."""

    def __init__(self, *, keep_all: bool = True) -> None:
        self.keep_all = keep_all
        self.images: list[tuple[Image, dict[str, Any]]] = []
        self.sentinels: set[int] = set()
        self.odd: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, image: Image, metadata: Mapping[str, Any], /) -> None:
        with self.lock:
            if image.dtype.kind not in "biufc" or image.nbytes >= SIZE_LIMIT:
                self.odd.append(f"{image.dtype} {image.shape}")
            if not self.keep_all:
                self.images.clear()
            self.images.append((numpy.array(image), dict(metadata)))
            if isinstance(metadata.get(SENTINEL), int):
                self.sentinels.add(metadata[SENTINEL])


@linux_only
def test_viewer_survives_hostile_input_on_both_sockets(
    config: ZMQConfig,
    tmp_path: Path,
    hostile_corpus: list[list[bytes]],
    pickle_spy: list[int],
    quiet_zmqruntime: None,
    traced_memory: None,
) -> None:
    marker = tmp_path / "unpickled"
    targeted = targeted_frames(marker)
    sink = Recorder(keep_all=False)
    with (
        StreamingServer.bind(
            Endpoint.of(port=0, transport_mode=TCP, config=config), sink
        ) as viewer,
        ImageSender.to(
            Endpoint.of(port=viewer.port_number, transport_mode=TCP, config=config)
        ) as sender,
    ):
        sender.send(numpy.zeros((4, 4), numpy.uint8), {"warm": "up"})
        sender.wait_all_acked(WAIT)
        before = Resources.now()

        counts = fuzz_control(
            viewer.server.sockets.control_url, [*hostile_corpus, *targeted], config
        )
        assert counts["invalid"] >= 1500 and counts["errors"] >= counts["invalid"], counts

        def sentinel(number: int) -> list[bytes]:
            image = ImageFrame(
                image_id=f"sentinel-{number}",
                dtype="|u1",
                shape=(1,),
                pixels=b"s",
                metadata={SENTINEL: number},
            )
            return to_wire(codec.encode(image))

        # Hundreds of distinct ack addresses: the viewer keeps at most 64 ack sockets (each
        # an eventfd, and a TCP socket while it tries to connect), so its files stay bounded.
        messages = [*hostile_corpus, *targeted, *_ack_addresses(range(2, 302))]
        random.Random(11).shuffle(messages)
        url = viewer.server.sockets.data_url
        sent = fuzz_pull(url, messages, sentinel, lambda n: n in sink.sentinels, config)
        wait_until(lambda: viewer.statistics().waiting == 0, "the sink to catch up")
        stats, server_stats = viewer.statistics(), viewer.server.statistics()
        assert server_stats.data_messages == 1 + sent + len(sink.sentinels)  # 1: warm-up
        # the viewer counts a batch's items: one message, as many received
        extra = sum(
            len(message.entries) - 1
            for message in map(_decoded, messages)
            if isinstance(message, BatchFrame)
        )
        assert stats.received + server_stats.data_errors <= server_stats.data_messages + extra
        assert stats.processed + stats.failed + stats.skipped == stats.received
        after = Resources.now()
        assert_bounded(before, after, extra_fds=2 * 64 + 8)
        # three hundred more addresses: no more files than before
        fuzz_pull(
            url,
            _ack_addresses(range(302, 602)),
            lambda n: sentinel(10_000 + n),
            lambda n: 10_000 + n in sink.sentinels,
            config,
        )
        assert_bounded(before, Resources.now(), extra_fds=2 * 64 + 8)
        assert client_ping(viewer.port_number, TCP, config).role == "viewer"
        image = numpy.arange(24, dtype="<i4").reshape(2, 3, 4)
        sender.send(image, {"after": "hostile"})
        sender.wait_all_acked(WAIT)
        shown, metadata = sink.images[-1]
        assert metadata == {"after": "hostile"}
        assert shown.dtype == image.dtype and numpy.array_equal(shown, image)
    assert not marker.exists(), "a pickle received from a socket was unpickled"
    assert pickle_spy == []
    # every image the viewer did show was a well-formed one: no object dtypes, no huge shapes
    assert sink.odd == []


def _ack_addresses(ports: range) -> list[list[bytes]]:
    """Valid images, each asking for its ack at another (closed) local port."""
    return [
        to_wire(
            codec.encode(
                ImageFrame(
                    image_id=f"a{port}",
                    dtype="|u1",
                    shape=(1,),
                    pixels=b"a",
                    ack_to=f"tcp://127.0.0.1:{port}",
                )
            )
        )
        for port in ports
    ]


def client_ping(port: int, mode: TransportMode, config: ZMQConfig) -> Pong:
    with ZMQClient(
        Endpoint.of(port=port, transport_mode=mode, config=config), connect_data=False
    ) as client:
        return client.ping(timeout=WAIT)


# --- 1. hostile input: the AckChannel's control (ROUTER) and data (PULL) sockets ------------


@linux_only
def test_ack_channel_survives_hostile_input_on_both_sockets(
    config: ZMQConfig,
    tmp_path: Path,
    hostile_corpus: list[list[bytes]],
    pickle_spy: list[int],
    quiet_zmqruntime: None,
    traced_memory: None,
) -> None:
    marker = tmp_path / "unpickled"
    targeted = targeted_frames(marker)
    registry = GlobalQueueTrackerRegistry()
    tracker = registry.get_or_create_tracker("sentinels")
    with (
        AckChannel.bind(
            Endpoint.of(port=0, transport_mode=TCP, config=config), registry=registry
        ) as channel,
        AckSender(config=config) as acks,
    ):
        tracker.register_sent("warm-up")
        acks.acknowledge(channel.address, "warm-up", "sentinels")
        assert tracker.wait_all_acknowledged(WAIT)
        before = Resources.now()

        counts = fuzz_control(
            channel.server.sockets.control_url, [*hostile_corpus, *targeted], config
        )
        assert counts["invalid"] >= 1500 and counts["errors"] >= counts["invalid"], counts

        def sentinel(number: int) -> list[bytes]:
            tracker.register_sent(f"sentinel-{number}")
            return to_wire(
                codec.encode(Ack(image_id=f"sentinel-{number}", tracker_key="sentinels"))
            )

        def arrived(number: int) -> bool:
            return tracker.get_pending_count() == 0

        messages = [*hostile_corpus, *targeted]
        sent = fuzz_pull(channel.server.sockets.data_url, messages, sentinel, arrived, config)
        sentinels = len(list(_batches(messages)))
        assert channel.server.statistics().data_messages == 1 + sent + sentinels  # 1: warm-up
        after = Resources.now()

        assert_bounded(before, after)
        assert client_ping(channel.port_number, TCP, config).role == "ack"
        # input never creates trackers, and the one tracker counts only what it was sent
        assert set(registry.get_all_trackers()) == {"sentinels"}
        statistics = tracker.statistics()
        assert statistics.sent == statistics.processed == 1 + sentinels
        assert statistics.pending == 0
        tracker.register_sent("after")
        acks.acknowledge(channel.address, "after", "sentinels", AckOutcome.FAILED, "on purpose")
        assert tracker.wait_all_acknowledged(WAIT)
        assert tracker.statistics().failed == 1
    assert not marker.exists(), "a pickle received from a socket was unpickled"
    assert pickle_spy == []


# --- 1. frames over max_message_bytes drop the peer that sent them, and only it -------------


def _disconnected(monitor: RawSocket, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if monitor.poll(50):
            event = parse_monitor_message(monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                return True
    return False


def _send_oversized(url: str, kind: int, oversized: list[bytes], config: ZMQConfig) -> None:
    """Send ``oversized`` from a fresh raw socket and wait until the server drops it."""
    with raw_context() as context:
        sock = context.socket(kind)
        sock.linger = 0
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        authenticate(sock, url, config)
        sock.connect(url)
        sock.send_multipart(oversized)
        assert _disconnected(monitor), (
            f"the server kept a peer that sent {len(oversized[-1])} bytes"
        )
        sock.disable_monitor()
        monitor.close(0)


@pytest.mark.parametrize("mode", [TCP, IPC], ids=["tcp", "ipc"])
def test_frames_over_the_size_limit_drop_only_that_peer(
    config: ZMQConfig, mode: TransportMode, tmp_path: Path
) -> None:
    cfg = attrs.evolve(config, max_message_bytes=SIZE_LIMIT)
    big = bytes(SIZE_LIMIT + 1)
    at_limit = numpy.full((256, 256), 7, numpy.uint8)  # exactly SIZE_LIMIT bytes of pixels
    too_big = numpy.full((256, 257), 7, numpy.uint8)
    sink = Recorder()
    registry = GlobalQueueTrackerRegistry()
    with (
        ExecutionServer.bind(Endpoint.of(port=0, transport_mode=mode, config=cfg), echo) as server,
        ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=mode, config=cfg)
        ) as client,
        StreamingServer.bind(Endpoint.of(port=0, transport_mode=mode, config=cfg), sink) as viewer,
        ImageSender.to(
            Endpoint.of(port=viewer.port_number, transport_mode=mode, config=cfg)
        ) as sender,
        AckChannel.bind(
            Endpoint.of(port=0, transport_mode=mode, config=cfg), registry=registry
        ) as channel,
    ):
        assert client.submit("up").result(WAIT) == "up"
        sender.send(at_limit)
        sender.wait_all_acked(WAIT)

        ping = to_wire(codec.encode(Ping(request_id=1)))
        oversized_execute = to_wire(codec.encode(Execute(request_id=2, payload=(big,))))
        oversized_image = to_wire(codec.encode(codec.image_from_array(too_big, image_id="big")))
        oversized_ack = to_wire(codec.encode(Ack(image_id="x" * (SIZE_LIMIT + 1), tracker_key="k")))
        requests = [s.server.statistics().requests for s in (server, viewer, channel)]
        data = [s.server.statistics().data_messages for s in (viewer, channel)]

        for target in (server.server, viewer.server, channel.server):
            url = target.sockets.control_url
            _send_oversized(url, zmq.DEALER, oversized_execute, cfg)
            _send_oversized(url, zmq.DEALER, [*ping, big], cfg)
        _send_oversized(server.server.sockets.data_url, zmq.XSUB, [b"\x01" + big], cfg)
        # not a subscription at all (an XSUB passes those on as they are)
        _send_oversized(server.server.sockets.data_url, zmq.XSUB, [b"\x02" + big], cfg)
        for target in (viewer.server, channel.server):
            _send_oversized(target.sockets.data_url, zmq.PUSH, oversized_image, cfg)
            _send_oversized(target.sockets.data_url, zmq.PUSH, oversized_ack, cfg)

        # nothing of it reached a handler; everyone else is served as before
        assert [s.server.statistics().requests for s in (server, viewer, channel)] == requests
        assert [s.server.statistics().data_messages for s in (viewer, channel)] == data
        assert viewer.statistics().received == 1
        assert client.submit({"still": "serving"}).result(WAIT) == {"still": "serving"}
        sender.send(at_limit, {"n": 2})
        sender.wait_all_acked(WAIT)
        assert len(sink.images) == 2 and numpy.array_equal(sink.images[-1][0], at_limit)
        for target in (viewer.server, channel.server):
            assert client_ping(target.bound_port, mode, cfg).pid == os.getpid()
        # a real client that sends an oversized request is dropped the same way: its request
        # fails at once instead of hanging, and it reconnects by itself
        with pytest.raises(ServerLost):
            client.submit({"blob": big}).result(WAIT)
        assert client.submit("and reconnects").result(WAIT) == "and reconnects"


# --- 1. nothing received is ever unpickled, on either side ----------------------------------


def test_nothing_received_is_ever_unpickled(
    config: ZMQConfig, tmp_path: Path, pickle_spy: list[int]
) -> None:
    marker = tmp_path / "unpickled"
    blobs = trap_pickles(marker)
    with (
        ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=TCP, config=config), echo
        ) as server,
        ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=TCP, config=config)
        ) as client,
    ):
        # a pickle as the payload of an execute, named "safe" and named "pickle"
        with raw_context() as context:
            dealer = raw_socket(context, zmq.DEALER, server.server.sockets.control_url, config)
            for blob in blobs:
                for name in ("safe", "pickle"):
                    request = Execute(request_id=5, serializer=name, payload=(blob,))
                    dealer.send_multipart(to_wire(codec.encode(request)))
                    assert dealer.poll(int(WAIT * 1000))
                    reply = codec.decode(dealer.recv_multipart())
                    assert isinstance(reply, ErrorReply), reply
                    assert ("cannot be decoded" if name == "safe" else "'pickle'") in reply.message
        # a client that pickles is refused by a server that does not
        pickler = ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=TCP, config=config),
            serializer=PickleSerializer(),
        )
        with pickler, pytest.raises(Exception, match="serialized with 'pickle'"):
            pickler.submit(Trap(str(marker))).result(WAIT)
        assert client.submit("fine").result(WAIT) == "fine"
        assert server.summary().counts["complete"] == 1

    # the other side: a hand-made server that publishes pickles as progress and pushes a
    # pickled result to a client with the default serializer
    with raw_context() as context:
        router = context.socket(zmq.ROUTER)
        pub = context.socket(zmq.PUB)
        router.linger = pub.linger = 0
        port = find_free_port_pair(config)
        pub.bind(f"tcp://127.0.0.1:{port}")
        router.bind(f"tcp://127.0.0.1:{config.control_port(port)}")
        received: list[Message] = []
        with ExecutionClient.to(
            Endpoint.of(port=port, transport_mode=TCP, config=config, insecure=True)
        ) as victim:
            victim.on_progress(received.append)
            execution = victim.submit({"n": 1}, execution_id="victim")
            assert router.poll(int(WAIT * 1000))
            identity, *request_frames = router.recv_multipart()
            request = codec.decode(request_frames)
            assert isinstance(request, Execute)
            accepted = Accepted(
                request_id=request.request_id,
                execution_id="victim",
                status=ExecutionStatus.QUEUED,
            )
            router.send_multipart([identity, *to_wire(codec.encode(accepted))])

            def published() -> bool:  # until the subscription is in and the pickles arrive
                for blob in blobs:
                    pub.send_multipart([b"victim", blob])
                    pub.send_multipart([b"victim", blob, blob])
                return victim.client.statistics().dropped >= 2 * len(blobs)

            wait_until(published, "the client to receive the published pickles")
            completion = Completion(
                record=_record("victim"), serializer="pickle", result=(blobs[-1],)
            )
            router.send_multipart([identity, *to_wire(codec.encode(completion))])
            error = execution.exception(WAIT)
            assert isinstance(error, RemoteProtocolError), error
            assert received == []  # nothing undecodable reached the progress callback
    assert not marker.exists(), "a pickle received from a socket was unpickled"
    assert pickle_spy == []


# --- 2. killed peers ------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class Children:
    """Starts child processes with their output in log files; kills what is left at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *argv: str, name: str, stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{name}-{len(self.started)}.log").open("wb")
        with log:
            process = subprocess.Popen(
                [sys.executable, *argv],
                cwd=REPO_ROOT,
                env=child_env(),
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log if stdout_pipe else subprocess.STDOUT,
            )
        self.started.append(process)
        return process

    def script(self, *args: object, **options: Any) -> subprocess.Popen[bytes]:
        return self.start(str(SCRIPTS), *map(str, args), name=str(args[0]), **options)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.tmp_path.glob("*.log"))

    def wait_serving(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        mode: TransportMode,
        config: ZMQConfig,
        role: str,
    ) -> Pong:
        deadline = time.monotonic() + WAIT
        with ZMQClient(
            Endpoint.of(port=port, transport_mode=mode, config=config), connect_data=False
        ) as probe:
            while True:
                if process.poll() is not None:
                    pytest.fail(f"the child exited with {process.returncode}: {self.logs()}")
                try:
                    pong = probe.ping(timeout=0.5)
                except (ZMQTimeoutError, ServerLost):
                    if time.monotonic() > deadline:
                        pytest.fail(f"the child never answered: {self.logs()}")
                    continue
                assert (pong.pid, pong.role) == (process.pid, role)
                return pong

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(WAIT)
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    started = Children(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


class Lines:
    """The lines a child prints, read by a thread (it ends when the child's stdout closes)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self._stdout = process.stdout
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, name="test-lines")
        self._thread.start()

    def _pump(self) -> None:
        for raw in self._stdout:
            self._lines.put(raw.decode().strip())
        self._lines.put("<end of output>")

    def next(self, timeout: float = WAIT) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the child printed nothing within {timeout}s")

    def join(self) -> None:
        self._thread.join(WAIT)


@pytest.mark.parametrize("mode", [TCP, IPC], ids=["tcp", "ipc"])
def test_killing_the_server_fails_three_waiting_clients_then_they_continue(
    children: Children, config: ZMQConfig, mode: TransportMode, tmp_path: Path
) -> None:
    port = free_port(mode, config)
    server = children.script("server", port, mode.value, tmp_path, 1, 1000)
    clients = [
        ExecutionClient.to(Endpoint.of(port=port, transport_mode=mode, config=config))
        for _ in range(3)
    ]
    with contextlib.ExitStack() as stack:
        for client in clients:
            stack.enter_context(client)
        children.wait_serving(server, port, mode, config, "execution")
        # one worker: the first client's task runs, every other one waits in the queue
        running = clients[0].submit({"op": "wait"})
        wait_until(
            lambda: clients[0].record(running.execution_id).status is ExecutionStatus.RUNNING,
            "the first task to run",
        )
        waiting = [running]
        for client in clients:
            for n in range(2):
                execution = client.submit({"op": "echo", "value": n}, confirm=True)
                execution.accepted.result(WAIT)
                waiting.append(execution)
        assert clients[0].summary().queued == 6

        ended: dict[str, tuple[float, BaseException | None]] = {}
        lock = threading.Lock()

        def wait_for(execution: Execution) -> None:
            error = execution.exception(WAIT)
            with lock:
                ended[execution.execution_id] = (time.monotonic(), error)

        threads = [threading.Thread(target=wait_for, args=(e,)) for e in waiting]
        for thread in threads:
            thread.start()
        killed_at = time.monotonic()
        server.kill()
        for thread in threads:
            thread.join(WAIT + 5)
        assert server.wait(WAIT) == -signal.SIGKILL
        assert len(ended) == len(waiting) == 7
        for execution_id, (when, error) in ended.items():
            assert isinstance(error, ServerLost), (execution_id, error)
            assert when - killed_at <= config.heartbeat_timeout, (
                f"{execution_id} learned of the kill after {when - killed_at:.2f}s"
            )

        # a new server on the same port (IPC: over the dead one's socket files); the same
        # clients reconnect by themselves and carry on
        restarted = children.script("server", port, mode.value, tmp_path, 1, 1000)
        children.wait_serving(restarted, port, mode, config, "execution")
        for number, client in enumerate(clients):
            wait_until(lambda c=client: _answers(c), f"client {number} to reconnect")
            value = {"client": number, "after": "restart"}
            assert client.submit({"op": "echo", "value": value}).result(WAIT) == value
        assert clients[0].summary().counts["complete"] == 3
        clients[0].shutdown()
        assert restarted.wait(WAIT) == 0


def _answers(client: ExecutionClient) -> bool:
    try:
        client.ping(timeout=0.5)
    except (ZMQTimeoutError, ServerLost):
        return False
    return True


@linux_only
@pytest.mark.parametrize("mode", [TCP, IPC], ids=["tcp", "ipc"])
def test_killing_the_viewer_mid_stream_reports_every_missing_image(
    children: Children, config: ZMQConfig, mode: TransportMode, tmp_path: Path
) -> None:
    port = free_port(mode, config)
    folder = tmp_path / "frames"
    viewer = children.start(
        "-m",
        "zmqruntime.streaming",
        "--port",
        str(port),
        "--transport",
        mode.value,
        "--ipc-root",
        str(tmp_path),
        "--sink",
        f"npy:{folder}",
        "--log-level",
        "WARNING",
        name="viewer",
    )
    children.wait_serving(viewer, port, mode, config, "viewer")
    overdue_after, send_timeout, max_in_flight = 0.5, 0.5, 32
    tracker = QueueTracker("doomed-viewer", timeout=overdue_after)
    with ImageSender.to(
        Endpoint.of(port=port, transport_mode=mode, config=config),
        tracker=tracker,
        max_in_flight=max_in_flight,
        send_timeout=send_timeout,
    ) as sender:
        sent: list[tuple[float, str]] = []  # (when send() returned, image id)
        refused: list[tuple[float, ZMQTimeoutError]] = []  # (how long send() waited, error)
        stop = threading.Event()

        def stream() -> None:
            number = 0
            while not stop.is_set():
                image = numpy.full((64, 64), number % 251, numpy.uint8)
                began = time.monotonic()
                try:
                    image_id = sender.send(image, {"n": number})
                except ZMQTimeoutError as error:  # the viewer is gone, max_in_flight reached
                    refused.append((time.monotonic() - began, error))
                    return
                sent.append((time.monotonic(), image_id))
                number += 1

        streamer = threading.Thread(target=stream)
        streamer.start()
        try:
            wait_until(lambda: tracker.statistics().processed >= 100, "a hundred acks")
            viewer.kill()  # mid-stream: the streamer keeps sending
            assert viewer.wait(WAIT) == -signal.SIGKILL
            killed_at = time.monotonic()
            # send() never blocks forever: at max_in_flight it gives up after send_timeout
            streamer.join(WAIT)
            assert not streamer.is_alive(), "send() blocked past its timeout"
        finally:
            stop.set()
            streamer.join(WAIT)
        assert len(refused) == 1, "the streamer should have stopped at max_in_flight"
        waited, error = refused[0]
        assert send_timeout - 0.05 <= waited < send_timeout + 2.0, waited
        assert f"max_in_flight={max_in_flight}" in str(error)
        assert tracker.get_pending_count() == max_in_flight

        ids = [image_id for _, image_id in sent]
        after_kill = [image_id for when, image_id in sent if when > killed_at]
        # every unacknowledged image is reported overdue once the tracker's timeout passed
        wait_until(
            lambda: len(tracker.get_stuck_images()) == max_in_flight, "the images to be overdue"
        )
        stuck = tracker.get_stuck_images()
        assert len(set(ids)) == len(ids)
        assert set(stuck) <= set(ids)
        assert set(after_kill) <= set(stuck)  # sent to a dead viewer: never acknowledged
        assert stuck == [i for i in ids if i in set(stuck)]  # oldest first
        statistics = tracker.statistics()
        assert statistics.sent == len(ids)
        assert statistics.processed + statistics.failed + statistics.skipped == (
            len(ids) - max_in_flight
        )
        assert (statistics.pending, statistics.stuck) == (max_in_flight, max_in_flight)
        assert statistics.processed >= 100 and tracker.has_stuck_images()
        with pytest.raises(ZMQTimeoutError, match=rf"^{max_in_flight} image\(s\) .* within 0.2s"):
            sender.wait_all_acked(0.2)
        with pytest.raises(ZMQTimeoutError, match=f"max_in_flight={max_in_flight}"):
            sender.send(numpy.zeros((64, 64), numpy.uint8))
        assert tracker.statistics().sent == len(ids)  # the refused image was not registered
        # every acknowledged image was written by the viewer's sink before it was acked
        assert len(list(folder.glob("*.npy"))) >= statistics.processed


class Gate:
    """A thread executor whose ``{"block": True}`` tasks wait (cooperatively) for a gate."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.ran: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, task: Any, ctx: TaskContext) -> Any:
        with self.lock:
            self.ran[ctx.execution_id] += 1
        if isinstance(task, dict) and task.get("block"):
            deadline = time.monotonic() + WAIT
            while not self.opened.wait(0.01):
                ctx.raise_if_cancelled()
                if time.monotonic() > deadline:
                    raise TimeoutError("the gate was never opened")
        return task


@pytest.mark.parametrize("mode", [TCP, IPC], ids=["tcp", "ipc"])
def test_a_killed_client_process_does_not_stop_the_server(
    children: Children, config: ZMQConfig, mode: TransportMode, tmp_path: Path
) -> None:
    gate = Gate()
    with ExecutionServer.bind(
        Endpoint.of(port=0, transport_mode=mode, config=config), gate, pool=WorkerPool.threads(2)
    ) as server:
        doomed = children.script(
            "client", server.port_number, mode.value, tmp_path, 4, stdout_pipe=True
        )
        lines, ids = Lines(doomed), []
        while (line := lines.next()) != "ready":
            kind, execution_id = line.split()
            assert kind == "accepted"
            ids.append(execution_id)
        assert len(ids) == 4
        wait_until(lambda: server.summary().running == 2, "two of its tasks to run")
        doomed.kill()
        assert doomed.wait(WAIT) == -signal.SIGKILL
        lines.join()

        with ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=mode, config=config)
        ) as other:
            assert other.ping().role == "execution"
            summary = other.summary()
            assert (summary.running, summary.queued) == (2, 2)  # its work goes on
            mine = other.submit({"n": "other"})
            gate.opened.set()
            assert mine.result(WAIT) == {"n": "other"}
            wait_until(
                lambda: all(
                    (record := server.record(i)) is not None and record.status.is_terminal
                    for i in ids
                ),
                "the dead client's tasks to end",
            )
            assert all(gate.ran[i] == 1 for i in ids)
            assert [server.record(i).status for i in ids] == [ExecutionStatus.COMPLETE] * 4  # type: ignore[union-attr]
            summary = other.summary()
            assert (summary.queued, summary.running, summary.counts["complete"]) == (0, 0, 5)
            # the completions for the dead client had nowhere to go: dropped, not queued
            wait_until(
                lambda: server.server.statistics().undeliverable >= 4,
                "the dead client's completions to be found undeliverable",
            )
            assert other.submit({"n": "still"}).result(WAIT) == {"n": "still"}


# --- 3. nothing lost under load -------------------------------------------------------------


@pytest.mark.timeout(300)  # about 20 s here
def test_eight_clients_twenty_thousand_tasks_lose_nothing(config: ZMQConfig) -> None:
    clients_n, per_client = 8, 2500
    ran: collections.Counter[str] = collections.Counter()
    ran_lock = threading.Lock()

    def work(task: Any, ctx: TaskContext) -> dict[str, int]:
        with ran_lock:
            ran[ctx.execution_id] += 1
        c, n = task["c"], task["n"]
        if n % 17 == 3:  # failures decided by the task's content
            raise RuntimeError(f"task {c}-{n} fails by design")
        if n % 29 == 0:  # a few ms: long enough for a cancel to catch it running
            pause = threading.Event()
            for _ in range(3):
                ctx.raise_if_cancelled()
                pause.wait(0.001)
            ctx.raise_if_cancelled()
        return {"c": c, "n": n, "square": n * n}

    published: collections.Counter[str] = collections.Counter()
    published_status: dict[str, ExecutionStatus] = {}
    published_lock = threading.Lock()

    def observe(message: ProgressEvent | Completion) -> None:
        if isinstance(message, Completion):
            with published_lock:
                published[message.record.execution_id] += 1
                published_status[message.record.execution_id] = message.record.status

    with (
        ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=TCP, config=config),
            work,
            pool=WorkerPool.threads(2),
            retention=RetentionPolicy(max_records=100_000),
            queue_limit=100_000,
        ) as server,
        ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=TCP, config=config)
        ) as observer,
        contextlib.ExitStack() as stack,
    ):
        observer.on_progress(observe)
        probes = confirm_subscription(observer, lambda: published)
        clients = [
            stack.enter_context(
                ExecutionClient.to(
                    Endpoint.of(port=server.port_number, transport_mode=TCP, config=config)
                )
            )
            for _ in range(clients_n)
        ]

        def drive(c: int) -> tuple[list[Execution], dict[str, bool]]:
            rng = random.Random(7000 + c)
            client = clients[c]
            submitted: list[Execution] = []
            cancels: dict[str, bool] = {}
            for n in range(per_client):
                submitted.append(client.submit({"c": c, "n": n}, execution_id=f"load-{c}-{n}"))
                if rng.random() < 0.04:
                    target = rng.choice(submitted[-60:]).execution_id
                    if target not in cancels:
                        cancels[target] = client.cancel(target)
            return submitted, cancels

        with concurrent.futures.ThreadPoolExecutor(clients_n) as drivers:
            outcomes = list(drivers.map(drive, range(clients_n)))
        executions = [e for submitted, _ in outcomes for e in submitted]
        cancels = {k: v for _, c in outcomes for k, v in c.items()}
        _done, not_done = concurrent.futures.wait([e.future for e in executions], timeout=120)
        assert not not_done, f"{len(not_done)} executions never ended"
        total = clients_n * per_client
        wait_until(
            lambda: sum(published.values()) >= total + len(probes),
            "every completion to be published",
        )
        summary = observer.summary()

    ids = [e.execution_id for e in executions]
    assert len(ids) == len(set(ids)) == total
    tally: collections.Counter[str] = collections.Counter()
    for execution in executions:
        eid = execution.execution_id
        c, n = (int(part) for part in eid.split("-")[1:])
        error = execution.future.exception()
        record = server.record(eid)
        assert record is not None and record.status.is_terminal, (eid, record)
        assert published[eid] == 1, f"{eid}: its end was published {published[eid]} times"
        assert published_status[eid] is record.status, eid
        assert ran[eid] <= 1, f"{eid} ran {ran[eid]} times"
        if error is None:
            assert execution.future.result() == {"c": c, "n": n, "square": n * n}, eid
            assert record.status is ExecutionStatus.COMPLETE and n % 17 != 3, eid
            # cancel() says True for a task it found running, which may then finish before it
            # looks at ctx.cancelled (CI saw one): that is still a complete, single run.
            assert ran[eid] == 1, eid
            tally["complete"] += 1
        elif isinstance(error, TaskFailed):
            assert n % 17 == 3 and error.error_type == "RuntimeError", (eid, error)
            assert error.error_message == f"task {c}-{n} fails by design", eid
            assert record.status is ExecutionStatus.FAILED and ran[eid] == 1, eid
            tally["failed"] += 1
        elif isinstance(error, TaskCancelled):
            assert cancels.get(eid) is True, f"{eid} was cancelled, but nobody cancelled it"
            assert record.status is ExecutionStatus.CANCELLED, eid
            tally["cancelled"] += 1
        else:
            pytest.fail(f"{eid} ended with {error!r}")
        if eid in cancels and not cancels[eid]:  # the cancel came after the end
            assert not isinstance(error, TaskCancelled), eid
    assert set(ran) <= {*ids, *probes}
    assert all(tally[kind] > 0 for kind in ("complete", "failed", "cancelled")), tally
    assert sum(tally.values()) == total
    assert (summary.queued, summary.running) == (0, 0)
    assert summary.counts["complete"] == tally["complete"] + len(probes)
    assert summary.counts["failed"] == tally["failed"]
    assert summary.counts["cancelled"] == tally["cancelled"]


def confirm_subscription(
    client: ExecutionClient, seen: Callable[[], Mapping[str, int]], task: Any = None
) -> list[str]:
    """Run probe tasks until one's completion arrives through ``client``'s progress
    subscription (a SUB misses what is published before its subscription reaches the PUB).
    Returns the probes' execution ids."""
    probes: list[str] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        probe = f"probe-{len(probes)}-{uuid.uuid4().hex[:8]}"
        probes.append(probe)
        client.submit({"c": -1, "n": 1} if task is None else task, execution_id=probe).result(WAIT)
        settle = time.monotonic() + 0.5
        while time.monotonic() < settle:
            if probe in seen():
                return probes
            threading.Event().wait(0.005)
    pytest.fail("the progress subscription never took effect")


@pytest.mark.parametrize("stream_mode", [StreamMode.ALL, StreamMode.LATEST], ids=["all", "latest"])
def test_four_senders_twenty_thousand_images_every_one_accounted_for(
    config: ZMQConfig, stream_mode: StreamMode
) -> None:
    senders_n, per_sender = 4, 5000
    shown: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def sink(image: Image, metadata: Mapping[str, Any]) -> None:
        key, n = metadata["sender"], metadata["n"]
        assert image.shape == (16, 16) and int(image[3, 5]) == n % 256
        with lock:
            if n % 97 == 5:
                refused[key] += 1
                raise ValueError(f"image {n} of {key} is refused by design")
            shown[key] += 1

    with (
        StreamingServer.bind(
            Endpoint.of(port=0, transport_mode=TCP, config=config), sink, mode=stream_mode
        ) as viewer,
        contextlib.ExitStack() as stack,
    ):
        senders = [
            stack.enter_context(
                ImageSender.to(
                    Endpoint.of(port=viewer.port_number, transport_mode=TCP, config=config),
                    tracker_key=f"sender-{i}",
                    max_in_flight=64,
                )
            )
            for i in range(senders_n)
        ]

        def stream(i: int) -> None:
            sender, key = senders[i], f"sender-{i}"
            for n in range(per_sender):
                sender.send(numpy.full((16, 16), n % 256, numpy.uint8), {"sender": key, "n": n})
            sender.wait_all_acked(WAIT)

        with concurrent.futures.ThreadPoolExecutor(senders_n) as streams:
            list(streams.map(stream, range(senders_n)))
        viewer_stats = viewer.statistics()

    for i, sender in enumerate(senders):
        key = f"sender-{i}"
        assert sender.tracker is not None
        stats = sender.tracker.statistics()
        assert stats.sent == per_sender, (key, stats)
        assert stats.processed + stats.skipped + stats.failed == stats.sent, (key, stats)
        assert (stats.pending, stats.unknown_acks, stats.duplicate_acks) == (0, 0, 0), stats
        assert stats.processed == shown[key], (key, stats)
        assert stats.failed == refused[key], (key, stats)
        if stream_mode is StreamMode.ALL:
            assert stats.skipped == 0 and stats.failed == len(range(5, per_sender, 97))
    total = senders_n * per_sender
    assert viewer_stats.received == total
    assert viewer_stats.processed + viewer_stats.skipped + viewer_stats.failed == total
    assert viewer_stats.processed == sum(shown.values())
    assert viewer_stats.waiting == 0


# --- 4. stays up, stays flat ----------------------------------------------------------------

SOAK_TASKS = 100_000
SOAK_BATCH = 2_500
SOAK_RSS_TOLERANCE_KIB = 10 * 1024


@linux_only
@pytest.mark.soak
@pytest.mark.timeout(400)  # about a minute here; room for a slow CI machine
def test_a_hundred_thousand_tasks_leave_the_server_flat(
    children: Children, config: ZMQConfig, tmp_path: Path
) -> None:
    port = free_port(IPC, config)
    process = children.script("server", port, IPC.value, tmp_path, 2, 1000)
    samples: dict[int, tuple[int, int, int]] = {}
    with ExecutionClient.to(Endpoint.of(port=port, transport_mode=IPC, config=config)) as client:
        children.wait_serving(process, port, IPC, config, "execution")
        task = {"op": "echo"}
        done = 0
        while done < SOAK_TASKS:
            executions = [client.submit(task) for _ in range(SOAK_BATCH)]
            for execution in executions:
                assert execution.result(WAIT) is None
            done += SOAK_BATCH
            samples[done] = (rss_kib(process.pid), fd_count(process.pid), task_count(process.pid))
        summary = client.summary()
        client.shutdown()
    assert process.wait(WAIT) == 0

    warm = max(rss for count, (rss, _f, _t) in samples.items() if count <= 20_000)
    (rss20, fds20, tasks20), (rss60, fds60, tasks60), (rss100, fds100, tasks100) = (
        samples[20_000],
        samples[60_000],
        samples[100_000],
    )
    report = {count: sample for count, sample in samples.items() if count % 20_000 == 0}
    assert tasks20 == tasks60 == tasks100, report
    assert fds20 == fds60 == fds100, report
    # memory returns to its plateau: no later sample above the warm-up's highest by more than
    # the tolerance, and no growth from 60k to 100k either
    assert rss60 <= warm + SOAK_RSS_TOLERANCE_KIB, report
    assert rss100 <= warm + SOAK_RSS_TOLERANCE_KIB, report
    assert rss100 - rss60 <= SOAK_RSS_TOLERANCE_KIB, report
    assert rss100 - rss20 <= SOAK_RSS_TOLERANCE_KIB, report
    # retention kept its promise: at most 1,000 finished records, nothing left queued
    assert summary.counts["complete"] <= 1000
    assert (summary.queued, summary.running) == (0, 0)


@linux_only
def test_a_thousand_client_cycles_leak_no_thread_and_no_file(config: ZMQConfig) -> None:
    sink = Recorder()
    with (
        ExecutionServer.bind(
            Endpoint.of(port=0, transport_mode=TCP, config=config), echo
        ) as server,
        StreamingServer.bind(
            Endpoint.of(port=0, transport_mode=TCP, config=config), sink
        ) as viewer,
        # The warm-up peers stay connected to the end: a peer that just left is still being
        # let go of (the server closes its side a moment later), and the files counted
        # below would then include one that closes on its own.
        ExecutionClient.to(
            Endpoint.of(port=server.port_number, transport_mode=TCP, config=config)
        ) as warm,
        ImageSender.to(
            Endpoint.of(port=viewer.port_number, transport_mode=TCP, config=config)
        ) as warm_sender,
    ):

        def execution_cycle(n: int) -> None:
            with ExecutionClient.to(
                Endpoint.of(port=server.port_number, transport_mode=TCP, config=config)
            ) as c:
                if n % 10 == 0:
                    assert c.submit(n).result(WAIT) == n
                else:
                    c.ping()

        def sender_cycle(n: int) -> None:
            with ImageSender.to(
                Endpoint.of(port=viewer.port_number, transport_mode=TCP, config=config)
            ) as s:
                s.send(numpy.full((2, 2), n % 256, numpy.uint8))
                s.wait_all_acked(WAIT)

        assert warm.submit(0).result(WAIT) == 0
        warm_sender.send(numpy.zeros((2, 2), numpy.uint8))
        warm_sender.wait_all_acked(WAIT)
        before = Resources.now()

        for n in range(1000):
            execution_cycle(n)
        # the servers close their side of a connection a moment after the client went
        assert not (found := left_behind(before, extra_fds=0, timeout=WAIT)), found
        assert fd_count() == before.fds
        # Each sender has an ack channel of its own, at an address of its own; the viewer
        # keeps an ack socket for at most 64 addresses (one eventfd each), however many
        # senders come and go.
        for n in range(100):
            sender_cycle(n)
        assert not (found := left_behind(before, extra_fds=64, timeout=WAIT)), found
        assert server.summary().counts["complete"] == 101
        assert viewer.statistics().processed == 101


@pytest.mark.skipif(os.name == "nt", reason="IPC needs Unix domain sockets")
def test_clean_shutdowns_leave_no_ipc_socket_files(
    children: Children, config: ZMQConfig, tmp_path: Path
) -> None:
    folder = config.ipc_directory()
    for _ in range(3):
        with (
            ExecutionServer.bind(
                Endpoint.of(port=0, transport_mode=IPC, config=config), echo
            ) as server,
            ExecutionClient.to(
                Endpoint.of(port=server.port_number, transport_mode=IPC, config=config)
            ) as client,
            StreamingServer.bind(
                Endpoint.of(port=0, transport_mode=IPC, config=config), Recorder()
            ) as viewer,
            ImageSender.to(
                Endpoint.of(port=viewer.port_number, transport_mode=IPC, config=config)
            ) as sender,
            AckChannel.bind(Endpoint.of(port=0, transport_mode=IPC, config=config)) as channel,
        ):
            assert client.submit("x").result(WAIT) == "x"
            sender.send(numpy.ones((2, 2), numpy.uint8))
            sender.wait_all_acked(WAIT)
            assert client_ping(channel.port_number, IPC, config).role == "ack"
            assert len(list(folder.iterdir())) == 8  # 4 servers, a data and a control socket each
        assert list(folder.iterdir()) == []

    # servers in processes of their own: stopped by a shutdown request, and by SIGTERM
    port = free_port(IPC, config)
    process = children.script("server", port, IPC.value, tmp_path, 1, 1000)
    children.wait_serving(process, port, IPC, config, "execution")
    with ExecutionClient.to(Endpoint.of(port=port, transport_mode=IPC, config=config)) as client:
        assert client.submit({"op": "echo", "value": 1}).result(WAIT) == 1
        client.shutdown()
    assert process.wait(WAIT) == 0
    assert list(folder.iterdir()) == []

    port = free_port(IPC, config)
    viewer_process = children.start(
        "-m",
        "zmqruntime.streaming",
        "--port",
        str(port),
        "--transport",
        "ipc",
        "--ipc-root",
        str(tmp_path),
        "--sink",
        f"npy:{tmp_path / 'frames'}",
        name="viewer",
    )
    children.wait_serving(viewer_process, port, IPC, config, "viewer")
    viewer_process.send_signal(signal.SIGTERM)
    assert viewer_process.wait(WAIT) == 0
    assert list(folder.iterdir()) == []


# --- 5. CURVE end to end --------------------------------------------------------------------

CURVE_WORDS = re.compile(r"CURVE.*authenticat|authenticat.*CURVE", re.DOTALL)


@needs_curve
def test_curve_end_to_end_execution_streaming_and_acks(config: ZMQConfig) -> None:
    server_keys, viewer_keys, ack_keys, user_keys, viewer_ack_keys, stranger_keys = (
        generate_curve_keypair() for _ in range(6)
    )

    # --- execution: the allowed user works, with progress; outsiders get nothing
    with (
        ExecutionServer.bind(
            Endpoint.of(
                port=0,
                transport_mode=TCP,
                config=config,
                curve=ServerCurve(server_keys, allowed_client_keys={user_keys.public_key}),
            ),
            answer,
        ) as server,
        ExecutionClient.to(
            Endpoint.of(
                port=server.port_number,
                transport_mode=TCP,
                config=config,
                curve=ClientCurve(user_keys, server_keys.public_key),
            )
        ) as client,
    ):
        events: dict[str, list[ProgressEvent | Completion]] = collections.defaultdict(list)

        def remember(message: ProgressEvent | Completion) -> None:
            key = message.execution_id if isinstance(message, ProgressEvent) else None
            events[key or message.record.execution_id].append(message)  # type: ignore[union-attr]

        client.on_progress(remember)
        confirm_subscription(
            client, lambda: {k: len(v) for k, v in events.items() if _ended(v)}, {"x": 0}
        )
        execution = client.submit({"x": 21})
        assert execution.result(WAIT) == {"answer": 42}
        wait_until(lambda: _ended(events[execution.execution_id]), "its published end")
        progress = [e for e in events[execution.execution_id] if isinstance(e, ProgressEvent)]
        assert [e.fields["step"] for e in progress] == list(range(10))

        for outsider_curve in (ClientCurve(stranger_keys, server_keys.public_key), None):
            requests = server.server.statistics().requests
            with ExecutionClient.to(
                Endpoint.of(
                    port=server.port_number, transport_mode=TCP, config=config, curve=outsider_curve
                )
            ) as outsider:
                heard: list[object] = []
                outsider.on_progress(heard.append)
                error = outsider.submit({"x": 1}).exception(WAIT)
                assert isinstance(error, (ServerLost, ZMQTimeoutError)), error
                assert CURVE_WORDS.search(str(error)), str(error)
                assert server.server.statistics().requests == requests  # it learned nothing
                # while the user runs a task, the outsider's subscription hears nothing
                other = client.submit({"x": 5})
                assert other.result(WAIT) == {"answer": 10}
                wait_until(lambda e=other: _ended(events[e.execution_id]), "its published end")  # type: ignore[misc]
                assert heard == []
                assert outsider.client.statistics().replies == 0

    # --- streaming and acks: images in over CURVE, acks back over CURVE
    sink = Recorder()
    with (
        StreamingServer.bind(
            Endpoint.of(
                port=0,
                transport_mode=TCP,
                config=config,
                curve=ServerCurve(viewer_keys, allowed_client_keys={user_keys.public_key}),
            ),
            sink,
            ack_curve=ClientCurve(viewer_ack_keys, ack_keys.public_key),
        ) as viewer,
        ImageSender.to(
            Endpoint.of(
                port=viewer.port_number,
                transport_mode=TCP,
                config=config,
                curve=ClientCurve(user_keys, viewer_keys.public_key),
            ),
            ack_curve=ServerCurve(ack_keys, allowed_client_keys={viewer_ack_keys.public_key}),
        ) as sender,
    ):
        rng = numpy.random.default_rng(5)
        images = [rng.integers(0, 2**16, (32, 32), dtype=numpy.uint16) for _ in range(20)]
        for number, image in enumerate(images):
            sender.send(image, {"n": number})
        sender.wait_all_acked(WAIT)
        tracker = sender.tracker
        assert tracker is not None and tracker.statistics().processed == 20
        assert [m["n"] for _, m in sink.images] == list(range(20))
        assert all(numpy.array_equal(a, b) for (a, _), b in zip(sink.images, images, strict=True))

        data_messages = viewer.server.statistics().data_messages
        for outsider_curve in (ClientCurve(stranger_keys, viewer_keys.public_key), None):
            with ImageSender.to(
                Endpoint.of(
                    port=viewer.port_number, transport_mode=TCP, config=config, curve=outsider_curve
                ),
                max_in_flight=2,
                send_timeout=0.5,
            ) as outsider:
                outsider.send(numpy.ones((4, 4), numpy.uint8))
                outsider.send(numpy.ones((4, 4), numpy.uint8))
                with pytest.raises(ZMQTimeoutError) as refused:
                    outsider.send(numpy.ones((4, 4), numpy.uint8))
                assert CURVE_WORDS.search(str(refused.value)), str(refused.value)
                with pytest.raises(ZMQTimeoutError, match="CURVE"):
                    outsider.wait_all_acked(0.2)
        assert viewer.server.statistics().data_messages == data_messages
        assert viewer.statistics().received == 20

        # forged acks: neither an unknown key nor no key gets one into the sender's tracker
        address = sender.ack_address
        assert address is not None
        tracker.register_sent("forged")
        for forger_curve in (ClientCurve(stranger_keys, ack_keys.public_key), None):
            assert _push_refused(
                address, Ack(image_id="forged", tracker_key=tracker.viewer_key), forger_curve
            )
        assert tracker.get_pending_count() == 1
        # and the viewer's ack key does get through (the check above can fail)
        with AckSender(
            config=config, curve=ClientCurve(viewer_ack_keys, ack_keys.public_key)
        ) as acks:
            acks.acknowledge(address, "forged", tracker.viewer_key)
            assert tracker.wait_all_acknowledged(WAIT)


def test_curve_acks_routed_to_a_channel_with_keys_of_its_own(config: ZMQConfig) -> None:
    """``ack_to=`` a CURVE AckChannel with its own key pair (a GUI that tracks what a worker
    sends): the sender's notices and the viewer's acks both reach it, outsiders do not."""
    viewer_keys, channel_keys, worker_keys, viewer_ack_keys = (
        generate_curve_keypair() for _ in range(4)
    )
    registry = GlobalQueueTrackerRegistry()
    watched = registry.get_or_create_tracker("gui")
    count = 12
    with (
        AckChannel.bind(
            Endpoint.of(
                port=0,
                transport_mode=TCP,
                config=config,
                curve=ServerCurve(
                    channel_keys,
                    allowed_client_keys={worker_keys.public_key, viewer_ack_keys.public_key},
                ),
            ),
            registry=registry,
        ) as channel,
        StreamingServer.bind(
            Endpoint.of(
                port=0,
                transport_mode=TCP,
                config=config,
                curve=ServerCurve(viewer_keys, allowed_client_keys={worker_keys.public_key}),
            ),
            Recorder(),
            ack_curve=ClientCurve(viewer_ack_keys, channel_keys.public_key),
        ) as viewer,
        ImageSender.to(
            Endpoint.of(
                port=viewer.port_number,
                transport_mode=TCP,
                config=config,
                curve=ClientCurve(worker_keys, viewer_keys.public_key),
            ),
            ack_to=channel.address,
            ack_to_curve=ClientCurve(worker_keys, channel_keys.public_key),
            tracker_key="gui",
        ) as worker,
    ):
        for number in range(count):
            worker.send(numpy.full((8, 8), number, numpy.uint8), {"n": number})
        wait_until(lambda: watched.get_progress() == (count, count), "every notice and ack")
        stats = watched.statistics()
        assert (stats.sent, stats.processed, stats.failed) == (count, count, 0)
        assert viewer.statistics().processed == count
        # a notice under a key the channel does not know is refused, and counts for nothing
        stranger = ClientCurve(generate_curve_keypair(), channel_keys.public_key)
        assert _push_refused(
            channel.address, ImageSent(image_id="forged", tracker_key="gui"), stranger
        )
        assert watched.statistics().sent == count


def _ended(events: Sequence[ProgressEvent | Completion]) -> bool:
    return any(isinstance(e, Completion) for e in events)


def _push_refused(address: str, message: Message, curve: ClientCurve | None) -> bool:
    """Push ``message`` to ``address``; True once the receiving end refused the handshake."""
    with raw_context() as context:
        push = context.socket(zmq.PUSH)
        push.linger = 0
        if curve is not None:
            curve.apply(push)
        monitor = push.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        push.connect(address)
        push.send_multipart(to_wire(codec.encode(message)))
        deadline = time.monotonic() + WAIT
        try:
            while time.monotonic() < deadline:
                if monitor.poll(50):
                    event = parse_monitor_message(monitor.recv_multipart())
                    return bool(event["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED)
            return False
        finally:
            push.disable_monitor()
            monitor.close(0)


# --- 5. what travels is not plaintext -------------------------------------------------------


class TcpTap:
    """A loopback TCP relay that forwards bytes both ways and keeps a copy of all of them.

    ``routes`` maps a port to listen on to the port to forward to. Plain sockets and one
    thread: what a capture on the wire would see, without root or tshark.
    """

    def __init__(self, routes: Mapping[int, int]) -> None:
        self._selector = selectors.DefaultSelector()
        self._captured: dict[int, bytearray] = {port: bytearray() for port in routes}
        self._sockets: list[socket.socket] = []
        for listen_port, target_port in routes.items():
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", listen_port))
            listener.listen(16)
            self._sockets.append(listener)
            self._selector.register(
                listener, selectors.EVENT_READ, ("accept", listen_port, target_port)
            )
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector.register(self._wake_read, selectors.EVENT_READ, ("wake", 0, 0))
        self._thread = threading.Thread(target=self._run, name="test-tcp-tap")

    def __enter__(self) -> TcpTap:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._wake_write.send(b"x")
        self._thread.join(WAIT)
        for sock in [*self._sockets, self._wake_read, self._wake_write]:
            sock.close()
        self._selector.close()

    def captured(self, port: int) -> bytes:
        return bytes(self._captured[port])

    def _run(self) -> None:
        while True:
            for key, _events in self._selector.select(timeout=1.0):
                kind, port, other = key.data
                if kind == "wake":
                    return
                if kind == "accept":
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    upstream = socket.create_connection(("127.0.0.1", other))
                    self._sockets += [conn, upstream]
                    self._selector.register(conn, selectors.EVENT_READ, ("pipe", port, upstream))
                    self._selector.register(upstream, selectors.EVENT_READ, ("pipe", port, conn))
                    continue
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = source.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    for sock in (source, other):
                        with contextlib.suppress(KeyError, ValueError):
                            self._selector.unregister(sock)
                        sock.close()
                    continue
                self._captured[port] += chunk
                with contextlib.suppress(OSError):
                    other.sendall(chunk)


@needs_curve
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "curve"])
def test_a_relay_in_the_middle_sees_plaintext_only_without_curve(
    config: ZMQConfig, secure: bool
) -> None:
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"
    server_keys, viewer_keys, ack_keys, user_keys, viewer_ack_keys = (
        generate_curve_keypair() for _ in range(5)
    )

    def shout(task: Any, ctx: TaskContext) -> Any:
        ctx.report_progress(0.5, marker, marker=marker)
        return task

    def server_curve(keys: CurveKeyPair, *allowed: CurveKeyPair) -> ServerCurve | None:
        if not secure:
            return None
        return ServerCurve(keys, allowed_client_keys={k.public_key for k in allowed})

    def client_curve(keys: CurveKeyPair, server: CurveKeyPair) -> ClientCurve | None:
        return ClientCurve(keys, server.public_key) if secure else None

    # execution: task and result on the control port, progress on the data port
    with ExecutionServer.bind(
        Endpoint.of(
            port=0, transport_mode=TCP, config=config, curve=server_curve(server_keys, user_keys)
        ),
        shout,
    ) as server:
        port = find_free_port_pair(config)
        routes = {
            port: server.port_number,
            config.control_port(port): config.control_port(server.port_number),
        }
        with (
            TcpTap(routes) as tap,
            ExecutionClient.to(
                Endpoint.of(
                    port=port,
                    transport_mode=TCP,
                    config=config,
                    curve=client_curve(user_keys, server_keys),
                )
            ) as client,
        ):
            ended: dict[str, int] = {}
            messages: list[str] = []

            def remember(message: ProgressEvent | Completion) -> None:
                if isinstance(message, ProgressEvent):
                    messages.append(message.message)
                else:
                    ended[message.record.execution_id] = 1

            client.on_progress(remember)
            confirm_subscription(client, lambda: ended, {"probe": True})
            execution = client.submit({"secret": marker})
            assert execution.result(WAIT) == {"secret": marker}
            wait_until(lambda: execution.execution_id in ended, "its published end")
            assert marker in messages
        control = tap.captured(config.control_port(port))
        data = tap.captured(port)

    # streaming: metadata and pixels through the relay; acks straight back
    pixels = numpy.frombuffer(marker.encode(), numpy.uint8).copy()
    with StreamingServer.bind(
        Endpoint.of(
            port=0, transport_mode=TCP, config=config, curve=server_curve(viewer_keys, user_keys)
        ),
        Recorder(),
        ack_curve=client_curve(viewer_ack_keys, ack_keys),
    ) as viewer:
        port = find_free_port_pair(config)
        routes = {
            port: viewer.port_number,
            config.control_port(port): config.control_port(viewer.port_number),
        }
        with (
            TcpTap(routes) as tap,
            ImageSender.to(
                Endpoint.of(
                    port=port,
                    transport_mode=TCP,
                    config=config,
                    curve=client_curve(user_keys, viewer_keys),
                ),
                ack_curve=server_curve(ack_keys, viewer_ack_keys),
            ) as sender,
        ):
            sender.send(pixels, {"note": marker})
            sender.wait_all_acked(WAIT)
        images = tap.captured(port)

        # the ack path: acks (and the sender's notices) routed through the relay to a channel
        registry = GlobalQueueTrackerRegistry()
        with AckChannel.bind(
            Endpoint.of(
                port=0,
                transport_mode=TCP,
                config=config,
                curve=server_curve(ack_keys, viewer_ack_keys, user_keys),
            ),
            registry=registry,
        ) as channel:
            port = find_free_port_pair(config)
            with (
                TcpTap({port: channel.port_number}) as tap,
                ImageSender.to(
                    Endpoint.of(
                        port=viewer.port_number,
                        transport_mode=TCP,
                        config=config,
                        curve=client_curve(user_keys, viewer_keys),
                    ),
                    ack_to=f"tcp://127.0.0.1:{port}",
                    ack_to_curve=client_curve(user_keys, ack_keys),
                    tracker_key=marker,
                ) as routed,
            ):
                routed.send(pixels)
                tracker = registry.get_or_create_tracker(marker)
                wait_until(
                    lambda: tracker.get_progress() == (1, 1), "the routed ack and its notice"
                )
            acks = tap.captured(port)

    assert len(control) > 500 and len(data) > 200 and len(images) > len(marker), (
        "the traffic did not go through the relay"
    )
    assert len(acks) > 2 * len(marker), "the acks did not go through the relay"
    needle = marker.encode()
    captures = (("control", control), ("progress", data), ("images", images), ("acks", acks))
    for name, captured in captures:
        if secure:
            assert needle not in captured, f"the {name} traffic carried plaintext under CURVE"
        else:
            assert needle in captured, f"the {name} traffic should be readable without CURVE"
