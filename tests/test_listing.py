"""ExecutionClient.list: a page of records, filtered by status, labels and id prefix, paged
with ``after``, on a real server; ListRequest's bounds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.executors import echo
from tests.test_execution import wait_until
from zmqruntime.config import ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import ExecutionStatus, ListRequest
from zmqruntime.errors import ErrorCode, RemoteError
from zmqruntime.execution import ExecutionClient, ExecutionServer, RetentionPolicy, WorkerPool
from zmqruntime.protocols import TaskContext

WAIT = 10.0


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    released = threading.Event()
    yield released
    released.set()


@pytest.fixture
def client(
    config: ZMQConfig, gate: threading.Event, no_thread_leak: None
) -> Iterator[ExecutionClient]:
    """A client of a server with one worker, whose tasks ``{"hold": True}`` wait for ``gate``
    and fail when asked to."""

    def run(task: Any, ctx: TaskContext) -> Any:
        if task.get("hold"):
            gate.wait(WAIT)
        if task.get("odd"):  # text with a lone surrogate, as from an undecodable file name
            ctx.report_progress(0.5, "reading \udcff")
            if task["odd"] == "fail":
                raise FileNotFoundError("no file \udcff")
        if task.get("fail"):
            raise RuntimeError("asked to fail")
        return task

    at = Endpoint.of(port=0, config=config)
    with (
        ExecutionServer.bind(
            at, run, pool=WorkerPool.threads(1), retention=RetentionPolicy(max_records=5)
        ) as server,
        ExecutionClient.to(Endpoint.of(port=server.port_number, config=config)) as c,
    ):
        yield c


def test_a_listing_filters_by_status_labels_and_prefix(
    client: ExecutionClient, gate: threading.Event
) -> None:
    client.submit({}, execution_id="plate1-A01", labels={"plate": "1"}).result(timeout=WAIT)
    failed = client.submit({"fail": True}, execution_id="plate1-A02", labels={"plate": "1"})
    with pytest.raises(Exception, match="asked to fail"):
        failed.result(timeout=WAIT)
    held = client.submit({"hold": True}, execution_id="plate2-A01", labels={"plate": "2"})
    wait_until(lambda: client.record("plate2-A01").status is ExecutionStatus.RUNNING, "running")
    client.submit({}, execution_id="plate2-A02", labels={"plate": "2", "kind": "x"}, confirm=True)

    def ids(**query: Any) -> list[str]:
        return [record.execution_id for record in client.list(timeout=WAIT, **query).records]

    assert ids() == ["plate1-A01", "plate1-A02", "plate2-A01", "plate2-A02"]
    assert ids(status=[ExecutionStatus.RUNNING, ExecutionStatus.QUEUED]) == [
        "plate2-A01",
        "plate2-A02",
    ]
    assert ids(status=[ExecutionStatus.FAILED]) == ["plate1-A02"]
    assert ids(labels={"plate": "1"}) == ["plate1-A01", "plate1-A02"]
    assert ids(labels={"plate": "2", "kind": "x"}) == ["plate2-A02"]
    assert ids(prefix="plate2-A0") == ["plate2-A01", "plate2-A02"]
    assert ids(prefix="nothing") == []
    record = client.list(prefix="plate1-A02", timeout=WAIT).records[0]
    assert record.error_message == "asked to fail" and record.labels == {"plate": "1"}
    gate.set()
    held.result(timeout=WAIT)


def test_pages_follow_each_other_until_next_after_is_none(client: ExecutionClient) -> None:
    for number in range(5):
        client.submit({}, execution_id=f"e{number}").result(timeout=WAIT)
    seen, after, pages = [], None, 0
    while True:
        page = client.list(limit=2, after=after, timeout=WAIT)
        seen += [record.execution_id for record in page.records]
        pages += 1
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == [f"e{number}" for number in range(5)] and pages == 3
    client.submit({}, execution_id="e5").result(timeout=WAIT)  # retention (5) drops e0
    with pytest.raises(RemoteError, match="list from the start") as expired:
        client.list(after="e0", timeout=WAIT)
    assert expired.value.code is ErrorCode.NOT_FOUND


@pytest.mark.parametrize("limit", [0, 1001, -1])
def test_a_page_holds_1_to_1000_records(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        ListRequest(request_id=0, limit=limit)
    assert ListRequest(request_id=0, limit=1000).limit == 1000


def test_the_summary_lists_the_worker_processes_with_cpu_and_memory(config: ZMQConfig) -> None:
    """Through psutil (the ops extra): the first summary knows pid and memory, a later one
    the CPU used since."""
    psutil = pytest.importorskip("psutil")
    at = Endpoint.of(port=0, config=config)
    with (
        ExecutionServer.bind(at, echo, pool=WorkerPool.processes(2)) as server,
        ExecutionClient.to(Endpoint.of(port=server.port_number, config=config)) as client,
    ):
        client.submit({"x": 1}).result(timeout=WAIT)
        first = client.summary(timeout=WAIT).processes
        assert len(first) == 2 and all(psutil.pid_exists(p.pid) for p in first)
        assert all(p.cpu_percent is None and p.rss_bytes > (1 << 20) for p in first)
        later = client.summary(timeout=WAIT).processes
        assert [p.pid for p in later] == [p.pid for p in first]
        assert all(p.cpu_percent is not None and p.cpu_percent >= 0 for p in later)
    threads = ExecutionServer.bind(at, echo)  # threads: no processes to list
    with threads, ExecutionClient.to(Endpoint.of(port=threads.port_number, config=config)) as c:
        assert c.summary(timeout=WAIT).processes == ()


def test_text_the_wire_cannot_carry_does_not_break_a_listing(client: ExecutionClient) -> None:
    """An error message or a progress text with a lone surrogate (an undecodable file name):
    the error is escaped, the progress left out of the page, the page served."""
    failed = client.submit({"odd": "fail"}, execution_id="odd-1")
    with pytest.raises(Exception, match="no file"):
        failed.result(timeout=WAIT)
    client.submit({"odd": "complete"}, execution_id="odd-2").result(timeout=WAIT)
    records = client.list(prefix="odd-", timeout=WAIT).records
    assert [r.execution_id for r in records] == ["odd-1", "odd-2"]
    assert records[0].error_message == "no file \\udcff"
    progress = records[1].progress
    assert progress is not None and progress.message == "reading \\udcff"
