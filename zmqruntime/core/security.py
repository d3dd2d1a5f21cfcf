"""CURVE encryption and client authentication for TCP endpoints.

Keys are Z85 text (40 bytes), as made by :func:`generate_curve_keypair` or
``zmq.auth.create_certificates``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, final

import attrs
import zmq
import zmq.auth

from zmqruntime.config import TransportMode
from zmqruntime.core.serializers import PickleSerializer
from zmqruntime.errors import ConfigurationError

if TYPE_CHECKING:
    from zmq.auth.base import Authenticator

__all__ = [
    "ClientCurve",
    "CurveKeyPair",
    "ServerCurve",
    "check_pickle_exposure",
    "curve_from_folder",
    "describe_handshake_failure",
    "generate_curve_keypair",
    "is_loopback_host",
    "load_curve_keypair",
    "load_public_key",
    "write_curve_keypair",
]

logger = logging.getLogger(__name__)
_Z85_KEY_LENGTH = 40


def _as_key(value: bytes | str) -> bytes:
    key = value.encode("ascii") if isinstance(value, str) else bytes(value)
    if len(key) != _Z85_KEY_LENGTH:
        raise ConfigurationError(
            f"a CURVE key must be 40 characters of Z85 text, got {len(key)} bytes; make keys "
            "with zmqruntime.generate_curve_keypair()"
        )
    return key


def _as_keys(values: frozenset[bytes] | set[bytes] | list[bytes]) -> frozenset[bytes]:
    return frozenset(map(_as_key, values))


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise ConfigurationError("this libzmq was built without CURVE support")


@final
@attrs.frozen
class CurveKeyPair:
    """A CURVE public/secret key pair, both Z85 text."""

    public_key: bytes = attrs.field(converter=_as_key)
    secret_key: bytes = attrs.field(converter=_as_key, repr=False)


def generate_curve_keypair() -> CurveKeyPair:
    """A fresh random key pair."""
    _require_curve()
    public, secret = zmq.curve_keypair()
    return CurveKeyPair(public, secret)


def write_curve_keypair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``<name>.key`` (public) and ``<name>.key_secret`` (owner-only) into ``directory``
    (created if needed); returns the two paths."""
    _require_curve()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_curve_keypair(path: str | os.PathLike[str]) -> CurveKeyPair:
    """Load a key pair from a ``.key_secret`` certificate file."""
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ConfigurationError(f"{path} holds no secret key; pass the .key_secret file")
    return CurveKeyPair(public, secret)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """Load the public key from a ``.key`` (or ``.key_secret``) certificate file."""
    public, _secret = zmq.auth.load_certificate(path)
    return _as_key(public)


@final
@attrs.frozen
class _AllowedKeys:
    """The credentials provider handed to pyzmq's authenticator: a fixed set of keys."""

    keys: frozenset[bytes] | None
    """None admits every key."""

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = self.keys is None or key in self.keys
        if not allowed:
            logger.warning("refused a CURVE client with unknown public key %r", key)
        return allowed


@final
@attrs.frozen
class ServerCurve:
    """A server's CURVE settings: its key pair and the client keys it lets in.

    Traffic is always encrypted; ``allowed_client_keys=None`` admits any client that knows the
    server's public key, a set admits only those clients. ``admin_keys`` are admitted too and
    may act on every execution and shut the server down; every other client owns only what it
    submitted.
    """

    keypair: CurveKeyPair
    allowed_client_keys: frozenset[bytes] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_as_keys)
    )
    admin_keys: frozenset[bytes] = attrs.field(default=frozenset(), converter=_as_keys)

    @property
    def admins(self) -> frozenset[str]:
        """The ZAP user ids of the admin keys (their Z85 text, as pyzmq's authenticator
        reports a CURVE client)."""
        return frozenset(key.decode("ascii") for key in self.admin_keys)

    def apply(self, socket: zmq.Socket[bytes]) -> None:
        """Make ``socket`` a CURVE server with this key pair (before it binds)."""
        socket.curve_secretkey = self.keypair.secret_key
        socket.curve_publickey = self.keypair.public_key
        socket.curve_server = True

    def configure(self, authenticator: Authenticator, domain: str) -> None:
        """Admit this server's clients under ZAP ``domain`` in ``authenticator``, the checks of
        a ZAP handler (see :func:`~zmqruntime.core.authentication.acquire_authenticator`)."""
        _require_curve()
        allowed = self.allowed_client_keys
        provider = _AllowedKeys(None if allowed is None else allowed | self.admin_keys)
        authenticator.configure_curve_callback(domain=domain, credentials_provider=provider)


@final
@attrs.frozen
class ClientCurve:
    """A client's CURVE settings: its own key pair and the public key of the server it trusts."""

    keypair: CurveKeyPair
    server_public_key: bytes = attrs.field(converter=_as_key)

    def apply(self, socket: zmq.Socket[bytes]) -> None:
        """Make ``socket`` a CURVE client of the trusted server (before it connects)."""
        socket.curve_secretkey = self.keypair.secret_key
        socket.curve_publickey = self.keypair.public_key
        socket.curve_serverkey = self.server_public_key


def curve_from_folder(folder: str | os.PathLike[str], *, server: bool) -> ServerCurve | ClientCurve:
    """CURVE keys from a folder of key files made by ``zmqruntime keygen`` (the CLI's
    ``--keys DIR``): for a server, its pair from ``server.key_secret``, admitting every other
    ``*.key`` in the folder, ``client.key`` (the folder owner's) as its admin; for a client,
    its pair from ``client.key_secret`` and the server's ``server.key``. ConfigurationError,
    saying how to make them, when they are not there or not key files."""
    keys = Path(folder)
    try:
        if server:
            pair = load_curve_keypair(keys / "server.key_secret")
            clients = {load_public_key(path) for path in keys.glob("*.key")} - {pair.public_key}
            admin = keys / "client.key"
            admins = {load_public_key(admin)} if admin.exists() else set()
            return ServerCurve(pair, allowed_client_keys=clients, admin_keys=admins)
        pair = load_curve_keypair(keys / "client.key_secret")
        return ClientCurve(pair, load_public_key(keys / "server.key"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"no CURVE keys in {str(keys)!r} ({exc}); make them with: zmqruntime keygen "
            f"{keys} --name server; zmqruntime keygen {keys} --name client"
        ) from None


def is_loopback_host(host: str) -> bool:
    """True for hosts only this machine can reach: 127.0.0.0/8, ::1, localhost."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_pickle_exposure(
    *,
    serializer: object,
    host: str,
    mode: object,
    curve: object | None,
    allow_insecure: bool,
    side: str,
) -> None:
    """Refuse ``PickleSerializer`` on TCP beyond loopback without CURVE.

    Unpickling runs code chosen by the sender, so pickle over an exposed, unauthenticated
    socket hands the process to anyone who can reach it. ``allow_insecure=True`` is the
    explicit way to accept that risk (e.g. on a private, trusted network).
    """
    exposed = mode is TransportMode.TCP and not is_loopback_host(host)
    if isinstance(serializer, PickleSerializer) and exposed and curve is None:
        if allow_insecure:
            logger.warning(
                "%s uses PickleSerializer over TCP on %s without CURVE (allow_insecure=True): "
                "anyone who can reach it can run code in this process",
                side,
                host,
            )
            return
        raise ConfigurationError(
            f"{side}: PickleSerializer over TCP on {host!r} without CURVE would let anyone who "
            "can reach that address run code in this process. Use SafeSerializer, turn on "
            "CURVE (curve=...), bind loopback, or pass allow_insecure=True to accept the risk."
        )


def describe_handshake_failure(event: int, value: int, *, curve: bool) -> str:
    """Why a client's connection handshake failed, from its socket monitor's ``event`` and
    ``value``, for a client with (``curve=True``) or without CURVE keys."""
    mismatch = (
        event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        and int(value) == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    )
    if mismatch and not curve:
        return (
            "the handshake failed: the server and this client use different authentication "
            "mechanisms; an open server (insecure=True) needs insecure=True on its clients too, "
            "one with CURVE keys needs curve=ClientCurve(...) with a key it allows"
        )
    if mismatch:
        return (
            "the handshake failed: this client uses CURVE but the server does not "
            "(authentication mechanisms differ)"
        )
    if curve:
        return (
            "the CURVE handshake failed (authentication): check that the server's public key "
            "is the right one and that this client's key is allowed"
        )
    return (
        "the handshake failed: the server may require CURVE authentication, which this "
        "client does not use (pass curve=ClientCurve(...)), or speak another protocol"
    )
