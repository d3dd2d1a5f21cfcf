"""ImageSender: streams numpy images, and shapes, points and labels items, to a viewer, with an
acknowledgement for every one.

Pixels travel as one raw frame (zero-copy for contiguous arrays) with dtype and shape in the
JSON header; an item's arrays as one raw frame each. Each calling thread sends on a PUSH socket
of its own (:class:`~zmqruntime.streaming.thread_sockets.ThreadSockets`), so an image costs no
hand-off to an I/O thread; past its limit of calling threads, with ``ack_to`` (the sent notice
must go first) and for IPv6 hosts, images go through the client's I/O thread.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, final

import attrs
import numpy
import zmq

from zmqruntime.config import TransportMode, check_seconds
from zmqruntime.core import codec
from zmqruntime.core.ack import AckChannel
from zmqruntime.core.client import ZMQClient
from zmqruntime.core.command_messages import CommandReply
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import close_on_exit, connect_on_enter
from zmqruntime.core.messages import Ack, AckOutcome, ImageFrame, ImageSent, ItemFrame, Message
from zmqruntime.core.push import open_connected_socket
from zmqruntime.core.queue_tracker import QueueTracker
from zmqruntime.core.security import ClientCurve, ServerCurve
from zmqruntime.core.socket_options import Context, Socket
from zmqruntime.core.sockets import send_frames
from zmqruntime.errors import ChannelClosed, ConfigurationError, RemoteError, ZMQTimeoutError
from zmqruntime.streaming import batches
from zmqruntime.streaming.batches import SentBatch
from zmqruntime.streaming.commands import CommandCalls
from zmqruntime.streaming.item_wire import frame_from_item
from zmqruntime.streaming.items import Item, Labels, Points, Shapes
from zmqruntime.streaming.sender_peers import ACK_COPIES
from zmqruntime.streaming.thread_sockets import ThreadSockets

__all__ = ["ImageSender"]


@final
@attrs.define(eq=False)
class ImageSender:
    """Sends images to a viewer through the ``client`` it is given (a PUSH data socket;
    :meth:`to` builds one, and the ack channel, for an endpoint).

    Without ``ack_to`` the viewer's acks come back to ``channel``, this sender's own
    :class:`~zmqruntime.AckChannel`, started and closed with it; with it they go to that other
    process's channel, which the sender tells of each image it sends, so the tracker there stays
    exact, and the viewer pushes this sender a copy of each on its control connection.
    ``tracker`` (created when not given) follows what was sent and acknowledged here;
    ``tracker_key`` names this stream in acks (default: a fresh unique key). At most
    ``max_in_flight`` images are unacknowledged at once, with or without ``ack_to``;
    ``send_timeout`` bounds how long :meth:`send` waits for room (``config.request_timeout``
    by default). Safe to call from several threads.
    """

    client: ZMQClient
    channel: AckChannel | None = None
    max_in_flight: int = 16
    ack_to: str | None = None
    tracker: QueueTracker | None = None
    tracker_key: str | None = None
    send_timeout: float | None = None
    ack_to_curve: ClientCurve | None = None
    """Keys for the ``ImageSent`` notices to an ``ack_to`` channel that has a CURVE key pair of
    its own: this sender's keys and that channel's public key (default: the endpoint's)."""

    _connected: bool = attrs.field(default=False, init=False)
    _key: str = attrs.field(default="", init=False)
    _id_prefix: str = attrs.field(default="", init=False)
    _numbers: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _threads: ThreadSockets = attrs.field(init=False)
    _limit: float = attrs.field(default=0.0, init=False)
    _copies_asked: threading.Event = attrs.field(factory=threading.Event, init=False)
    _copies_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _viewer_limits: Any = attrs.field(default=None, init=False)
    _commands: CommandCalls = attrs.field(init=False)
    _ack_at: str | None = attrs.field(default=None, init=False)  # ack_address, once connected
    _context: Context | None = attrs.field(default=None, init=False)  # made by to(), ended here

    @classmethod
    def to(
        cls,
        endpoint: Endpoint,
        *,
        ack_curve: ServerCurve | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        **options: Any,
    ) -> ImageSender:
        """A sender to the viewer at ``endpoint``, with its own client and (unless ``ack_to``
        is among ``options``) its own ack channel on a free port of the same transport,
        protected by ``ack_curve`` keys if given. ``options`` are this class's other fields.
        Both live in ``context``; without one, over TCP, in one the sender makes and ends on
        close, so that one libzmq I/O thread carries images and acks (over IPC each has its
        own: a socket file is removed only once its context has ended)."""
        tcp = endpoint.transport is TransportMode.TCP
        owned = zmq.Context() if context is None and tcp else None
        shared = context or owned
        client = ZMQClient(endpoint, data_socket_type=zmq.PUSH, context=shared, name="image-sender")
        channel = None
        if options.get("ack_to") is None:
            channel_at = Endpoint.of(
                0, transport_mode=endpoint.transport, config=endpoint.config, curve=ack_curve
            )
            channel = AckChannel.bind(channel_at, context=shared)
        try:
            sender = cls(client, channel, **options)
        except BaseException:  # a bad option: what was built for it goes again
            if channel is not None:
                channel.close()
            client.close()
            if owned is not None:
                owned.term()
            raise
        sender._context = owned
        return sender

    def __attrs_post_init__(self) -> None:
        if isinstance(self.max_in_flight, bool) or self.max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be 1 or more, got {self.max_in_flight}")
        self._key = self.tracker_key or (
            self.tracker.viewer_key if self.tracker is not None else uuid.uuid4().hex
        )
        # Unique per sender: several senders (processes) may share one tracker key.
        self._id_prefix = f"{self._key}-{uuid.uuid4().hex[:12]}"
        timeout = self.send_timeout
        limit = self.client.config.request_timeout if timeout is None else timeout
        self._limit = check_seconds("send_timeout", limit, allow_zero=True)
        self._commands = CommandCalls(self.client, self._id_prefix)
        self._threads = ThreadSockets(self._open_thread_socket)

    def connect(self) -> ImageSender:
        """Connect to the viewer and (without ``ack_to``) start the ack listener. Idempotent."""
        with self._lock:
            if self._closed:
                raise ChannelClosed("this ImageSender is closed")
            if self._connected:
                return self
            if self.ack_to is None:
                if self.channel is None:
                    raise ConfigurationError(
                        "an ImageSender needs ack_to= or an AckChannel of its own; "
                        "ImageSender.to(endpoint) builds one"
                    )
                registry = self.channel.registry
                if self.tracker is None:
                    self.tracker = registry.get_or_create_tracker(self._key)
                else:
                    registry.add_tracker(self.tracker, self._key)
                self.channel.start()
            else:
                self.tracker = self.tracker or QueueTracker(self._key)
            # A restarted viewer knows nothing of this sender: ask it again.
            self.client.listen(on_message=self._on_control, on_disconnect=self._on_lost)
            self.client.connect()
            self._ack_at = self.ack_address  # fixed from here on; each image names it
            self._connected = True
        return self

    def close(self) -> None:
        """Close the connection and the ack listener (idempotent). Unsent images are
        delivered for up to ``config.linger`` seconds."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._threads.close()  # before the client ends the context their sockets live in
        self._commands.fail_all(ChannelClosed("the ImageSender closed"))
        self.client.close()
        if self.channel is not None:
            self.channel.close()
        if self._context is not None:
            self._context.term()

    __enter__ = connect_on_enter
    __exit__ = close_on_exit

    def request(self, name: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """Send the viewer's own request ``name`` (a handler it was given in ``requests``)
        and return the reply's payload; raises like ``ZMQClient.call``."""
        return self.client.call(name, payload, timeout=timeout)

    def command(self, name: str, args: Any = None, *, timeout: float | None = None) -> Any:
        """The result of viewer command ``name`` run after the items this thread sent; raises
        ``RemoteError`` (with the reason) or ``ZMQTimeoutError`` after ``timeout``."""
        return self._commands.call(name, args, self._timeout(timeout), self._send_in_order)

    def command_async(
        self, name: str, args: Any = None, *, timeout: float | None = None
    ) -> concurrent.futures.Future[Any]:
        """:meth:`command` without waiting: the future resolves to the result or fails."""
        return self._commands.send(name, args, self._timeout(timeout), self._send_in_order)

    def _timeout(self, timeout: float | None) -> float:
        if not self._connected or self._closed:
            self.connect()
        return self._limit if timeout is None else timeout

    @property
    def ack_address(self) -> str | None:
        """Where the viewer sends this sender's acks."""
        if self.ack_to is not None:
            return self.ack_to
        return self.channel.address if self.channel is not None else None

    @property
    def viewer_address(self) -> str:
        """The viewer's data address this sender sends to."""
        return self.client.endpoint.data_url

    def send(
        self,
        image: numpy.ndarray[Any, Any] | Item,
        metadata: Mapping[str, Any] | None = None,
        *,
        copy: bool = False,
    ) -> str:
        """Send one image, or one :class:`~zmqruntime.streaming.items.Shapes`,
        :class:`~zmqruntime.streaming.items.Points` or
        :class:`~zmqruntime.streaming.items.Labels` item (acked, tracked and counted in
        ``max_in_flight`` like an image); returns its id.

        Waits while ``max_in_flight`` images are unacknowledged (raising
        :class:`ZMQTimeoutError` after ``send_timeout``). The pixels of a C-contiguous array
        are sent without a copy, so do not change the array until it is acknowledged — or
        pass ``copy=True``. ``metadata`` must hold JSON values (``TypeError`` otherwise).
        """
        if not self._connected or self._closed:
            self.connect()
        meta = dict(metadata) if metadata else {}
        if meta:
            codec.check_json_object(meta, "metadata")
        image_id = f"{self._id_prefix}-{next(self._numbers)}"
        frame: ImageFrame | ItemFrame
        if isinstance(image, Shapes | Points | Labels):
            frame = frame_from_item(
                image,
                image_id=image_id,
                tracker_key=self._key,
                metadata=meta,
                ack_to=self._ack_at,
                copy=copy,
            )
        else:
            frame = codec.image_from_array(
                numpy.array(image, copy=True) if copy else image,
                image_id=image_id,
                tracker_key=self._key,
                metadata=meta,
                ack_to=self._ack_at,
            )
        self._dispatch(frame, [image_id], f"image {image_id}")
        return image_id

    def _dispatch(self, frame: Message, ids: list[str], what: str) -> None:
        """Wait for room for ``ids`` in ``max_in_flight``, register them, send ``frame``."""
        frames = codec.encode(frame)  # before registering: a bad image raises here
        tracker = self.tracker
        assert tracker is not None
        if self.ack_to is not None:
            self._ask_for_ack_copies()
        if not tracker.wait_and_register_all(ids, self.max_in_flight, self._limit):
            raise ZMQTimeoutError(
                f"{tracker.get_pending_count()} images to {self.viewer_address} are still "
                f"unacknowledged after {self._limit}s (max_in_flight={self.max_in_flight}); is "
                f"the viewer running?{self._connection_hint()}"
            )
        if self.ack_to is not None:  # the notices go first, so the image goes the same way
            for image_id in ids:
                notice = ImageSent(image_id=image_id, tracker_key=self._key)
                self.client.push(self.ack_to, notice, curve=self.ack_to_curve)
        try:
            self._send_in_order(frame, what, frames)
        except BaseException as exc:
            for image_id in ids:
                tracker.acknowledge(image_id, AckOutcome.FAILED, str(exc))
            raise

    def _send_in_order(self, frame: Message, what: str, frames: list[Any] | None = None) -> None:
        """Send where the calling thread's images go (its socket, or the client's I/O thread)."""
        entry = self._threads.current() if self.ack_to is None else None
        if entry is None or entry.socket is None:
            self.client.send_data(frame)
            return
        with entry.lock:
            if entry.closed:
                raise ChannelClosed("this ImageSender is closed")
            try:
                send_frames(entry.socket, frames or codec.encode(frame), zmq.NOBLOCK)
            except zmq.Again:
                raise ZMQTimeoutError(
                    f"the queue to {self.viewer_address} is full; {what} was not sent"
                ) from None

    def _ask_for_ack_copies(self) -> None:
        """Before the first image and after a lost connection (a viewer restart): ask the
        viewer for copies of this sender's acks (waits up to ``send_timeout``; raises like
        ``ZMQClient.call``)."""
        if self._copies_asked.is_set():
            return
        with self._copies_lock:
            if self._copies_asked.is_set():
                return
            try:
                self.client.call(ACK_COPIES, {"prefix": self._id_prefix}, timeout=self._limit)
            except RemoteError as exc:
                raise ConfigurationError(
                    f"the viewer at {self.viewer_address} cannot copy acks to this sender, so "
                    f"ack_to cannot hold max_in_flight: {exc}; upgrade the viewer"
                ) from exc
            self._copies_asked.set()

    def _on_control(self, message: Message) -> None:
        """Client I/O thread: a command's reply, or a copy of an ack sent to ``ack_to``."""
        tracker = self.tracker
        if isinstance(message, CommandReply):
            self._commands.resolve(message)
        elif isinstance(message, Ack) and tracker is not None and self.ack_to is not None:
            tracker.acknowledge(message.image_id, message.outcome, message.error)

    def _on_lost(self) -> None:
        self._copies_asked.clear()
        self._commands.lost()

    def _open_thread_socket(self) -> Socket | None:
        """A data socket for one more calling thread (None: it goes through the I/O thread)."""
        if ":" in self.client.endpoint.host:  # IPv6 needs options only the client's socket has
            return None
        client, pair = self.client, self.client.sockets
        return open_connected_socket(
            pair.context, zmq.PUSH, pair.data_url, client.config, client.curve
        )

    def send_batch(
        self,
        items: Iterable[numpy.ndarray[Any, Any] | Item],
        metadata: Mapping[str, Any] | None = None,
        *,
        item_metadata: Sequence[Mapping[str, Any]] | None = None,
        copy: bool = False,
    ) -> SentBatch:
        """Send images and items as one batch, shown by the viewer at once, with the batch's
        ``metadata`` and each item's own (``item_metadata``); returns the ids of the batch and
        its items, each acked and tracked. It takes ``len(items) + 1`` of ``max_in_flight``
        (a larger batch waits until nothing is pending) and must fit the viewer's backlog
        (``ValueError``): see :mod:`zmqruntime.streaming.batches`."""
        items = list(items)
        meta, metas = batches.batch_metadata(len(items), metadata, item_metadata)
        if not self._connected or self._closed:
            self.connect()
        ids = [f"{self._id_prefix}-{next(self._numbers)}" for _ in range(len(items) + 1)]
        frame = batches.batch_frame(
            items, meta, metas, ids, tracker_key=self._key, ack_to=self._ack_at, copy=copy
        )
        if self._viewer_limits is None:
            self._viewer_limits = batches.viewer_limits(self.client, self._limit)
        batches.check_fits(frame, self._viewer_limits, self.viewer_address)
        self._dispatch(frame, ids, f"batch {ids[-1]}")
        return SentBatch(ids[-1], tuple(ids[:-1]))

    def wait_all_acked(self, timeout: float | None = None) -> None:
        """Block until every image sent is acknowledged.

        Raises :class:`ZMQTimeoutError` naming how many are still missing after ``timeout``
        seconds (``config.request_timeout`` by default).
        """
        tracker = self.connect().tracker
        assert tracker is not None
        limit = self.client.config.request_timeout if timeout is None else timeout
        if not tracker.wait_all_acknowledged(limit):
            missing = tracker.get_pending_count()
            raise ZMQTimeoutError(
                f"{missing} image(s) sent to {self.viewer_address} were not acknowledged "
                f"within {limit}s; is the viewer running?{self._connection_hint()}"
            )

    def _connection_hint(self) -> str:
        """Why images may not get through, when the connection to the viewer says so."""
        failure = self.client.handshake_failure
        if failure is not None:
            return f" The connection to the viewer failed: {failure}"
        if self.client.curve is not None:
            return (
                " CURVE is on: a viewer that does not accept this sender's key drops it without "
                "a word, so check that the key is allowed and the viewer's key is right."
            )
        return ""
