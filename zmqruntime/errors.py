"""The exception tree of zmqruntime: every exception the library raises on purpose derives
from :class:`ZMQRuntimeError`, and several also from the builtin they refine (``ValueError``,
``TimeoutError``, ``OSError``).
"""

from __future__ import annotations

import enum

__all__ = [
    "AddressInUseError",
    "ChannelClosed",
    "ConfigurationError",
    "ErrorCode",
    "InvalidItem",
    "LocalProtocolError",
    "ProcessLaunchError",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "ServerLost",
    "TaskCancelled",
    "TaskFailed",
    "ZMQRuntimeError",
    "ZMQTimeoutError",
]


class ErrorCode(enum.Enum):
    """Why a message was refused; sent in error replies so peers can react by kind."""

    MALFORMED = "malformed"
    """The frames are not a valid message: bad JSON, missing or ill-typed field, wrong frames."""
    UNSUPPORTED_VERSION = "unsupported_version"
    """The header's protocol version is not one this side speaks."""
    UNKNOWN_TYPE = "unknown_type"
    """The message type is not known to this side."""
    TOO_LARGE = "too_large"
    """The message exceeds a configured size limit."""
    UNEXPECTED = "unexpected"
    """A valid message that this endpoint does not handle (e.g. an execute sent to a viewer)."""
    HANDLER_FAILED = "handler_failed"
    """The server's handler for a valid request raised; the message says what."""
    NOT_FOUND = "not_found"
    """The request names something the server does not know (e.g. an unknown execution id)."""
    REFUSED = "refused"
    """The server understood the request and declines it (e.g. it is shutting down)."""


class ZMQRuntimeError(Exception):
    """Base class of every error zmqruntime raises on purpose."""


class ConfigurationError(ZMQRuntimeError, ValueError):
    """A configuration value that cannot work (a port out of range, an offset that overflows)."""


class ProtocolError(ZMQRuntimeError):
    """A message that violates the wire protocol; ``code`` says which rule was broken."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.MALFORMED) -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """This side tried to encode a message that the protocol does not allow (a bug here)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent frames that do not decode into a valid message (its bug, or hostile input)."""


class RemoteError(ZMQRuntimeError):
    """The server answered a request with an error reply.

    ``code`` is the :class:`ErrorCode` the server sent; ``detail`` its message text. When a
    handler raised, ``error_type`` names its exception (it leads ``str(error)``) and
    ``remote_traceback`` shows where; both are None otherwise.
    """

    def __init__(
        self,
        code: ErrorCode,
        detail: str,
        error_type: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        what = detail if error_type is None else f"{error_type}: {detail}"
        super().__init__(f"server refused the request ({code.value}): {what}")
        self.code = code
        self.detail = detail
        self.error_type = error_type
        self.remote_traceback = remote_traceback


class InvalidItem(ZMQRuntimeError, ValueError):
    """A shapes, points or labels item that breaks its rules (NaN coordinates, too many points,
    features that do not match the count, ...); a viewer acks such an item as failed."""


class ZMQTimeoutError(ZMQRuntimeError, TimeoutError):
    """A blocking call ran out of time. Also a builtin :class:`TimeoutError`."""


class AddressInUseError(ZMQRuntimeError, OSError):
    """Another live server already listens on the address a server tried to bind."""


class ChannelClosed(ZMQRuntimeError):
    """The object was closed (or is closing) and cannot carry this call any more."""


class ServerLost(ZMQRuntimeError):
    """The server stopped answering: heartbeats timed out or the connection broke."""


class ProcessLaunchError(ZMQRuntimeError):
    """A launched process exited before its server answered; carries ``exit_code`` and
    ``stderr_tail``."""

    def __init__(self, argv: str, exit_code: int, stderr_tail: str) -> None:
        tail = stderr_tail.strip() or "(nothing on stderr)"
        super().__init__(f"{argv} exited with code {exit_code} before it was ready:\n{tail}")
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


class TaskFailed(ZMQRuntimeError):
    """A task's executor raised on the server; carries the remote exception's type name,
    message and formatted traceback (never an unpickled exception object)."""

    def __init__(
        self, execution_id: str, error_type: str, error_message: str, remote_traceback: str
    ) -> None:
        super().__init__(f"execution {execution_id} failed: {error_type}: {error_message}")
        self.execution_id = execution_id
        self.error_type = error_type
        self.error_message = error_message
        self.remote_traceback = remote_traceback


class TaskCancelled(ZMQRuntimeError):
    """A task was cancelled before it produced a result."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {execution_id} was cancelled")
        self.execution_id = execution_id
