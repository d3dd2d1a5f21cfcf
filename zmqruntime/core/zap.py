"""A ZAP handler for one zmq context: pyzmq's credentials checks, answered on a plain thread.

libzmq asks the ZAP handler of a context (RFC 27, on ``inproc://zeromq.zap.01``) to admit each
PLAIN or CURVE peer at its handshake. pyzmq's :class:`zmq.auth.base.Authenticator` holds the
checks (passwords and key callbacks per ZAP domain) and answers one request at a time; pyzmq's
``ThreadAuthenticator`` runs it inside an asyncio event loop, whose import alone was about a
tenth of a viewer's start. :class:`ZapHandler` runs the same checks on a thread with a zmq
poller. Its checks must be synchronous (zmqruntime's are).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Coroutine
from typing import Any, Final, final

import attrs
import zmq
from zmq.auth.base import Authenticator

from zmqruntime.core.socket_options import Context

__all__ = ["ZapHandler"]

logger = logging.getLogger(__name__)

_STOP: Final = b"TERMINATE"
_WAKE_MS: Final = 1000  # the poller's wait; only the pipe's message ends the thread
_VERSION: Final = b"1.0"
_PIPE_NUMBERS: Final = itertools.count()  # a closed pipe's address is freed some time later
_ZAP_ADDRESS: Final = "inproc://zeromq.zap.01"  # libzmq's, bound by pyzmq's Authenticator.start


@final
@attrs.define(eq=False)
class ZapHandler:
    """The ZAP handler of one zmq context: :attr:`checks` answered on :attr:`thread` until
    :meth:`stop`. Build it with :meth:`start`."""

    checks: Authenticator
    """pyzmq's checks; configure them per ZAP domain (``configure_plain``,
    ``configure_curve_callback``) while the thread runs."""
    pipe: zmq.Socket[bytes]
    """This side's end of the pair that tells the thread to stop."""
    thread: threading.Thread

    @classmethod
    def start(cls, context: Context, name: str = "zmqruntime-zap") -> ZapHandler:
        """Bind ``context``'s ZAP socket and answer on a thread called ``name``. Raises
        :class:`zmq.ZMQError` (address in use) when the context already has a ZAP handler."""
        checks = Authenticator(context, log=logger)
        sockets: list[zmq.Socket[bytes]] = []
        try:
            checks.start()
            address = f"inproc://zmqruntime-zap-{next(_PIPE_NUMBERS)}"
            sockets.append(pipe := context.socket(zmq.PAIR))
            pipe.bind(address)
            sockets.append(inner := context.socket(zmq.PAIR))
            inner.connect(address)
            thread = threading.Thread(target=_answer, args=(checks, inner), name=name, daemon=True)
            thread.start()
        except BaseException:
            for socket in sockets:
                socket.close(linger=0)
            checks.stop()
            raise
        return cls(checks, pipe, thread)

    def is_alive(self) -> bool:
        """True while the thread answers."""
        return self.thread.is_alive()

    def stop(self, timeout: float) -> bool:
        """Tell the thread to stop and wait up to ``timeout`` seconds for it. False (and an
        error logged) if it did not end, as when a credentials check is stuck: its sockets stay
        open then, and terminating the context waits for them; call again to finish."""
        if not self.pipe.closed:
            with contextlib.suppress(zmq.Again):
                self.pipe.send(_STOP, zmq.NOBLOCK)
        self.thread.join(timeout)
        if self.thread.is_alive():
            logger.error(
                "the ZAP authentication thread did not stop within %ss (a credentials check is "
                "stuck); its sockets stay open, so closing this zmq context will wait for it",
                timeout,
            )
            return False
        self.pipe.close(linger=0)
        return True


def _answer(checks: Authenticator, pipe: zmq.Socket[bytes]) -> None:
    """The thread: answer ZAP requests until the pipe says stop, then close both sockets."""
    zap = checks.zap_socket
    poller = zmq.Poller()
    poller.register(pipe, zmq.POLLIN)
    poller.register(zap, zmq.POLLIN)
    try:
        while True:
            ready = dict(poller.poll(_WAKE_MS))
            if pipe in ready:
                return
            if zap in ready:
                _answer_one(checks, zap.recv_multipart())
    finally:
        pipe.close(linger=0)
        # Unbinding frees the ZAP address now; a close frees it only once libzmq's reaper got
        # to the socket, and a handler started before that would find the address in use.
        with contextlib.suppress(zmq.ZMQError):
            zap.unbind(_ZAP_ADDRESS)
        checks.stop()


def _answer_one(checks: Authenticator, request: list[bytes]) -> None:
    """Answer one ZAP request; a check that fails refuses the peer (status 500)."""
    if len(request) < 2:  # pyzmq would not answer it, and the REP socket would wait forever
        checks.zap_socket.send_multipart([_VERSION, b"", b"400", b"not a ZAP request", b"", b""])
        return
    try:
        _run_to_end(checks.handle_zap_message(request))
    except Exception:
        logger.exception("a ZAP credentials check failed; the peer is refused")
        reply = [_VERSION, request[1] if len(request) > 1 else b"", b"500", b"check failed"]
        with contextlib.suppress(zmq.ZMQError):  # the check replied before it failed
            checks.zap_socket.send_multipart([*reply, b"", b""])


def _run_to_end(step: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never awaits (pyzmq's check is a coroutine only so that a key
    callback may be async; zmqruntime's are not)."""
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("a ZAP credentials check awaited; ZapHandler runs synchronous ones only")
