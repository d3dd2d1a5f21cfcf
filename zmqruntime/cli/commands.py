"""The commands that talk to an execution server: ``serve``, ``submit``, ``status``,
``cancel``, ``ping`` and ``shutdown``. Each takes the parsed options and returns the exit code;
a person-made error raises :class:`~zmqruntime.cli.display.CLIError`."""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from zmqruntime import errors
from zmqruntime.cli import address, display, ids
from zmqruntime.cli.display import (
    CLIError,
    answer,
    dumps,
    follow,
    show_record,
    show_summary,
    show_table,
    write,
)
from zmqruntime.core.lifeline import report_ready, watch_lifeline
from zmqruntime.core.messages import ExecutionRecord, ServerSummary, Shutdown

# For annotations only: the execution tier is imported when a command runs (see address.py).
if TYPE_CHECKING:
    from zmqruntime.execution import Execution, ExecutionClient

__all__ = [
    "cmd_cancel",
    "cmd_ping",
    "cmd_serve",
    "cmd_shutdown",
    "cmd_status",
    "cmd_submit",
    "load_executor",
]

_SLICE = 0.25  # seconds: how soon a Ctrl-C is seen while submit --wait waits


def cmd_serve(args: argparse.Namespace) -> int:
    """Run an execution server for an importable TaskExecutor until stopped."""
    from zmqruntime.execution import ExecutionServer, WorkerPool, open_history  # noqa: PLC0415 - lazy, see address.py

    executor = load_executor(args.executor)
    if args.workers is not None and args.processes is not None:
        raise CLIError("give --workers or --processes, not both")
    pool = (
        WorkerPool.processes(args.processes)
        if args.processes is not None
        else WorkerPool.threads(1 if args.workers is None else args.workers)
    )
    endpoint = address.endpoint(args, client=False)
    store = open_history(args.store, endpoint, args.executor)
    server = ExecutionServer.bind(endpoint, executor, pool=pool, store=store)
    try:
        server.start()  # bound (or failed) before the line below claims it serves
    except BaseException:
        store.close()  # the server closes it once started
        raise
    try:
        watch_lifeline(server.request_stop)
        report_ready()
        where = f"port {server.port_number} ({address.mode(args).value})"  # right for --port 0
        write(f"serving {args.executor} on {where}; Ctrl-C stops")
        server.serve_forever()  # the first SIGINT/SIGTERM drains, a second one stops at once
    finally:
        server.close()
    return 0


def load_executor(path: str) -> Callable[..., Any]:
    """The callable named ``package.module:function``, imported with the current folder on the
    import path (like ``python -m``; not under ``python -P``)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise CLIError(f"--executor must look like package.module:function, not {path!r}")
    here = os.getcwd()  # importable, as ``python -m`` makes it; a console script does not
    if not getattr(sys.flags, "safe_path", False) and not {"", here} & set(sys.path):
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
        executor = getattr(module, attribute, None)
    except Exception as exc:  # importing runs the module: any error is the module's
        raise CLIError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    if not callable(executor):
        raise CLIError(f"{module_name!r} has no callable named {attribute!r}")
    return executor  # type: ignore[no-any-return]


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"--label takes key=value, not {pair!r}")
        labels[key] = value
    return labels


def _task(text: str) -> Any:
    """The task in TASK_JSON, checked against what the default serializer sends."""
    from zmqruntime.core.serializers import SafeSerializer  # noqa: PLC0415 - lazy

    try:
        task = json.loads(text)
    except RecursionError:
        raise CLIError("TASK_JSON nests too deeply to read") from None
    except json.JSONDecodeError as exc:
        raise CLIError(f"TASK_JSON is not valid JSON: {exc}") from None
    except ValueError:  # Python reads at most sys.get_int_max_str_digits() digits of an int
        limit = sys.get_int_max_str_digits()
        raise CLIError(
            f"TASK_JSON has an integer over {limit} digits; send it as a string"
        ) from None
    try:
        SafeSerializer.dumps(task)
    except TypeError as exc:
        raise CLIError(f"TASK_JSON cannot be sent: {exc}") from None
    return task


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit one task (JSON); print its id, or with --wait its progress and result."""
    task = _task(args.task)
    labels = _labels(args.label)
    execution_id = uuid.uuid4().hex
    with address.execution_client(args) as client:
        client.ping(timeout=args.timeout)
        if not args.wait:
            execution = client.submit(task, labels=labels, execution_id=execution_id, confirm=True)
            execution.accepted.result(timeout=args.timeout)
            answer(args, {"execution_id": execution_id}, execution_id)
            return 0
        with follow(client, execution_id, quiet=args.json) as bars:
            execution = client.submit(task, labels=labels, execution_id=execution_id, confirm=True)
            try:
                result = _result(execution, args.wait_timeout)
            except errors.ZMQTimeoutError:
                if not execution.accepted.done():
                    raise  # the server never answered the submission
                raise CLIError(
                    f"task {execution_id} did not finish within {args.wait_timeout:g}s; it is "
                    f"still running (see: zmqruntime status {execution_id})",
                    display.EXIT_WAIT_TIMEOUT,
                ) from None
            except errors.ServerLost as exc:
                raise CLIError(
                    f"lost the server on {address.where(args)} while waiting for task "
                    f"{execution_id} ({exc}); once it is back, see: zmqruntime status "
                    f"{execution_id}",
                    display.EXIT_UNREACHABLE,
                ) from None
            except KeyboardInterrupt:
                bars.finish()
                raise _interrupted(client, execution_id, args.timeout) from None
            finally:
                bars.finish()
    write(dumps(result))
    return 0


def _result(execution: Execution, limit: float) -> Any:
    """The execution's result within ``limit`` seconds, waited for in slices: a Ctrl-C that
    the kernel hands to another thread is seen by the main thread only between two waits."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return execution.result(timeout=min(_SLICE, max(0.0, deadline - time.monotonic())))
        except errors.ZMQTimeoutError:
            if execution.future.done() or time.monotonic() >= deadline:
                raise


def _interrupted(client: ExecutionClient, execution_id: str, timeout: float) -> CLIError:
    """Ctrl-C during ``submit --wait``: cancel the task; the error says how that went."""
    see = f"see: zmqruntime status {execution_id}"
    try:
        cancelled = client.cancel(execution_id, timeout=timeout)
    except (errors.ZMQRuntimeError, KeyboardInterrupt) as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        return CLIError(
            f"interrupted; cancelling task {execution_id} failed ({why}): it may still run ({see})",
            display.EXIT_INTERRUPTED,
        )
    state = "cancelled" if cancelled else "had already finished"
    return CLIError(f"interrupted; task {execution_id} {state} ({see})", display.EXIT_INTERRUPTED)


def cmd_status(args: argparse.Namespace) -> int:
    """The server summary, or one execution's record (the id or a unique prefix of it)."""
    found: ExecutionRecord | ServerSummary
    if args.list:
        return _list(args)
    with address.execution_client(args) as client:
        if args.execution_id is None:
            found = client.summary(timeout=args.timeout)
        else:
            record = functools.partial(client.record, timeout=args.timeout)
            _, found = ids.ask(client, args.execution_id, record, args.timeout)
    if args.json:
        write(dumps(found))
    elif isinstance(found, ServerSummary):
        show_summary(found)
    elif isinstance(found, ExecutionRecord):
        show_record(found)
    return 0


def _list(args: argparse.Namespace) -> int:
    """``status --list``: a page of the server's records, oldest first, filtered."""
    from zmqruntime.execution import ExecutionStatus  # noqa: PLC0415 - lazy, see top

    states = [ExecutionStatus(state) for state in args.state]
    with address.execution_client(args) as client:
        page = client.list(
            status=states,
            labels=_labels(args.label),
            prefix=args.execution_id or "",
            after=args.after,
            limit=args.limit,
            timeout=args.timeout,
        )
    if args.json:
        write(dumps({"records": page.records, "next_after": page.next_after}))
        return 0
    rows = [(r.execution_id, _line(r)) for r in page.records]
    more = " (more: --after the last)" if page.next_after else ""
    show_table(f"{len(rows)} executions{more}", rows)
    return 0


def _line(record: ExecutionRecord) -> str:
    progress = record.progress
    done = "" if progress is None or progress.fraction is None else f" {progress.fraction:.0%}"
    labels = " ".join(f"{key}={value}" for key, value in record.labels.items())
    return f"{record.status.value}{done} {labels}".rstrip()


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel one execution (the id or a unique prefix of it)."""
    with address.execution_client(args) as client:
        cancel = functools.partial(client.cancel, timeout=args.timeout)
        execution_id, cancelled = ids.ask(client, args.execution_id, cancel, args.timeout)
    state = "cancelled" if cancelled else "already finished; nothing to cancel"
    human = f"{execution_id}: {state}"
    answer(args, {"execution_id": execution_id, "cancelled": cancelled}, human)
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    """Who answers there: role, pid, versions, uptime, capabilities."""
    with address.control_client(args) as client:
        pong = client.ping(timeout=args.timeout)
    human = (
        f"{pong.role} server, pid {pong.pid}, zmqruntime {pong.library_version} (protocol "
        f"{pong.protocol_version}), up {pong.uptime:.1f}s, "
        f"capabilities: {', '.join(pong.capabilities) or '-'}"
    )
    answer(args, pong, human)
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    """Ask the server to stop (``--force``: cancel running work too)."""
    with address.control_client(args) as client:
        client.request(Shutdown(request_id=0, force=args.force), timeout=args.timeout)
    answer(args, {"shutdown": True}, f"shutdown requested on {address.where(args)}")
    return 0
