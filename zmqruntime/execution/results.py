"""ResultCache: the encoded results of recently finished executions, within a byte budget."""

from __future__ import annotations

import collections
import threading
from typing import Final, final

import attrs

from zmqruntime.protocols import Buffer

__all__ = ["ResultCache"]

_RESULT_ENTRY_OVERHEAD: Final = 256
"""Bytes a cached result costs beyond its frames (id, tuple, list), charged to the budget."""


@final
@attrs.define(eq=False)
class ResultCache:
    """The serialized results of recently finished executions, for clients that resubmit one
    (a retry after a timeout). Each entry is charged its bookkeeping as well as its frames
    against ``budget``, and at most ``max_entries`` are kept (the server passes its retention's
    record count), so millions of tiny results cannot pile up. Thread-safe.
    """

    budget: int
    max_entries: int = 10_000
    _entries: collections.OrderedDict[str, tuple[list[Buffer], int]] = attrs.field(
        factory=collections.OrderedDict
    )
    _size: int = 0
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def put(self, execution_id: str, frames: list[Buffer]) -> None:
        size = _RESULT_ENTRY_OVERHEAD + sum(memoryview(frame).nbytes for frame in frames)
        if size > self.budget:
            return
        with self._lock:
            replaced = self._entries.pop(execution_id, None)
            if replaced is not None:
                self._size -= replaced[1]
            self._entries[execution_id] = (frames, size)
            self._size += size
            while self._size > self.budget or len(self._entries) > self.max_entries:
                _key, (_frames, dropped) = self._entries.popitem(last=False)
                self._size -= dropped

    def forget(self, execution_id: str) -> None:
        """Drop the result kept for ``execution_id`` (its id now names another execution)."""
        with self._lock:
            entry = self._entries.pop(execution_id, None)
            if entry is not None:
                self._size -= entry[1]

    def get(self, execution_id: str) -> list[Buffer] | None:
        with self._lock:
            entry = self._entries.get(execution_id)
            return None if entry is None else entry[0]
