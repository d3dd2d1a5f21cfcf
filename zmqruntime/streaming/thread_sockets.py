"""The data socket an :class:`~zmqruntime.streaming.ImageSender` keeps for each calling
thread, so an image costs no hand-off to an I/O thread."""

from __future__ import annotations

import logging
import threading
from typing import final

import attrs

from zmqruntime.core.socket_options import Socket

__all__ = ["MAX_THREAD_SOCKETS", "ThreadSocket"]

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
