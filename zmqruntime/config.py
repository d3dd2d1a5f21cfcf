"""Transport modes, the frozen configuration every server and client is built from, and the
checks of configuration values (each raises :class:`ConfigurationError` naming the value)."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, final

import attrs

from zmqruntime.errors import ConfigurationError

__all__ = ["TransportMode", "ZMQConfig"]

MAX_PORT = 65535


class TransportMode(enum.Enum):
    """How endpoints are addressed: TCP ports or IPC (Unix domain) socket files."""

    TCP = "tcp"
    IPC = "ipc"


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a finite number of seconds above 0 (or 0, if allowed)."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and (number > 0 or (allow_zero and number == 0))):
        what = f"a finite number of seconds {'0 or more' if allow_zero else 'above 0'}"
        raise ConfigurationError(f"{name} must be {what}, got {value!r}")
    return float(number)


def check_count(name: str, value: object, minimum: int, maximum: float = math.inf) -> int:
    """``value`` if it is a whole number (not a bool) from ``minimum`` to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        bound = f"of {minimum} or more" if maximum == math.inf else f"in {minimum}..{maximum}"
        raise ConfigurationError(f"{name} must be a whole number {bound}, got {value!r}")
    return value


def _file_part(name: str, value: object, *, empty_ok: bool = False) -> None:
    if not isinstance(value, str) or not (value or empty_ok) or set("/\\\0") & set(value):
        what = "a file name part" if empty_ok else "a non-empty file name part"
        raise ConfigurationError(f"{name} must be {what} without slashes, got {value!r}")


def checked(check: Callable[..., object], *args: Any, **kwargs: Any) -> Callable[..., None]:
    """An attrs validator that runs ``check(field name, value, *args, **kwargs)``."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check(attribute.name, value, *args, **kwargs)

    return validate


_port = checked(check_count, 1, MAX_PORT)
_positive = checked(check_count, 1)
_seconds = checked(check_seconds)
_name = checked(_file_part)
_extension = checked(_file_part, empty_ok=True)


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@final
@attrs.frozen(kw_only=True)
class ZMQConfig:
    """Addressing, timeouts and limits shared by a server and its clients.

    Both sides of a connection must agree on the addressing fields (``control_port_offset``
    and the IPC naming), so build one config and pass it to both. Every value is checked at
    construction; a value that cannot work raises :class:`ConfigurationError` naming it.
    """

    control_port_offset: int = attrs.field(default=1000)
    """The control socket listens on the data port plus this offset (may be negative)."""
    default_port: int = attrs.field(default=7777, validator=_port)
    """The data port servers and clients use when none is given."""
    ipc_socket_dir: str = attrs.field(default="ipc", validator=_name)
    ipc_socket_prefix: str = attrs.field(default="zmq", validator=_name)
    ipc_socket_extension: str = attrs.field(default=".sock", validator=_extension)
    shared_ack_port: int = attrs.field(default=7555, validator=_port)
    """The port an :class:`~zmqruntime.AckChannel` listens on unless told otherwise."""
    app_name: str = attrs.field(default="zmqruntime", validator=_name)
    ipc_root: Path | None = attrs.field(default=None, converter=_optional_path)
    """Replaces the home folder (``None``) as the root of IPC socket paths: sockets live in
    ``<ipc_root>/.<app_name>/<ipc_socket_dir>/``."""
    bind_host: str = attrs.field(default="127.0.0.1")
    """The interface TCP servers bind; loopback unless a host is exposed on purpose."""

    request_timeout: float = attrs.field(default=10.0, validator=_seconds)
    """Default seconds a client waits for the answer to one request."""
    result_timeout: float = attrs.field(default=3600.0, validator=_seconds)
    """Default seconds ``Execution.result()`` and friends wait for a task to finish."""
    connect_timeout: float = attrs.field(default=10.0, validator=_seconds)
    """Default seconds to wait for a server to become reachable."""
    linger: float = attrs.field(default=1.0, validator=_seconds)
    """Seconds a closing socket may spend delivering what it still holds."""
    close_timeout: float = attrs.field(default=10.0, validator=_seconds)
    """Seconds ``close()`` waits for a background thread before giving up loudly."""
    heartbeat_interval: float = attrs.field(default=1.0, validator=_seconds)
    """ZMTP heartbeat period (libzmq sends them from its own threads, outside the GIL)."""
    heartbeat_timeout: float = attrs.field(default=5.0, validator=_seconds)
    """A peer silent for this long is considered gone."""

    max_message_bytes: int = attrs.field(default=1 << 30, validator=_positive)
    """Largest frame a bound socket accepts (1 GiB: images); a larger one drops that peer's
    connection. Sockets that carry less accept less (``max_request_bytes``, headers)."""
    max_request_bytes: int = attrs.field(default=256 << 20, validator=_positive)
    """Largest frame a server's control socket accepts (256 MiB: a task's arrays, a result on
    a pool's inlet); at most ``max_message_bytes``."""
    max_header_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    """Largest JSON header frame the codec accepts."""
    send_high_water_mark: int = attrs.field(default=100_000, validator=_positive)
    """Messages a socket queues per peer before sends wait (or, for PUB, drop)."""

    def __attrs_post_init__(self) -> None:
        offset = self.control_port_offset
        if isinstance(offset, bool) or not isinstance(offset, int) or offset == 0:
            raise ConfigurationError(
                f"control_port_offset must be a non-zero whole number, got {offset!r}: the "
                "control socket needs a port of its own"
            )
        for name in ("default_port", "shared_ack_port"):
            port = getattr(self, name)
            if not 1 <= port + offset <= MAX_PORT:
                raise ConfigurationError(
                    f"{name}={port} with control_port_offset={offset} puts the control port at "
                    f"{port + offset}, outside 1..{MAX_PORT}; choose a smaller port or offset"
                )
        if self.heartbeat_timeout < self.heartbeat_interval:
            raise ConfigurationError(
                f"heartbeat_timeout ({self.heartbeat_timeout}s) must be at least "
                f"heartbeat_interval ({self.heartbeat_interval}s)"
            )

    def control_port(self, data_port: int) -> int:
        """The control port that belongs to ``data_port``; refuses one outside 1..65535."""
        port = data_port + self.control_port_offset
        if not 1 <= data_port <= MAX_PORT or not 1 <= port <= MAX_PORT:
            raise ConfigurationError(
                f"data port {data_port} has no valid control port with offset "
                f"{self.control_port_offset} (it would be {port}); pick a port so both lie "
                f"in 1..{MAX_PORT}"
            )
        return port

    def headers_only(self) -> ZMQConfig:
        """This config for a server whose sockets carry message headers alone (acks, pings):
        both frame limits cut to ``max_header_bytes``."""
        small = min(self.max_header_bytes, self.max_message_bytes)
        return attrs.evolve(self, max_message_bytes=small, max_request_bytes=small)

    def socket_root(self) -> Path:
        """The folder that holds this application's IPC socket folder: ``<root>/.<app_name>``."""
        return (self.ipc_root or Path.home()) / f".{self.app_name}"

    def ipc_directory(self) -> Path:
        """The folder IPC socket files are created in."""
        return self.socket_root() / self.ipc_socket_dir
