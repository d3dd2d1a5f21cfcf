"""Endpoint: where a server listens and a client connects, as one frozen value.

Every server and client of this library takes one; nothing else declares ports, hosts or
transports. Port 0 means "any free port" to a server binding it; the bound server reports the
port it got. URLs and the checks of ports and paths are :mod:`zmqruntime.core.transport`'s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, final

import attrs

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.security import ClientCurve, ServerCurve, check_pickle_exposure
from zmqruntime.core.transport import check_port, get_default_transport_mode, get_zmq_transport_url
from zmqruntime.errors import ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Endpoint"]

_Keys = TypeVar("_Keys", ServerCurve, ClientCurve)
_TCP_URL = re.compile(r"tcp://(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<port>\d{1,5})")


def _check_port(endpoint: Endpoint, _attribute: object, port: int) -> None:
    check_port(port, lowest=0)
    if port:
        endpoint.config.control_port(port)  # raises when the control port falls outside


def _check_host(_endpoint: Endpoint, _attribute: object, host: str) -> None:
    if not isinstance(host, str) or not host.strip("[]") or any(c in host for c in "/ \0"):
        raise ConfigurationError(f"host must be a host name or address, got {host!r}")


def _check_transport(_endpoint: Endpoint, _attribute: object, value: TransportMode) -> None:
    if not isinstance(value, TransportMode):
        raise ConfigurationError(f"transport must be a TransportMode, got {value!r}")
    if value is TransportMode.IPC and get_default_transport_mode() is TransportMode.TCP:
        raise ConfigurationError("IPC sockets are not supported on Windows; use Endpoint.tcp")


def _check_insecure(endpoint: Endpoint, _attribute: object, insecure: bool) -> None:
    if insecure and endpoint.curve is not None:
        raise ConfigurationError("insecure=True contradicts the CURVE keys given; drop one")


def _check_curve(
    endpoint: Endpoint, _attribute: object, curve: ServerCurve | ClientCurve | None
) -> None:
    if curve is not None and not isinstance(curve, (ServerCurve, ClientCurve)):
        raise ConfigurationError(f"curve must be a ServerCurve or a ClientCurve, got {curve!r}")
    if curve is not None and endpoint.transport is TransportMode.IPC:
        raise ConfigurationError(
            "CURVE applies to TCP endpoints; an IPC socket is protected by its 0700 folder"
        )


@final
@attrs.frozen(kw_only=True)
class Endpoint:
    """Transport, host, data port, configuration and CURVE keys of one server address.

    ``curve`` is :class:`~zmqruntime.core.security.ServerCurve` keys for a server binding it,
    :class:`~zmqruntime.core.security.ClientCurve` keys for a client connecting to it. The
    control port is ``port + config.control_port_offset``. ``host`` is the interface a
    server binds and the host a client connects to (ignored for IPC, whose socket files live
    in ``config.ipc_directory()``). Construction validates everything and raises
    :class:`~zmqruntime.ConfigurationError` naming what to change.

    A TCP endpoint without keys is secure by default (see :mod:`zmqruntime.core.credentials`):
    its server makes credentials and writes them to a connection file only its user can read;
    clients of that user find them by port. ``insecure=True`` opts out: the server accepts any
    peer that can reach it (with a warning), and its clients present no credentials.
    """

    transport: TransportMode = attrs.field(validator=_check_transport)
    config: ZMQConfig = attrs.field(factory=ZMQConfig)
    host: str = attrs.field(default="127.0.0.1", validator=_check_host)
    port: int = attrs.field(validator=_check_port)
    curve: ServerCurve | ClientCurve | None = attrs.field(default=None, validator=_check_curve)
    insecure: bool = attrs.field(default=False, validator=_check_insecure)

    @classmethod
    def tcp(
        cls,
        port: int,
        *,
        host: str = "127.0.0.1",
        config: ZMQConfig | None = None,
        curve: ServerCurve | ClientCurve | None = None,
        insecure: bool = False,
    ) -> Self:
        """A TCP endpoint (loopback unless ``host`` says otherwise)."""
        return cls(
            transport=TransportMode.TCP,
            host=host,
            port=port,
            config=config or ZMQConfig(),
            curve=curve,
            insecure=insecure,
        )

    @classmethod
    def ipc(cls, port: int, *, config: ZMQConfig | None = None) -> Self:
        """An IPC endpoint: socket files named after ``port`` in the per-user IPC folder."""
        return cls(transport=TransportMode.IPC, port=port, config=config or ZMQConfig())

    @classmethod
    def of(
        cls,
        port: int | None = None,
        *,
        host: str | None = None,
        transport_mode: TransportMode | None = None,
        config: ZMQConfig | None = None,
        curve: ServerCurve | ClientCurve | None = None,
        insecure: bool = False,
    ) -> Self:
        """The keyword shorthand; ``None`` means the default: ``config.default_port``,
        ``config.bind_host`` (loopback), the platform's transport (IPC on POSIX, TCP on Windows)."""
        cfg = config or ZMQConfig()
        return cls(
            transport=get_default_transport_mode() if transport_mode is None else transport_mode,
            host=cfg.bind_host if host is None else host,
            port=cfg.default_port if port is None else port,
            config=cfg,
            curve=curve,
            insecure=insecure,
        )

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        config: ZMQConfig | None = None,
        curve: ServerCurve | ClientCurve | None = None,
        insecure: bool = False,
    ) -> Self:
        """The endpoint whose data URL is ``url`` (``tcp://host:port`` or ``ipc://path``).

        An IPC path must have the shape this library gives socket files,
        ``<root>/.<app_name>/<dir>/<prefix>-<port><extension>``; the configuration's IPC
        naming is taken from it (other settings from ``config``).
        """
        if not isinstance(url, str):
            raise ConfigurationError(f"an endpoint URL is a str, got {url!r}")
        match = _TCP_URL.fullmatch(url)
        if match is not None:
            host = match["host"].removeprefix("[").removesuffix("]")
            port = int(match["port"])
            return cls.tcp(port, host=host, config=config, curve=curve, insecure=insecure)
        if url.startswith("ipc://"):
            return cls.ipc(0, config=config)._from_ipc_path(Path(url[len("ipc://") :]))
        raise ConfigurationError(
            f"{url!r} is not an endpoint URL; write tcp://HOST:PORT (IPv6 as tcp://[::1]:PORT) "
            "or ipc://PATH"
        )

    def _from_ipc_path(self, path: Path) -> Self:
        extension = "".join(path.suffixes[-1:])
        prefix, _, number = path.name.removesuffix(extension).rpartition("-")
        app = path.parent.parent.name
        if not (path.is_absolute() and prefix and number.isdigit() and app.startswith(".")):
            raise ConfigurationError(
                f"ipc://{path} is not a zmqruntime socket path; they look like "
                f"ipc://<root>/.<app_name>/<dir>/<prefix>-<port>{self.config.ipc_socket_extension}"
            )
        config = attrs.evolve(
            self.config,
            ipc_root=path.parent.parent.parent,
            app_name=app[1:],
            ipc_socket_dir=path.parent.name,
            ipc_socket_prefix=prefix,
            ipc_socket_extension=extension,
        )
        return attrs.evolve(self, port=int(number), config=config)

    @property
    def control_port(self) -> int:
        """The control port (``port`` + the configured offset); port 0 has none yet."""
        if not self.port:
            raise ConfigurationError("port 0 has no control port until a server binds it")
        return self.config.control_port(self.port)

    @property
    def data_url(self) -> str:
        """The data socket's URL (``tcp://host:port`` or ``ipc://path``)."""
        return get_zmq_transport_url(self.port, self.host, self.transport, self.config)

    @property
    def control_url(self) -> str:
        """The control socket's URL."""
        return get_zmq_transport_url(self.control_port, self.host, self.transport, self.config)

    @property
    def server_curve(self) -> ServerCurve | None:
        """The server keys, for a bound endpoint; client keys here are a mistake, said so."""
        return self._keys(ServerCurve)

    @property
    def client_curve(self) -> ClientCurve | None:
        """The client keys, for a connected endpoint; server keys here are a mistake."""
        return self._keys(ClientCurve)

    def _keys(self, side: type[_Keys]) -> _Keys | None:
        if self.curve is not None and not isinstance(self.curve, side):
            raise ConfigurationError(
                f"this side needs {side.__name__} keys, but the endpoint holds "
                f"{type(self.curve).__name__} keys"
            )
        return self.curve

    def check_serializer(self, serializer: object, *, allow_insecure: bool, side: str) -> None:
        """Refuse ``PickleSerializer`` where a peer that is not authenticated can connect: an
        ``insecure`` TCP address beyond loopback, unless ``allow_insecure`` (then a warning;
        see :func:`~zmqruntime.core.security.check_pickle_exposure`). IPC (its 0700 folder),
        loopback, CURVE keys and secure-by-default TCP (this user's credentials, CURVE beyond
        loopback) authenticate every peer. ``side`` names the user, in the message."""
        if not self.insecure:
            return
        try:
            check_pickle_exposure(
                serializer=serializer,
                host=self.host,
                mode=self.transport,
                curve=None,
                allow_insecure=allow_insecure,
                side=side,
            )
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"{exc} Or drop insecure=True: then peers authenticate."
            ) from None

    def with_port(self, port: int) -> Self:
        """The same endpoint at another data port (e.g. the one a server bound for port 0)."""
        return attrs.evolve(self, port=port)

    def with_curve(self, curve: ServerCurve | ClientCurve | None) -> Self:
        """The same address with other keys (a client's view of a server's endpoint)."""
        return attrs.evolve(self, curve=curve)

    def __str__(self) -> str:
        return self.data_url
