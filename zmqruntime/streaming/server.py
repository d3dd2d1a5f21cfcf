"""StreamingServer: a :class:`~zmqruntime.ZMQServer` (role "viewer", PULL data socket) whose
I/O thread only queues images and items, and a sink thread that hands them to the
:class:`~zmqruntime.ImageSink` (items to an :class:`~zmqruntime.protocols.ItemSink`'s
``take_item``, after their checks) in arrival order and acknowledges each to the
:class:`~zmqruntime.AckChannel` its header names: processed, failed (with the error text or the
rule an item breaks) or, in latest-frame mode, skipped. The queue between them is bounded by
count and bytes, and a full one stops the reading."""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any, Final, final

import attrs
import zmq

from zmqruntime.config import TransportMode, check_count, checked
from zmqruntime.core.ack import AckSender
from zmqruntime.core.codec import array_from_image
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import already_started, close_on_exit, start_on_enter
from zmqruntime.core.messages import (
    Ack,
    AckOutcome,
    BatchFrame,
    CommandFrame,
    ImageFrame,
    ItemFrame,
    Message,
)
from zmqruntime.core.requests import RequestTable
from zmqruntime.core.security import ClientCurve
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.core.server import ZMQServer
from zmqruntime.core.socket_options import Context
from zmqruntime.errors import ChannelClosed, InvalidItem
from zmqruntime.protocols import CommandHandler, ImageSink, RequestHandler, TaskSerializer
from zmqruntime.streaming.backlog import (
    Frame,
    Queued,
    StreamingStatistics,
    StreamMode,
    item_count,
    pixel_bytes,
    stream_of,
    take_next,
)
from zmqruntime.streaming.batches import MAX_BATCH_ITEMS, VIEWER_LIMITS, Acked, acks_for, show_batch
from zmqruntime.streaming.commands import ViewerCommands
from zmqruntime.streaming.item_wire import item_from_frame
from zmqruntime.streaming.sender_peers import ACK_COPIES, MAX_ACK_COPY_SENDERS, SenderPeers

__all__ = ["StreamMode", "StreamingServer", "StreamingStatistics"]

logger = logging.getLogger(__name__)

CAPABILITIES: Final = ("images", "items", "batches", "acks", "shutdown", "commands")
_WAKE_SECONDS: Final = 1.0  # the waits' slice; close() wakes them at once anyway
_HELD: Final = ("backlog", "backlog_bytes", "peak_backlog", "peak_backlog_bytes")

BACKLOG_LIMIT: Final = 64
"""Default :attr:`StreamingServer.backlog_limit`: images received and not yet acknowledged."""
BACKLOG_BYTES: Final = 256 << 20
"""Default :attr:`StreamingServer.backlog_bytes`: their pixel bytes (256 MiB)."""
ACK_HIGH_WATER_MARK: Final = 4096
"""Acks queued per channel before one is dropped, at least: a small ``send_high_water_mark``
meant to make images push back must not cost acks."""
_at_least_one = checked(check_count, 1)


@final
@attrs.define(eq=False)
class StreamingServer:
    """A viewer endpoint: images and items in, sink calls, acks out.

    It receives on the ``server`` it is given (:meth:`bind` builds one for an endpoint; read a free
    port back from :attr:`port_number`). If ``sink`` has a ``close()`` method, it is called on
    close, from the sink thread. ``ack_curve`` is used for acks sent to CURVE-protected channels.

    The backlog (images and items received and not yet acknowledged, a batch's each) holds at
    most ``backlog_limit``; the I/O thread stops reading the data socket once it holds that many
    or ``backlog_bytes`` pixel bytes or more (so one image, or one batch within these limits,
    more than that at most; a larger batch is acked failed), until the sink catches up.
    libzmq's high-water marks then fill and senders' sends wait; control requests are still
    answered.
    """

    sink: ImageSink
    server: ZMQServer
    mode: StreamMode = StreamMode.ALL
    ack_curve: ClientCurve | None = None
    backlog_limit: int = attrs.field(default=BACKLOG_LIMIT, validator=_at_least_one)
    backlog_bytes: int = attrs.field(default=BACKLOG_BYTES, validator=_at_least_one)
    commands: ViewerCommands = attrs.field(factory=ViewerCommands)
    """The viewer commands it answers: its sink's and the application's own."""

    # Received by the I/O thread, not yet taken by the sink thread; guarded by _lock, with
    # _held, _copies, _idle and _stopping. An idle sink thread waits on _doorbell, rung only
    # when it is idle: a C queue wakes it at a fraction of a Condition's cost, per image.
    _queue: collections.deque[Queued] = attrs.field(factory=collections.deque, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _doorbell: queue.SimpleQueue[None] = attrs.field(factory=queue.SimpleQueue, init=False)
    _idle: bool = attrs.field(default=False, init=False)
    _held: list[int] = attrs.field(factory=lambda: [0, 0, 0, 0], init=False)  # see _HELD
    _copies: SenderPeers = attrs.field(  # a lambda: tests lower the module's bound
        factory=lambda: SenderPeers("ack copies", MAX_ACK_COPY_SENDERS), init=False
    )
    _stopping: bool = attrs.field(default=False, init=False)  # the sink thread ends
    _context: Context | None = attrs.field(default=None, init=False)  # made by bind(), ended here
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(("received", "processed", "skipped", "failed"), 0),
        init=False,
    )

    @classmethod
    def bind(
        cls,
        endpoint: Endpoint,
        sink: ImageSink,
        *,
        requests: RequestTable | Mapping[str, RequestHandler] | None = None,
        commands: ViewerCommands | Mapping[str, CommandHandler] | None = None,
        serializer: TaskSerializer | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        **options: Any,
    ) -> StreamingServer:
        """A viewer with its own :class:`~zmqruntime.ZMQServer` at ``endpoint`` (port 0 picks
        a free one), answering the application's own ``requests`` (name → handler; payloads
        through ``serializer``, safe by default) and ``commands`` (name → handler, run in order
        with the items, besides the sink's); ``options`` are this class's other fields
        (``mode``, ``ack_curve``, ``backlog_limit``, ``backlog_bytes``). Its control socket
        accepts frames up to ``config.max_header_bytes``, its image socket ``max_message_bytes``
        (commands travel there)."""
        small = min(endpoint.config.max_request_bytes, endpoint.config.max_header_bytes)
        # Acks leave by its I/O thread; TCP only: an IPC file goes once its own context ended
        tcp = endpoint.transport is TransportMode.TCP
        owned = zmq.Context() if context is None and tcp else None
        server = ZMQServer(
            attrs.evolve(endpoint, config=attrs.evolve(endpoint.config, max_request_bytes=small)),
            role="viewer",
            capabilities=CAPABILITIES,
            data_socket_type=zmq.PULL,
            context=context or owned,
            requests=requests or {},
            serializer=serializer or SafeSerializer(),
        )
        if not isinstance(commands, ViewerCommands):
            commands = ViewerCommands(commands or {})
        try:
            viewer = cls(sink, server, commands=commands, **options)
        except BaseException:
            if owned is not None:
                owned.term()
            raise
        viewer._context = owned
        return viewer

    def _build(self) -> ZMQServer:
        if self._thread is not None:
            raise already_started("StreamingServer")
        self.server.route({}, data_handler=self._on_data, data_paused=self._full)
        table = self.server.requests
        table.handlers = {
            **table.handlers,
            ACK_COPIES: self._copies.register,
            VIEWER_LIMITS: lambda _payload, _peer: self._limits(),
        }
        try:  # a viewer that cannot bind leaves nothing open, the context it made included
            self.commands.start(self.sink, self.server)
            self.server.bind()
            self._thread = threading.Thread(
                target=self._run_sink, name=f"zmqruntime-sink-{self.server.bound_port}", daemon=True
            )
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self.server

    def start(self) -> StreamingServer:
        """Bind and serve in background threads. Returns the server."""
        self._build().start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until a shutdown request or SIGINT/SIGTERM; then close."""
        server = self._build()
        try:
            server.serve_forever()
        finally:
            self.close()

    def request_stop(self) -> None:
        """Ask the viewer to stop serving (thread- and signal-safe); :meth:`close` finishes."""
        self.server.request_stop()

    def close(self, timeout: float | None = None) -> None:
        """Stop receiving, ack what is still waiting as skipped, close the sink. Idempotent."""
        if self._closed:
            return
        self._closed = True
        limit = self.server.config.close_timeout if timeout is None else timeout
        self.server.close(limit)
        with self._lock:
            self._stopping = True
        self._doorbell.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(limit)
            if self._thread.is_alive():
                logger.error("the sink did not return within %ss; its thread is left", limit)
                return  # its ack sockets are still open: ending the context would hang
        if self._context is not None:
            self._context.term()

    __enter__ = start_on_enter
    __exit__ = close_on_exit

    @property
    def port_number(self) -> int:
        """The data port images are sent to (control port = this + offset)."""
        return self.server.bound_port

    def statistics(self) -> StreamingStatistics:
        """Images received, processed, skipped and failed, how many wait for the sink, and the
        backlog now and at its peak."""
        with self._lock:
            held, waiting = list(self._held), len(self._queue)
        return StreamingStatistics(
            **self._counts, waiting=waiting, **dict(zip(_HELD, held, strict=True))
        )

    def _full(self) -> bool:
        """Whether the I/O thread must stop reading images (any thread but with ``_lock``)."""
        with self._lock:
            return self._is_full()

    def _is_full(self) -> bool:
        return self._held[0] >= self.backlog_limit or self._held[1] >= self.backlog_bytes

    def _enqueue(self, message: Queued) -> None:
        """Queue for the sink thread (``_lock`` held), and wake it if it waits."""
        self._queue.append(message)
        if self._idle:
            self._idle = False
            self._doorbell.put(None)

    def _on_data(self, message: Message) -> None:
        """I/O thread, which reads nothing more while the backlog is full."""
        if isinstance(message, CommandFrame):  # not in the backlog: bounded on its own
            if self.commands.accept(message):
                with self._lock:
                    self._enqueue(message)
            return
        if not isinstance(message, ImageFrame | ItemFrame | BatchFrame):
            logger.warning(
                "viewer dropped a %s: only images and items belong here", message.TYPE.value
            )
            return
        size, count = pixel_bytes(message), item_count(message)
        held = self._held
        with self._lock:
            held[0] += count
            held[1] += size
            held[2], held[3] = max(held[2], held[0]), max(held[3], held[1])
            self._counts["received"] += count
            self._enqueue(message)

    def _run_sink(self) -> None:
        config = self.server.config
        hwm = max(config.send_high_water_mark, ACK_HIGH_WATER_MARK)
        acks = AckSender(
            attrs.evolve(config, send_high_water_mark=hwm), self.ack_curve, self._context
        )
        try:
            # Once stopping, what still waits is acked as skipped on the way out.
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    idle = self._idle = not self._queue
                    if not idle:
                        show, skip = take_next(self._queue, self.mode)
                if idle:  # a late ring only costs one more turn of this loop
                    with contextlib.suppress(queue.Empty):
                        self._doorbell.get(timeout=_WAKE_SECONDS)
                    continue
                try:
                    for image in skip:
                        self._ack(acks, image, AckOutcome.SKIPPED, "a newer frame was shown")
                    self._show(acks, show)
                except Exception:  # the net: no one message may end the sink thread
                    logger.exception("viewer: could not handle a %s", show.TYPE.value)
        finally:
            self._drain_on_close(acks)
            acks.close()
            self._close_sink()

    def _limits(self) -> dict[str, int]:
        """The batch a sender may send: the :data:`VIEWER_LIMITS` reply."""
        limits = (self.backlog_limit, self.backlog_bytes, MAX_BATCH_ITEMS)
        return dict(zip(("backlog_limit", "backlog_bytes", "max_batch_items"), limits, strict=True))

    def _show(self, acks: AckSender, frame: Queued) -> None:
        if isinstance(frame, CommandFrame):
            self.commands.run(frame)
            return
        if isinstance(frame, BatchFrame):
            self._settle(acks, frame, show_batch(self.sink, frame, self._limits()))
            return
        try:
            if isinstance(frame, ImageFrame):
                self.sink(array_from_image(frame), frame.metadata)
            else:
                self._show_item(frame)
        except Exception as exc:
            if isinstance(exc, InvalidItem):
                logger.warning("viewer refused item %r: %s", frame.image_id, exc)
            else:
                logger.exception("sink failed on %s %r", stream_of(frame)[1], frame.image_id)
            self._ack(acks, frame, AckOutcome.FAILED, f"{type(exc).__name__}: {exc}")
            return
        self._ack(acks, frame, AckOutcome.PROCESSED, "")

    def _show_item(self, frame: ItemFrame) -> None:
        """Check the item and hand it to the sink, if the sink takes its kind."""
        kind = frame.kind.value
        take = getattr(self.sink, "take_item", None)
        if kind not in getattr(self.sink, "item_kinds", ()) or not callable(take):
            raise InvalidItem(
                f"this viewer's sink ({type(self.sink).__name__}) takes no {kind} items: give "
                f"the viewer a sink with take_item() and {kind!r} in its item_kinds"
            )
        take(item_from_frame(frame), frame.metadata)

    def _ack(self, acks: AckSender, image: Frame, outcome: AckOutcome, error: str) -> None:
        """Acknowledge the image, item or whole batch with one outcome (sink thread)."""
        self._settle(acks, image, acks_for(image, outcome, error))

    def _settle(self, acks: AckSender, image: Frame, acked: list[Acked]) -> None:
        """Make the message's room in the backlog, then send its acks (a batch's items', then
        its own) (sink thread)."""
        for _image_id, outcome, _error in acked[: item_count(image)]:
            self._counts[outcome.value] += 1
        with self._lock:
            full = self._is_full()
            self._held[0] -= item_count(image)
            self._held[1] -= pixel_bytes(image)
        if full:  # the I/O thread may read again
            self.server.wake()
        peer = self._copies.peer_of(acked[-1][0].rpartition("-")[0])
        for image_id, outcome, error in acked:
            ack = Ack(
                image_id=image_id,
                tracker_key=image.tracker_key,
                outcome=outcome,
                error=error,
                timestamp=acks.clock(),
            )
            if image.ack_to is not None:
                acks.send(ack, image.ack_to)
            if peer is not None:
                with contextlib.suppress(ChannelClosed):  # closing: the sender hears no more
                    self.server.send(peer, ack)

    def _drain_on_close(self, acks: AckSender) -> None:
        with self._lock:
            left, self._queue = list(self._queue), collections.deque()
        for image in left:
            if isinstance(image, CommandFrame):
                self.commands.drop(image, "the viewer closed before running it")
            else:
                self._ack(acks, image, AckOutcome.SKIPPED, "the viewer closed before showing it")

    def _close_sink(self) -> None:
        close = getattr(self.sink, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                logger.exception("closing the sink failed")
