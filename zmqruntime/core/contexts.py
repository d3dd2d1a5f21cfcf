"""SharedContext: one zmq context for every client of a process that was given none.

ZeroMQ's advice is one context per process: each context runs its own I/O and reaper threads,
so thirty-two clients on contexts of their own run sixty-four native threads beside their own
(measured: 32 clients on one context did 0.74 to 0.83x the work of one client, on their own
contexts 0.62 to 0.69x). The context is made by the first :meth:`~SharedContext.acquire` and ended
by the last :meth:`~SharedContext.release`, so nothing outlives the last client; a process
forked while it is in use makes a fresh one (a context cannot cross a fork).
"""

from __future__ import annotations

import os
import threading
from typing import Final, final

import attrs
import zmq

from zmqruntime.core.socket_options import Context

__all__ = ["CLIENT_CONTEXT", "SharedContext"]


@final
@attrs.define(eq=False)
class SharedContext:
    """A reference-counted zmq context (thread-safe)."""

    _context: Context | None = None
    _users: int = 0
    _pid: int = 0
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def acquire(self) -> Context:
        """The shared context, made if nobody uses it; pair with one :meth:`release`."""
        with self._lock:
            if self._context is None or self._pid != os.getpid():
                self._context, self._users, self._pid = zmq.Context(), 0, os.getpid()
            self._users += 1
            return self._context

    def release(self) -> None:
        """One user is done (its sockets are closed); the last one ends the context."""
        with self._lock:
            if self._context is None or self._pid != os.getpid():
                return  # made by the parent before a fork: not ours to end
            self._users -= 1
            if self._users > 0:
                return
            context, self._context = self._context, None
        context.term()  # every socket of it is closed: this returns at once

    @property
    def users(self) -> int:
        """How many users hold the context now."""
        with self._lock:
            return self._users


CLIENT_CONTEXT: Final = SharedContext()
"""The context of every :class:`~zmqruntime.ZMQClient` built without one."""
