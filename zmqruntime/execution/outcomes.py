"""What a worker pool reports about a job: how it ended, and to whom it reports."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, final

import attrs

from zmqruntime.core.messages import ProgressEvent
from zmqruntime.errors import TaskCancelled
from zmqruntime.protocols import Buffer

__all__ = ["Cancelled", "Completed", "Failed", "Job", "Outcome", "PoolListener", "run_job"]


@final
@attrs.frozen
class Job:
    """One task waiting for, or in, a worker."""

    execution_id: str
    task: Any
    labels: Mapping[str, str] = attrs.field(factory=dict)


@final
@attrs.frozen
class Completed:
    """The executor returned ``result``.

    ``frames``: the result already encoded with the server's serializer (a remote worker
    did it, and ``result`` is then None); the server sends them on as they are.
    """

    result: Any
    frames: tuple[Buffer, ...] | None = None


@final
@attrs.frozen
class Failed:
    """The executor raised (or its worker died): type name, message and formatted traceback."""

    error_type: str
    error_message: str
    traceback: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failed:
        """Describe ``exc`` with its traceback, as text a client can show."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__qualname__, str(exc), text)


@final
@attrs.frozen
class Cancelled:
    """The job was cancelled: dropped from the queue, stopped cooperatively, or killed."""


Outcome: TypeAlias = Completed | Failed | Cancelled
"""How a job ended."""


@final
@attrs.frozen
class PoolListener:
    """Where a pool reports: all three are called from pool threads, never under its lock.

    ``started(job)`` is called just before the executor runs; returning False skips the job
    (it was cancelled meanwhile). ``progress(event)`` carries the executor's progress.
    ``finished(job, outcome)`` is called exactly once per job the pool accepted.
    """

    started: Callable[[Job], bool]
    progress: Callable[[ProgressEvent], None]
    finished: Callable[[Job, Outcome], None]


def run_job(
    executor: Callable[[Any, Any], object], job: Job, context: Any, cancelled: Callable[[], bool]
) -> Outcome:
    """Run ``executor(task, context)`` and describe how it ended.

    A cancellation requested while it ran wins over its result: the caller asked for it,
    and the result is discarded.
    """
    try:
        result = executor(job.task, context)
    except TaskCancelled:
        return Cancelled()
    except BaseException as exc:  # a failing executor is data, not a crash
        if cancelled():
            return Cancelled()
        return Failed.from_exception(exc)
    if cancelled():
        return Cancelled()
    return Completed(result)
