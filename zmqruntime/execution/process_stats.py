"""ProcessSampler: CPU and memory of a server's worker processes, for its summary, through
psutil (the ``ops`` extra). Without psutil a process is listed with its pid alone."""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterable
from typing import Any, final

import attrs

from zmqruntime.core.vocabulary import ProcessStats
from zmqruntime.execution.outcomes import WorkerStatistics

__all__ = ["ProcessSampler"]


@final
@attrs.define(eq=False)
class ProcessSampler:
    """Samples the worker processes a pool reports. CPU percent is measured between two
    samples of the same process, so the first sample of each has None. It keeps one handle
    per live worker process (forgotten when the process is no longer reported). Thread-safe."""

    _handles: dict[int, Any] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _psutil: Any = attrs.field(default=None, init=False)
    """psutil once the first process is sampled (importing it costs ~10 ms), False without it."""

    def sample(self, workers: Iterable[WorkerStatistics]) -> tuple[ProcessStats, ...]:
        """The stats of each worker that is a process (one with a pid)."""
        found = [(worker.name, worker.pid) for worker in workers if worker.pid is not None]
        with self._lock:
            kept = {pid: self._handles.get(pid) for _name, pid in found}
            self._handles = {pid: handle for pid, handle in kept.items() if handle is not None}
            return tuple(self._stats(name, pid) for name, pid in found)

    def _stats(self, name: str, pid: int) -> ProcessStats:
        if self._psutil is None:
            self._psutil = _load_psutil()
        psutil = self._psutil
        if psutil is False:
            return ProcessStats(name=name, pid=pid)
        with contextlib.suppress(psutil.Error):
            first = pid not in self._handles
            handle = self._handles.setdefault(pid, psutil.Process(pid))
            with handle.oneshot():
                cpu = handle.cpu_percent(interval=None)
                rss = handle.memory_info().rss
            cpu_percent = None if first else float(cpu)
            return ProcessStats(name=name, pid=pid, cpu_percent=cpu_percent, rss_bytes=int(rss))
        return ProcessStats(name=name, pid=pid)  # it ended meanwhile


def _load_psutil() -> Any:
    """psutil (untyped: no stubs among the dependencies), or False when the ops extra is not
    installed."""
    try:
        return importlib.import_module("psutil")
    except ImportError:
        return False
