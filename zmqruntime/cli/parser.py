"""The command line's grammar and help: :data:`COMMANDS`, the one table where every subcommand
is registered (its handler, summary, endpoint side and options), and :func:`build_parser`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from zmqruntime.cli import display
from zmqruntime.cli.commands import (
    cmd_cancel,
    cmd_ping,
    cmd_serve,
    cmd_shutdown,
    cmd_status,
    cmd_submit,
)
from zmqruntime.cli.operations import cmd_ls, cmd_stop, port_number
from zmqruntime.cli.tools import cmd_demo, cmd_keygen, cmd_view
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.transport import get_default_transport_mode
from zmqruntime.core.vocabulary import ExecutionStatus

__all__ = ["COMMANDS", "DESCRIPTION", "EPILOG", "Command", "Option", "build_parser", "option"]

DESCRIPTION = "The zmqruntime command line (also: python -m zmqruntime)."
EPILOG = (
    "Exit codes: 0 success, 1 the task failed or was cancelled, 2 bad usage, 3 no server "
    "answered (or it vanished), 4 the server refused the request, 5 submit --wait gave up "
    "waiting (the task is still running on the server), 70 an internal error (a bug), "
    "130 interrupted."
)

Option = tuple[tuple[str, ...], dict[str, Any]]
"""One ``add_argument`` call: its names and its keywords."""
Command = tuple[Callable[[argparse.Namespace], int], str, str, list[Option]]
"""A subcommand: (handler, one-line help, endpoint options — "server", "client" or "" — and
its own options)."""


def option(*names: str, **settings: Any) -> Option:
    """One argument of a command, as ``add_argument(*names, **settings)`` takes it."""
    return names, settings


_JSON = option("--json", action="store_true", help="machine-readable output")
_STATES = tuple(status.value for status in ExecutionStatus)
_RUNTIME = [
    option("--ipc-root", metavar="DIR", help="folder holding .zmqruntime/runtime (default ~)"),
    _JSON,
]
_LS = [
    option("--timeout", type=display.seconds, default=1.0, metavar="SECONDS",
           help="seconds for all the answers together (default 1)"),
    *_RUNTIME,
]  # fmt: skip
_ID = "the execution id, or a unique prefix of it (at least 4 characters)"
COMMANDS: dict[str, Command] = {
    "serve": (cmd_serve, "run an execution server", "server", [
        option("--executor", required=True, metavar="MODULE:FUNCTION", help=(
            "the function that runs each task, as package.module:function; modules in the "
            "current folder can be imported (as with python -m)")),
        option("--workers", type=display.count, help="worker threads (default 1)"),
        option("--processes", type=display.count, help="worker processes instead of threads"),
        option("--store", metavar="PATH|memory", help=(
            "where the history is kept across restarts: a SQLite file, or memory (default: "
            "history-TRANSPORT-PORT-EXECUTOR.sqlite3 in the runtime folder; memory for port 0)")),
    ]),
    "submit": (cmd_submit, "submit a task", "client", [
        option("task", metavar="TASK_JSON", type=display.text, help="the task, as JSON"),
        option("--label", action="append", default=[], metavar="KEY=VALUE", type=display.text,
               help="a label to find the task by (repeat for more)"),
        option("--wait", action="store_true", help=(
            "show progress and print the result; Ctrl-C cancels the task")),
        option("--wait-timeout", type=display.seconds, default=3600.0, metavar="SECONDS",
               help="how long --wait waits (default 3600)"),
        _JSON,
    ]),
    "status": (cmd_status, "server summary, one execution, or a listing", "client", [
        option("execution_id", nargs="?", metavar="ID", type=display.text,
               help=_ID + "; without it, the server summary; with --list, an id prefix"),
        option("--list", action="store_true", help=(
            "list the executions the server holds (yours; an admin's: all), oldest first")),
        option("--state", action="append", default=[], choices=_STATES,
               help="with --list: only this status (repeat for more)"),
        option("--label", action="append", default=[], metavar="KEY=VALUE", type=display.text,
               help="with --list: only executions with this label (repeat for more)"),
        option("--limit", type=display.count, default=20, metavar="N",
               help="with --list: at most N, 1 to 1000 (default 20)"),
        option("--after", metavar="ID", type=display.text,
               help="with --list: those submitted after this one (the last of a page)"),
        _JSON,
    ]),
    "cancel": (cmd_cancel, "cancel an execution", "client", [
        option("execution_id", metavar="ID", type=display.text, help=_ID), _JSON,
    ]),
    "ping": (cmd_ping, "is a server answering, and what is it?", "client", [_JSON]),
    "shutdown": (cmd_shutdown, "stop a server", "client", [
        option("--force", action="store_true", help="cancel running work too"), _JSON,
    ]),
    "view": (cmd_view, "run a viewer process", "server", [
        option("--sink", required=True, help=(
            "where images go: npy:DIR (.npy files and JSON sidecars) or napari (a window)")),
    ]),
    "keygen": (cmd_keygen, "write a CURVE key pair", "", [
        option("directory", metavar="DIR", help="the folder to write NAME.key and NAME.key_secret"),
        option("--name", default="zmqruntime", type=display.file_name,
               help="the key files' name: server, client, ... (default zmqruntime)"),
        option("--force", action="store_true", help="replace existing key files"), _JSON,
    ]),
    "ls": (cmd_ls, "list this user's servers and their state", "", _LS),
    "scan": (cmd_ls, "the same as ls", "", _LS),
    "stop": (cmd_stop, "stop a server, killing it if it hangs (never a stranger)", "", [
        option("target", metavar="PORT", type=port_number, help="its data port, as ls shows it"),
        option("--tcp", dest="mode", action="store_const", const=TransportMode.TCP,
               help="the TCP server on PORT"),
        option("--ipc", dest="mode", action="store_const", const=TransportMode.IPC,
               help="the IPC server on PORT"),
        option("--timeout", type=display.seconds, default=5.0, metavar="SECONDS",
               help="seconds for each step: shutdown request, SIGTERM, SIGKILL (default 5)"),
        *_RUNTIME,
    ]),
    "demo": (cmd_demo, "run the end-to-end demo", "", [
        option("--tasks", type=int, default=12, help="how many tasks, 1 to 1000 (default 12)"),
        option("--out", default="zmqruntime-demo", metavar="DIR",
               help="output folder (default zmqruntime-demo)"),
        option("--napari", action="store_true", help="show the images in napari"),
    ]),
}  # fmt: skip
"""Every subcommand, in the order ``--help`` lists them: register a new one here."""


def _add_endpoint(parser: argparse.ArgumentParser, side: str) -> None:
    config, default = ZMQConfig(), get_default_transport_mode()
    parser.add_argument("--port", type=int, help=(
        f"data port (default {config.default_port}); the control port is the data port + "
        f"{config.control_port_offset}" + ("; 0 picks a free one" if side == "server" else "")
    ))  # fmt: skip
    host = "interface to bind" if side == "server" else "server host for TCP (default localhost)"
    parser.add_argument("--host", help=host, type=display.text)
    mode = parser.add_mutually_exclusive_group()
    for transport, what in ((TransportMode.TCP, "TCP"), (TransportMode.IPC, "IPC (POSIX)")):
        said = f"use {what}" + (" (the default here)" if transport is default else "")
        name = f"--{transport.value}"
        mode.add_argument(name, dest="mode", action="store_const", const=transport, help=said)
    root = "folder holding the IPC sockets and the runtime folder (default: your home folder)"
    parser.add_argument("--ipc-root", metavar="DIR", help=root)
    keys = "CURVE keys made by keygen: server.key_secret, and clients' *.key"
    if side == "client":
        keys = "CURVE keys made by keygen: client.key_secret and server.key"
    secure = parser.add_mutually_exclusive_group()
    secure.add_argument("--keys", metavar="DIR", help=keys + " (TCP)")
    secure.add_argument(
        "--insecure", action="store_true", help="TCP without credentials: anyone may connect"
    )
    if side == "client":
        parser.add_argument("--timeout", type=display.seconds, default=5.0, metavar="SECONDS",
                            help="how long to wait for the server (default 5)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, from :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="zmqruntime", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=display.log_level,
        help="debug, info, warning (default), error or critical",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (handler, summary, side, options) in COMMANDS.items():
        command = commands.add_parser(name, help=summary)
        for names, settings in options:
            command.add_argument(*names, **settings)
        if side:
            _add_endpoint(command, side)
        command.set_defaults(handler=handler)
    return parser
