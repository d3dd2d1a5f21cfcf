"""Server descriptors: one file per bound server in the per-user runtime folder, so servers can
be found (:func:`~zmqruntime.core.discovery.discover`) and stopped by a process that can check
who they are.

Every :class:`~zmqruntime.ZMQServer` (any role, TCP or IPC, secure or not) writes
``server-<transport>-<port>.json`` (mode 0600) in :func:`~zmqruntime.core.credentials.
runtime_directory` when it binds and removes it when it closes, if the file is still its own.
A descriptor holds no secret: role, application, versions, pid, the process's start time and
command line, and the addresses. A server killed before it could remove its descriptor leaves
a stale one; whoever finds it (:func:`read_descriptors` callers) removes it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, final

import attrs
from attrs.validators import deep_iterable, gt, instance_of, optional

from zmqruntime import __version__
from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.credentials import read_private, runtime_directory, write_private
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.messages import PROTOCOL_VERSION
from zmqruntime.errors import ConfigurationError

__all__ = [
    "MAX_DESCRIPTORS",
    "ProcessIdentity",
    "ServerDescriptor",
    "descriptor_path",
    "process_identity",
    "read_descriptors",
    "remove_if_unchanged",
]

logger = logging.getLogger(__name__)

MAX_DESCRIPTORS: Final = 512
"""The most descriptors one listing reads (the rest are ignored, with a warning)."""
_FORMAT: Final = 1
_PROC: Final = Path("/proc")
_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "::1", "[::]": "::1"}


@final
@attrs.frozen
class ProcessIdentity:
    """Who a live process is: its pid, its start time (seconds, comparable only with other
    values of this machine) and its command line. ``start_time`` is None where this system
    cannot tell (no ``/proc`` and no psutil, the ``ops`` extra): then nothing can be verified."""

    pid: int
    start_time: float | None
    argv: tuple[str, ...]


def process_identity(pid: int) -> ProcessIdentity | None:
    """The identity of the live process ``pid``; None when none has it, or when it has ended
    and waits to be reaped (a zombie). Read from ``/proc`` (Linux), else with psutil if it is
    installed, else only whether the pid lives (POSIX) or nothing at all (Windows)."""
    if (_PROC / "self" / "stat").exists():
        try:
            status = (_PROC / str(pid) / "stat").read_bytes()
            command = (_PROC / str(pid) / "cmdline").read_bytes()
        except OSError:  # gone; or hidden from this user (hidepid): no claim to it either way
            return None
        fields = status[status.rindex(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):
            return None
        words = command.split(b"\0")[:-1] if command.endswith(b"\0") else command.split(b"\0")
        ticks = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return ProcessIdentity(pid, ticks, tuple(map(os.fsdecode, words)))
    try:
        psutil: Any = importlib.import_module("psutil")
    except ImportError:
        return _unverifiable(pid)
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return ProcessIdentity(pid, float(process.create_time()), tuple(process.cmdline()))
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # access denied: it lives, but cannot be verified
        return ProcessIdentity(pid, None, ())


def _unverifiable(pid: int) -> ProcessIdentity | None:
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows
        return ProcessIdentity(pid, None, ())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process holds the pid
    return ProcessIdentity(pid, None, ())


def descriptor_path(config: ZMQConfig, transport: TransportMode, port: int) -> Path:
    """Where the descriptor of the server on data ``port`` over ``transport`` lives."""
    return runtime_directory(config) / f"server-{transport.value}-{port}.json"


def _text() -> Any:
    return attrs.field(validator=instance_of(str))


def _number() -> Any:
    return attrs.field(validator=instance_of(int))


def _words(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@final
@attrs.frozen(kw_only=True)
class ServerDescriptor:
    """What one bound server says about itself in its descriptor file.

    ``application`` is the optional name (and version) an application gave its server
    (:attr:`ZMQServer.application <zmqruntime.ZMQServer.application>`); ``app_name`` is the
    configuration's namespace; ``library_version`` and ``protocol_version`` are zmqruntime's.
    ``insecure`` says that a TCP server requires no credentials.
    """

    role: str = _text()
    application: str = _text()
    app_name: str = _text()
    library_version: str = _text()
    protocol_version: int = _number()
    pid: int = attrs.field(validator=[instance_of(int), gt(0)])  # never a process group
    start_time: float | None = attrs.field(validator=optional(instance_of((int, float))))
    argv: tuple[str, ...] = attrs.field(converter=_words, validator=deep_iterable(instance_of(str)))
    transport: TransportMode = attrs.field(converter=TransportMode)
    host: str = _text()
    port: int = _number()
    control_port: int = _number()
    data_url: str = _text()
    control_url: str = _text()
    insecure: bool = attrs.field(validator=instance_of(bool))

    @classmethod
    def of(cls, role: str, application: str, endpoint: Endpoint) -> ServerDescriptor:
        """The descriptor of this process serving as ``role`` at the bound ``endpoint``."""
        me = process_identity(os.getpid())
        return cls(
            role=role,
            application=application,
            app_name=endpoint.config.app_name,
            library_version=__version__,
            protocol_version=PROTOCOL_VERSION,
            pid=os.getpid(),
            start_time=None if me is None else me.start_time,
            argv=tuple(sys.argv) if me is None or me.start_time is None else me.argv,
            transport=endpoint.transport,
            host=endpoint.host,
            port=endpoint.port,
            control_port=endpoint.control_port,
            data_url=endpoint.data_url,
            control_url=endpoint.control_url,
            insecure=endpoint.insecure,
        )

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        content = attrs.asdict(self, recurse=False)
        content.update(format=_FORMAT, argv=list(self.argv), transport=self.transport.value)
        return content

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> ServerDescriptor:
        """Parse :meth:`to_json`'s output; ConfigurationError on anything else."""
        try:
            if content.get("format") != _FORMAT:
                raise ValueError(f"format {content.get('format')!r}")
            return cls(**{field.name: content[field.name] for field in attrs.fields(cls)})
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"not a zmqruntime server descriptor ({exc})") from exc

    def path(self, config: ZMQConfig) -> Path:
        """This descriptor's file in ``config``'s runtime folder."""
        return descriptor_path(config, self.transport, self.port)

    def is_stale(self, found: ProcessIdentity | None) -> bool:
        """True when its server is certainly gone: no process has its pid (``found`` is
        :func:`process_identity` of it), or another process does (another start time)."""
        if found is None:
            return True
        return (
            None not in (found.start_time, self.start_time) and found.start_time != self.start_time
        )

    def is_process(self, found: ProcessIdentity | None) -> bool:
        """True when ``found`` is provably the process that wrote this: the same pid, a known
        and equal start time, the same command line."""
        return (
            found is not None
            and found.pid == self.pid
            and found.start_time is not None
            and found.start_time == self.start_time
            and found.argv == self.argv
        )

    def endpoint(self, config: ZMQConfig) -> Endpoint:
        """The endpoint a client with ``config`` connects to for this server: its control port
        offset and IPC socket naming are the server's; a wildcard host becomes loopback."""
        offset = self.control_port - self.port
        if offset != config.control_port_offset:
            config = attrs.evolve(config, control_port_offset=offset)
        if self.transport is TransportMode.IPC:
            return Endpoint.parse(self.data_url, config=config)
        host = _WILDCARDS.get(self.host, self.host)
        return Endpoint.of(
            self.port,
            host=host,
            transport_mode=self.transport,
            config=config,
            insecure=self.insecure,
        )

    def publish(self, config: ZMQConfig) -> bool:
        """Write this descriptor (mode 0600), replacing any older one: the caller has bound
        the port, which proves that one stale. False, and a warning, when it cannot be written
        (the server still serves; it cannot be discovered); always False off POSIX, where the
        runtime folder's owner cannot be checked."""
        if os.name != "posix":
            return False
        try:
            runtime_directory(config, create=True)
            write_private(self.path(config), self.to_json(), replace=True)
        except (OSError, ConfigurationError) as exc:
            logger.warning("%s on port %d cannot be discovered: %s", self.role, self.port, exc)
            return False
        return True

    def withdraw(self, config: ZMQConfig) -> bool:
        """Remove this descriptor's file if it still holds this descriptor (not a newer
        server's); True if it was removed."""
        return remove_if_unchanged(self.path(config), self.to_json())


def remove_if_unchanged(path: Path, content: dict[str, Any]) -> bool:
    """Remove the JSON file ``path`` if it holds ``content``; True if it was removed.

    The file is first renamed aside, so a newer file written in its place meanwhile is never
    removed: a renamed file that is not ``content`` goes back, unless yet another took its place.
    """
    aside = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.gone")
    try:
        os.rename(path, aside)
    except OSError:
        return False
    try:
        if read_private(aside) == content:
            return True
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    except (OSError, ConfigurationError) as exc:
        logger.warning("could not check %s before removing it: %s", path, exc)
    finally:
        aside.unlink(missing_ok=True)
    return False


def read_descriptors(config: ZMQConfig) -> list[tuple[Path, ServerDescriptor]]:
    """The descriptors in ``config``'s runtime folder with their files, in file-name order: at
    most :data:`MAX_DESCRIPTORS`; an unreadable one is skipped with a warning. Stale ones are
    included: callers check them with :meth:`ServerDescriptor.is_stale`."""
    folder = runtime_directory(config)
    try:
        names = sorted(path.name for path in folder.glob("server-*.json"))
    except OSError:
        return []
    if len(names) > MAX_DESCRIPTORS:
        logger.warning(
            "%s holds %d descriptors; reading the first %d", folder, len(names), MAX_DESCRIPTORS
        )
    found = []
    for name in names[:MAX_DESCRIPTORS]:
        try:
            content = read_private(folder / name)
            if content is not None:
                found.append((folder / name, ServerDescriptor.from_json(content)))
        except ConfigurationError as exc:
            logger.warning("skipping %s: %s", folder / name, exc)
    return found
