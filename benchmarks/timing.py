"""Timing helpers shared by every system: samples of sequential calls, timed repetitions.

Every measurement has a warm-up and is bounded twice: by a count and by a time budget (at
least a few samples are always taken), so a slow system cannot stretch the run unboundedly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MIN_SAMPLES = 20


def sample_calls(
    call: Callable[[int], object], count: int, warmup: int, budget: float
) -> list[float]:
    """Seconds taken by each of up to ``count`` sequential ``call(n)`` after ``warmup`` calls."""
    for number in range(warmup):
        call(number)
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    for number in range(count):
        start = time.perf_counter()
        call(number)
        end = time.perf_counter()
        samples.append(end - start)
        if end > deadline and len(samples) >= MIN_SAMPLES:
            break
    return samples


def repeat(run: Callable[[], float], reps: int, budget: float) -> list[float]:
    """Durations of up to ``reps`` runs (each returns its own duration) within ``budget``.

    At least one run is made; the budget only stops further repetitions.
    """
    durations: list[float] = []
    deadline = time.perf_counter() + budget
    for _ in range(reps):
        durations.append(run())
        if time.perf_counter() > deadline:
            break
    return durations


def run_clients(clients: int, work: Callable[[int], None]) -> float:
    """Seconds until ``work(i)`` finished in each of ``clients`` threads started together.

    With one client the work runs in the calling thread (no thread overhead).
    """
    if clients == 1:
        start = time.perf_counter()
        work(0)
        return time.perf_counter() - start
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def body(index: int) -> None:
        barrier.wait()
        try:
            work(index)
        except BaseException as exc:  # reported in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    duration = time.perf_counter() - start
    if errors:
        raise errors[0]
    return duration


def shares(total: int, clients: int) -> list[int]:
    """``total`` split as evenly as possible over ``clients``."""
    base, extra = divmod(total, clients)
    return [base + (1 if index < extra else 0) for index in range(clients)]
