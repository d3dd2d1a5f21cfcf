"""Launch, health-check and stop a server process (a viewer, or any zmqruntime server)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Final, final

import attrs

from zmqruntime import errors
from zmqruntime.core.client import ZMQClient
from zmqruntime.core.credentials import runtime_directory
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import start_on_enter
from zmqruntime.core.lifeline import LIFELINE_ENV, open_lifeline
from zmqruntime.core.messages import Message, Ping, Pong, Shutdown
from zmqruntime.core.transport import is_endpoint_in_use
from zmqruntime.protocols import LaunchSpec

__all__ = ["CommandSpec", "VisualizerProcessManager", "python_module_spec"]

logger = logging.getLogger(__name__)

_PROBE_SECONDS: Final = 0.25
"""How long a ping waits for a server that may not be there; also how often a child that does
not report readiness on its lifeline (a command that is not a zmqruntime server) is pinged."""
_EXIT_SECONDS: Final = 1.0  # a child that closed its lifeline has this long to be seen exiting
_PROBE_LINGER: Final = 0.01
_TAIL_BYTES: Final = 4000


def _strings(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(map(str, values))


def _environment(values: Mapping[str, str]) -> dict[str, str]:
    return {str(key): str(value) for key, value in values.items()}


def _child_log(endpoint: Endpoint) -> IO[bytes]:
    """A new log file for a launched child, ``child-<launcher pid>-*.log`` in the user's
    runtime folder (removed when the manager releases it). A launcher killed before it could
    remove its logs leaves them there, so the logs of launchers that are gone go first."""
    if os.name != "posix":  # no per-user runtime folder checks there: the system's temp folder
        return tempfile.NamedTemporaryFile(prefix="zmqruntime-child-", suffix=".log")
    folder = runtime_directory(endpoint.config, create=True)
    for stale in folder.glob("child-*.log"):
        launcher = stale.name.split("-")[1]
        if launcher.isdigit() and not _running(int(launcher)):
            stale.unlink(missing_ok=True)
    prefix = f"child-{os.getpid()}-"
    return tempfile.NamedTemporaryFile(prefix=prefix, suffix=".log", dir=folder)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user holds the pid
    return True


@final
@attrs.frozen
class CommandSpec:
    """A :class:`~zmqruntime.LaunchSpec`: the argument vector, extra environment, folder."""

    argv: tuple[str, ...] = attrs.field(converter=_strings)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_environment)
    cwd: str | None = None


def python_module_spec(
    module: str, *args: str, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> CommandSpec:
    """``python -m module args…`` with this interpreter."""
    return CommandSpec((sys.executable, "-m", module, *args), env or {}, cwd)


@final
@attrs.define(eq=False)
class VisualizerProcessManager:
    """Owns one server process reachable at ``endpoint`` (``Endpoint.of()`` by default; a
    CURVE-protected server needs the endpoint to hold this side's ``ClientCurve`` keys).

    It starts the command of ``spec`` and waits until the server answers ping with ``role``
    ("viewer" for a :class:`~zmqruntime.streaming.StreamingServer`, "execution" for an
    execution server), or attaches to a healthy server already answering there instead of
    launching a second one; it never kills a process it did not start. A launched child gets a
    lifeline, so it exits when its launcher dies; its stdout and stderr go to :attr:`log_path`,
    in the user's runtime folder. A child that calls
    :func:`~zmqruntime.core.lifeline.report_ready` once bound (the ready-made viewer and
    ``zmqruntime serve`` do) is asked at once; another command is pinged every 0.25 s.
    """

    spec: LaunchSpec
    endpoint: Endpoint = attrs.field(factory=Endpoint.of)
    role: str = "viewer"

    _process: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)
    _attached: bool = attrs.field(default=False, init=False)
    _client: ZMQClient | None = attrs.field(default=None, init=False)
    _log: IO[bytes] | None = attrs.field(default=None, init=False)
    _lifeline: int | None = attrs.field(default=None, init=False)
    _gone: threading.Event = attrs.field(factory=threading.Event, init=False)
    """Set when the probe client's connection drops (its server went)."""

    def start(self, timeout: float | None = None) -> VisualizerProcessManager:
        """Launch the command (or attach) and return once the server answers ping.

        A server that answers "draining" (shutting down) is waited for until it is gone, never
        attached to.

        Raises :class:`ProcessLaunchError` if the child exits first (with its exit code and
        stderr tail), :class:`AddressInUseError` if something else holds the port, and
        :class:`ZMQTimeoutError` if it is not ready within ``timeout`` seconds
        (``config.connect_timeout``); a child that timed out is stopped again.
        """
        if self._process is not None or self._attached:
            return self
        endpoint = self.endpoint
        limit = endpoint.config.connect_timeout if timeout is None else timeout
        occupied = self._in_use()  # a free port needs no ping: nobody could answer it
        pong, vacated = (self._probe() if occupied else None), False
        if pong is not None and pong.draining:  # a server going away: wait, never attach
            pong, vacated = self._outlive(time.monotonic() + limit), True
        if pong is not None:
            try:
                self._check_role(pong)
            except errors.AddressInUseError:
                self._release()  # a refused start leaves no probe client behind
                raise
            self._attached = True
            logger.info("attached to the %s already serving port %s", self.role, endpoint.port)
            return self
        if occupied and not vacated and self._in_use():
            raise errors.AddressInUseError(
                f"port {endpoint.port} is held by something that does not answer as a "
                "zmqruntime server; stop it or choose another port"
            )
        try:
            self._wait_ready(self._launch(), limit)
        except BaseException:  # stopped again: no child, lifeline or log file is left behind
            self.stop(timeout=endpoint.config.close_timeout)
            raise
        return self

    def is_running(self) -> bool:
        """True while the server answers (launched: while the process lives, too)."""
        alive = self._process.poll() is None if self._process is not None else self._attached
        return alive and self._probe() is not None

    def ping(self, timeout: float | None = None) -> Pong:
        """The server's pong (raises like :meth:`ZMQClient.ping`)."""
        return self._connection().ping(timeout)

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop a launched server: shutdown request, then SIGTERM, then SIGKILL.

        Returns the exit code. An attached server (one this manager did not start) is only
        detached from, never stopped or killed: returns None.
        """
        limit = self.endpoint.config.close_timeout if timeout is None else timeout
        process, self._process = self._process, None
        self._attached = False
        try:
            return None if process is None else self._end(process, limit)
        finally:
            self._release()

    close = stop
    __enter__ = start_on_enter

    def __exit__(self, *_exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The launched child's process id (None when attached or stopped)."""
        return self._process.pid if self._process is not None else None

    @property
    def attached(self) -> bool:
        """True when this manager found the server already running and did not launch it."""
        return self._attached

    @property
    def log_path(self) -> str | None:
        """The file holding the launched child's stdout and stderr."""
        return self._log.name if self._log is not None else None

    def _connection(self) -> ZMQClient:
        if self._client is None:
            config = self.endpoint.config
            quick = attrs.evolve(config, linger=min(config.linger, _PROBE_LINGER))
            endpoint = attrs.evolve(self.endpoint, config=quick)
            self._client = ZMQClient(
                endpoint, connect_data=False, on_disconnect=self._gone.set, name="process-manager"
            ).connect()
        return self._client

    def _probe(self) -> Pong | None:
        try:
            return self._connection().ping(_PROBE_SECONDS)
        except (errors.ZMQTimeoutError, errors.ServerLost):
            self._reset_connection()  # a fresh socket: no stale requests queued for later
            return None

    def _reset_connection(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._gone.clear()  # its I/O thread, the only one to set it, has ended

    def _in_use(self) -> bool:
        endpoint = self.endpoint
        return is_endpoint_in_use(endpoint.port, endpoint.transport, config=endpoint.config)

    def _outlive(self, deadline: float) -> Pong | None:
        """Wait until the draining server that answered the probe is gone (the probe's
        connection drops); then the pong of a server answering there, None when none does."""
        while True:
            if not self._gone.wait(max(0.0, deadline - time.monotonic())):
                self._reset_connection()
                raise errors.ZMQTimeoutError(
                    f"the {self.role} on port {self.endpoint.port} is shutting down and did not "
                    "go in time; start again once it has (zmqruntime ls shows it)"
                )
            self._reset_connection()
            if not self._in_use():
                return None
            pong = self._probe()
            if pong is None or not pong.draining:
                return pong

    def _check_role(self, pong: Pong) -> None:
        if pong.role != self.role:
            raise errors.AddressInUseError(
                f"port {self.endpoint.port} is served by a {pong.role!r} server (pid {pong.pid}), "
                f"not a {self.role!r}; choose another port"
            )

    def _launch(self) -> subprocess.Popen[bytes]:
        env: dict[str, str] = {**os.environ, **self.spec.env}
        self._log = _child_log(self.endpoint)  # first: it may raise, the lifeline must not leak
        lifeline = open_lifeline()
        if lifeline is not None:  # the child gets the read end; the write end lives in _release
            read_end, self._lifeline = lifeline
            env[LIFELINE_ENV] = str(read_end)
        command = " ".join(self.spec.argv)
        try:
            self._process = subprocess.Popen(
                list(self.spec.argv),
                env=env,
                cwd=self.spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                pass_fds=lifeline[:1] if lifeline is not None else (),
                start_new_session=os.name == "posix",
            )
        except OSError as exc:
            raise errors.ProcessLaunchError(command, -1, str(exc)) from exc
        finally:
            if lifeline is not None:
                os.close(lifeline[0])
        logger.info("launched %s (pid %s)", command, self._process.pid)
        return self._process

    def _wait_ready(self, process: subprocess.Popen[bytes], limit: float) -> None:
        """Wait for events, never in sleeps: the child's READY on its lifeline (then one ping
        checks the role), the lifeline's end-of-file (the child is gone), or the answer to a
        probe — for commands that do not report readiness, one ping every ``_PROBE_SECONDS``
        after the first such interval."""
        deadline = time.monotonic() + limit
        lifeline = self._lifeline
        watched: list[int | socket.socket] = [] if lifeline is None else [lifeline]
        wake, ring = socket.socketpair()  # a probe's answer (or failure) rings ``wake``
        probe: concurrent.futures.Future[Message] | None = None
        next_probe, probe_limit = time.monotonic() + _PROBE_SECONDS, _PROBE_SECONDS
        with wake, ring:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise errors.ZMQTimeoutError(
                        f"the {self.role} launched with {' '.join(self.spec.argv)} did not "
                        f"answer on port {self.endpoint.port} within {limit}s; its output:\n"
                        f"{self._tail()}"
                    )
                until = deadline if probe is not None else min(deadline, next_probe)
                readable = select.select([*watched, wake], [], [], until - now)[0]
                if wake in readable:
                    wake.recv(64)
                if lifeline in readable:
                    if self._child_ended(process, lifeline):
                        watched = []  # it closed its lifeline but lives: probes will tell
                    else:  # READY: its sockets are bound; ask at once, with the time left
                        if probe is not None:
                            probe.cancel()
                            self._reset_connection()  # made before its credentials existed
                        probe, next_probe = None, 0.0
                        probe_limit = max(_PROBE_SECONDS, deadline - time.monotonic())
                if probe is not None and probe.done():
                    pong = _pong_of(probe)
                    probe, next_probe = None, time.monotonic() + _PROBE_SECONDS
                    if pong is not None and not pong.draining:
                        self._check_role(pong)
                        return
                    self._reset_connection()  # a fresh socket: no stale requests queued
                code = process.poll()
                if code is not None:
                    raise errors.ProcessLaunchError(" ".join(self.spec.argv), code, self._tail())
                if probe is None and time.monotonic() >= next_probe:
                    probe = self._connection().request_async(Ping(request_id=0), probe_limit)
                    probe.add_done_callback(lambda _done: _ring(ring))

    def _child_ended(self, process: subprocess.Popen[bytes], lifeline: int) -> bool:
        """Read the lifeline that is ready: False for READY; True at its end-of-file, after
        raising :class:`ProcessLaunchError` if the child exited."""
        try:
            if os.read(lifeline, 64):
                return False
        except OSError:
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = process.wait(_EXIT_SECONDS)  # its end closes just before its exit is seen
            raise errors.ProcessLaunchError(" ".join(self.spec.argv), code, self._tail())
        return True

    def _end(self, process: subprocess.Popen[bytes], limit: float) -> int:
        if process.poll() is None:
            steps: tuple[Callable[[], None] | None, ...] = (None, process.terminate, process.kill)
            try:
                self._connection().request(Shutdown(request_id=0), timeout=min(limit, 2.0))
            except errors.ZMQRuntimeError:
                steps = steps[1:]  # it did not take the request: no point waiting for it
            for step in steps:
                if step is not None:
                    logger.warning("%s did not stop; sending %s", self.role, step.__name__)
                    step()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return process.wait(limit)
        return process.wait(limit)

    def _tail(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        with open(self._log.name, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _TAIL_BYTES))
            return handle.read().decode(errors="replace")

    def _release(self) -> None:
        self._reset_connection()
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _pong_of(probe: concurrent.futures.Future[Message]) -> Pong | None:
    """The answer of a finished ping; None when it failed (no server there yet, or lost)."""
    if probe.cancelled() or probe.exception() is not None:
        return None
    reply = probe.result()
    return reply if isinstance(reply, Pong) else None


def _ring(ring: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the wait ended and closed it
        ring.send(b"!")
