"""A raw ZMTP 3.0 peer over a plain TCP socket, for what pyzmq cannot send: a message whose
last frame never comes (libzmq's own sockets hold such a message back until it is complete).

It speaks the greeting with the NULL or PLAIN mechanism (RFC 23 and 24), the READY /
HELLO-WELCOME-INITIATE-READY handshake, and frames with the MORE flag. Every read and write
has a timeout; a server that hangs up shows as :class:`Refused` (during the handshake) or as
a short count of bytes sent (afterwards).
"""

from __future__ import annotations

import socket
import struct

from zmqruntime.core.credentials import PlainCredentials

SIGNATURE = b"\xff" + bytes(8) + b"\x7f"
MORE, LONG, COMMAND = 0x01, 0x02, 0x04


class Refused(Exception):
    """The server refused the handshake (an ERROR command, or it hung up)."""


def _properties(socket_type: str) -> bytes:
    name, value = b"Socket-Type", socket_type.encode()
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def _frame(body: bytes, flags: int = 0) -> bytes:
    if len(body) > 255:
        return bytes([flags | LONG]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def _command(name: bytes, data: bytes = b"") -> bytes:
    return _frame(bytes([len(name)]) + name + data, COMMAND)


class RawPeer:
    """One TCP connection speaking ZMTP 3.0 by hand; use :meth:`connect`, then :meth:`close`."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection

    @classmethod
    def connect(
        cls,
        port: int,
        socket_type: str,
        *,
        plain: PlainCredentials | None = None,
        timeout: float = 10.0,
    ) -> RawPeer:
        """Connect to 127.0.0.1:``port`` and pass the handshake as a ``socket_type`` peer
        (``DEALER`` for a ROUTER, ``PUSH`` for a PULL), with ``plain`` credentials or the NULL
        mechanism. Raises :class:`Refused` if the server refuses or hangs up."""
        peer = cls(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        try:
            peer._handshake(socket_type, plain)
        except (Refused, OSError) as exc:
            peer.close()
            raise Refused(f"handshake refused: {exc}") from exc
        return peer

    def _handshake(self, socket_type: str, plain: PlainCredentials | None) -> None:
        mechanism = b"PLAIN" if plain else b"NULL"
        self.connection.sendall(
            SIGNATURE + b"\x03\x00" + mechanism.ljust(20, b"\x00") + b"\x00" + bytes(31)
        )
        greeting = self._read(64)
        if greeting[:1] != b"\xff" or greeting[10] < 3:
            raise Refused(f"not a ZMTP 3 greeting: {greeting!r}")
        if plain is None:
            self.connection.sendall(_command(b"READY", _properties(socket_type)))
            self._expect(b"READY")
            return
        user, password = plain.username.encode(), plain.password.encode()
        hello = bytes([len(user)]) + user + bytes([len(password)]) + password
        self.connection.sendall(_command(b"HELLO", hello))
        self._expect(b"WELCOME")
        self.connection.sendall(_command(b"INITIATE", _properties(socket_type)))
        self._expect(b"READY")

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.connection.recv(size - len(data))
            if not chunk:
                raise Refused("the server hung up")
            data += chunk
        return data

    def _expect(self, name: bytes) -> None:
        flags = self._read(1)[0]
        size = struct.unpack(">Q", self._read(8))[0] if flags & LONG else self._read(1)[0]
        body = self._read(size)
        got = body[1 : 1 + body[0]]
        if not flags & COMMAND or got != name:
            raise Refused(f"wanted {name.decode()}, got {body[: 1 + 64]!r}")

    def send_unending(self, total: int, frame_bytes: int = 1 << 20) -> int:
        """Send ``total`` bytes as frames of ``frame_bytes``, every one flagged MORE (the
        message never ends). Returns the bytes sent before the server hung up (``total`` if it
        never did)."""
        header = bytes([MORE | LONG]) + struct.pack(">Q", frame_bytes)
        body = bytes(frame_bytes)
        sent = 0
        try:
            while sent < total:
                self.connection.sendall(header + body)
                sent += frame_bytes
        except OSError:  # reset, broken pipe, or a timeout: the server stopped taking it
            pass
        return sent

    def close(self) -> None:
        self.connection.close()
