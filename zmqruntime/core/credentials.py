"""Secure by default: the credentials of this user's servers and clients, and the files
that hold them.

A TCP server bound without keys (and without ``Endpoint.tcp(..., insecure=True)``) requires
this user's credentials at the ZAP handshake (see :mod:`zmqruntime.core.authentication`).
They are made once and kept in the per-user runtime folder (mode 0700, see
:func:`runtime_directory`) as ``credentials.json`` (mode 0600), the way Jupyter keeps a
kernel's key in its connection file. On a loopback host they are a PLAIN user name and a
256-bit random password: only root can read loopback traffic, so nothing is encrypted and
images pay nothing for it. On any other host they are CURVE keys. Each bound server also
writes ``tcp-<port>.json``, its connection file: its address, pid and what a client presents
(copy it to another host to connect from there). A client connecting to a TCP endpoint
without keys uses the connection file of that port, else this user's credentials. Other
users cannot read either file, so they fail the handshake.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any, TypeAlias, final

import attrs
import zmq

from zmqruntime.config import TransportMode, ZMQConfig
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.security import (
    ClientCurve,
    CurveKeyPair,
    ServerCurve,
    generate_curve_keypair,
    is_loopback_host,
)
from zmqruntime.errors import ConfigurationError

__all__ = [
    "ClientCredentials",
    "ConnectionFile",
    "PlainCredentials",
    "UserCredentials",
    "client_credentials",
    "connection_file_path",
    "read_private",
    "remove_connection_file",
    "runtime_directory",
    "write_private",
]


_FORMAT = 1
_MAX_FILE_BYTES = 64 * 1024  # a connection file is ~400 bytes; refuse to read anything huge


@final
@attrs.frozen
class PlainCredentials:
    """A PLAIN user name and password: authentication without encryption (loopback only)."""

    username: str
    password: str = attrs.field(repr=False)

    def apply(self, socket: zmq.Socket[bytes]) -> None:
        """Make ``socket`` present these credentials (before it connects)."""
        socket.plain_username = self.username.encode()
        socket.plain_password = self.password.encode()


ClientCredentials: TypeAlias = "PlainCredentials | ClientCurve"
"""What a client presents to an authenticating server: a PLAIN password or CURVE keys."""


def runtime_directory(config: ZMQConfig, *, create: bool = False) -> Path:
    """``<root>/.<app_name>/runtime``: the per-user folder of secrets and connection files.

    With ``create=True`` the folder is made (mode 0700) and refused unless it belongs to this
    user with no access for others.
    """
    folder = config.socket_root() / "runtime"
    if create:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = folder.stat()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the runtime folder {str(folder)!r}: {exc}; set "
                "ZMQConfig(ipc_root=...) to a writable folder"
            ) from exc
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigurationError(
                f"the runtime folder {str(folder)!r} must belong to you with mode 0700 "
                "(others could read its secrets); fix it with chmod 700 or remove it"
            )
    return folder


def connection_file_path(config: ZMQConfig, port: int) -> Path:
    """Where the connection file of the TCP server on ``port`` lives."""
    return runtime_directory(config) / f"tcp-{port}.json"


def write_private(path: Path, content: dict[str, Any], *, replace: bool) -> bool:
    """Write ``content`` as JSON to ``path`` (mode 0600) in one step, so no reader sees half a
    file; with ``replace=False`` an existing file wins and False is returned."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as stream:
            json.dump(content, stream)
        if replace:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def read_private(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when there is no such file. Raises
    ConfigurationError unless it is this user's alone (mode 0600, no symlink) and small."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    with os.fdopen(descriptor, "rb") as stream:
        info = os.fstat(stream.fileno())
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigurationError(
                f"{path} must belong to you with mode 0600; remove it (and restart its server)"
            )
        data = stream.read(_MAX_FILE_BYTES + 1)
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigurationError(f"{path} is too large to be a zmqruntime secret")
    try:
        content = json.loads(data)
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(content, dict):
        raise ConfigurationError(f"{path} is not a JSON object")
    return content


@final
@attrs.frozen
class UserCredentials:
    """This user's secrets, made once per runtime folder (``credentials.json``, mode 0600)
    and shared by all their servers and clients, like Erlang's cookie: a client may start
    before its server, and a restarted server takes the same credentials.

    ``plain`` authenticates on loopback; ``server_keys`` and ``client_keys`` are the CURVE
    pairs for servers on other addresses (the server admits ``client_keys``).
    """

    plain: PlainCredentials
    server_keys: CurveKeyPair
    client_keys: CurveKeyPair

    @classmethod
    def load(cls, config: ZMQConfig) -> UserCredentials:
        """Read this user's credentials, making them on first use (safe against a race)."""
        path = runtime_directory(config, create=True) / "credentials.json"
        content = read_private(path)
        if content is None:
            server, client = generate_curve_keypair(), generate_curve_keypair()
            content = {
                "format": _FORMAT,
                "username": f"uid-{os.getuid()}",
                # os.urandom as secrets does, without its import of OpenSSL (~4 ms of a start)
                "password": os.urandom(32).hex(),
                "server_keys": [key.decode() for key in (server.public_key, server.secret_key)],
                "client_keys": [key.decode() for key in (client.public_key, client.secret_key)],
            }
            if not write_private(path, content, replace=False):
                content = read_private(path)  # another process made them first
        try:
            assert content is not None and content["format"] == _FORMAT
            return cls(
                PlainCredentials(str(content["username"]), str(content["password"])),
                CurveKeyPair(*content["server_keys"]),
                CurveKeyPair(*content["client_keys"]),
            )
        except (AssertionError, KeyError, TypeError, ConfigurationError) as exc:
            raise ConfigurationError(
                f"{path} is not a zmqruntime credentials file ({exc!r}); remove it"
            ) from exc

    def server_side(self, host: str) -> PlainCredentials | ServerCurve:
        """What a server binding ``host`` requires: PLAIN on loopback, CURVE elsewhere."""
        if is_loopback_host(host):
            return self.plain
        own = {self.client_keys.public_key}
        return ServerCurve(self.server_keys, allowed_client_keys=own, admin_keys=own)

    def client_side(self, host: str) -> PlainCredentials | ClientCurve:
        """What a client of a server on ``host`` presents."""
        if is_loopback_host(host):
            return self.plain
        return ClientCurve(self.client_keys, self.server_keys.public_key)


@final
@attrs.frozen
class ConnectionFile:
    """One TCP server's address and what a client of the same user presents to it, written
    by the server while it is bound."""

    host: str
    port: int
    control_port: int
    pid: int
    credentials: PlainCredentials | ClientCurve

    def to_json(self) -> dict[str, Any]:
        """The file's content (secrets included)."""
        content: dict[str, Any] = {
            "format": _FORMAT,
            "transport": "tcp",
            "host": self.host,
            "port": self.port,
            "control_port": self.control_port,
            "pid": self.pid,
        }
        given = self.credentials
        if isinstance(given, PlainCredentials):
            content.update(mechanism="plain", username=given.username, password=given.password)
        else:
            content.update(
                mechanism="curve",
                server_key=given.server_public_key.decode("ascii"),
                client_public_key=given.keypair.public_key.decode("ascii"),
                client_secret_key=given.keypair.secret_key.decode("ascii"),
            )
        return content

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> ConnectionFile:
        """Parse :meth:`to_json`'s output; raises ConfigurationError on anything else."""
        try:
            if content["format"] != _FORMAT or content["transport"] != "tcp":
                raise ValueError(f"format {content['format']!r} of {content['transport']!r}")
            address = (str(content["host"]), int(content["port"]), int(content["control_port"]))
            pid = int(content["pid"])
            if content["mechanism"] == "plain":
                plain = PlainCredentials(str(content["username"]), str(content["password"]))
                return cls(*address, pid, plain)
            if content["mechanism"] == "curve":
                keys = CurveKeyPair(content["client_public_key"], content["client_secret_key"])
                return cls(*address, pid, ClientCurve(keys, content["server_key"]))
            raise ValueError(f"unknown mechanism {content['mechanism']!r}")
        except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
            raise ConfigurationError(f"not a zmqruntime connection file ({exc})") from exc

    def write(self, config: ZMQConfig) -> Path:
        """Write the file for :attr:`port` (mode 0600), replacing an older one: the caller
        has bound the port, which proves that one stale."""
        runtime_directory(config, create=True)
        path = connection_file_path(config, self.port)
        write_private(path, self.to_json(), replace=True)
        return path

    @classmethod
    def find(cls, config: ZMQConfig, port: int) -> ConnectionFile | None:
        """The connection file of ``port``, or None when there is none; ConfigurationError
        when it is not this user's alone or not a connection file."""
        content = read_private(connection_file_path(config, port))
        return None if content is None else cls.from_json(content)


def remove_connection_file(path: Path, pid: int) -> None:
    """Remove ``path`` if it is still the file process ``pid`` wrote (not a newer server's)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if json.loads(path.read_bytes()).get("pid") == pid:
            path.unlink()


def client_credentials(endpoint: Endpoint) -> PlainCredentials | ClientCurve | None:
    """What a client presents to ``endpoint``: its CURVE keys if it has some; None for IPC or
    an ``insecure`` endpoint; else the credentials in the connection file of its port, or,
    without one (a server not started yet, or bound elsewhere), this user's credentials for
    its host. A server of another user refuses them at the handshake."""
    if endpoint.curve is not None:
        return endpoint.client_curve
    if endpoint.transport is not TransportMode.TCP or endpoint.insecure:
        return None
    found = ConnectionFile.find(endpoint.config, endpoint.port)
    if found is not None:
        return found.credentials
    return UserCredentials.load(endpoint.config).client_side(endpoint.host)
