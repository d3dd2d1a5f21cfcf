"""The test's side of a worker backend: a JobSink that records what it hears, and waits.

Every callback records under one condition and notifies, so a test waits for an effect
(a job finished, a progress event arrived) instead of sleeping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from zmqruntime.core.messages import ProgressEvent
from zmqruntime.execution.outcomes import Job, JobSink, Outcome

WAIT = 60.0
"""Generous: worker processes start slowly on a loaded 2-core machine."""


class Recorder:
    """Records ``started``, ``progress``, ``finished`` and ``freed`` calls, in order.

    ``refuse``: execution ids whose ``started`` answers False (cancelled meanwhile).
    """

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.cond = threading.Condition()
        self.refuse = refuse or set()
        self.events: list[tuple[str, str]] = []
        self.outcomes: dict[str, Outcome] = {}
        self.progress: list[ProgressEvent] = []
        self.freed = 0

    def sink(self) -> JobSink:
        return JobSink(
            started=self._started, progress=self._progress, finished=self._done, freed=self._free
        )

    def _started(self, job: Job) -> bool:
        with self.cond:
            self.events.append(("started", job.execution_id))
            self.cond.notify_all()
            return job.execution_id not in self.refuse

    def _progress(self, event: ProgressEvent) -> None:
        with self.cond:
            self.progress.append(event)
            self.cond.notify_all()

    def _done(self, job: Job, outcome: Outcome) -> None:
        with self.cond:
            assert job.execution_id not in self.outcomes, f"{job.execution_id} finished twice"
            self.events.append(("finished", job.execution_id))
            self.outcomes[job.execution_id] = outcome
            self.cond.notify_all()

    def _free(self) -> None:
        with self.cond:
            self.events.append(("freed", ""))
            self.freed += 1
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Wait (on the condition) until ``predicate()`` holds; fail after ``timeout``."""
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                pytest.fail(f"timed out after {timeout}s waiting for {what}")

    def outcome(self, execution_id: str) -> Outcome:
        """Wait for the job to finish and return its outcome."""
        self.wait(lambda: execution_id in self.outcomes, f"{execution_id} to finish")
        with self.cond:
            return self.outcomes[execution_id]

    def fields(self, execution_id: str) -> dict[str, object]:
        """Wait for the job's first progress event and return its fields."""

        def first() -> ProgressEvent | None:
            return next((e for e in self.progress if e.execution_id == execution_id), None)

        self.wait(lambda: first() is not None, f"progress of {execution_id}")
        with self.cond:
            event = first()
            assert event is not None
            return dict(event.fields)


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs: it does not exist, or it is a zombie (an orphan
    whose new parent has not reaped it yet)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        return state in {"Z", "X"}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def end_if_running(pid: int) -> None:
    """Kill ``pid`` if it still runs (a test that failed leaves nothing behind)."""
    if not gone(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def wait_gone(pids: list[int], timeout: float = WAIT) -> None:
    """Wait in short bounded steps until every one of ``pids`` is gone."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not all(gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            left = [pid for pid in pids if not gone(pid)]
            pytest.fail(f"processes {left} still run after {timeout}s")
        pause.wait(0.02)
