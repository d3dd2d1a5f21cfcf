"""Lifelines: a launched server notices when the process that launched it is gone, and tells
the launcher when it serves.

The launcher keeps one end of a connected socket pair and hands the other to the child (its
number in ``ZMQRUNTIME_LIFELINE_FD``). The OS closes the launcher's end when the launcher exits
for any reason, even SIGKILL; the child's watcher thread then reads end-of-file and calls back.
The other way, the child writes :data:`READY` once bound (:func:`report_ready`), and the
launcher reads end-of-file when the child is gone: both are events, nobody polls. POSIX only;
elsewhere these functions do nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["LIFELINE_ENV", "READY", "open_lifeline", "report_ready", "watch_lifeline"]

logger = logging.getLogger(__name__)

LIFELINE_ENV: Final = "ZMQRUNTIME_LIFELINE_FD"
READY: Final = b"ready\n"
"""What a launched child writes on its lifeline once it serves."""


def open_lifeline() -> tuple[int, int] | None:
    """``(child_end, launcher_end)`` of a new lifeline (a connected socket pair), or None
    where it is unsupported.

    Pass the child's end to the child (``pass_fds``) and close it in the launcher after the
    child started; keep the launcher's end open for as long as the child should live. The
    launcher's end reads :data:`READY` once the child serves, end-of-file once it is gone.
    """
    if os.name != "posix":
        return None
    child_end, launcher_end = socket.socketpair()
    child_end.set_inheritable(True)
    return child_end.detach(), launcher_end.detach()


def _lifeline_fd() -> int | None:
    value = os.environ.get(LIFELINE_ENV)
    if value is None or os.name != "posix":
        return None
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError):
        logger.warning("ignoring %s=%r: not an open file descriptor", LIFELINE_ENV, value)
        return None
    return fd


def report_ready() -> None:
    """In a launched child: tell the launcher that this process serves now (call it once its
    sockets are bound). Does nothing in a process that was not given a lifeline."""
    fd = _lifeline_fd()
    if fd is not None:
        with contextlib.suppress(OSError):  # a launcher that is gone, or an older pipe lifeline
            os.write(fd, READY)


def watch_lifeline(on_lost: Callable[[], None]) -> threading.Thread | None:
    """In a launched child: call ``on_lost()`` once the launcher is gone.

    Returns the watcher thread (a daemon blocked on the lifeline; it ends with the process), or
    None when this process was not given a lifeline.
    """
    fd = _lifeline_fd()
    if fd is None:
        return None

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 64):
                pass  # the launcher never writes; any data is ignored
        logger.warning("the launching process is gone; stopping")
        on_lost()

    thread = threading.Thread(target=watch, name="zmqruntime-lifeline", daemon=True)
    thread.start()
    return thread
