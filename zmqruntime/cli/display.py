"""Terminal output for the command line: progress bars and tables with rich (the ``cli``
extra), or plain lines without it."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, final

import attrs

from zmqruntime.core.messages import Completion, ExecutionRecord, ProgressEvent, ServerSummary

__all__ = ["EXIT_USAGE", "Bars", "CLIError", "follow", "show_record", "show_summary", "show_table"]

EXIT_USAGE = 2
"""The exit code of a command given wrong arguments (1 is reserved for a failed task)."""


class CLIError(Exception):
    """A person-made error: reported as one line with its exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _rich() -> Any:
    try:
        import rich.console  # noqa: PLC0415 - optional extra
    except ImportError:
        return None
    return rich


def show_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """A two-column table (rich) or aligned lines (plain)."""
    rich = _rich()
    if rich is None:
        sys.stdout.write(f"{title}\n")
        width = max((len(key) for key, _value in rows), default=0)
        for key, value in rows:
            sys.stdout.write(f"  {key.ljust(width)}  {value}\n")
        return
    import rich.table  # noqa: PLC0415

    table = rich.table.Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    rich.console.Console().print(table)


def show_summary(summary: ServerSummary) -> None:
    """The server summary as a table."""
    rows = [("queued", str(summary.queued)), ("running", str(summary.running))]
    rows += [
        (status, str(count))
        for status, count in summary.counts.items()
        if status not in {"queued", "running"}  # shown above already
    ]
    rows += [("workers", str(summary.workers)), ("uptime", f"{summary.uptime:.1f}s")]
    rows += [(f"worker {name}", ", ".join(ids)) for name, ids in sorted(summary.engine.items())]
    show_table("execution server", rows)


def show_record(record: ExecutionRecord) -> None:
    """One execution's record as a table."""
    rows = [("id", record.execution_id), ("status", record.status.value)]
    rows += [(f"label {key}", value) for key, value in record.labels.items()]
    if record.progress is not None:
        fraction = record.progress.fraction
        done = "" if fraction is None else f"{fraction:.0%} "
        rows.append(("progress", f"{done}{record.progress.message}"))
    if record.error_type:
        rows.append(("error", f"{record.error_type}: {record.error_message}"))
    show_table("execution", rows)  # the id in a row: a long title would wrap mid-id
    if record.traceback:
        sys.stdout.write(record.traceback)


@final
@attrs.define(eq=False)
class Bars:
    """Progress bars keyed by name, fed from any thread; plain lines without rich.

    Both go to stderr, so stdout holds only results and tables (``submit --wait > out.json``).
    """

    quiet: bool = False
    _progress: Any = None
    _finished: bool = False
    _tasks: dict[str, Any] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def start(self) -> Bars:
        """Begin drawing (rich) — a no-op in plain mode."""
        rich = _rich()
        if rich is not None and not self.quiet:
            import rich.progress  # noqa: PLC0415

            self._progress = rich.progress.Progress(
                rich.progress.TextColumn("{task.description}"),
                rich.progress.BarColumn(),
                rich.progress.TaskProgressColumn(),
                rich.progress.TextColumn("{task.fields[note]}"),
                console=rich.console.Console(stderr=True),
            )
            self._progress.start()
        return self

    def update(self, name: str, fraction: float | None, note: str = "") -> None:
        """Move bar ``name`` to ``fraction`` (0..1) with a short note."""
        with self._lock:
            if self._finished:
                return  # a late event after finish() must not print a stray line
            if self._progress is None:
                if not self.quiet and note:
                    sys.stderr.write(f"{name}: {note}\n")
                return
            task = self._tasks.get(name)
            if task is None:
                task = self._tasks[name] = self._progress.add_task(name, total=1.0, note="")
            self._progress.update(task, completed=fraction, note=note)  # None: as it was

    def show(self, event: ProgressEvent | Completion, names: Mapping[str, str]) -> None:
        """Move the bar named ``names[execution id]`` to where ``event`` says (a completion
        fills it); events of executions not in ``names`` are ignored."""
        if isinstance(event, ProgressEvent):
            name, fraction, note = names.get(event.execution_id), event.fraction, event.message
        else:
            record = event.record
            name, fraction, note = names.get(record.execution_id), 1.0, record.status.value
        if name is not None:
            self.update(name, fraction, note)

    def finish(self) -> None:
        """Stop drawing (idempotent)."""
        with self._lock:
            self._finished = True
            if self._progress is not None:
                self._progress.stop()
                self._progress = None


@contextlib.contextmanager
def follow(client: Any, execution_id: str, *, quiet: bool = False) -> Iterator[Bars]:
    """Show one execution's progress events while the body waits for it."""
    bars = Bars(quiet=quiet).start()
    names = {execution_id: execution_id[:8]}
    subscription = client.on_progress(lambda event: bars.show(event, names), execution_id)
    try:
        yield bars
    finally:
        subscription.close()
        bars.finish()
