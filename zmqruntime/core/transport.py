"""Endpoint addressing: URL building, IPC socket paths, stale-socket cleanup and port probing.

Every function takes an optional :class:`~zmqruntime.config.ZMQConfig` (``None``: defaults).
Windows has no IPC: there the IPC probes report "no socket" and IPC URLs raise
ConfigurationError.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from zmqruntime.config import MAX_PORT, TransportMode, ZMQConfig
from zmqruntime.errors import ConfigurationError, ZMQRuntimeError

__all__ = [
    "ensure_ipc_directory",
    "find_free_ipc_port",
    "find_free_port_pair",
    "get_bind_url",
    "get_control_port",
    "get_control_url",
    "get_default_transport_mode",
    "get_ipc_socket_path",
    "get_zmq_transport_url",
    "ipc_path_limit",
    "ipc_socket_is_stale",
    "is_endpoint_in_use",
    "is_ipc_socket_in_use",
    "is_port_in_use",
    "remove_ipc_socket",
    "validate_ipc_socket_path",
]

logger = logging.getLogger(__name__)

_PROBE_TIMEOUT = 0.5  # seconds an AF_UNIX connect probe may take; a busy socket is in use
_NO_IPC = "IPC sockets are not supported on Windows; use TransportMode.TCP"
_IN_USE_ERRNOS = frozenset(
    {errno.EADDRINUSE, errno.EACCES}
    | {getattr(errno, name) for name in ("WSAEADDRINUSE", "WSAEACCES") if hasattr(errno, name)}
)
_SKIP_ERRNOS = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL})


def _on_windows() -> bool:
    return os.name == "nt" or sys.platform == "win32"


def check_port(port: int, what: str = "port", lowest: int = 1) -> int:
    """``port`` if it is an int in ``lowest``..65535, else ConfigurationError naming ``what``."""
    if isinstance(port, bool) or not isinstance(port, int) or not lowest <= port <= MAX_PORT:
        raise ConfigurationError(
            f"{what} must be a whole number in {lowest}..{MAX_PORT}, got {port!r}"
        )
    return port


def get_default_transport_mode() -> TransportMode:
    """IPC on POSIX systems, TCP on Windows (which has no zmq ``ipc://`` transport)."""
    return TransportMode.TCP if _on_windows() else TransportMode.IPC


def get_ipc_socket_path(port: int, config: ZMQConfig | None = None) -> Path | None:
    """``<ipc_directory>/<prefix>-<port><ext>`` (None on Windows); touches nothing on disk."""
    if _on_windows():
        return None
    cfg = config or ZMQConfig()
    name = f"{cfg.ipc_socket_prefix}-{check_port(port)}{cfg.ipc_socket_extension}"
    return cfg.ipc_directory() / name


def ipc_path_limit() -> int:
    """Longest Unix socket path in bytes this platform accepts (107 on Linux, 103 elsewhere)."""
    return 107 if sys.platform.startswith("linux") else 103


def validate_ipc_socket_path(path: Path) -> Path:
    """Return ``path`` if it fits in a Unix socket address, else raise ConfigurationError."""
    size = len(os.fsencode(path))
    if size > ipc_path_limit():
        raise ConfigurationError(
            f"IPC socket path {str(path)!r} is {size} bytes, longer than the {ipc_path_limit()}"
            "-byte limit of Unix socket addresses on this platform; set "
            "ZMQConfig(ipc_root=...) to a shorter folder"
        )
    return path


def ensure_ipc_directory(config: ZMQConfig | None = None) -> Path:
    """Create the IPC socket folder (and parents) with mode 0700, tightening it if it is ours;
    ConfigurationError on Windows or when it cannot be created."""
    if _on_windows():
        raise ConfigurationError(_NO_IPC)
    directory = (config or ZMQConfig()).ipc_directory()
    try:
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.stat()
        if stat.S_IMODE(info.st_mode) != 0o700:
            if info.st_uid == os.getuid():
                directory.chmod(0o700)
            else:
                logger.warning("IPC folder %s belongs to another user; not changing it", directory)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the IPC socket folder {str(directory)!r}: {exc}; set "
            "ZMQConfig(ipc_root=...) to a writable folder"
        ) from exc
    return directory


def get_zmq_transport_url(
    port: int,
    host: str = "localhost",
    mode: TransportMode | None = None,
    config: ZMQConfig | None = None,
) -> str:
    """``tcp://host:port`` (IPv6 bracketed) or ``ipc://<path>`` (``host`` ignored); ``mode``
    None is :func:`get_default_transport_mode`. ConfigurationError for a bad port, an empty
    host, IPC on Windows, or an IPC path too long for a Unix socket address."""
    check_port(port)
    if (mode or get_default_transport_mode()) is TransportMode.TCP:
        if not host:
            raise ConfigurationError("host must be a non-empty host name or address")
        bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"tcp://{bracketed}:{port}"
    path = get_ipc_socket_path(port, config)
    if path is None:
        raise ConfigurationError(_NO_IPC)
    return f"ipc://{validate_ipc_socket_path(path)}"


def get_bind_url(
    port: int, mode: TransportMode | None = None, config: ZMQConfig | None = None
) -> str:
    """The endpoint a server binds for ``port``: TCP on ``config.bind_host``, or the IPC path."""
    cfg = config or ZMQConfig()
    return get_zmq_transport_url(port, cfg.bind_host, mode, cfg)


def get_control_port(data_port: int, config: ZMQConfig | None = None) -> int:
    """The control port paired with ``data_port`` (data port + ``control_port_offset``)."""
    return (config or ZMQConfig()).control_port(check_port(data_port, "data port"))


def get_control_url(
    data_port: int,
    host: str = "localhost",
    mode: TransportMode | None = None,
    config: ZMQConfig | None = None,
) -> str:
    """The endpoint clients connect to for the control socket that belongs to ``data_port``."""
    return get_zmq_transport_url(get_control_port(data_port, config), host, mode, config)


def is_port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if ``host:port`` cannot be bound over TCP because it is taken (or forbidden): binds
    every address of ``host`` without SO_REUSEADDR, so TIME_WAIT leftovers count as in use."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ConfigurationError(f"cannot resolve host {host!r} to probe port {port}") from exc
    probed = False
    for family, kind, proto, _name, address in dict.fromkeys(infos):
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind(address)
            probed = True
        except OSError as exc:
            if exc.errno in _IN_USE_ERRNOS:
                return True
            if exc.errno not in _SKIP_ERRNOS:
                raise ConfigurationError(f"cannot probe {host}:{port}: {exc}") from exc
    if not probed:
        raise ConfigurationError(f"no address of host {host!r} can be bound on this machine")
    return False


def _probe_unix(path: Path) -> bool | None:
    """True: something accepts connections; False: refused; None: no socket file there."""
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return None
    except FileNotFoundError:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:  # busy backlog, permission denied...: assume someone is there
            logger.debug("cannot probe IPC socket %s (%s); treating it as in use", path, exc)
    return True


def is_ipc_socket_in_use(port: int, config: ZMQConfig | None = None) -> bool:
    """True if ``port``'s socket file exists and something accepts connections on it; stale or
    missing files (and Windows) give False, an unprobeable one (busy 0.5 s, no permission) True."""
    path = get_ipc_socket_path(port, config)
    return path is not None and _probe_unix(path) is True


def ipc_socket_is_stale(port: int, config: ZMQConfig | None = None) -> bool:
    """True if the socket file of ``port`` exists but nothing listens on it any more."""
    path = get_ipc_socket_path(port, config)
    return path is not None and _probe_unix(path) is False


def is_endpoint_in_use(
    port: int,
    mode: TransportMode | None = None,
    host: str = "127.0.0.1",
    config: ZMQConfig | None = None,
) -> bool:
    """Dispatch to :func:`is_port_in_use` (TCP, on ``host``) or :func:`is_ipc_socket_in_use`."""
    if (mode or get_default_transport_mode()) is TransportMode.TCP:
        return is_port_in_use(port, host)
    return is_ipc_socket_in_use(port, config)


def remove_ipc_socket(port: int, config: ZMQConfig | None = None) -> bool:
    """Remove ``port``'s socket file if it is stale; True if a file was removed.

    A socket a live server listens on (or a non-socket file) is kept: False and a warning. A
    server binding the path between check and removal races with this: clean only your ports.
    """
    path = get_ipc_socket_path(port, config)
    if path is None:
        return False
    state = _probe_unix(path)
    if state is None:
        if path.exists() or path.is_symlink():
            logger.warning("not removing %s: it is not a socket", path)
        return False
    if state:
        logger.warning("not removing IPC socket %s: a server is listening on it", path)
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    logger.info("removed stale IPC socket %s", path)
    return True


def _find_pair(
    config: ZMQConfig | None,
    attempts: int,
    candidates: Iterable[int],
    in_use: Callable[[int], bool],
) -> int | None:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigurationError(f"attempts must be a whole number above 0, got {attempts!r}")
    offset = (config or ZMQConfig()).control_port_offset
    for port in itertools.islice(candidates, attempts):
        ports = (port, port + offset)
        if all(1 <= number <= MAX_PORT for number in ports) and not any(map(in_use, ports)):
            return port
    return None


def _ephemeral_port(host: str) -> int:
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host.strip("[]"), 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as picker:
            picker.bind(address)
            port: int = picker.getsockname()[1]
    except OSError as exc:
        raise ConfigurationError(f"cannot get a free port from the OS on {host!r}: {exc}") from exc
    return port


def find_free_port_pair(
    config: ZMQConfig | None = None,
    host: str = "127.0.0.1",
    start: int | None = None,
    attempts: int = 200,
) -> int:
    """A TCP data port on ``host`` that, with its control port, is free (bind-probed), from the
    OS (``start`` None) or counting up from ``start``. A snapshot: another process may take a
    port first. ZMQRuntimeError after ``attempts`` failures."""
    candidates = (
        (_ephemeral_port(host) for _ in itertools.count())
        if start is None
        else itertools.count(check_port(start, "start"))
    )
    port = _find_pair(config, attempts, candidates, functools.partial(is_port_in_use, host=host))
    if port is None:
        raise ZMQRuntimeError(f"no free data/control port pair on {host} in {attempts} attempts")
    return port


def find_free_ipc_port(
    config: ZMQConfig | None = None, start: int | None = None, attempts: int = 200
) -> int:
    """A port number whose IPC data and control sockets have no live listener, counting up from
    ``start`` (default ``config.default_port``); stale files do not count (binding replaces
    them). ConfigurationError on Windows, ZMQRuntimeError after ``attempts`` failures."""
    if _on_windows():
        raise ConfigurationError(_NO_IPC)
    first = check_port((config or ZMQConfig()).default_port if start is None else start, "start")
    in_use = functools.partial(is_ipc_socket_in_use, config=config)
    port = _find_pair(config, attempts, itertools.count(first), in_use)
    if port is None:
        raise ZMQRuntimeError(f"no free IPC port number from {first} in {attempts} attempts")
    return port
