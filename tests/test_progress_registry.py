"""ProgressRegistry: the latest event per (execution, key) and roll-ups, alone (Hypothesis)
and fed by a real client from a real server."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_execution import wait_until
from zmqruntime.config import ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.vocabulary import ProgressEvent
from zmqruntime.errors import ConfigurationError, RemoteError
from zmqruntime.execution import (
    ExecutionClient,
    ExecutionServer,
    ProgressRegistry,
    ProgressRollup,
    WorkerPool,
)
from zmqruntime.protocols import TaskContext

WELLS = ("A01", "A02", "B01")
STEPS = ("load", "segment")


def event(execution: str, sequence: int, fraction: float | None, **fields: Any) -> ProgressEvent:
    return ProgressEvent(
        execution_id=execution, sequence=sequence, fraction=fraction, fields=fields
    )


events = st.builds(
    event,
    st.sampled_from(("e1", "e2")),
    st.integers(1, 50),
    st.one_of(st.none(), st.floats(0, 1)),
    well=st.sampled_from(WELLS),
    step=st.sampled_from(STEPS),
)


@given(st.lists(events, max_size=60))
def test_the_newest_event_of_each_key_is_kept_whatever_the_order(
    received: list[ProgressEvent],
) -> None:
    registry = ProgressRegistry(("well", "step"))
    for item in received:
        registry(item)
    newest: dict[tuple[str, Any, Any], int] = {}
    for item in received:
        slot = (item.execution_id, item.fields["well"], item.fields["step"])
        newest[slot] = max(newest.get(slot, 0), item.sequence)
    kept = {
        (e.execution_id, e.fields["well"], e.fields["step"]): e.sequence for e in registry.latest()
    }
    assert kept == newest
    assert len(registry.latest()) == len(newest)


@given(st.lists(events, max_size=60))
def test_a_rollup_counts_every_kept_key_once(received: list[ProgressEvent]) -> None:
    registry = ProgressRegistry(("well", "step"))
    for item in received:
        registry.add(item)
    kept = registry.latest()
    by_well = registry.rollup("well")
    assert sum(group.keys for group in by_well.values()) == len(kept)
    for well, group in by_well.items():
        fractions = [
            e.fraction for e in kept if e.fields["well"] == well and e.fraction is not None
        ]
        assert group.reported == len(fractions)
        assert group.done == sum(1 for f in fractions if f >= 1.0)
        if fractions:
            assert group.fraction == pytest.approx(sum(fractions) / len(fractions))
        else:
            assert group.fraction is None


def test_keys_rollups_and_forgetting() -> None:
    registry = ProgressRegistry(["well"])
    registry(event("e1", 1, 0.5, well="A01", plate="P1"))
    registry(event("e1", 2, 1.0, well="A01", plate="P1"))
    assert not registry.add(event("e1", 1, 0.1, well="A01", plate="P1"))  # older: ignored
    registry(event("e1", 1, 0.25, well="A02", plate="P1"))
    registry(event("e2", 1, None, well="A01", plate="P2"))
    registry(event("e2", 2, None, tags=["x"]))  # no well: key (None,); a list field is fine
    assert registry.rollup("plate") == {
        "P1": ProgressRollup(keys=2, reported=2, fraction=0.625, done=1),
        "P2": ProgressRollup(keys=1, reported=0, fraction=None, done=0),
        None: ProgressRollup(keys=1, reported=0, fraction=None, done=0),
    }
    assert set(registry.rollup(["execution_id", "well"])) == {
        ("e1", "A01"),
        ("e1", "A02"),
        ("e2", "A01"),
        ("e2", None),
    }
    assert set(registry.rollup("tags")) == {None, '["x"]'}
    assert [e.fields.get("well") for e in registry.latest("e1")] == ["A01", "A02"]
    registry.forget("e1")
    assert {e.execution_id for e in registry.latest()} == {"e2"}


def test_at_most_max_keys_are_kept_the_least_recently_updated_go_first() -> None:
    registry = ProgressRegistry(["well"], max_keys=2)
    registry(event("e", 1, 0.1, well="A"))
    registry(event("e", 1, 0.1, well="B"))
    registry(event("e", 2, 0.2, well="A"))  # A is now the most recent
    registry(event("e", 1, 0.1, well="C"))  # B goes
    assert {e.fields["well"] for e in registry.latest()} == {"A", "C"}
    with pytest.raises(ConfigurationError, match="max_keys"):
        ProgressRegistry(max_keys=0)


def test_a_client_fills_a_registry_from_a_real_server(config: ZMQConfig) -> None:
    """Per-well progress of two executions, rolled up per plate and per well."""
    released = threading.Event()

    def run(task: Any, ctx: TaskContext) -> str:
        for number, well in enumerate(WELLS, 1):
            ctx.report_progress(number / len(WELLS), f"well {well}", plate=task, well=well)
        released.wait(10)
        return str(task)

    registry = ProgressRegistry(["well"])
    with (
        ExecutionServer.bind(
            Endpoint.of(port=0, config=config), run, pool=WorkerPool.threads(2)
        ) as server,
        ExecutionClient.to(Endpoint.of(port=server.port_number, config=config)) as client,
    ):
        client.on_progress(registry)
        probe = client.submit("warm-up")  # the subscription is live once its events arrive
        wait_until(lambda: len(registry.latest(probe.execution_id)) == 3, "the warm-up's events")
        released.set()
        probe.result(timeout=10)
        released.clear()
        plates = [client.submit(plate) for plate in ("P1", "P2")]
        wait_until(lambda: len(registry.latest()) == 9, "three wells of each plate")
        released.set()
        for execution in plates:
            execution.result(timeout=10)
    rolled = registry.rollup("plate")
    assert rolled["P1"] == rolled["P2"]
    assert (rolled["P1"].keys, rolled["P1"].reported, rolled["P1"].done) == (3, 3, 1)
    assert rolled["P1"].fraction == pytest.approx(2 / 3)
    assert registry.rollup("well")["A01"].keys == 3  # the warm-up, P1 and P2


def test_a_late_client_gets_the_servers_snapshot_per_key(config: ZMQConfig) -> None:
    """The server keeps the latest event per well; a client that connects after the events
    were published (so it saw none) asks for them."""
    reported = threading.Event()
    released = threading.Event()

    def run(task: Any, ctx: TaskContext) -> str:
        for step in ("load", "segment"):
            for well in WELLS:
                ctx.report_progress(0.5 if step == "load" else 1.0, step, well=well, step=step)
        reported.set()
        released.wait(10)
        return "done"

    at = Endpoint.of(port=0, config=config)
    with ExecutionServer.bind(at, run, progress=ProgressRegistry(["well"])) as server:
        here = Endpoint.of(port=server.port_number, config=config)
        with ExecutionClient.to(here) as early, ExecutionClient.to(here) as late:
            execution = early.submit("plate", execution_id="plate-1")
            assert reported.wait(10)  # every event published before "late" asks
            wait_until(lambda: len(late.progress_snapshot("plate-1")) == 3, "the snapshot")
            snapshot = late.progress_snapshot("plate-1")
            assert {e.fields["well"]: e.fields["step"] for e in snapshot} == {
                well: "segment" for well in WELLS
            }
            assert all(e.fraction == 1.0 and e.execution_id == "plate-1" for e in snapshot)
            with pytest.raises(RemoteError, match="no execution 'unknown'"):
                late.progress_snapshot("unknown")
            released.set()
            assert execution.result(timeout=10) == "done"
    with (
        ExecutionServer.bind(at, run) as plain,  # keeps no registry: a clear refusal
        ExecutionClient.to(Endpoint.of(port=plain.port_number, config=config)) as client,
        pytest.raises(RemoteError, match="progress_snapshot"),
    ):
        client.progress_snapshot("plate-1", timeout=10)
