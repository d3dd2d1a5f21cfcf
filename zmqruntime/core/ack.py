"""Acknowledgements from consumers back to whoever tracks what was sent, when that is not
the sender: an :class:`AckChannel` server (PULL data socket, a control socket that answers
ping) takes the acks consumers send with an :class:`AckSender` to an image's ``ack_to``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import final

import attrs
import zmq

from zmqruntime.config import ZMQConfig
from zmqruntime.core import codec
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import close_on_exit, start_on_enter
from zmqruntime.core.messages import Ack, AckOutcome, ImageSent, Message
from zmqruntime.core.push import PushSockets
from zmqruntime.core.queue_tracker import GlobalQueueTrackerRegistry
from zmqruntime.core.security import ClientCurve
from zmqruntime.core.server import ZMQServer
from zmqruntime.core.socket_options import Context
from zmqruntime.errors import ChannelClosed

__all__ = ["AckCallbackHandle", "AckChannel", "AckChannelStatistics", "AckSender"]

logger = logging.getLogger(__name__)

AckCallback = Callable[[Ack], None]
"""Called on the channel's I/O thread for every ack received; must be quick."""

EARLY_ACK_CAPACITY = 4096
"""How many early acks (see :class:`AckChannel`) a channel keeps, oldest dropped first."""


@final
@attrs.frozen(kw_only=True)
class AckChannelStatistics:
    """What an :class:`AckChannel` has received since it started."""

    received: int
    applied: int
    untracked: int
    malformed: int
    sent_notices: int


@final
@attrs.define(eq=False)
class AckCallbackHandle:
    """Returned by :meth:`AckChannel.add_callback`; :meth:`remove` unregisters the callback."""

    _channel: AckChannel
    _callback: AckCallback

    def remove(self) -> None:
        """Stop calling the callback (idempotent)."""
        self._channel._remove_callback(self._callback)

    def __enter__(self) -> AckCallbackHandle:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.remove()


@final
@attrs.define(eq=False)
class AckChannel:
    """A listener for acks from any number of consumers: it updates the matching tracker of
    its ``registry`` and calls registered callbacks; a malformed ack is logged and dropped.
    It listens with the ``server`` it is given (or one :meth:`bind` builds).
    ``advertise_host`` is the host in :attr:`address`, which consumers use to reach it.

    Besides acks it takes :class:`~zmqruntime.core.messages.ImageSent` notices from workers
    that send on the tracker's behalf, and registers those items as sent. Trackers are never
    created by input: create the tracker for a key before items for it arrive. An ack that
    overtakes its notice is kept (up to :data:`EARLY_ACK_CAPACITY`) and applied when the
    notice arrives; the tracker counts it once among its ``unknown_acks`` meanwhile.
    """

    server: ZMQServer
    registry: GlobalQueueTrackerRegistry = attrs.field(factory=GlobalQueueTrackerRegistry)
    advertise_host: str = "127.0.0.1"

    _callbacks: tuple[AckCallback, ...] = attrs.field(default=(), init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _early: collections.OrderedDict[tuple[str, str], Ack] = attrs.field(
        factory=collections.OrderedDict, init=False
    )
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(attrs.fields_dict(AckChannelStatistics), 0), init=False
    )

    @classmethod
    def bind(
        cls,
        endpoint: Endpoint | None = None,
        *,
        registry: GlobalQueueTrackerRegistry | None = None,
        advertise_host: str = "127.0.0.1",
        context: Context | None = None,
    ) -> AckChannel:
        """A channel with its own server at ``endpoint`` (by default
        ``Endpoint.of(config.shared_ack_port)``; port 0 picks a free one). Acks are headers
        alone: both its sockets accept frames up to ``config.max_header_bytes``."""
        if endpoint is None:
            endpoint = Endpoint.of(ZMQConfig().shared_ack_port)
        endpoint = attrs.evolve(endpoint, config=endpoint.config.headers_only())
        server = ZMQServer(
            endpoint, role="ack", capabilities=("ack",), data_socket_type=zmq.PULL, context=context
        )
        return cls(server, registry or GlobalQueueTrackerRegistry(), advertise_host)

    def start(self) -> AckChannel:
        """Route the data socket to this channel, bind, and listen in a background thread."""
        self.server.route({}, data_handler=self._on_message)
        self.server.start()
        return self

    def close(self) -> None:
        """Stop listening and close the sockets (idempotent)."""
        self.server.close()

    __enter__ = start_on_enter
    __exit__ = close_on_exit

    @property
    def port_number(self) -> int:
        """The data port the channel listens on."""
        return self.server.bound_port

    @property
    def address(self) -> str:
        """The URL consumers send acks to; put it in an image's ``ack_to``."""
        bound = self.server.sockets.endpoint
        return attrs.evolve(bound, host=self.advertise_host, curve=None).data_url

    def add_callback(self, callback: AckCallback) -> AckCallbackHandle:
        """Call ``callback(ack)`` for every ack received; the handle unregisters it."""
        with self._lock:
            self._callbacks = (*self._callbacks, callback)
        return AckCallbackHandle(self, callback)

    def _remove_callback(self, callback: AckCallback) -> None:
        with self._lock:
            remaining = list(self._callbacks)
            if callback in remaining:
                remaining.remove(callback)
            self._callbacks = tuple(remaining)

    def statistics(self) -> AckChannelStatistics:
        """Counters of acks received, applied to a tracker, untracked and malformed."""
        return AckChannelStatistics(**self._counts)

    def _on_sent(self, notice: ImageSent) -> None:
        tracker = self.registry.get_tracker(notice.tracker_key)
        if tracker is None:
            self._counts["untracked"] += 1
            logger.debug("sent notice for untracked key %r", notice.tracker_key)
            return
        tracker.register_sent(notice.image_id)
        self._counts["sent_notices"] += 1
        early = self._early.pop((notice.tracker_key, notice.image_id), None)
        if early is not None:
            tracker.acknowledge(early.image_id, early.outcome, early.error)

    def _on_message(self, message: Message) -> None:
        if isinstance(message, ImageSent):
            self._on_sent(message)
            return
        if not isinstance(message, Ack):
            self._counts["malformed"] += 1
            logger.warning("ack channel dropped a %s: only acks belong here", message.TYPE.value)
            return
        self._counts["received"] += 1
        tracker = self.registry.get_tracker(message.tracker_key)
        if tracker is None:
            self._counts["untracked"] += 1
            logger.debug(
                "ack for untracked key %r (image %r)", message.tracker_key, message.image_id
            )
        else:
            if not tracker.acknowledge(message.image_id, message.outcome, message.error):
                # Not pending (yet): its sent notice may still be on its way; keep it for that.
                self._early[(message.tracker_key, message.image_id)] = message
                while len(self._early) > EARLY_ACK_CAPACITY:
                    self._early.popitem(last=False)
            self._counts["applied"] += 1
        for callback in self._callbacks:
            try:
                callback(message)
            except Exception:
                logger.exception("ack callback %r failed", callback)


@final
@attrs.define(eq=False)
class AckSender:
    """The consumer's side: sends acks to whichever :class:`AckChannel` an image names.

    Keeps one PUSH socket per address (at most 64, least recently used closed first). Use it
    from one thread — the thread that consumes the images — and :meth:`close` it there.
    Sending never blocks: when a channel is unreachable and its queue is full, the ack is
    dropped with a warning and :meth:`send` returns False. Only ``tcp://`` and ``ipc://``
    addresses are used.
    """

    config: ZMQConfig = attrs.field(factory=ZMQConfig)
    curve: ClientCurve | None = None
    context: Context | None = None
    clock: Callable[[], float] = time.time

    _owned_context: Context | None = attrs.field(default=None, init=False)
    _sockets: PushSockets | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def send(self, ack: Ack | ImageSent, address: str) -> bool:
        """Send ``ack`` (or a sent notice) to the channel at ``address``; False if dropped."""
        if self._closed:
            raise ChannelClosed("this AckSender is closed")
        if self._sockets is None:
            context = self.context
            if context is None:
                context = self._owned_context = zmq.Context()
            self._sockets = PushSockets(context, self.config, self.curve)
        return self._sockets.send(address, codec.encode(ack))

    def acknowledge(
        self,
        address: str,
        image_id: str,
        tracker_key: str,
        outcome: AckOutcome = AckOutcome.PROCESSED,
        error: str = "",
    ) -> bool:
        """Build and send one ack, stamped with the current time."""
        ack = Ack(
            image_id=image_id,
            tracker_key=tracker_key,
            outcome=outcome,
            error=error,
            timestamp=self.clock(),
        )
        return self.send(ack, address)

    def close(self) -> None:
        """Close every socket (delivering queued acks for up to ``config.linger``)."""
        if self._closed:
            return
        self._closed = True
        if self._sockets is not None:
            self._sockets.close()
        if self._owned_context is not None:
            self._owned_context.term()

    def __enter__(self) -> AckSender:
        return self

    __exit__ = close_on_exit
