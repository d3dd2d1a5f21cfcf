"""``zmqruntime ls`` (alias ``scan``) and ``zmqruntime stop PORT``: this user's servers, found
from the descriptors in the runtime folder (:mod:`zmqruntime.core.discovery`).

``ls`` lists every server with its state (live, draining, unresponsive, dead: a dead one's
descriptor is removed) within ``--timeout`` seconds in all. ``stop`` asks the server on a data
port to shut down and, if it has not gone within ``--timeout``, ends its process (SIGTERM, then
SIGKILL) only once its descriptor proves it is that process: pid, start time, command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from zmqruntime.cli import display
from zmqruntime.cli.display import CLIError
from zmqruntime.config import ZMQConfig

__all__ = ["cmd_ls", "cmd_stop", "port_number"]

_COLUMNS = ("PORT", "TRANSPORT", "ROLE", "PID", "STATE", "UPTIME", "APPLICATION")


def _write(args: argparse.Namespace, data: Any, human: str) -> None:
    sys.stdout.write((json.dumps(data, indent=2) if args.json else human) + "\n")
    sys.stdout.flush()


def _config(args: argparse.Namespace) -> ZMQConfig:
    return ZMQConfig(ipc_root=args.ipc_root)


def cmd_ls(args: argparse.Namespace) -> int:
    """List the servers of the runtime folder, pinging them all at once."""
    from zmqruntime.core.credentials import runtime_directory  # noqa: PLC0415 - lazy, as main
    from zmqruntime.core.discovery import discover  # noqa: PLC0415 - lazy, as main

    config = _config(args)
    found = discover(config, timeout=args.timeout)
    rows: list[tuple[str, ...]] = [_COLUMNS]
    for server in found:
        described, pong = server.descriptor, server.pong
        uptime = "-" if pong is None else f"{pong.uptime:.0f}s"
        application = described.application or described.app_name
        cells = (described.port, described.transport.value, described.role, described.pid)
        rows.append((*map(str, cells), server.state.value, uptime, application))
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    human = "\n".join(lines) if found else f"no servers in {runtime_directory(config)}"
    _write(args, [server.to_json() for server in found], human)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the server on a data port: ask, then signal its verified process."""
    from zmqruntime.core.credentials import runtime_directory  # noqa: PLC0415 - lazy, as main
    from zmqruntime.core.descriptors import read_descriptors  # noqa: PLC0415 - lazy, as main
    from zmqruntime.core.discovery import StopOutcome, stop_server  # noqa: PLC0415 - lazy

    config, port = _config(args), args.target
    matches = [
        descriptor
        for _path, descriptor in read_descriptors(config)
        if descriptor.port == port and args.mode in (None, descriptor.transport)
    ]
    if not matches:
        raise CLIError(
            f"no server descriptor for port {port} in {runtime_directory(config)} (zmqruntime ls "
            f"lists them; zmqruntime shutdown --port {port} asks whatever serves there)",
            display.EXIT_UNREACHABLE,
        )
    if len(matches) > 1:
        raise CLIError(f"port {port} has a TCP and an IPC server; give --tcp or --ipc")
    server = matches[0]
    outcome = stop_server(server, config, timeout=args.timeout)
    what = f"the {server.role} server on port {port} ({server.transport.value}, pid {server.pid})"
    if outcome is StopOutcome.NOT_VERIFIED:
        raise CLIError(
            f"{what} did not stop within {args.timeout:g}s, and that pid is not provably the "
            "server (another start time or command line, or this system cannot tell); nothing "
            "was signalled",
            display.EXIT_REFUSED,
        )
    data = {"port": port, "pid": server.pid, "role": server.role, "outcome": outcome.value}
    _write(args, data, f"{what}: {outcome.value}")
    return 0


def port_number(typed: str) -> int:
    """``typed`` as a port number (argparse type: 1..65535)."""
    number = int(typed) if typed.isdigit() else 0
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"want a port number 1..65535: {typed!r}")
    return number


"""The subcommands for :mod:`zmqruntime.cli.main`'s table: name → (handler, help, endpoint
options (none), options)."""
