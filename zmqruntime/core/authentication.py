"""ZAP authentication of bound TCP sockets: one authenticator per zmq context, shared by the
servers on it under a ZAP domain each, and :class:`ServerAuthentication`, what one bound
socket pair requires at the handshake.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import final

import attrs
import zmq

from zmqruntime.config import TransportMode
from zmqruntime.core.credentials import (
    ConnectionFile,
    PlainCredentials,
    UserCredentials,
    remove_connection_file,
)
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.security import ServerCurve
from zmqruntime.core.socket_options import Context
from zmqruntime.core.zap import ZapHandler

__all__ = ["ServerAuthentication", "acquire_authenticator", "release_authenticator"]

logger = logging.getLogger(__name__)

_authenticators_lock = threading.Lock()
_authenticators: dict[int, tuple[ZapHandler, int]] = {}


def acquire_authenticator(context: Context) -> ZapHandler:
    """The ZAP handler of ``context``, started on first use; pair every call with
    :func:`release_authenticator`. libzmq allows one ZAP handler per context, so servers that
    share a context share it, each under a ZAP domain of its own."""
    with _authenticators_lock:
        handler, users = _authenticators.get(id(context), (None, 0))
        if handler is None:
            handler = ZapHandler.start(context)
        _authenticators[id(context)] = (handler, users + 1)
        return handler


AUTHENTICATOR_STOP_TIMEOUT = 10.0
"""Seconds :func:`release_authenticator` waits for the ZAP thread to end."""


def release_authenticator(
    context: Context, domain: str, timeout: float = AUTHENTICATOR_STOP_TIMEOUT
) -> bool:
    """Forget ``domain``'s credentials; stop the ZAP handler when its last user leaves,
    waiting up to ``timeout`` seconds for its thread. False (and an error logged) if the
    thread did not end: its sockets are then left open, and terminating the context waits."""
    with _authenticators_lock:
        handler, users = _authenticators.pop(id(context))
        handler.checks.passwords.pop(domain, None)
        handler.checks.credentials_providers.pop(domain, None)
        handler.checks.certs.pop(domain, None)
        if users > 1:
            _authenticators[id(context)] = (handler, users - 1)
            return True
        # Stopped under the lock: a server starting on this context meanwhile waits for the ZAP
        # address to be free, instead of failing to bind it.
        return handler.stop(timeout)


@final
@attrs.define(eq=False)
class ServerAuthentication:
    """What a bound TCP socket pair requires at the handshake, and its clean-up.

    Build it with :meth:`start` before binding, :meth:`apply` it to each socket, then
    :meth:`publish` the bound address; :meth:`close` forgets the credentials and removes the
    connection file.
    """

    context: Context
    domain: str
    """The ZAP domain of this pair's sockets on the context's shared authenticator."""
    plain: PlainCredentials | None
    curve: ServerCurve | None
    file: ConnectionFile | None
    """The connection file to write, when the credentials were made here."""
    path: Path | None = None

    @classmethod
    def start(cls, endpoint: Endpoint, context: Context) -> ServerAuthentication | None:
        """The authentication ``endpoint`` asks for: its ServerCurve keys; none for IPC (its
        0700 folder protects it) or an ``insecure`` endpoint (with a warning); otherwise this
        user's credentials (:class:`UserCredentials`), PLAIN on loopback and CURVE elsewhere,
        and a connection file to :meth:`publish`."""
        if endpoint.transport is not TransportMode.TCP:
            return None
        if endpoint.insecure:
            logger.warning(
                "the TCP server on %s (port %s) is open (insecure=True): anyone who can reach "
                "it can submit, cancel and shut down; drop insecure=True to require this "
                "user's credentials",
                endpoint.host,
                endpoint.port or "any",
            )
            return None
        file, side = None, endpoint.server_curve
        if side is None:
            user = UserCredentials.load(endpoint.config)
            made, client = user.server_side(endpoint.host), user.client_side(endpoint.host)
            plain, curve = (made, None) if isinstance(made, PlainCredentials) else (None, made)
            file = ConnectionFile(endpoint.host, 0, 0, os.getpid(), client)
        else:
            plain, curve = None, side
        auth = cls(context, f"zmqruntime-{os.urandom(8).hex()}", plain, curve, file)
        checks = acquire_authenticator(context).checks
        try:
            if plain is not None:
                checks.configure_plain(auth.domain, {plain.username: plain.password})
            elif curve is not None:
                curve.configure(checks, auth.domain)
        except BaseException:
            release_authenticator(context, auth.domain)
            raise
        return auth

    @property
    def admins(self) -> frozenset[str]:
        """The ZAP user ids that may act on every execution and shut the server down: this
        user's PLAIN name, or the CURVE admin keys (see :class:`ServerCurve`)."""
        if self.plain is not None:
            return frozenset({self.plain.username})
        return self.curve.admins if self.curve is not None else frozenset()

    def apply(self, socket: zmq.Socket[bytes]) -> None:
        """Require these credentials on ``socket`` (before it binds)."""
        socket.zap_domain = self.domain.encode()
        socket.zap_enforce_domain = True  # no ZAP handler answering: refuse, never admit
        if self.plain is not None:
            socket.plain_server = True
        elif self.curve is not None:
            self.curve.apply(socket)

    def publish(self, endpoint: Endpoint) -> None:
        """Write the connection file for the bound ``endpoint`` (when there is one to write)."""
        if self.file is not None:
            bound = attrs.evolve(self.file, port=endpoint.port, control_port=endpoint.control_port)
            self.path = bound.write(endpoint.config)

    def close(self) -> bool:
        """Remove the connection file and forget the credentials. Call once. False when the
        authenticator's thread did not stop (see :func:`release_authenticator`)."""
        if self.path is not None:
            remove_connection_file(self.path, os.getpid())
        return release_authenticator(self.context, self.domain)
