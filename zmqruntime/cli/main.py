"""The ``zmqruntime`` command line (also ``python -m zmqruntime``).

Commands: ``serve``, ``submit``, ``status``, ``cancel``, ``ping``, ``shutdown``, ``view``,
``keygen`` and ``demo``. Every error a person can cause — nothing listening, a wrong port,
bad or too deep JSON, an unknown executor path, a value out of range — ends in one line on
stderr (``zmqruntime: …``) and a non-zero exit code, never a traceback; so does a bug in here
(``--log-level debug`` adds its traceback). Output uses rich (the ``cli`` extra) when it is
installed and plain text otherwise; ``--json`` gives machine-readable output.

Exit codes: 0 success, 1 the task failed or was cancelled, 2 bad usage, 3 no server answered
(or it vanished), 4 the server refused the request, 5 ``submit --wait`` gave up waiting (the
task is still running on the server), 70 an internal error (a bug), 130 interrupted.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import json
import logging
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from zmqruntime import errors
from zmqruntime.cli import display, operations
from zmqruntime.cli.display import CLIError, follow, show_record, show_summary
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.lifeline import watch_lifeline
from zmqruntime.core.messages import ExecutionRecord, ServerSummary, Shutdown
from zmqruntime.core.transport import get_default_transport_mode

# Each command imports the tiers it needs when it runs ("lazy" below), so ``--help`` and a usage
# mistake answer without loading them all (about half a second); these are for annotations only.
if TYPE_CHECKING:
    from zmqruntime.core.client import ZMQClient
    from zmqruntime.core.endpoint import Endpoint
    from zmqruntime.execution import ExecutionClient

__all__ = ["CLIError", "main"]

_ONE_SHOT_LINGER = 0.1  # a command's last message is answered before it exits; no need to linger


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _answer(args: argparse.Namespace, data: Any, human: str) -> None:
    """Print ``data`` as JSON with ``--json``, else the ``human`` line."""
    _write(dumps(data) if args.json else human)


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


def _mode(args: argparse.Namespace) -> TransportMode:
    return args.mode or get_default_transport_mode()


def _where(args: argparse.Namespace) -> str:
    return f"port {7777 if args.port is None else args.port} ({_mode(args).value})"


def _address(args: argparse.Namespace, *, client: bool = True) -> Endpoint:
    """Where a one-shot client connects (localhost by default), or else where a server binds."""
    from zmqruntime.core.endpoint import Endpoint  # noqa: PLC0415 - lazy, see top
    from zmqruntime.core.security import curve_from_folder  # noqa: PLC0415 - lazy, see top

    config = ZMQConfig(ipc_root=args.ipc_root)
    if client:
        config = attrs.evolve(config, linger=_ONE_SHOT_LINGER)
    host = args.host or ("localhost" if client else None)
    curve = None if args.keys is None else curve_from_folder(args.keys, server=not client)
    return Endpoint.of(
        args.port,
        host=host,
        transport_mode=_mode(args),
        config=config,
        curve=curve,
        insecure=args.insecure,
    )


def _client(args: argparse.Namespace) -> ExecutionClient:
    from zmqruntime.execution import ExecutionClient  # noqa: PLC0415 - lazy, see top

    return ExecutionClient.to(_address(args))


def _control_client(args: argparse.Namespace) -> ZMQClient:
    """A client for ping and shutdown: any role of server, no data socket."""
    from zmqruntime.core.client import ZMQClient  # noqa: PLC0415 - lazy, see top

    return ZMQClient(_address(args), connect_data=False)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run an execution server for an importable TaskExecutor until stopped."""
    from zmqruntime.execution import ExecutionServer, WorkerPool, open_history  # noqa: PLC0415

    executor = load_executor(args.executor)
    if args.workers is not None and args.processes is not None:
        raise CLIError("give --workers or --processes, not both")
    pool = (
        WorkerPool.processes(args.processes)
        if args.processes is not None
        else WorkerPool.threads(1 if args.workers is None else args.workers)
    )
    store = open_history(args.store, endpoint := _address(args, client=False))
    server = ExecutionServer.bind(endpoint, executor, pool=pool, store=store)
    server.start()  # bound (or failed) before the line below claims it serves
    try:
        watch_lifeline(server.request_stop)
        where = f"port {server.port_number} ({_mode(args).value})"  # also right for --port 0
        _write(f"serving {args.executor} on {where}; Ctrl-C stops")
        server.serve_forever()  # the first SIGINT/SIGTERM drains, a second one stops at once
    finally:
        server.close()
    return 0


def load_executor(path: str) -> Callable[..., Any]:
    """The callable named ``package.module:function``."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise CLIError(f"--executor must look like package.module:function, not {path!r}")
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
    from zmqruntime.core.serializers import SafeSerializer  # noqa: PLC0415 - lazy, see top

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
    with _client(args) as client:
        client.ping(timeout=args.timeout)
        if not args.wait:
            execution = client.submit(task, labels=labels, execution_id=execution_id, confirm=True)
            execution.accepted.result(timeout=args.timeout)
            _answer(args, {"execution_id": execution_id}, execution_id)
            return 0
        with follow(client, execution_id, quiet=args.json) as bars:
            execution = client.submit(task, labels=labels, execution_id=execution_id, confirm=True)
            try:
                result = execution.result(timeout=args.wait_timeout)
            except errors.ZMQTimeoutError:
                if not execution.accepted.done():
                    raise  # the server never answered the submission
                raise CLIError(
                    f"task {execution_id} did not finish within {args.wait_timeout:g}s; it is "
                    f"still running (see: zmqruntime status {execution_id})",
                    display.EXIT_WAIT_TIMEOUT,
                ) from None
            finally:
                bars.finish()
    _write(dumps(result))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
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
    with _client(args) as client:
        cancelled = client.cancel(args.execution_id, timeout=args.timeout)
    state = "cancelled" if cancelled else "already finished; nothing to cancel"
    human = f"{args.execution_id}: {state}"
    _answer(args, {"execution_id": args.execution_id, "cancelled": cancelled}, human)
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    with _control_client(args) as client:
        pong = client.ping(timeout=args.timeout)
    human = (
        f"{pong.role} server, pid {pong.pid}, zmqruntime {pong.library_version} (protocol "
        f"{pong.protocol_version}), up {pong.uptime:.1f}s, "
        f"capabilities: {', '.join(pong.capabilities) or '-'}"
    )
    _answer(args, pong, human)
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    with _control_client(args) as client:
        client.request(Shutdown(request_id=0, force=args.force), timeout=args.timeout)
    _answer(args, {"shutdown": True}, f"shutdown requested on {_where(args)}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from zmqruntime.streaming.__main__ import main as viewer_main  # noqa: PLC0415 - lazy, see top

    kind, _, folder = args.sink.partition(":")
    if not (kind == "napari" or (kind == "npy" and folder)):
        raise CLIError(f"--sink must be npy:DIR or napari, not {args.sink!r}")
    if kind == "napari":
        display.check_napari()
    else:
        display.writable_folder(Path(folder), "--sink")
    argv = ["--sink", args.sink, "--transport", _mode(args).value]
    given: tuple[tuple[str, Any], ...] = (("--port", args.port), ("--ipc-root", args.ipc_root))
    given += (("--host", args.host), ("--keys", args.keys))
    argv += [str(part) for option, value in given if value is not None for part in (option, value)]
    return viewer_main(argv + ["--insecure"] * args.insecure)


def cmd_keygen(args: argparse.Namespace) -> int:
    from zmqruntime.core.security import write_curve_keypair  # noqa: PLC0415 - lazy, see top

    paths = [Path(args.directory, f"{args.name}{suffix}") for suffix in (".key", ".key_secret")]
    existing = [path for path in paths if path.exists() or path.is_symlink()]
    if existing and not args.force:
        raise CLIError(f"{existing[0]} already exists; --force replaces the key pair")
    try:
        public, secret = write_curve_keypair(Path(args.directory), args.name)
    except OSError as exc:
        raise CLIError(f"cannot write keys into {args.directory}: {exc}") from None
    human = f"public key: {public}\nsecret key: {secret} (keep it private)"
    _answer(args, {"public": str(public), "secret": str(secret)}, human)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from zmqruntime.cli.demo import run_demo  # noqa: PLC0415 - lazy, see top

    return run_demo(tasks=args.tasks, out=Path(args.out), use_napari=args.napari)


# --- the parser: one row a command ------------------------------------------------------------

_Option = tuple[tuple[str, ...], dict[str, Any]]


def _option(*names: str, **settings: Any) -> _Option:
    return names, settings


_JSON = _option("--json", action="store_true", help="machine-readable output")
_ID = _option("execution_id", metavar="ID", type=display.text)
_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, str, list[_Option]]] = {
    # name: (handler, help, which endpoint options ("server", "client" or none), own options)
    "serve": (cmd_serve, "run an execution server", "server", [
        _option("--executor", required=True, help="package.module:function"),
        _option("--workers", type=int, help="worker threads (1)"),
        _option("--processes", type=int, help="worker processes"),
        _option("--store", help="history: PATH or memory (default: a file per port in runtime/)"),
    ]),
    "submit": (cmd_submit, "submit a task", "client", [
        _option("task", metavar="TASK_JSON", type=display.text),
        _option("--label", action="append", default=[], metavar="KEY=VALUE", type=display.text),
        _option("--wait", action="store_true", help="show progress, print the result"),
        _option("--wait-timeout", type=display.seconds, default=3600.0, help="seconds (3600)"),
        _JSON,
    ]),
    "status": (cmd_status, "server summary, or one execution", "client", [
        _option("execution_id", nargs="?", metavar="ID", type=display.text), _JSON,
    ]),
    "cancel": (cmd_cancel, "cancel an execution", "client", [_ID, _JSON]),
    "ping": (cmd_ping, "is a server answering, and what is it?", "client", [_JSON]),
    "shutdown": (cmd_shutdown, "stop a server", "client", [
        _option("--force", action="store_true", help="cancel running work too"), _JSON,
    ]),
    "view": (cmd_view, "run a viewer process", "server", [
        _option("--sink", required=True, help="npy:DIR or napari"),
    ]),
    "keygen": (cmd_keygen, "write a CURVE key pair", "", [
        _option("directory", metavar="DIR"),
        _option("--name", default="zmqruntime", type=display.file_name, help="(zmqruntime)"),
        _option("--force", action="store_true", help="replace existing key files"), _JSON,
    ]),
    "demo": (cmd_demo, "run the end-to-end demo", "", [
        _option("--tasks", type=int, default=12, help="how many tasks (12)"),
        _option("--out", default="zmqruntime-demo", help="output folder"),
        _option("--napari", action="store_true", help="show the images in napari"),
    ]),
}  # fmt: skip
_COMMANDS.update(operations.COMMANDS)  # ls, scan, stop


def _add_endpoint(parser: argparse.ArgumentParser, side: str) -> None:
    parser.add_argument("--port", type=int, help="data port (default 7777)")
    host = "interface to bind" if side == "server" else "server host for TCP (default localhost)"
    parser.add_argument("--host", help=host, type=display.text)
    mode = parser.add_mutually_exclusive_group()
    tcp, ipc = TransportMode.TCP, TransportMode.IPC
    mode.add_argument("--tcp", dest="mode", action="store_const", const=tcp, help="use TCP")
    mode.add_argument("--ipc", dest="mode", action="store_const", const=ipc, help="use IPC (POSIX)")
    parser.add_argument("--ipc-root", help="folder of IPC sockets (default ~)")
    keys = "CURVE keys made by keygen: server.key_secret, and clients' *.key"
    if side == "client":
        keys = "CURVE keys made by keygen: client.key_secret and server.key"
    secure = parser.add_mutually_exclusive_group()
    secure.add_argument("--keys", metavar="DIR", help=keys + " (TCP)")
    secure.add_argument(
        "--insecure", action="store_true", help="TCP without credentials: anyone may connect"
    )
    parser.add_argument("--timeout", type=display.seconds, default=5.0, help="seconds to wait (5)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="zmqruntime", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1]
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=display.log_level,
        help="debug, info, warning (default), error or critical",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (handler, summary, side, options) in _COMMANDS.items():
        command = commands.add_parser(name, help=summary)
        for names, settings in options:
            command.add_argument(*names, **settings)
        if side:
            _add_endpoint(command, side)
        command.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = None
    try:
        args = display.parse_args(build_parser(), argv)
        logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
        return int(args.handler(args))
    except (Exception, KeyboardInterrupt) as exc:
        where = _where(args) if args is not None and "port" in args else None  # demo: None
        return display.report(exc, where)
