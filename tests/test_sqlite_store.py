"""Durable history (issue 16, item 6): a SqliteStore keeps records, queued tasks and their
payloads in a SQLite file, so a restarted server remembers its executions and runs its queue.

The store alone (every record field, retention on disk, the payload bound, foreign and damaged
files, a file in use, threads at once), a real server resuming from a file, and the issue's
proof: ``zmqruntime serve`` SIGKILLed with 200 queued and 2 running tasks, restarted on its file.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.strategies import progress_events, texts
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.client import ZMQClient
from zmqruntime.core.credentials import runtime_directory
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import ExecutionRecord, ExecutionStatus, ProgressEvent
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.core.transport import find_free_ipc_port
from zmqruntime.errors import ConfigurationError, ServerLost, TaskFailed, ZMQTimeoutError
from zmqruntime.execution import (
    ExecutionClient,
    ExecutionServer,
    ExecutionStore,
    RetentionPolicy,
    SqliteStore,
    open_history,
)
from zmqruntime.execution.records import record_bytes, task_digest

QUEUED, RUNNING, COMPLETE = (
    ExecutionStatus.QUEUED,
    ExecutionStatus.RUNNING,
    ExecutionStatus.COMPLETE,
)
FAILED, INTERRUPTED = ExecutionStatus.FAILED, ExecutionStatus.INTERRUPTED
IPC = TransportMode.IPC
WAIT = 30.0
"""Deadline for what normally takes milliseconds; reached only when something is broken."""
REPO_ROOT = Path(__file__).resolve().parent.parent
needs_ipc = pytest.mark.skipif(os.name == "nt", reason="IPC needs Unix domain sockets")


class Clock:
    """A clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Check ``predicate`` in short bounded waits until it holds; fail after :data:`WAIT`."""
    deadline, pause = time.monotonic() + WAIT, threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT}s waiting for {what}")
        pause.wait(0.01)


def rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    """What the file holds, read with plain sqlite3 (after the store closed it)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(query).fetchall()


def disk_ids(path: Path) -> set[str]:
    return {execution_id for (execution_id,) in rows(path, "SELECT execution_id FROM executions")}


def child_env() -> dict[str, str]:
    paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


# --- the store -------------------------------------------------------------------------------


def test_every_record_field_and_each_task_origin_survive_a_reopen(tmp_path: Path) -> None:
    path, clock = tmp_path / "history.sqlite3", Clock()
    payload = SafeSerializer().dumps({"well": "B2", "pixels": b"\x00\xff"})
    event = ProgressEvent(
        execution_id="failed",
        sequence=7,
        fraction=0.25,
        message="step 7",
        fields={"well": "B2", "nested": [1, 2.5, None, True, {"k": "v"}]},
        timestamp=1001.5,
    )
    with SqliteStore.open(path, clock=clock) as store:
        store.submit("failed", {"plate": "P1", "well": "ü/ß"}, b"d" * 16, "alice")
        clock.now += 1
        store.start("failed")
        assert store.progress(event)
        clock.now += 1
        failed = store.fail("failed", "ValueError", "bad value", "Traceback (most recent…)")
        store.submit("done", {}, b"e" * 16)
        store.start("done")
        done = store.complete("done")
        cancelled = store.cancel(store.submit("cancelled", {"a": "b"})[0].execution_id)
        queued, _ = store.submit("queued", {"n": "1"}, task_digest(tuple(payload)), "bob", payload)
    assert failed is not None and failed.progress == event
    assert (failed.submitted_at, failed.started_at, failed.finished_at) == (1000.0, 1001.0, 1002.0)
    with SqliteStore.open(path, clock=clock) as again:
        assert again.get("failed") == failed
        assert again.get("done") == done
        assert again.get("cancelled") == cancelled
        assert again.get("queued") == queued
        assert (again.owner("failed"), again.owner("queued"), again.owner("done")) == (
            "alice",
            "bob",
            None,
        )
        assert again.same_task("failed", b"d" * 16)
        assert not again.same_task("failed", b"x" * 16)
        [(record, frames)] = again.resume()
        assert record == queued
        assert frames == tuple(bytes(memoryview(frame)) for frame in payload)
        assert again.resume() == []  # handed out once
        counts = again.counts()
        assert (counts[QUEUED], counts[COMPLETE], counts[FAILED]) == (1, 1, 1)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    labels=st.dictionaries(texts(12), texts(), max_size=4),
    event=progress_events(),
    error=st.tuples(texts(), texts(), texts(200)),
    ending=st.sampled_from(["complete", "fail", "cancel"]),
    owner=st.none() | texts(),
)
def test_records_round_trip_through_the_file(
    tmp_path: Path,
    labels: dict[str, str],
    event: ProgressEvent,
    error: tuple[str, str, str],
    ending: str,
    owner: str | None,
) -> None:
    path = tmp_path / "round-trip.sqlite3"
    path.unlink(missing_ok=True)
    with SqliteStore.open(path) as store:
        store.submit("x", labels, b"digest", owner)
        store.start("x")
        store.progress(attrs.evolve(event, execution_id="x"))
        if ending == "complete":
            final = store.complete("x")
        else:
            final = store.fail("x", *error) if ending == "fail" else store.cancel("x")
    with SqliteStore.open(path) as again:
        assert again.get("x") == final
        assert again.owner("x") == owner


IDS = st.sampled_from(["a", "b", "c", "d", "e"])


class ReopenedStoreMachine(RuleBasedStateMachine):
    """A SqliteStore against an ExecutionStore (the model) on the same clock and retention,
    closed and reopened at any step as a killed server's file is: it answers as the model does,
    with its running executions interrupted (in the order they started) at each reopen, and
    without their progress (kept in memory only)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.path = folder / f"{uuid.uuid4().hex}.sqlite3"
        self.clock = Clock()
        self.retention = RetentionPolicy(max_records=3, max_age=5.0)
        self.model = ExecutionStore(self.retention, clock=self.clock)
        self.store = SqliteStore.open(self.path, self.retention, clock=self.clock)
        self.started: list[str] = []
        self.sequence = 0

    @rule(execution_id=IDS, labels=st.dictionaries(st.sampled_from("xy"), texts(3), max_size=2))
    def submit(self, execution_id: str, labels: dict[str, str]) -> None:
        record, created = self.model.submit(execution_id, labels, b"d", "owner")
        if record.status is INTERRUPTED:  # an interrupted one's progress was not kept
            record = attrs.evolve(record, progress=None)
        payload = [execution_id.encode()]
        assert self.store.submit(execution_id, labels, b"d", "owner", payload) == (record, created)

    @rule(execution_id=IDS)
    def start(self, execution_id: str) -> None:
        started = self.model.start(execution_id)
        assert self.store.start(execution_id) == started
        if started is not None:
            self.started.append(execution_id)

    @rule(execution_id=IDS)
    def progress(self, execution_id: str) -> None:
        self.sequence += 1
        event = ProgressEvent(execution_id=execution_id, sequence=self.sequence, fraction=0.5)
        assert self.store.progress(event) == self.model.progress(event)

    @rule(execution_id=IDS, how=st.sampled_from(["complete", "fail", "cancel"]))
    def finish(self, execution_id: str, how: str) -> None:
        args = ("E", "m", "tb") if how == "fail" else ()
        expected = getattr(self.model, how)(execution_id, *args)
        assert getattr(self.store, how)(execution_id, *args) == expected

    @rule(seconds=st.sampled_from([0.0, 1.0, 3.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def reopen(self) -> None:
        self.store.close()
        for execution_id in self.started:
            record = self.model.get(execution_id)
            if record is not None and record.status is RUNNING:
                self.model.interrupt(
                    execution_id, "the server stopped while it ran; it was not run again"
                )
        self.started = []
        self.store = SqliteStore.open(self.path, self.retention, clock=self.clock)
        resumed = [record.execution_id for record, _ in self.store.resume()]
        assert sorted(resumed) == sorted(self.model.active_ids())

    @invariant()
    def answers_as_the_model(self) -> None:
        for execution_id in "abcde":
            expected = self.model.get(execution_id)
            if expected is not None and expected.status is INTERRUPTED:
                expected = attrs.evolve(expected, progress=None)
            assert self.store.get(execution_id) == expected
        assert self.store.counts() == self.model.counts()

    def teardown(self) -> None:
        self.store.close()


def test_a_store_reopened_at_any_step_answers_as_the_memory_store(tmp_path: Path) -> None:
    run_state_machine_as_test(
        lambda: ReopenedStoreMachine(tmp_path),
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )


def test_at_reopen_running_tasks_are_interrupted_and_queued_ones_resume_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.sqlite3"
    store = SqliteStore.open(path)
    for name in ("running", "q1", "q2", "q3"):
        store.submit(name, {"name": name}, payload=[name.encode()])
    store.start("running")
    store.close()  # as if its server died: nothing more is written
    with SqliteStore.open(path) as again:
        interrupted = again.get("running")
        assert interrupted is not None and interrupted.status is INTERRUPTED
        assert interrupted.status.is_terminal
        assert interrupted.error_type == "Interrupted"
        assert "not run again" in (interrupted.error_message or "")
        assert interrupted.started_at is not None and interrupted.finished_at is not None
        resumed = [(record.execution_id, frames) for record, frames in again.resume()]
        assert resumed == [("q1", (b"q1",)), ("q2", (b"q2",)), ("q3", (b"q3",))]
        assert again.start("q2") is not None  # q2 starts, then this server dies too
    with SqliteStore.open(path) as third:
        assert [record.execution_id for record, _ in third.resume()] == ["q1", "q3"]
        assert third.get("q2") is not None and third.get("q2").status is INTERRUPTED
    assert sorted(rows(path, "SELECT execution_id FROM payloads")) == [("q1",), ("q3",)]


def test_retention_applies_on_disk_with_the_same_numbers(tmp_path: Path) -> None:
    path, clock = tmp_path / "history.sqlite3", Clock()
    policy = RetentionPolicy(max_records=3, max_age=100.0)
    with SqliteStore.open(path, policy, clock=clock) as store:
        store.submit("active", {})
        for n in range(6):
            store.submit(f"t{n}", {})
            clock.now += 1
            store.cancel(f"t{n}")
    assert disk_ids(path) == {"active", "t3", "t4", "t5"}  # by count, oldest first
    clock.now += 200  # past max_age: the next open drops every terminal record
    with SqliteStore.open(path, policy, clock=clock) as store:
        assert store.get("t5") is None and store.get("active") is not None
    assert disk_ids(path) == {"active"}

    by_bytes, sizes = tmp_path / "bytes.sqlite3", {}
    with SqliteStore.open(by_bytes, RetentionPolicy(max_bytes=20_000)) as store:
        for n in range(10):
            store.submit(f"f{n}", {})
            failed = store.fail(f"f{n}", "E", "m", "x" * 5000)
            assert failed is not None
            sizes[f"f{n}"] = record_bytes(failed)
        held = {execution_id for execution_id in sizes if store.get(execution_id) is not None}
    assert 0 < len(held) < 10 and sum(sizes[i] for i in held) <= 20_000
    assert held == {f"f{n}" for n in range(10 - len(held), 10)} == disk_ids(by_bytes)


def test_payloads_past_the_bound_run_but_are_not_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.sqlite3"
    with SqliteStore.open(path, max_payload_bytes=100) as store:
        store.submit("a", {}, payload=[b"a" * 60])
        store.submit("b", {}, payload=[b"b" * 60])  # 120 bytes in all: not kept
        store.submit("c", {}, payload=[b"c" * 10, memoryview(b"c" * 30)])
    assert "past max_payload_bytes (100)" in caplog.text
    with SqliteStore.open(path, max_payload_bytes=100) as again:
        resumed = [(record.execution_id, frames) for record, frames in again.resume()]
        assert resumed == [("a", (b"a" * 60,)), ("c", (b"c" * 10, b"c" * 30))]
        lost = again.get("b")
        assert lost is not None and lost.status is INTERRUPTED
        assert "max_payload_bytes (100)" in (lost.error_message or "")
        again.start("a")  # its payload leaves the file with it, which makes room
        again.submit("d", {}, payload=[b"d" * 60])
    query = "SELECT execution_id, length(frame) FROM payloads"
    assert sorted(rows(path, query)) == [("c", 10), ("c", 30), ("d", 60)]


def test_texts_json_cannot_carry_do_not_break_the_store(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    with SqliteStore.open(path) as store:
        store.submit("x", {})
        store.start("x")
        store.progress(ProgressEvent(execution_id="x", sequence=1, message="bad \udcff"))
        failed = store.fail("x", "E", "bad \udcff text", "tb")
        # Escaped as the store takes it, so every reply (and the file) can hold it.
        assert failed is not None and failed.error_message == "bad \\udcff text"
    with SqliteStore.open(path) as again:
        record = again.get("x")
        assert record is not None and record.status is FAILED and record.progress is not None
        assert record.error_message == "bad \\udcff text"
        assert record.progress.message == "bad \\udcff"


@pytest.mark.parametrize("kind", ["garbage", "foreign", "damaged record"])
def test_a_file_that_is_not_a_history_is_refused_and_left_alone(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "other.db"
    if kind == "garbage":
        path.write_bytes(b"not a database at all " * 100)
    elif kind == "foreign":
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE notes (text TEXT)")
            db.commit()
    else:
        SqliteStore.open(path).close()
        with contextlib.closing(sqlite3.connect(path)) as db:
            blob = b'{"not": "a record"}'
            db.execute("INSERT INTO executions VALUES ('x', 'queued', ?, x'', NULL, 0)", (blob,))
            db.commit()
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match="history") as caught:
        SqliteStore.open(path)
    assert str(path) in str(caught.value) and "move" in str(caught.value)
    assert path.read_bytes() == before


def test_a_history_in_use_is_refused_to_another_process(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    code = "import sys; from zmqruntime.execution import SqliteStore as S; S.open(sys.argv[1], "
    code += "busy_timeout=0.2).close(); print('opened')"
    argv = [sys.executable, "-c", code, str(path)]
    options: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 60}
    with SqliteStore.open(path):
        refused = subprocess.run(argv, check=False, cwd=REPO_ROOT, env=child_env(), **options)
    assert refused.returncode != 0
    assert "already in use by another process" in refused.stderr
    opened = subprocess.run(argv, check=False, cwd=REPO_ROOT, env=child_env(), **options)
    assert (opened.returncode, opened.stdout.strip()) == (0, "opened"), opened.stderr


def test_threads_change_the_store_at_once_and_the_file_keeps_each_last_state(
    tmp_path: Path,
) -> None:
    path, writers, per_writer = tmp_path / "history.sqlite3", 8, 40
    finals: dict[str, ExecutionRecord | None] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def write(store: SqliteStore, writer: int) -> None:
        try:
            barrier.wait(WAIT)
            for n in range(per_writer):
                execution_id = f"w{writer}-{n}"
                store.submit(execution_id, {"writer": str(writer)}, payload=[b"%d" % n])
                if n % 4 == 3:
                    continue  # stays queued
                store.start(execution_id)
                store.progress(ProgressEvent(execution_id=execution_id, sequence=1, fraction=0.5))
                if n % 3 == 0:
                    finals[execution_id] = store.complete(execution_id)
                elif n % 3 == 1:
                    finals[execution_id] = store.fail(execution_id, "E", f"m{n}", "tb")
                else:
                    finals[execution_id] = store.cancel(execution_id)
        except BaseException as exc:
            errors.append(exc)

    with SqliteStore.open(path) as store:
        threads = [
            threading.Thread(target=write, args=(store, w), name=f"test-writer-{w}")
            for w in range(writers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    with SqliteStore.open(path) as again:
        for execution_id, record in finals.items():
            assert record is not None and again.get(execution_id) == record
        resumed = [record.execution_id for record, _ in again.resume()]
    for w in range(writers):  # every queued one, each writer's in its order
        mine = [execution_id for execution_id in resumed if execution_id.startswith(f"w{w}-")]
        assert mine == [f"w{w}-{n}" for n in range(3, per_writer, 4)]
    assert len(resumed) == writers * per_writer // 4


def test_serve_keeps_a_history_file_per_port_in_the_runtime_folder_unless_told(
    config: ZMQConfig, tmp_path: Path
) -> None:
    endpoint = Endpoint.of(7791, transport_mode=TransportMode.TCP, config=config)
    assert isinstance(open_history("memory", endpoint), ExecutionStore)
    assert isinstance(open_history(None, attrs.evolve(endpoint, port=0)), ExecutionStore)
    default = open_history(None, endpoint, "lab.tasks:run plate")
    chosen = open_history(str(tmp_path / "mine.sqlite3"), endpoint)
    with contextlib.closing(default), contextlib.closing(chosen):
        assert isinstance(default, SqliteStore) and isinstance(chosen, SqliteStore)
        name = "history-tcp-7791-lab.tasks-run-plate.sqlite3"  # one file per executor too
        assert default.path == runtime_directory(config) / name
        assert chosen.path == tmp_path / "mine.sqlite3"
    assert oct(default.path.stat().st_mode & 0o777) == oct(0o600)


# --- a server on a history file -------------------------------------------------------------


@needs_ipc
def test_a_server_on_a_history_runs_what_was_queued_and_answers_for_old_executions(
    config: ZMQConfig, tmp_path: Path, no_thread_leak: None
) -> None:
    path, serializer = tmp_path / "history.sqlite3", SafeSerializer()
    with SqliteStore.open(path) as store:  # what a server that died left in its file
        for n in range(3):
            payload = serializer.dumps({"n": n})
            store.submit(f"q{n}", {"n": str(n)}, task_digest(tuple(payload)), None, payload)
        store.submit("ran", {}, payload=serializer.dumps({"n": 99}))
        store.start("ran")
    ran: list[str] = []

    def executor(task: Any, ctx: Any) -> int:
        ran.append(ctx.execution_id)
        return int(task["n"]) * 10

    endpoint = Endpoint.of(0, transport_mode=IPC, config=config)
    with ExecutionServer.bind(endpoint, executor, store=SqliteStore.open(path)) as server:
        address = Endpoint.of(server.port_number, transport_mode=IPC, config=config)
        with ExecutionClient.to(address) as client:
            wait_until(lambda: server.summary().counts["complete"] == 3, "the queued tasks")
            assert ran == ["q0", "q1", "q2"]  # in their order (one worker thread)
            assert client.record("q1").labels == {"n": "1"}
            assert client.submit({"n": 1}, execution_id="q1").result(WAIT) == 10  # not rerun
            assert client.record("ran").status is INTERRUPTED
            retry = client.submit({"n": 99}, execution_id="ran").exception(WAIT)
            assert isinstance(retry, TaskFailed) and retry.error_type == "Interrupted"
            assert ran == ["q0", "q1", "q2"]
    with SqliteStore.open(path) as after:  # the server closed the file
        finals = [after.get(f"q{n}") for n in range(3)]
        assert [record.status if record else None for record in finals] == [COMPLETE] * 3
        assert after.resume() == []


# --- the proof: SIGKILL, restart on the same file -----------------------------------


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Server processes a test starts; any still alive at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT)


def serve(tmp_path: Path, port: int, life: int) -> subprocess.Popen[bytes]:
    """``zmqruntime serve`` on an IPC port with two worker threads and its default history."""
    argv = [sys.executable, "-m", "zmqruntime", "serve", "--executor", "tests.durable_tasks:run"]
    argv += ["--ipc", "--port", str(port), "--ipc-root", str(tmp_path), "--workers", "2"]
    with (tmp_path / f"server-{life}.log").open("wb") as log:
        return subprocess.Popen(
            argv, cwd=REPO_ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT
        )


def wait_serving(process: subprocess.Popen[bytes], endpoint: Endpoint, tmp_path: Path) -> None:
    deadline = time.monotonic() + WAIT
    with ZMQClient(endpoint, connect_data=False) as probe:
        while True:
            if process.poll() is not None:
                logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("server-*.log")))
                pytest.fail(f"the server exited with {process.returncode}:\n{logs}")
            with contextlib.suppress(ZMQTimeoutError, ServerLost):
                if probe.ping(timeout=0.5).pid == process.pid:
                    return
            if time.monotonic() > deadline:
                pytest.fail("the server never answered")


@needs_ipc
def test_a_killed_server_restarted_on_its_file_ends_every_accepted_task_once(
    config: ZMQConfig, tmp_path: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    port = find_free_ipc_port(config)
    endpoint = Endpoint.of(port, transport_mode=IPC, config=config)
    log = tmp_path / "runs.log"

    def runs() -> collections.Counter[str]:
        return collections.Counter(log.read_text().split() if log.exists() else [])

    servers.append(first := serve(tmp_path, port, 1))
    wait_serving(first, endpoint, tmp_path)
    with ExecutionClient.to(endpoint) as client:
        hold = {"log": str(log), "hold": True, "n": -1}
        held = [client.submit(hold, confirm=True) for _ in range(2)]
        wait_until(lambda: client.summary().running == 2, "both workers to hold a task")
        queued = [client.submit({"log": str(log), "n": n}, confirm=True) for n in range(200)]
        for execution in queued:
            execution.accepted.result(WAIT)
        summary = client.summary()
        assert (summary.queued, summary.running) == (200, 2)
        first.kill()
        assert first.wait(WAIT) == -signal.SIGKILL
    held_ids = [execution.execution_id for execution in held]
    queued_ids = [execution.execution_id for execution in queued]
    assert runs() == collections.Counter(held_ids)  # nothing else ran before the kill
    assert len(list(runtime_directory(config).glob(f"history-ipc-{port}-*.sqlite3"))) == 1

    servers.append(second := serve(tmp_path, port, 2))
    wait_serving(second, endpoint, tmp_path)
    with ExecutionClient.to(endpoint) as client:
        wait_until(lambda: client.summary().counts["complete"] == 200, "the 200 queued tasks")
        records = {i: client.record(i) for i in held_ids + queued_ids}
        statuses = collections.Counter(record.status for record in records.values())
        assert statuses == {COMPLETE: 200, INTERRUPTED: 2}
        assert {records[i].status for i in held_ids} == {INTERRUPTED}
        assert {records[i].error_type for i in held_ids} == {"Interrupted"}
        retry = client.submit(hold, execution_id=held_ids[0]).exception(WAIT)
        assert isinstance(retry, TaskFailed) and retry.error_type == "Interrupted"
        assert runs() == collections.Counter(held_ids + queued_ids)  # each ran exactly once
        summary = client.summary()
        assert (summary.queued, summary.running, summary.counts["interrupted"]) == (0, 0, 2)
        client.shutdown()
    assert second.wait(WAIT) == 0

    servers.append(third := serve(tmp_path, port, 3))  # and after a clean restart
    wait_serving(third, endpoint, tmp_path)
    with ExecutionClient.to(endpoint) as client:
        assert client.record(queued_ids[-1]).status is COMPLETE
        assert client.record(held_ids[1]).status is INTERRUPTED
        assert client.summary().counts["complete"] == 200
        client.shutdown()
    assert third.wait(WAIT) == 0
    assert runs() == collections.Counter(held_ids + queued_ids)
