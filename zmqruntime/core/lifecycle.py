"""The life cycle every component shares, as functions it uses as its context manager
(``__enter__ = start_on_enter`` or ``connect_on_enter``, ``__exit__ = close_on_exit``), and
SIGINT/SIGTERM handling for a process that serves in its main thread.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

__all__ = [
    "already_started",
    "close_on_exit",
    "connect_on_enter",
    "start_on_enter",
    "stop_on_signals",
]


class _Closable(Protocol):
    def close(self) -> None: ...


class _Startable(Protocol):
    def start(self) -> object: ...
    def close(self) -> object: ...


class _Connectable(Protocol):
    def connect(self) -> object: ...
    def close(self) -> object: ...


_Started = TypeVar("_Started", bound=_Startable)
_Connected = TypeVar("_Connected", bound=_Connectable)


def start_on_enter(self: _Started) -> _Started:
    """``__enter__`` of a server-like component: start it, and use it in the block. If it
    cannot start, it is closed before the error propagates: the ``with`` block never runs, so
    its ``__exit__`` would not, and what the component made (a zmq context, threads, a bound
    socket) would stay open."""
    try:
        self.start()
    except BaseException:
        self.close()
        raise
    return self


def already_started(what: str) -> RuntimeError:
    """The error of starting ``what`` twice, which a ``with`` around a started component does
    (and then closes it, as any component that fails to enter)."""
    return RuntimeError(
        f"this {what} was already started: entering a with block starts it too, so call "
        "start() or use with, not both"
    )


def connect_on_enter(self: _Connected) -> _Connected:
    """``__enter__`` of a client-like component: connect it, and use it in the block; closed
    again if it cannot connect (see :func:`start_on_enter`)."""
    try:
        self.connect()
    except BaseException:
        self.close()
        raise
    return self


def close_on_exit(self: _Closable, *_exc_info: object) -> None:
    """``__exit__`` of a component: close it, whatever ended the ``with`` block."""
    self.close()


@contextlib.contextmanager
def stop_on_signals(on_signal: Callable[[int], None], *, enabled: bool = True) -> Iterator[None]:
    """Call ``on_signal(signum)`` on SIGINT and SIGTERM while the block runs, then restore the
    previous handlers. Signals can only be caught in the main thread; elsewhere (or with
    ``enabled=False``) this does nothing."""
    previous: dict[signal.Signals, Any] = {}
    if enabled and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda number, _frame: on_signal(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
