"""ExecutionContext: what an executor receives next to its task: the execution's id and
labels, a way to publish progress (validated in the executor's thread, so a bad value raises
where it was made), and whether a cancellation was requested.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import final

import attrs

from zmqruntime.core.codec import check_json_object
from zmqruntime.core.messages import ProgressEvent
from zmqruntime.errors import TaskCancelled
from zmqruntime.protocols import JSONValue

__all__ = ["ExecutionContext"]


def _ignore(_event: ProgressEvent) -> None:
    return None


@final
@attrs.define(eq=False)
class ExecutionContext:
    """The :class:`~zmqruntime.TaskContext` the library hands to executors: ``report``
    receives every progress event, ``cancel_event`` is set when a cancellation is requested.
    Safe to use from several threads of one executor."""

    execution_id: str
    labels: Mapping[str, str] = attrs.field(factory=dict)
    report: Callable[[ProgressEvent], None] = _ignore
    cancel_event: threading.Event = attrs.field(factory=threading.Event)
    clock: Callable[[], float] = time.time
    _sequence: int = attrs.field(default=0, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    @property
    def cancelled(self) -> bool:
        """True once a cancellation was requested; a long task should check it and stop."""
        return self.cancel_event.is_set()

    def wait_cancelled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a cancellation; True if one was requested (a
        task's way to pause without missing a cancel)."""
        return self.cancel_event.wait(timeout)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~zmqruntime.TaskCancelled` if a cancellation was requested."""
        if self.cancel_event.is_set():
            raise TaskCancelled(self.execution_id)

    def report_progress(
        self, fraction: float | None = None, message: str = "", **fields: JSONValue
    ) -> None:
        """Publish a progress event: ``fraction`` is None or a finite number (conventionally
        0..1), ``message`` a string, ``fields`` JSON values. Anything else raises ``TypeError``
        (``ValueError`` for a non-finite fraction) right here."""
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
                raise TypeError(f"fraction must be a number or None, not {type(fraction)!r}")
            if not math.isfinite(fraction):
                raise ValueError(f"fraction must be finite, got {fraction!r}")
            fraction = float(fraction)
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, not {type(message).__name__}")
        check_json_object(fields, "fields")
        with self._lock:
            self._sequence += 1
            event = ProgressEvent(
                execution_id=self.execution_id,
                sequence=self._sequence,
                fraction=fraction,
                message=message,
                fields=dict(fields),
                timestamp=self.clock(),
            )
            # Under the lock so events leave in sequence order even from several threads.
            self.report(event)
