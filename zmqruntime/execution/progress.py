"""ProgressRegistry: the latest progress event per (execution, key) and roll-ups over them.

An executor reports progress with fields of its own (``ctx.report_progress(0.5,
well="A01", step="segment")``); a GUI wants, for a window opened late as well as for one
open from the start, the latest event of each well and step, and the percent done per plate,
well or worker. The registry keeps exactly that: the key of an event is the values of its
``key_fields`` (missing fields are ``None``), one event per (execution, key), the newest by
``sequence``. It is sans-IO and thread-safe: feed it from
:meth:`ExecutionClient.on_progress <zmqruntime.ExecutionClient.on_progress>` (it is
callable) or from anywhere else.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Final, final

import attrs

from zmqruntime.config import check_count, checked
from zmqruntime.core import wire
from zmqruntime.core.messages import Completion
from zmqruntime.core.vocabulary import ProgressEvent

__all__ = ["MAX_PROGRESS_KEYS", "PROGRESS_SNAPSHOT", "ProgressRegistry", "ProgressRollup"]

MAX_PROGRESS_KEYS: Final = 100_000
"""Default :attr:`ProgressRegistry.max_keys`: (execution, key) pairs kept; the least recently
updated is forgotten first."""

PROGRESS_SNAPSHOT: Final = "zmqruntime.progress_snapshot"
"""The built-in request of an execution server that keeps a registry (payload
``{"execution_id": str}``), answered with that execution's latest event per key, as a list of
objects (the fields of ``ProgressEvent``): ``ExecutionClient.progress_snapshot``."""

_Key = tuple[str, tuple[Any, ...]]


def _names(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(names)


def _hashable(value: Any) -> Any:
    """A field's value as a dict key: scalars as they are, lists and objects as their JSON."""
    if value is None or isinstance(value, str | int | float):
        return value
    return wire.dump_json(value, lone_surrogates=True).decode()


@final
@attrs.frozen
class ProgressRollup:
    """One group of a roll-up: how many (execution, key) pairs it holds, how many of those
    reported a fraction, their mean fraction (None: none did) and how many are at 1.0."""

    keys: int
    reported: int
    fraction: float | None
    done: int


@final
@attrs.define(eq=False)
class ProgressRegistry:
    """The latest event per (execution, values of ``key_fields``), at most ``max_keys`` of
    them (the least recently updated is forgotten first). An event older (by ``sequence``)
    than the one kept for its key is ignored, so the order events arrive in does not matter.
    """

    key_fields: tuple[str, ...] = attrs.field(default=(), converter=_names)
    max_keys: int = attrs.field(default=MAX_PROGRESS_KEYS, validator=checked(check_count, 1))
    _latest: collections.OrderedDict[_Key, ProgressEvent] = attrs.field(
        factory=collections.OrderedDict, init=False
    )
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def key_of(self, event: ProgressEvent) -> tuple[Any, ...]:
        """The values of ``key_fields`` in ``event.fields`` (None for a missing one)."""
        return tuple(_hashable(event.fields.get(name)) for name in self.key_fields)

    def __call__(self, message: ProgressEvent | Completion) -> None:
        """An ``on_progress`` callback: keep an event if it is the newest of its (execution,
        key); an execution's end (a ``Completion``) changes nothing."""
        if isinstance(message, ProgressEvent):
            self.add(message)

    def add(self, event: ProgressEvent) -> bool:
        """Keep ``event`` if it is the newest of its (execution, key); whether it was kept."""
        slot = (event.execution_id, self.key_of(event))
        with self._lock:
            kept = self._latest.get(slot)
            if kept is not None and kept.sequence > event.sequence:
                return False
            self._latest[slot] = event
            self._latest.move_to_end(slot)
            while len(self._latest) > self.max_keys:
                self._latest.popitem(last=False)
        return True

    def latest(self, execution_id: str | None = None) -> list[ProgressEvent]:
        """The kept events (of one execution, or all), the least recently updated first."""
        with self._lock:
            events = list(self._latest.values())
        return [e for e in events if execution_id is None or e.execution_id == execution_id]

    def forget(self, execution_id: str) -> None:
        """Drop every event of ``execution_id``."""
        with self._lock:
            for slot in [slot for slot in self._latest if slot[0] == execution_id]:
                del self._latest[slot]

    def rollup(
        self, by: str | Sequence[str], execution_id: str | None = None
    ) -> dict[Any, ProgressRollup]:
        """The kept events grouped by the value of field ``by`` (or the tuple of values of
        several fields; ``"execution_id"`` names the execution), each group rolled up."""
        names = (by,) if isinstance(by, str) else tuple(by)

        def group(event: ProgressEvent) -> Any:
            values = tuple(
                event.execution_id if name == "execution_id" else _hashable(event.fields.get(name))
                for name in names
            )
            return values[0] if isinstance(by, str) else values

        groups: dict[Any, list[ProgressEvent]] = {}
        for event in self.latest(execution_id):
            groups.setdefault(group(event), []).append(event)
        return {key: _rolled(events) for key, events in groups.items()}


def _rolled(events: Iterable[ProgressEvent]) -> ProgressRollup:
    events = list(events)
    fractions = [e.fraction for e in events if e.fraction is not None]
    mean = sum(fractions) / len(fractions) if fractions else None
    done = sum(1 for fraction in fractions if fraction >= 1.0)
    return ProgressRollup(len(events), len(fractions), mean, done)
