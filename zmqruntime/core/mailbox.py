"""Mailbox: how other threads hand work to the one thread that owns a set of zmq sockets.

The mailbox wakes the owner's poller through a plain socket pair (which ``zmq.Poller`` can
watch next to zmq sockets); wake-ups are coalesced: a burst of puts costs one wake byte.
"""

from __future__ import annotations

import collections
import contextlib
import socket
from typing import Any, final

import attrs

__all__ = ["Mailbox"]


@final
@attrs.define(eq=False)
class Mailbox:
    """A thread-safe queue whose owner can wait for it in a ``zmq.Poller``.

    Create it with :meth:`open`; poll :attr:`fileno` for ``POLLIN``; call :meth:`drain` when it
    is readable. Any thread may :meth:`put`; only the owner drains.
    """

    _reader: socket.socket
    _writer: socket.socket
    _items: collections.deque[Any] = attrs.field(factory=collections.deque)
    _signalled: bool = False
    closed: bool = False
    fileno: int = attrs.field(init=False)
    """The reader's file descriptor to register with ``zmq.Poller`` for ``POLLIN`` (read once)."""

    @fileno.default
    def _reader_fileno(self) -> int:
        return self._reader.fileno()

    @classmethod
    def open(cls) -> Mailbox:
        """A new mailbox with its wake-up socket pair."""
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        return cls(reader, writer)

    def put(self, item: Any) -> None:
        """Queue ``item`` for the owner and wake it (thread-safe, never blocks)."""
        self._items.append(item)
        self.wake()

    def wake(self) -> None:
        """Wake the owner's poller without queueing anything (safe from a signal handler)."""
        if self._signalled or self.closed:
            return
        self._signalled = True
        # A full pipe means the owner will wake anyway; a closed one means nobody listens.
        with contextlib.suppress(BlockingIOError, OSError):
            self._writer.send(b"\0")

    def drain(self) -> list[Any]:
        """Take everything queued so far (owner only)."""
        try:  # not contextlib.suppress: this runs for every wake-up
            while self._reader.recv(4096):
                pass
        except OSError:  # BlockingIOError included: drained
            pass
        # Clear the flag before taking items: a put that lands after this writes a new byte.
        self._signalled = False
        return [self._items.popleft() for _ in range(len(self._items))]

    def close(self) -> None:
        """Close the wake-up sockets; idempotent. Items still queued are dropped."""
        if self.closed:
            return
        self.closed = True
        self._reader.close()
        self._writer.close()
