"""The two messages of viewer commands (:mod:`zmqruntime.streaming.commands`):
:mod:`zmqruntime.core.messages` re-exports them with the others."""

from __future__ import annotations

from typing import ClassVar, final

import attrs
from typing_extensions import Buffer

from zmqruntime.core.vocabulary import StreamMessageType
from zmqruntime.errors import ErrorCode

__all__ = ["CommandFrame", "CommandReply"]

_BUFFERS = {"buffer": "many"}


@final
@attrs.frozen(kw_only=True)
class CommandFrame:
    """A command to a viewer, sent on the data socket in the stream of the sender's items, so
    the viewer runs it after the items sent before it. ``reply_to`` is the sender's id prefix,
    by which the viewer knows its control connection; ``command_id`` the number its
    :class:`CommandReply` carries back; ``payload`` the frames the serializer named
    ``serializer`` made of the command's arguments."""

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.COMMAND
    command_id: int
    reply_to: str
    name: str = attrs.field(validator=[attrs.validators.min_len(1), attrs.validators.max_len(128)])
    serializer: str = "safe"
    payload: tuple[Buffer, ...] = attrs.field(default=(), metadata=_BUFFERS)


@final
@attrs.frozen(kw_only=True)
class CommandReply:
    """A viewer's answer to a :class:`CommandFrame`, pushed on the sender's control
    connection: the frames of the command's result (``code`` None), or why it failed
    (``code``, ``message``, and the handler's ``error_type`` and ``traceback`` when it raised).
    Not a reply to a request: it has no ``request_id``."""

    TYPE: ClassVar[StreamMessageType] = StreamMessageType.COMMAND_REPLY
    command_id: int
    code: ErrorCode | None = None
    message: str = ""
    error_type: str | None = None
    traceback: str | None = None
    payload: tuple[Buffer, ...] = attrs.field(default=(), metadata=_BUFFERS)
