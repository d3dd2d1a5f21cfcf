"""The ``zmqruntime`` command line (also ``python -m zmqruntime``).

Commands: ``serve``, ``submit``, ``status``, ``cancel``, ``ping``, ``shutdown``, ``view``,
``keygen`` and ``demo``. Every error a person can cause — nothing listening, a wrong port,
bad JSON, an unknown executor path — ends in one clear line on stderr and a non-zero exit
code, never a traceback. Output uses rich (the ``cli`` extra) when it is installed and
plain text otherwise; ``--json`` gives machine-readable output.

Exit codes: 0 success, 1 the task failed or was cancelled, 2 bad usage, 3 no server answered
(or it vanished), 4 the server refused the request, 5 ``submit --wait`` gave up waiting (the
task is still running on the server).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import attrs

from zmqruntime.cli.display import EXIT_USAGE, CLIError, follow, show_record, show_summary
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.messages import ExecutionRecord, ServerSummary
from zmqruntime.core.transport import get_default_transport_mode
from zmqruntime.errors import (
    ConfigurationError,
    RemoteError,
    ServerLost,
    TaskCancelled,
    TaskFailed,
    ZMQRuntimeError,
    ZMQTimeoutError,
)

if TYPE_CHECKING:
    from zmqruntime.execution import ExecutionServer

__all__ = ["CLIError", "main"]

logger = logging.getLogger(__name__)

EXIT_TASK_FAILED = 1
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_WAIT_TIMEOUT = 5
_ONE_SHOT_LINGER = 0.1  # a command's last message is answered before it exits; no need to linger


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if attrs.has(type(value)):
        return attrs.asdict(value, value_serializer=lambda _i, _a, v: _json_default_or(v))
    raise TypeError(f"{type(value).__name__} is not JSON")


def _json_default_or(value: Any) -> Any:
    if hasattr(value, "value") and not isinstance(value, int | float | str):
        return value.value  # enums
    return value


def dumps(value: Any) -> str:
    """JSON for the terminal: arrays as lists, bytes as hex, records as objects."""
    return json.dumps(value, default=_json_default, indent=2)


# --- shared options --------------------------------------------------------------------------


def _add_endpoint(parser: argparse.ArgumentParser, *, server: bool = False) -> None:
    parser.add_argument("--port", type=int, default=None, help="data port (default 7777)")
    parser.add_argument(
        "--host",
        default=None,
        help="interface to bind" if server else "server host for TCP (default localhost)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tcp", action="store_true", help="use TCP")
    mode.add_argument("--ipc", action="store_true", help="use IPC sockets (POSIX)")
    parser.add_argument("--ipc-root", default=None, help="folder of IPC sockets (default ~)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (5)")


def _endpoint(
    args: argparse.Namespace, *, one_shot: bool = True
) -> tuple[TransportMode, ZMQConfig]:
    mode = get_default_transport_mode()
    if args.tcp:
        mode = TransportMode.TCP
    elif args.ipc:
        mode = TransportMode.IPC
    try:
        config = ZMQConfig(ipc_root=args.ipc_root)
        if one_shot:
            config = attrs.evolve(config, linger=_ONE_SHOT_LINGER)
    except ConfigurationError as exc:
        raise CLIError(str(exc)) from None
    return mode, config


def _client(args: argparse.Namespace) -> Any:
    from zmqruntime.execution import ExecutionClient  # noqa: PLC0415 - keeps startup quick

    mode, config = _endpoint(args)
    return ExecutionClient(
        port=args.port, host=args.host or "localhost", transport_mode=mode, config=config
    )


def _where(args: argparse.Namespace) -> str:
    mode, _config = _endpoint(args)
    port = 7777 if args.port is None else args.port
    return f"port {port} ({mode.value})"


# --- commands -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run an execution server for an importable TaskExecutor until stopped."""
    from zmqruntime.core.lifeline import watch_lifeline  # noqa: PLC0415
    from zmqruntime.execution import ExecutionServer, WorkerPool  # noqa: PLC0415

    executor = load_executor(args.executor)
    if args.workers is not None and args.processes is not None:
        raise CLIError("give --workers or --processes, not both")
    pool = (
        WorkerPool.processes(args.processes)
        if args.processes is not None
        else WorkerPool.threads(1 if args.workers is None else args.workers)
    )
    mode, config = _endpoint(args, one_shot=False)
    server = ExecutionServer(
        executor, port=args.port, host=args.host, transport_mode=mode, config=config, pool=pool
    )
    server.start()  # bound (or failed) before the line below claims it serves
    try:
        watch_lifeline(server.request_stop)
        where = f"port {server.port_number} ({mode.value})"  # the real one, also for --port 0
        _write(f"serving {args.executor} on {where}; Ctrl-C stops")
        _wait_until_stopped(server)
    finally:
        server.close()
    return 0


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _wait_until_stopped(server: ExecutionServer) -> None:
    """Block until the server stops; like ``serve_forever``, the first SIGINT/SIGTERM stops it
    gracefully (queued work cancelled, every client told), a second one at once."""
    signals = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logger.info("signal %d: cancelling what is left, then stopping", signum)
            server.request_stop()
        else:
            logger.warning("signal %d again: stopping now", signum)
            server.server.request_stop()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # signals only reach that one
        previous = {signum: signal.signal(signum, on_signal) for signum in _STOP_SIGNALS}
    try:
        while not server.server.wait_stopped(0.2):
            pass  # signal handlers run in this thread between waits
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def load_executor(path: str) -> Callable[..., Any]:
    """The callable named ``package.module:function``."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise CLIError(f"--executor must look like package.module:function, not {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CLIError(f"cannot import {module_name!r}: {exc}") from None
    executor = getattr(module, attribute, None)
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


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit one task (JSON); print its id, or with --wait its progress and result."""
    try:
        task = json.loads(args.task)
    except json.JSONDecodeError as exc:
        raise CLIError(f"TASK_JSON is not valid JSON: {exc}") from None
    labels = _labels(args.label)
    execution_id = uuid.uuid4().hex
    with _client(args) as client:
        client.ping(timeout=args.timeout)
        if not args.wait:
            execution = client.submit(task, labels=labels, execution_id=execution_id, confirm=True)
            execution.accepted.result(timeout=args.timeout)
            _write(dumps({"execution_id": execution_id}) if args.json else execution_id)
            return 0
        with follow(client, execution_id, quiet=args.json) as display:
            execution = client.submit(task, labels=labels, execution_id=execution_id, confirm=True)
            try:
                result = execution.result(timeout=args.wait_timeout)
            except ZMQTimeoutError:
                if not execution.accepted.done():
                    raise  # the server never answered the submission
                raise CLIError(
                    f"task {execution_id} did not finish within {args.wait_timeout:g}s; it is "
                    f"still running (see: zmqruntime status {execution_id})",
                    EXIT_WAIT_TIMEOUT,
                ) from None
            finally:
                display.finish()
    _write(dumps(result))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show the server summary, or one execution's record."""
    with _client(args) as client:
        answer = client.status(args.execution_id, timeout=args.timeout)
    if args.json:
        _write(dumps(answer))
    elif isinstance(answer, ServerSummary):
        show_summary(answer)
    elif isinstance(answer, ExecutionRecord):
        show_record(answer)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel one execution."""
    with _client(args) as client:
        cancelled = client.cancel(args.execution_id, timeout=args.timeout)
    if args.json:
        _write(dumps({"execution_id": args.execution_id, "cancelled": cancelled}))
    else:
        state = "cancelled" if cancelled else "already finished; nothing to cancel"
        _write(f"{args.execution_id}: {state}")
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    """Ask the server on a port who it is."""
    from zmqruntime.core.client import ZMQClient  # noqa: PLC0415

    mode, config = _endpoint(args)
    with ZMQClient(
        port=args.port,
        host=args.host or "localhost",
        transport_mode=mode,
        config=config,
        connect_data=False,
    ) as client:
        pong = client.ping(timeout=args.timeout)
    if args.json:
        _write(dumps(pong))
    else:
        _write(
            f"{pong.role} server, pid {pong.pid}, zmqruntime {pong.library_version} "
            f"(protocol {pong.protocol_version}), up {pong.uptime:.1f}s, "
            f"capabilities: {', '.join(pong.capabilities) or '-'}"
        )
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    """Stop the server on a port (gracefully, or with --force)."""
    from zmqruntime.core.client import ZMQClient  # noqa: PLC0415
    from zmqruntime.core.messages import Shutdown  # noqa: PLC0415

    mode, config = _endpoint(args)
    with ZMQClient(
        port=args.port,
        host=args.host or "localhost",
        transport_mode=mode,
        config=config,
        connect_data=False,
    ) as client:
        client.request(Shutdown(request_id=0, force=args.force), timeout=args.timeout)
    _write(dumps({"shutdown": True}) if args.json else f"shutdown requested on {_where(args)}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """Run the ready-made viewer process."""
    from zmqruntime.streaming.__main__ import main as viewer_main  # noqa: PLC0415

    kind, _, folder = args.sink.partition(":")
    if not (kind == "napari" or (kind == "npy" and folder)):
        raise CLIError(f"--sink must be npy:DIR or napari, not {args.sink!r}")
    argv = ["--sink", args.sink]
    if args.port is not None:
        argv += ["--port", str(args.port)]
    if args.tcp or args.ipc:
        argv += ["--transport", "tcp" if args.tcp else "ipc"]
    if args.ipc_root:
        argv += ["--ipc-root", args.ipc_root]
    if args.host:
        argv += ["--host", args.host]
    return viewer_main(argv)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a CURVE key pair for the secure mode."""
    from zmqruntime.core.security import write_curve_keypair  # noqa: PLC0415

    try:
        public, secret = write_curve_keypair(Path(args.directory), args.name)
    except OSError as exc:
        raise CLIError(f"cannot write keys into {args.directory}: {exc}") from None
    if args.json:
        _write(dumps({"public": str(public), "secret": str(secret)}))
    else:
        _write(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Everything at once: see ``zmqruntime demo --help``."""
    from zmqruntime.cli.demo import run_demo  # noqa: PLC0415 - keeps startup quick

    return run_demo(tasks=args.tasks, out=Path(args.out), use_napari=args.napari)


def _add_query_commands(commands: Any) -> None:
    """status, cancel, ping and shutdown: one request to a running server each."""
    status = commands.add_parser("status", help="server summary, or one execution")
    status.add_argument("execution_id", nargs="?", default=None, metavar="ID")
    status.add_argument("--json", action="store_true")
    _add_endpoint(status)
    status.set_defaults(handler=cmd_status)

    cancel = commands.add_parser("cancel", help="cancel an execution")
    cancel.add_argument("execution_id", metavar="ID")
    cancel.add_argument("--json", action="store_true")
    _add_endpoint(cancel)
    cancel.set_defaults(handler=cmd_cancel)

    ping = commands.add_parser("ping", help="is a server answering, and what is it?")
    ping.add_argument("--json", action="store_true")
    _add_endpoint(ping)
    ping.set_defaults(handler=cmd_ping)

    shutdown = commands.add_parser("shutdown", help="stop a server")
    shutdown.add_argument("--force", action="store_true", help="cancel running work too")
    shutdown.add_argument("--json", action="store_true")
    _add_endpoint(shutdown)
    shutdown.set_defaults(handler=cmd_shutdown)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(prog="zmqruntime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="WARNING", help="library log level (WARNING)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run an execution server")
    serve.add_argument("--executor", required=True, help="package.module:function")
    serve.add_argument("--workers", type=int, default=None, help="worker threads (1)")
    serve.add_argument("--processes", type=int, default=None, help="worker processes")
    _add_endpoint(serve, server=True)
    serve.set_defaults(handler=cmd_serve)

    submit = commands.add_parser("submit", help="submit a task")
    submit.add_argument("task", metavar="TASK_JSON")
    submit.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--wait", action="store_true", help="show progress, print the result")
    submit.add_argument("--wait-timeout", type=float, default=3600.0, help="seconds (3600)")
    submit.add_argument("--json", action="store_true")
    _add_endpoint(submit)
    submit.set_defaults(handler=cmd_submit)

    _add_query_commands(commands)

    view = commands.add_parser("view", help="run a viewer process")
    view.add_argument("--sink", required=True, help="npy:DIR or napari")
    _add_endpoint(view, server=True)
    view.set_defaults(handler=cmd_view)

    keygen = commands.add_parser("keygen", help="write a CURVE key pair")
    keygen.add_argument("directory", metavar="DIR")
    keygen.add_argument("--name", default="zmqruntime")
    keygen.add_argument("--json", action="store_true")
    keygen.set_defaults(handler=cmd_keygen)

    demo = commands.add_parser("demo", help="run the end-to-end demo")
    demo.add_argument("--tasks", type=int, default=12, help="how many tasks (12)")
    demo.add_argument("--out", default="zmqruntime-demo", help="output folder")
    demo.add_argument("--napari", action="store_true", help="show the images in napari")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.handler(args)
        return code
    except CLIError as exc:
        return _fail(str(exc), exc.code)
    except TaskFailed as exc:
        sys.stderr.write(exc.remote_traceback or f"{exc.error_type}: {exc.error_message}\n")
        return _fail(f"task failed: {exc.error_type}: {exc.error_message}", EXIT_TASK_FAILED)
    except TaskCancelled as exc:
        return _fail(f"task {exc.execution_id} was cancelled", EXIT_TASK_FAILED)
    except (ZMQTimeoutError, ServerLost):
        return _fail(
            f"no zmqruntime server answered on {_where(args)}; is one running there?",
            EXIT_UNREACHABLE,
        )
    except RemoteError as exc:
        return _fail(f"the server refused: {exc.detail}", EXIT_REFUSED)
    except (ZMQRuntimeError, OSError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"zmqruntime: {message}\n")
    return code
