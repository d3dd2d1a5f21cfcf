"""Where a command connects or binds: the endpoint options (``--port``, ``--tcp``/``--ipc``,
``--host``, ``--ipc-root``, ``--keys``, ``--insecure``) turned into an endpoint and a client."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import attrs

from zmqruntime.cli.display import EXIT_UNREACHABLE, CLIError
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.transport import (
    get_default_transport_mode,
    get_ipc_socket_path,
    is_ipc_socket_in_use,
)

# Commands import the tiers they need when they run, so ``--help`` and a usage mistake answer
# without loading them all (about half a second); these are for annotations only.
if TYPE_CHECKING:
    from zmqruntime.core.client import ZMQClient
    from zmqruntime.core.endpoint import Endpoint
    from zmqruntime.execution import ExecutionClient

__all__ = ["control_client", "endpoint", "execution_client", "listening", "mode", "where"]

ONE_SHOT_LINGER = 0.1  # a command's last message is answered before it exits; no need to linger


def mode(args: argparse.Namespace) -> TransportMode:
    """The transport the options name (``--tcp``/``--ipc``), else the platform's default."""
    return args.mode or get_default_transport_mode()


def where(args: argparse.Namespace) -> str:
    """``port 7777 (ipc)``: the server the options name, for messages."""
    port = ZMQConfig().default_port if args.port is None else args.port
    return f"port {port} ({mode(args).value})"


def endpoint(args: argparse.Namespace, *, client: bool = True) -> Endpoint:
    """Where a one-shot client connects (localhost by default), or else where a server binds."""
    from zmqruntime.core.endpoint import Endpoint  # noqa: PLC0415 - lazy, see top
    from zmqruntime.core.security import curve_from_folder  # noqa: PLC0415 - lazy, see top

    config = ZMQConfig(ipc_root=args.ipc_root)
    if client:
        config = attrs.evolve(config, linger=ONE_SHOT_LINGER)
    host = args.host or ("localhost" if client else None)
    curve = None if args.keys is None else curve_from_folder(args.keys, server=not client)
    return Endpoint.of(
        args.port,
        host=host,
        transport_mode=mode(args),
        config=config,
        curve=curve,
        insecure=args.insecure,
    )


def listening(args: argparse.Namespace) -> Endpoint:
    """The endpoint a one-shot client connects to; over IPC, a :class:`CLIError` (exit 3) at
    once when no server listens at its socket file (missing, or left by a dead server) instead
    of waiting ``--timeout`` for an answer that cannot come."""
    found = endpoint(args)
    if found.transport is TransportMode.IPC and not _listens(found):
        path = get_ipc_socket_path(found.control_port, found.config)
        raise CLIError(
            f"no zmqruntime server on {where(args)}: nothing listens at {path}; is one running "
            "there, with the same --ipc-root?",
            EXIT_UNREACHABLE,
        )
    return found


def _listens(found: Endpoint) -> bool:
    try:
        return is_ipc_socket_in_use(found.control_port, found.config)
    except OSError:  # a file where a folder should be, a folder that cannot be read
        return False


def execution_client(args: argparse.Namespace) -> ExecutionClient:
    """A client of the execution server the options name (not connected yet)."""
    from zmqruntime.execution import ExecutionClient  # noqa: PLC0415 - lazy, see top

    return ExecutionClient.to(listening(args))


def control_client(args: argparse.Namespace) -> ZMQClient:
    """A client for ping and shutdown: any role of server, no data socket."""
    from zmqruntime.core.client import ZMQClient  # noqa: PLC0415 - lazy, see top

    return ZMQClient(listening(args), connect_data=False)
