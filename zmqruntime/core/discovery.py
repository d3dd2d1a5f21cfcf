"""Find this user's servers from their descriptors (:mod:`zmqruntime.core.descriptors`),
pinging all of them at once, and stop one safely: by asking, then by signals only to the very
process its descriptor names."""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import select
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, final

import attrs
import zmq

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.client import ZMQClient
from zmqruntime.core.credentials import (
    connection_file_path,
    read_private,
    remove_connection_file,
)
from zmqruntime.core.descriptors import (
    ServerDescriptor,
    process_identity,
    read_descriptors,
    remove_if_unchanged,
)
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import Ping, Pong, Shutdown
from zmqruntime.core.socket_options import ms, raise_open_file_limit
from zmqruntime.core.sockets import SocketPair, decode_or_warn, receive_ready, send_frames
from zmqruntime.core.transport import ipc_socket_is_stale, remove_ipc_socket
from zmqruntime.errors import ConfigurationError, ZMQRuntimeError, ZMQTimeoutError

__all__ = [
    "DiscoveredServer",
    "ServerState",
    "StopOutcome",
    "discover",
    "ping_all",
    "stop_server",
]

logger = logging.getLogger(__name__)

_EXIT_POLL_SECONDS: Final = 0.05  # only where there are no pidfds (not Linux)


class ServerState(enum.Enum):
    """What discovery found behind a descriptor."""

    LIVE = "live"
    DRAINING = "draining"
    """It answered, shutting down: not ready for new work."""
    UNRESPONSIVE = "unresponsive"
    """Its process lives, but it did not answer in time (hung, stopped, or it needs keys)."""
    DEAD = "dead"
    """Its process is gone (the descriptor was removed), or its IPC socket file is."""


@final
@attrs.frozen
class DiscoveredServer:
    """One descriptor, its state, and the server's pong when it answered."""

    descriptor: ServerDescriptor
    state: ServerState
    pong: Pong | None = None

    def to_json(self) -> dict[str, Any]:
        """The descriptor's fields plus ``state``, ``uptime`` and ``capabilities`` (null
        when it did not answer)."""
        content = self.descriptor.to_json()
        del content["format"]
        pong = self.pong
        content.update(
            state=self.state.value,
            uptime=None if pong is None else pong.uptime,
            capabilities=None if pong is None else list(pong.capabilities),
        )
        return content


def _check_timeout(timeout: float) -> None:
    if not (0 < timeout < math.inf):
        raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")


def discover(config: ZMQConfig | None = None, *, timeout: float = 1.0) -> list[DiscoveredServer]:
    """The servers whose descriptors are in ``config``'s runtime folder, by transport and port.

    A descriptor whose process is gone (or whose pid another process now has) is removed and
    listed as DEAD at once, as is an IPC server whose socket file is gone; every other server
    is pinged, all at once, waiting at most ``timeout`` seconds in all (not per server). At
    most :data:`~zmqruntime.core.descriptors.MAX_DESCRIPTORS` descriptors are read.
    """
    _check_timeout(timeout)
    config = config or ZMQConfig()
    listed: list[DiscoveredServer] = []
    pinged: list[tuple[ServerDescriptor, Endpoint]] = []
    for path, descriptor in read_descriptors(config):
        if descriptor.is_stale(process_identity(descriptor.pid)):
            if remove_if_unchanged(path, descriptor.to_json()):
                logger.info("removed the stale descriptor %s", path)
            listed.append(DiscoveredServer(descriptor, ServerState.DEAD))
        elif descriptor.transport is TransportMode.IPC and not _ipc_file(descriptor):
            listed.append(DiscoveredServer(descriptor, ServerState.DEAD))
        else:
            try:
                pinged.append((descriptor, descriptor.endpoint(config)))
            except ConfigurationError as exc:  # an address this side cannot use
                logger.warning("cannot reach the server of %s: %s", path, exc)
                listed.append(DiscoveredServer(descriptor, ServerState.UNRESPONSIVE))
    pongs = ping_all([endpoint for _descriptor, endpoint in pinged], timeout)
    for (descriptor, _endpoint), pong in zip(pinged, pongs, strict=True):
        state = ServerState.UNRESPONSIVE
        if pong is not None:
            state = ServerState.DRAINING if pong.draining else ServerState.LIVE
        listed.append(DiscoveredServer(descriptor, state, pong))
    return sorted(
        listed, key=lambda found: (found.descriptor.transport.value, found.descriptor.port)
    )


def _ipc_file(descriptor: ServerDescriptor) -> bool:
    path = Path(descriptor.control_url.removeprefix("ipc://"))
    return path.exists() or path.is_symlink()


def ping_all(endpoints: Sequence[Endpoint], timeout: float) -> list[Pong | None]:
    """Ping every endpoint at once from the calling thread (one poller): each one's
    :class:`Pong`, or None where none came within ``timeout`` seconds in all."""
    _check_timeout(timeout)
    answers: list[Pong | None] = [None] * len(endpoints)
    if not endpoints:
        return answers
    raise_open_file_limit()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 2 * len(endpoints) + 16)  # a pair per server
    poller, limit = zmq.Poller(), endpoints[0].config.max_header_bytes
    pairs: dict[zmq.Socket[bytes], tuple[int, SocketPair]] = {}
    try:
        for index, endpoint in enumerate(endpoints):
            try:
                pair = SocketPair.connect(endpoint, connect_data=False, context=context)
                pairs[pair.control] = (index, pair)
                send_frames(pair.control, codec.encode(Ping(request_id=index)), zmq.NOBLOCK)
            except (ZMQRuntimeError, zmq.ZMQError) as exc:
                logger.info("cannot ping %s: %s", endpoint, exc)
                continue
            poller.register(pair.control, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while poller.sockets and (left := deadline - time.monotonic()) > 0:
            for socket, _event in poller.poll(ms(left)):
                frames = receive_ready(socket)
                reply = None if frames is None else decode_or_warn(frames, limit, "ping", "pong")
                if isinstance(reply, Pong):
                    answers[pairs[socket][0]] = reply
                    poller.unregister(socket)
    finally:
        for _index, pair in pairs.values():
            pair.close(linger=0)
        context.term()
    return answers


class StopOutcome(enum.Enum):
    """How :func:`stop_server` ended."""

    NOT_RUNNING = "not running"
    """Its process was already gone; the stale descriptor was removed."""
    SHUT_DOWN = "shut down"
    """It left after the shutdown request."""
    TERMINATED = "terminated"
    KILLED = "killed"
    NOT_VERIFIED = "not verified"
    """It did not leave when asked, and its process is not provably the one the descriptor
    names (another command line, or this system cannot tell): nothing was signalled."""


def stop_server(
    descriptor: ServerDescriptor, config: ZMQConfig, *, timeout: float = 5.0
) -> StopOutcome:
    """Stop the server ``descriptor`` names (from ``config``'s runtime folder), each step
    given ``timeout`` seconds: a shutdown request over the wire; then, only if its process is
    provably that server (:meth:`ServerDescriptor.is_process`: pid, start time, command line),
    SIGTERM (with SIGCONT, so a stopped process acts on it), then SIGKILL. On Linux the process
    is held by a pidfd from that check on, so no later process with its pid is ever signalled.
    What a killed server leaves (descriptor, connection file, IPC socket files) is removed.
    Raises :class:`ZMQTimeoutError` if it outlives SIGKILL (stuck in the kernel)."""
    _check_timeout(timeout)
    handle = _pidfd(descriptor.pid)
    try:
        found = process_identity(descriptor.pid)
        if descriptor.is_stale(found):
            _clean(descriptor, config)
            return StopOutcome.NOT_RUNNING
        deadline = time.monotonic() + timeout
        quick = attrs.evolve(config, linger=0.05)
        try:
            with ZMQClient(descriptor.endpoint(quick), connect_data=False, name="stop") as client:
                client.request(Shutdown(request_id=0), timeout=timeout)
        except ZMQRuntimeError as exc:
            logger.info("the server on port %d did not take the shutdown: %s", descriptor.port, exc)
        # An application may outlive its server: once the server withdrew its descriptor, it
        # did as asked, and the process is none of this command's business.
        if _wait_exit(descriptor, handle, deadline - time.monotonic(), config):
            _clean(descriptor, config)
            return StopOutcome.SHUT_DOWN
        if descriptor.pid == os.getpid() or not descriptor.is_process(found):
            return StopOutcome.NOT_VERIFIED
        for signals, outcome in (
            ((signal.SIGTERM, signal.SIGCONT), StopOutcome.TERMINATED),
            ((signal.SIGKILL,), StopOutcome.KILLED),
        ):
            logger.warning(
                "%s (pid %d) did not stop; sending %s",
                descriptor.role,
                descriptor.pid,
                "+".join(s.name for s in signals),
            )
            for signum in signals:
                _send(descriptor.pid, handle, signum)
            if _wait_exit(descriptor, handle, timeout):
                _clean(descriptor, config)
                return outcome
        raise ZMQTimeoutError(f"pid {descriptor.pid} outlived SIGKILL by {timeout}s")
    finally:
        if handle is not None:
            os.close(handle)


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    try:
        return None if opener is None else int(opener(pid))
    except OSError:
        return None  # gone already (process_identity says so), or pidfds are not allowed


def _send(pid: int, handle: int | None, signum: int) -> None:
    send = getattr(signal, "pidfd_send_signal", None)
    try:
        if handle is not None and send is not None:
            send(handle, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it has just gone


def _wait_exit(
    descriptor: ServerDescriptor,
    handle: int | None,
    timeout: float,
    config: ZMQConfig | None = None,
) -> bool:
    """Whether within ``timeout`` seconds the described process ended (a pidfd turns readable
    when it does; without one, its identity is looked up) or, with ``config``, its server
    withdrew the descriptor; looked at every 50 ms."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    if handle is not None:
        poller.register(handle, select.POLLIN)
    tick = threading.Event()
    while True:
        if handle is not None:
            wait_ms = max(0, min(round(_EXIT_POLL_SECONDS * 1000), round(timeout * 1000)))
            if poller.poll(wait_ms):
                return True
        elif descriptor.is_stale(process_identity(descriptor.pid)):
            return True
        if config is not None and _withdrawn(descriptor, config):
            return True
        if time.monotonic() >= deadline:
            return False
        if handle is None:
            tick.wait(_EXIT_POLL_SECONDS)


def _withdrawn(descriptor: ServerDescriptor, config: ZMQConfig) -> bool:
    """Whether the file of ``descriptor`` no longer holds it (its server closed, or another
    took the port since)."""
    try:
        return read_private(descriptor.path(config)) != descriptor.to_json()
    except ConfigurationError:
        return False  # not ours to judge: keep waiting on the process


def _clean(descriptor: ServerDescriptor, config: ZMQConfig) -> None:
    descriptor.withdraw(config)
    if descriptor.transport is TransportMode.TCP:
        remove_connection_file(connection_file_path(config, descriptor.port), descriptor.pid)
        return
    with contextlib.suppress(ConfigurationError):  # its socket files, named as its server did
        named = descriptor.endpoint(config).config
        for port in (descriptor.port, descriptor.control_port):
            if ipc_socket_is_stale(port, named):
                remove_ipc_socket(port, named)
