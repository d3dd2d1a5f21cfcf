"""An executor whose module refuses to import inside a worker process (tests only)."""

from __future__ import annotations

import sys
from typing import Any

if "--multiprocessing-fork" in sys.orig_argv:  # how spawned worker processes start
    raise ImportError("this module refuses to load in a worker process")


def run(task: Any, _context: Any) -> Any:
    """Would echo the task, if a worker could ever load this module."""
    return task
