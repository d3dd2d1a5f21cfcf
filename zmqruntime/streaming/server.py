"""StreamingServer: a :class:`~zmqruntime.ZMQServer` (role "viewer", PULL data socket) whose
I/O thread only queues images, and a sink thread that calls the :class:`~zmqruntime.ImageSink`
in arrival order and acknowledges each image to the :class:`~zmqruntime.AckChannel` its header
names: processed, failed (with the error text) or, in latest-frame mode, skipped."""

from __future__ import annotations

import collections
import enum
import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any, Final, final

import attrs
import zmq

from zmqruntime.core.ack import AckSender
from zmqruntime.core.codec import array_from_image
from zmqruntime.core.endpoint import Endpoint
from zmqruntime.core.lifecycle import close_on_exit, start_on_enter
from zmqruntime.core.messages import AckOutcome, ImageFrame, Message
from zmqruntime.core.requests import RequestTable
from zmqruntime.core.security import ClientCurve
from zmqruntime.core.serializers import SafeSerializer
from zmqruntime.core.server import ZMQServer
from zmqruntime.protocols import ImageSink, RequestHandler, TaskSerializer

__all__ = ["StreamMode", "StreamingServer", "StreamingStatistics"]

logger = logging.getLogger(__name__)

CAPABILITIES: Final = ("images", "acks", "shutdown")
_WAKE_SECONDS: Final = 1.0  # the idle sink thread's timeout; close() wakes it at once anyway


class StreamMode(enum.Enum):
    """How a viewer treats images that arrive faster than its sink shows them."""

    ALL = "all"
    """Show every image, in order (senders bound the backlog with ``max_in_flight``)."""
    LATEST = "latest"
    """Live view: per stream (tracker key), show only the newest waiting image; the others
    are acknowledged as skipped, so trackers stay exact."""


@final
@attrs.frozen(kw_only=True)
class StreamingStatistics:
    """What a viewer has done with the images it received."""

    received: int
    processed: int
    skipped: int
    failed: int
    waiting: int


@final
@attrs.define(eq=False)
class StreamingServer:
    """A viewer endpoint: images in, sink calls, acks out.

    It receives on the ``server`` it is given (:meth:`bind` builds one for an endpoint; read a free
    port back from :attr:`port_number`). If ``sink`` has a ``close()`` method, it is called on
    close, from the sink thread. ``ack_curve`` is used for acks sent to CURVE-protected channels.
    """

    sink: ImageSink
    server: ZMQServer
    mode: StreamMode = StreamMode.ALL
    ack_curve: ClientCurve | None = None

    # I/O thread -> sink thread; None only wakes the sink (on close).
    _inbox: queue.SimpleQueue[ImageFrame | None] = attrs.field(
        factory=queue.SimpleQueue, init=False
    )
    # Taken from the inbox by the sink thread, not yet shown (latest-frame mode keeps more).
    _queue: collections.deque[ImageFrame] = attrs.field(factory=collections.deque, init=False)
    _taken: int = attrs.field(default=0, init=False)  # written by the sink thread only
    _stopping: bool = attrs.field(default=False, init=False)
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
        serializer: TaskSerializer | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        **options: Any,
    ) -> StreamingServer:
        """A viewer with its own :class:`~zmqruntime.ZMQServer` at ``endpoint`` (port 0 picks
        a free one), answering the application's own ``requests`` (name → handler; payloads
        through ``serializer``, safe by default); ``options`` are this class's other fields
        (``mode``, ``ack_curve``)."""
        server = ZMQServer(
            endpoint,
            role="viewer",
            capabilities=CAPABILITIES,
            data_socket_type=zmq.PULL,
            context=context,
            requests=requests or {},
            serializer=serializer or SafeSerializer(),
        )
        return cls(sink, server, **options)

    def _build(self) -> ZMQServer:
        if self._thread is not None:
            raise RuntimeError("this StreamingServer was already started")
        self.server.route({}, data_handler=self._on_data)
        self.server.bind()
        self._thread = threading.Thread(
            target=self._run_sink, name=f"zmqruntime-sink-{self.server.bound_port}", daemon=True
        )
        self._thread.start()
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
        self._stopping = True
        self._inbox.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(limit)
            if self._thread.is_alive():
                logger.error("the sink did not return within %ss; its thread is left", limit)

    __enter__ = start_on_enter
    __exit__ = close_on_exit

    @property
    def port_number(self) -> int:
        """The data port images are sent to (control port = this + offset)."""
        return self.server.bound_port

    def statistics(self) -> StreamingStatistics:
        """Images received, processed, skipped and failed, and how many wait for the sink."""
        counts = dict(self._counts)
        waiting = max(0, counts["received"] - self._taken + len(self._queue))
        return StreamingStatistics(**counts, waiting=waiting)

    def _on_data(self, message: Message) -> None:
        if not isinstance(message, ImageFrame):
            logger.warning("viewer dropped a %s: only images belong here", message.TYPE.value)
            return
        self._counts["received"] += 1
        self._inbox.put(message)

    def _run_sink(self) -> None:
        acks = AckSender(config=self.server.config, curve=self.ack_curve)
        try:
            # Once stopping, what still waits is acked as skipped on the way out.
            while not self._stopping:
                if not self._queue and not self._receive(_WAKE_SECONDS):
                    continue
                if self.mode is StreamMode.LATEST and self._receive_all():
                    return
                show, skip = self._take()
                for image in skip:
                    self._ack(acks, image, AckOutcome.SKIPPED, "a newer frame was shown")
                self._show(acks, show)
        finally:
            self._drain_on_close(acks)
            acks.close()
            self._close_sink()

    def _receive(self, timeout: float | None) -> bool:
        """Move one image from the inbox to the queue, waiting up to ``timeout`` seconds
        (None: not at all); False if none came."""
        try:
            image = self._inbox.get(timeout=timeout) if timeout else self._inbox.get_nowait()
        except queue.Empty:
            return False
        if image is None:
            return False
        self._queue.append(image)
        self._taken += 1
        return True

    def _receive_all(self) -> bool:
        """Move every waiting image to the queue; True if the viewer is stopping."""
        while self._receive(None):
            pass
        return self._stopping

    def _take(self) -> tuple[ImageFrame, list[ImageFrame]]:
        """The next image to show and the images to skip (sink thread)."""
        first = self._queue.popleft()
        if self.mode is StreamMode.ALL:
            return first, []
        key = first.tracker_key
        same = [first, *(image for image in self._queue if image.tracker_key == key)]
        self._queue = collections.deque(image for image in self._queue if image.tracker_key != key)
        return same[-1], same[:-1]

    def _show(self, acks: AckSender, image: ImageFrame) -> None:
        try:
            self.sink(array_from_image(image), image.metadata)
        except Exception as exc:
            logger.exception("sink failed on image %r", image.image_id)
            self._ack(acks, image, AckOutcome.FAILED, f"{type(exc).__name__}: {exc}")
            return
        self._ack(acks, image, AckOutcome.PROCESSED, "")

    def _ack(self, acks: AckSender, image: ImageFrame, outcome: AckOutcome, error: str) -> None:
        self._counts[outcome.value] += 1
        if image.ack_to is not None:
            acks.acknowledge(image.ack_to, image.image_id, image.tracker_key, outcome, error)

    def _drain_on_close(self, acks: AckSender) -> None:
        while self._receive(None) or self._inbox.qsize():
            pass
        while self._queue:
            image = self._queue.popleft()
            self._ack(acks, image, AckOutcome.SKIPPED, "the viewer closed before showing it")

    def _close_sink(self) -> None:
        close = getattr(self.sink, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                logger.exception("closing the sink failed")
