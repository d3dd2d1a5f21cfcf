"""What a person types and sees at the command line: one-line errors and their exit codes,
checks of typed values, and progress bars and tables with rich (the ``cli`` extra), or plain
lines without it."""

from __future__ import annotations

import argparse
import contextlib
import enum
import importlib.util
import io
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, final

import attrs

from zmqruntime import errors
from zmqruntime.core.messages import Completion, ExecutionRecord, ProgressEvent, ServerSummary

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "EXIT_WAIT_TIMEOUT",
    "MAX_SECONDS",
    "Bars",
    "CLIError",
    "answer",
    "check_napari",
    "count",
    "dumps",
    "file_name",
    "follow",
    "log_level",
    "parse_args",
    "report",
    "seconds",
    "show_record",
    "show_summary",
    "show_table",
    "text",
    "writable_folder",
    "write",
]

EXIT_TASK_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_WAIT_TIMEOUT = 1, 2, 3, 4, 5
EXIT_INTERNAL, EXIT_INTERRUPTED = 70, 130  # 70: EX_SOFTWARE of sysexits.h, a bug
MAX_SECONDS = 7 * 24 * 3600.0
"""The longest ``--timeout`` or ``--wait-timeout`` (a week)."""
logger = logging.getLogger(__name__)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class CLIError(Exception):
    """A person-made error: reported as one line with its exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def write(text: str) -> None:
    """Write one line of output to stdout, at once."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def answer(args: argparse.Namespace, data: Any, human: str) -> None:
    """Print ``data`` as JSON with ``--json``, else the ``human`` line."""
    write(dumps(data) if args.json else human)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):
        return attrs.asdict(value, recurse=False)  # json comes back here for what it holds
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: Any) -> str:
    """JSON for the terminal: arrays as lists, bytes as hex, records as objects."""
    return json.dumps(value, default=_json_default, indent=2)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but a usage error is a :class:`CLIError` of one line."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0:  # --help
            raise
        usage, _, message = said.getvalue().partition(": error: ")
        command = usage.rpartition("\n")[2].removeprefix("usage: ").split(" [")[0]
        raise CLIError(f"{message.strip()} (see: {command} --help)") from None


def report(exc: BaseException, where: str | None) -> int:
    """Write what ``exc`` means as one line on stderr; returns the exit code. ``where`` names
    the server a command talked to (None: the error names it)."""
    if isinstance(exc, errors.TaskFailed):
        sys.stderr.write(exc.remote_traceback or f"{exc.error_type}: {exc.error_message}\n")
    message, code = _explain(exc, where)
    for setting, option in _OPTION_NAMES:
        message = message.replace(setting, option)
    sys.stderr.write(f"zmqruntime: {' '.join(message.splitlines())}\n")
    return code


_OPTION_NAMES = (
    ("ZMQConfig(ipc_root=...)", "--ipc-root"),
    ("ZMQConfig ipc_root/app_name", "--ipc-root"),
    ("ServerCurve(admin_keys=...)", "client.key in the server's --keys folder"),
    ("insecure=True", "--insecure"),
    ("max_workers", "--workers or --processes"),
)
"""The library's settings its messages name, and the options a person types instead."""


def _explain(exc: BaseException, where: str | None) -> tuple[str, int]:
    if isinstance(exc, CLIError):
        return str(exc), exc.code
    if isinstance(exc, errors.TaskFailed):
        return f"task failed: {exc.error_type}: {exc.error_message}", EXIT_TASK_FAILED
    if isinstance(exc, errors.TaskCancelled):
        return f"task {exc.execution_id} was cancelled", EXIT_TASK_FAILED
    if isinstance(exc, errors.ServerLost):
        return str(exc), EXIT_UNREACHABLE
    if isinstance(exc, errors.ZMQTimeoutError):
        nobody = f"no zmqruntime server answered on {where}; is one running there?"
        return (str(exc) if where is None else nobody), EXIT_UNREACHABLE
    if isinstance(exc, errors.RemoteError):
        return f"the server refused: {exc.detail}", EXIT_REFUSED
    if isinstance(exc, errors.ZMQRuntimeError | OSError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    zmq = sys.modules.get("zmq")  # loaded if it raised: an address zmq cannot bind or reach
    if zmq is not None and isinstance(exc, zmq.ZMQError):
        return f"{exc}; check --host and --port", EXIT_USAGE
    logger.debug("internal error", exc_info=exc)
    detail = "--log-level debug shows its traceback"
    return f"internal error: {type(exc).__name__}: {exc} ({detail})", EXIT_INTERNAL


def seconds(typed: str) -> float:
    """An argparse type: seconds above 0, at most :data:`MAX_SECONDS`."""
    try:
        number = float(typed)
    except ValueError:
        number = math.nan
    if not 0 < number <= MAX_SECONDS:  # nan too
        raise argparse.ArgumentTypeError(
            f"want seconds above 0, at most {MAX_SECONDS:g}: {typed!r}"
        )
    return number


def count(typed: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    try:
        number = int(typed)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"want a whole number of 1 or more: {typed!r}")
    return number


def text(typed: str) -> str:
    """An argparse type: text that can travel (argv bytes that were not UTF-8 cannot)."""
    try:
        typed.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{typed!r} is not UTF-8 text") from None
    return typed


def file_name(typed: str) -> str:
    """An argparse type: a non-empty file name without slashes."""
    if not typed or {"/", "\\"} & set(typed):
        raise argparse.ArgumentTypeError(f"want a file name without slashes: {typed!r}")
    return text(typed)


def log_level(typed: str) -> str:
    """An argparse type: a logging level name, any case; returns it upper-case."""
    if typed.upper() not in _LOG_LEVELS:
        levels = ", ".join(_LOG_LEVELS).lower()
        raise argparse.ArgumentTypeError(f"want one of {levels}: {typed!r}")
    return typed.upper()


def writable_folder(folder: Path, option: str) -> None:
    """Create ``folder`` if needed; :class:`CLIError` unless this process can write there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"{option}: cannot create the folder {folder}: {exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"{option}: cannot write into the folder {folder}")


def check_napari() -> None:
    """:class:`CLIError` unless napari can open a window here (Qt aborts the process if not)."""
    if importlib.util.find_spec("napari") is None:
        raise CLIError("the napari sink needs: pip install 'zmqruntime[napari]'")
    names = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    if sys.platform.startswith("linux") and not any(map(os.environ.get, names)):
        raise CLIError("napari needs a display and none is set (DISPLAY); use --sink npy:DIR")


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
    import rich.table  # noqa: PLC0415 - the cli extra, only when shown
    import rich.text  # noqa: PLC0415 - the cli extra, only when shown

    table = rich.table.Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(rich.text.Text(key), rich.text.Text(value))  # not markup: labels are data
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
    for process in summary.processes:
        cpu = "" if process.cpu_percent is None else f", {process.cpu_percent:.0f}% CPU"
        memory = f", {process.rss_bytes / (1 << 20):.0f} MiB" if process.rss_bytes else ""
        rows.append((f"process {process.name}", f"pid {process.pid}{cpu}{memory}"))
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
            import rich.progress  # noqa: PLC0415 - the cli extra, only when shown

            self._progress = rich.progress.Progress(
                rich.progress.TextColumn("{task.description}", markup=False),
                rich.progress.BarColumn(),
                rich.progress.TaskProgressColumn(),
                rich.progress.TextColumn("{task.fields[note]}", markup=False),
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
