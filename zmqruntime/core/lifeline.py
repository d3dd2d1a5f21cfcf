"""Lifelines: a launched server notices when the process that launched it is gone.

The launcher keeps the write end of a pipe and hands the read end to the child (its number in
``ZMQRUNTIME_LIFELINE_FD``). The OS closes the write end when the launcher exits for any
reason, even SIGKILL; the child's watcher thread then reads end-of-file and calls back. POSIX
only; elsewhere :func:`watch_lifeline` does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["LIFELINE_ENV", "open_lifeline", "watch_lifeline"]

logger = logging.getLogger(__name__)

LIFELINE_ENV: Final = "ZMQRUNTIME_LIFELINE_FD"


def open_lifeline() -> tuple[int, int] | None:
    """``(read_end, write_end)`` of a new lifeline pipe, or None where it is unsupported.

    Pass the read end to the child (``pass_fds``) and close it in the launcher after the
    child started; keep the write end open for as long as the child should live.
    """
    if os.name != "posix":
        return None
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    return read_end, write_end


def watch_lifeline(on_lost: Callable[[], None]) -> threading.Thread | None:
    """In a launched child: call ``on_lost()`` once the launcher is gone.

    Returns the watcher thread (a daemon blocked on the pipe; it ends with the process), or
    None when this process was not given a lifeline.
    """
    value = os.environ.get(LIFELINE_ENV)
    if value is None or os.name != "posix":
        return None
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError):
        logger.warning("ignoring %s=%r: not an open file descriptor", LIFELINE_ENV, value)
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
