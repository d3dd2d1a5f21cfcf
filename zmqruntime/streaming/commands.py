"""Viewer commands: ``clear``, ``layers``, ``screenshot``, ``set_display``, ``close`` and an
application's own, ordered with the sender's items.

A sender sends a command as a :class:`~zmqruntime.core.messages.CommandFrame` on the same
data socket as the items of the calling thread, so the viewer queues it behind them, and its
sink thread runs it once they were handled (their sink calls returned), never at the same time
as the sink. The reply goes back as a :class:`~zmqruntime.core.messages.CommandReply` on the
sender's control connection, which the sender named to the viewer beforehand by its id prefix
(the built-in request :data:`COMMAND_REPLIES`). :class:`ViewerCommands` is the viewer's side,
:class:`CommandCalls` the sender's.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from zmqruntime.config import check_count, checked
from zmqruntime.core.messages import CommandFrame, CommandReply
from zmqruntime.core.requests import serializer_refusal
from zmqruntime.core.serializers import SafeSerializer, serializer_name
from zmqruntime.core.server import ZMQServer
from zmqruntime.errors import (
    ChannelClosed,
    ConfigurationError,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteError,
    ServerLost,
    ZMQTimeoutError,
)
from zmqruntime.protocols import CommandHandler, CommandSink, TaskSerializer
from zmqruntime.streaming.sender_peers import SenderPeers

if TYPE_CHECKING:
    from zmqruntime.core.client import ZMQClient  # the viewer imports this module, not the client

__all__ = [
    "COMMAND_REPLIES",
    "MAX_COMMAND_BYTES",
    "MAX_COMMAND_SENDERS",
    "MAX_PENDING_COMMANDS",
    "MAX_REPLY_BYTES",
    "STANDARD_COMMANDS",
    "CommandCalls",
    "ViewerCommands",
]

logger = logging.getLogger(__name__)

COMMAND_REPLIES: Final = "zmqruntime.command_replies"
"""The built-in request (payload ``{"prefix": str}``) by which a sender names its control
connection to a viewer, for the replies to its commands (``reply_to`` = its id prefix)."""
STANDARD_COMMANDS: Final = ("clear", "layers", "screenshot", "set_display", "close")
"""The commands the shipped sinks answer (or refuse with a reason)."""
MAX_PENDING_COMMANDS: Final = 64
"""Commands a viewer holds (queued behind items or running) before it refuses more as busy;
also the commands one sender waits on at once."""
MAX_COMMAND_BYTES: Final = 1 << 20
"""A command's arguments, encoded (1 MiB)."""
MAX_REPLY_BYTES: Final = 256 << 20
"""A command's reply, encoded (256 MiB: a screenshot of a 4K canvas as an array is 33 MiB)."""
MAX_COMMAND_SENDERS: Final = 1024
"""Senders a viewer remembers the control connection of; the least recent is forgotten."""


_at_least_one = checked(check_count, 1)


def _size(frames: Any) -> int:
    return sum(memoryview(frame).nbytes for frame in frames)


def _failure(frame: CommandFrame, code: ErrorCode, why: str) -> CommandReply:
    return CommandReply(command_id=frame.command_id, code=code, message=why)


@final
@attrs.define(eq=False)
class ViewerCommands:
    """A viewer's command table: what its sink answers (a
    :class:`~zmqruntime.protocols.CommandSink`'s ``commands()``) and the application's own
    ``handlers``, which win over the sink's of the same name. The viewer queues at most
    ``max_pending`` commands; a command whose arguments exceed ``max_payload_bytes`` or whose
    reply exceeds ``max_reply_bytes`` is answered with an error, and the viewer goes on."""

    handlers: Mapping[str, CommandHandler] = attrs.field(factory=dict)
    max_pending: int = attrs.field(default=MAX_PENDING_COMMANDS, validator=_at_least_one)
    max_payload_bytes: int = attrs.field(default=MAX_COMMAND_BYTES, validator=_at_least_one)
    max_reply_bytes: int = attrs.field(default=MAX_REPLY_BYTES, validator=_at_least_one)

    _table: dict[str, CommandHandler] = attrs.field(factory=dict, init=False)
    _server: ZMQServer | None = attrs.field(default=None, init=False)
    _serializer: TaskSerializer = attrs.field(factory=SafeSerializer, init=False)
    _peers: SenderPeers = attrs.field(
        factory=lambda: SenderPeers("command replies", MAX_COMMAND_SENDERS), init=False
    )
    _pending: int = attrs.field(default=0, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    @property
    def names(self) -> tuple[str, ...]:
        """The commands this viewer answers, sorted (after :meth:`start`)."""
        return tuple(sorted(self._table))

    def start(self, sink: object, server: ZMQServer) -> None:
        """Ask the sink for its commands and answer through ``server`` (before it binds)."""
        own = sink.commands() if isinstance(sink, CommandSink) else {}
        self._table = {**own, **self.handlers}
        self._server = server
        self._serializer = server.serializer
        requests = server.requests
        requests.handlers = {**requests.handlers, COMMAND_REPLIES: self._peers.register}

    def accept(self, frame: CommandFrame) -> bool:
        """I/O thread: whether to queue ``frame`` for the sink thread; if not, it is answered
        with the reason now."""
        size = _size(frame.payload)
        if size > self.max_payload_bytes:
            why = f"the arguments take {size} bytes; a command's are limited to "
            self.reply(
                frame, _failure(frame, ErrorCode.TOO_LARGE, f"{why}{self.max_payload_bytes}")
            )
            return False
        with self._lock:
            busy = self._pending >= self.max_pending
            self._pending += not busy
        if busy:
            why = f"{self.max_pending} commands are waiting in this viewer; retry later"
            self.reply(frame, _failure(frame, ErrorCode.REFUSED, why))
        return not busy

    def run(self, frame: CommandFrame) -> None:
        """Sink thread: run the command and send its reply."""
        try:
            self.reply(frame, self._answer(frame))
        finally:
            with self._lock:
                self._pending -= 1

    def drop(self, frame: CommandFrame, why: str) -> None:
        """Sink thread: answer a queued command that will not run (the viewer closes)."""
        try:
            self.reply(frame, _failure(frame, ErrorCode.REFUSED, why))
        finally:
            with self._lock:
                self._pending -= 1

    def _answer(self, frame: CommandFrame) -> CommandReply:
        handler = self._table.get(frame.name)
        if handler is None:
            known = ", ".join(self.names) or "none"
            why = f"this viewer has no command {frame.name!r}; known commands: {known}"
            return _failure(frame, ErrorCode.NOT_FOUND, why)
        serializer = self._serializer
        refusal = serializer_refusal(0, frame.serializer, serializer, "the arguments")
        if refusal is not None:
            return _failure(frame, refusal.code, refusal.message)
        try:
            args = serializer.loads(frame.payload)
        except (ProtocolError, ValueError, TypeError) as exc:
            return _failure(frame, ErrorCode.MALFORMED, f"bad arguments: {exc}")
        try:
            result = serializer.dumps(handler(args))
        except Exception as exc:
            logger.info("command %r failed: %s: %s", frame.name, type(exc).__name__, exc)
            return CommandReply(
                command_id=frame.command_id,
                code=ErrorCode.HANDLER_FAILED,
                message=str(exc),
                error_type=type(exc).__name__,
                traceback=traceback.format_exc(),
            )
        size = _size(result)
        if size > self.max_reply_bytes:
            why = f"the reply takes {size} bytes; a command's is limited to {self.max_reply_bytes}"
            return _failure(frame, ErrorCode.TOO_LARGE, why)
        return CommandReply(command_id=frame.command_id, payload=tuple(result))

    def reply(self, frame: CommandFrame, reply: CommandReply) -> None:
        """Send ``reply`` to the sender of ``frame`` (any thread), if it named its connection."""
        peer = self._peers.peer_of(frame.reply_to)
        if peer is None or self._server is None:
            logger.warning(
                "no control connection is known for sender %r: the reply to its command %r is "
                "dropped",
                frame.reply_to,
                frame.name,
            )
            return
        with contextlib.suppress(ChannelClosed):  # closing: the sender hears no more
            try:
                self._server.send(peer, reply)
            except LocalProtocolError as exc:  # e.g. text with lone surrogates from the args
                why = f"the reply to {frame.name!r} could not be encoded: {exc}"
                text = why.encode("utf-8", "backslashreplace").decode("ascii", "replace")
                self._server.send(peer, _failure(frame, ErrorCode.HANDLER_FAILED, text[:4096]))


Post = Callable[[CommandFrame, str], None]
"""``post(frame, what)``: send a frame where the calling thread's items go."""


@final
@attrs.define(eq=False)
class CommandCalls:
    """A sender's commands waiting for their replies: at most ``max_pending`` at once, each
    failed with :class:`~zmqruntime.ZMQTimeoutError` when its timeout passes. Replies come on
    ``client``'s control connection, named to the viewer as ``reply_to``."""

    client: ZMQClient
    reply_to: str
    max_pending: int = MAX_PENDING_COMMANDS

    _registered: threading.Event = attrs.field(factory=threading.Event, init=False)
    _register_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    _waiting: dict[int, tuple[concurrent.futures.Future[Any], threading.Timer | None]] = (
        attrs.field(factory=dict, init=False)
    )
    _numbers: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    @property
    def where(self) -> str:
        return self.client.endpoint.data_url

    def call(self, name: str, args: Any, timeout: float, post: Post) -> Any:
        """Send a command and wait for its result (see :meth:`send`; no timer thread)."""
        deadline = time.monotonic() + timeout
        future = self.send(name, args, timeout, post, timed=False)
        try:
            return future.result(max(0.0, deadline - time.monotonic()))
        except ZMQTimeoutError:
            raise
        except concurrent.futures.TimeoutError:
            future.cancel()  # forgotten: a late reply is dropped
            why = f"no reply to command {name!r} from {self.where} within {timeout}s"
            raise ZMQTimeoutError(why) from None

    def send(
        self, name: str, args: Any, timeout: float, post: Post, *, timed: bool = True
    ) -> concurrent.futures.Future[Any]:
        """Name this sender's control connection to the viewer (once per connection), then
        ``post`` the command; the future of its result fails after ``timeout`` seconds in all
        (if ``timed``: else the caller waits that long)."""
        deadline = time.monotonic() + timeout
        self._register(timeout)
        remaining = max(0.0, deadline - time.monotonic())
        frame, future = self._open(name, args, remaining if timed else None, timeout)
        try:
            post(frame, f"command {name!r}")
        except BaseException:
            future.cancel()
            raise
        return future

    def _register(self, timeout: float) -> None:
        if self._registered.is_set():
            return
        with self._register_lock:
            if self._registered.is_set():
                return
            try:
                self.client.call(COMMAND_REPLIES, {"prefix": self.reply_to}, timeout=timeout)
            except RemoteError as exc:
                if exc.code is not ErrorCode.NOT_FOUND:
                    raise
                raise ConfigurationError(
                    f"the viewer at {self.where} takes no commands: {exc.detail}; upgrade it"
                ) from exc
            self._registered.set()

    def lost(self) -> None:
        """Client I/O thread: the viewer connection broke. Name it again before the next
        command (a restarted viewer knows nothing of this sender); fail those waiting."""
        self._registered.clear()
        why = "the connection to the viewer broke; the command may or may not have run"
        self.fail_all(ServerLost(why))

    def _open(
        self, name: str, args: Any, timer_seconds: float | None, timeout: float
    ) -> tuple[CommandFrame, concurrent.futures.Future[Any]]:
        """The frame of a new command and the future of its result, which a timer fails after
        ``timer_seconds`` (None: no timer); raises ``ValueError`` for arguments past the bound and
        :class:`~zmqruntime.ZMQTimeoutError` when ``max_pending`` commands are waiting."""
        payload = tuple(self.client.serializer.dumps(args))
        size = _size(payload)
        if size > MAX_COMMAND_BYTES:
            raise ValueError(
                f"the arguments of command {name!r} take {size} bytes; the limit is "
                f"{MAX_COMMAND_BYTES}"
            )
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        where = self.where
        with self._lock:
            if len(self._waiting) >= self.max_pending:
                raise ZMQTimeoutError(
                    f"{len(self._waiting)} commands to {where} are still unanswered; wait for "
                    "their replies first"
                )
            number = next(self._numbers)
            timer = None
            if timer_seconds is not None:
                why = f"no reply to command {name!r} from {where} within {timeout}s"
                timer = threading.Timer(timer_seconds, self._fail, (number, ZMQTimeoutError(why)))
                timer.daemon = True
            self._waiting[number] = (future, timer)
        if timer is not None:
            timer.start()
        future.add_done_callback(lambda done: done.cancelled() and self._forget(number))
        frame = CommandFrame(
            command_id=number,
            reply_to=self.reply_to,
            name=name,
            serializer=serializer_name(self.client.serializer),
            payload=payload,
        )
        return frame, future

    def resolve(self, reply: CommandReply) -> None:
        """Client I/O thread: settle the command ``reply`` answers (a late one is dropped)."""
        future = self._forget(reply.command_id)
        if future is None:
            logger.debug("dropped a late reply to command %d", reply.command_id)
            return
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            try:
                if reply.code is not None:
                    raise RemoteError(reply.code, reply.message, reply.error_type, reply.traceback)
                future.set_result(self.client.serializer.loads(reply.payload))
            except BaseException as exc:  # the future carries whatever happened
                future.set_exception(exc)

    def fail_all(self, error: BaseException) -> None:
        """Fail every waiting command with ``error`` (the connection broke, the sender closes)."""
        with self._lock:
            numbers = list(self._waiting)
        for number in numbers:
            self._fail(number, error)

    def _fail(self, number: int, error: BaseException) -> None:
        future = self._forget(number)
        if future is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(error)

    def _forget(self, number: int) -> concurrent.futures.Future[Any] | None:
        with self._lock:
            entry = self._waiting.pop(number, None)
        if entry is None:
            return None
        if entry[1] is not None:
            entry[1].cancel()
        return entry[0]
