"""The data socket an :class:`~zmqruntime.streaming.ImageSender` keeps for each calling
thread, so an image costs no hand-off to an I/O thread: :class:`ThreadSockets`, the table of
them, and :class:`ThreadSocket`, one thread's."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import final

import attrs

from zmqruntime.core.socket_options import Socket
from zmqruntime.errors import ChannelClosed

__all__ = ["MAX_THREAD_SOCKETS", "ThreadSocket", "ThreadSockets"]

logger = logging.getLogger(__name__)

MAX_THREAD_SOCKETS = 16
"""How many calling threads get a data socket of their own; more go through the I/O thread."""


@final
@attrs.define(eq=False)
class ThreadSocket:
    """The data socket of one calling thread (None: it sends through the client's I/O thread,
    for good, so its images stay in order); ``lock`` hands it to :meth:`ImageSender.close`."""

    thread: threading.Thread
    socket: Socket | None
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    closed: bool = False

    def close(self) -> None:
        with self.lock:  # the full memory barrier libzmq asks for when a socket changes threads
            if not self.closed:
                self.closed = True
                if self.socket is not None:
                    self.socket.close()


@final
@attrs.define(eq=False)
class ThreadSockets:
    """Each calling thread's :class:`ThreadSocket`, made on its first use: with a socket from
    ``open_socket`` (which may return None) for the first :data:`MAX_THREAD_SOCKETS` live
    threads, without one for the others. Thread-safe; after :meth:`close` it raises
    :class:`~zmqruntime.ChannelClosed`."""

    open_socket: Callable[[], Socket | None]
    _entries: dict[int, ThreadSocket] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def current(self) -> ThreadSocket:
        """The calling thread's entry."""
        thread = threading.current_thread()
        ident = threading.get_ident()
        entry = self._entries.get(ident)
        if entry is not None and entry.thread is thread:
            return entry
        with self._lock:
            if self._closed:
                raise ChannelClosed("this ImageSender is closed")
            # Ended threads' sockets go, and one under this thread's ident (reused before its
            # thread looked ended).
            stale = [
                key
                for key, other in self._entries.items()
                if key == ident or not other.thread.is_alive()
            ]
            for key in stale:
                self._entries.pop(key).close()
            owned = sum(other.socket is not None for other in self._entries.values())
            socket = self.open_socket() if owned < MAX_THREAD_SOCKETS else None
            entry = self._entries[ident] = ThreadSocket(thread, socket)
        return entry

    def close(self) -> None:
        """Close every thread's socket (idempotent)."""
        with self._lock:
            self._closed = True
            entries, self._entries = self._entries, {}
        for entry in entries.values():
            entry.close()
