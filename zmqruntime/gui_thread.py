"""Run any callable on the Qt main thread: a viewer's sink, a request handler, a progress
callback. Qt widgets (napari's too) may only be touched from that thread, while zmqruntime calls
sinks from a viewer's sink thread and progress callbacks from a client's I/O thread.

Tier-neutral (beside :mod:`zmqruntime.protocols`): streaming sinks and execution callbacks both
need it, and it depends on nothing but the errors. Qt comes from the optional ``napari`` extra
(superqt over a Qt binding), imported when an adapter is made, never by ``import zmqruntime``.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, final

import attrs

from zmqruntime.config import check_count, check_seconds, checked
from zmqruntime.errors import ChannelClosed, ConfigurationError, ZMQTimeoutError

__all__ = ["MAX_QUEUED", "QtMainThreadCall", "on_qt_main_thread"]

logger = logging.getLogger(__name__)

MAX_QUEUED: Final = 10_000
"""Default :attr:`QtMainThreadCall.max_queued`: calls posted and not yet started by the main
thread, past which a ``wait=False`` call is dropped (and logged)."""


class _State(enum.Enum):
    QUEUED = "queued"  # posted, the main thread has not taken it
    RUNNING = "running"  # on the main thread now, its caller waits
    DONE = "done"
    WITHDRAWN = "withdrawn"  # its caller timed out or the adapter closed first: never runs
    ABANDONED = "abandoned"  # running, its caller timed out: the outcome is logged


@final
@attrs.define(eq=False)
class _Call:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: _State = _State.QUEUED
    result: Any = None
    error: BaseException | None = None
    finished: threading.Event = attrs.field(factory=threading.Event)


@final
@attrs.define(eq=False)
class QtMainThreadCall:
    """``func`` run on the Qt main thread (the thread of ``QCoreApplication.instance()``) by
    whichever thread calls this object; build it with :func:`on_qt_main_thread`.

    * ``wait=True`` (sinks, request handlers): the caller blocks until the main thread ran
      ``func`` and gets its return value, or its exception re-raised (a viewer then acks the
      item "failed" with that message; "processed" means the GUI handled it). After ``timeout``
      seconds it raises :class:`~zmqruntime.ZMQTimeoutError`: a call the main thread has not
      started is withdrawn and never runs; one already running finishes there, and its late
      outcome is logged (WARNING, or ERROR with the traceback if it raised).
    * ``wait=False`` (progress callbacks, which must not block an I/O thread): the call is
      queued and this returns None at once; an exception is logged (ERROR, with traceback) on
      the main thread. Past ``max_queued`` calls waiting for the main thread, further ones are
      dropped and logged (WARNING, once per episode with the count).
    * On the main thread itself, ``func`` runs at once, directly (no deadlock; with
      ``wait=False`` its exception is logged, not raised).
    * Without a running ``QApplication`` (none was made, or it was destroyed), a call raises
      :class:`~zmqruntime.ConfigurationError`; headless code should call ``func`` itself. An
      application whose event loop is not running (before ``app.exec()``, after it returned)
      runs nothing: ``wait=True`` calls time out, withdrawn.

    :meth:`close` (idempotent; any thread) withdraws the calls not yet started — their waiting
    callers get :class:`~zmqruntime.errors.ChannelClosed` at once, dropped ``wait=False`` calls
    are counted in a WARNING — and refuses further calls with ``ChannelClosed``. A
    :class:`~zmqruntime.StreamingServer` closes its sink when it closes, so this adapter as a
    sink lives as long as its server; ``func``'s own ``close()`` is not called (it belongs to
    the application). A GUI that closes a viewer from the main thread should close the adapter
    first, so a sink call waiting for that blocked thread ends now, not after ``timeout``.
    Thread-safe.
    """

    func: Callable[..., Any]
    wait: bool = True
    timeout: float = attrs.field(default=30.0, validator=checked(check_seconds))
    max_queued: int = attrs.field(default=MAX_QUEUED, validator=checked(check_count, 1))
    _post: Callable[[_Call], Any] | None = attrs.field(default=None, init=False, repr=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    _queued: dict[_Call, None] = attrs.field(factory=dict, init=False, repr=False)
    _dropped: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` on the Qt main thread, as the class describes."""
        app, current_thread, post = _qt()
        if app is None:
            raise ConfigurationError(
                f"no Qt application is running to call {_name(self.func)} on its main thread: "
                "create a QApplication (or a napari.Viewer) first, in the main thread, and "
                "run its event loop (app.exec() or napari.run()); without a GUI, pass the "
                "function itself instead of on_qt_main_thread(...)"
            )
        if self._closed:
            raise ChannelClosed(f"on_qt_main_thread({_name(self.func)}) is closed")
        if current_thread() is app.thread():
            return self._direct(args, kwargs)
        call = _Call(args, kwargs)
        with self._lock:
            if self._closed:
                raise ChannelClosed(f"on_qt_main_thread({_name(self.func)}) is closed")
            if not self.wait and len(self._queued) >= self.max_queued:
                self._dropped += 1
                if self._dropped == 1:
                    logger.warning(
                        "the Qt main thread is not keeping up: %d calls of %s wait for it; "
                        "dropping new ones until it catches up",
                        len(self._queued),
                        _name(self.func),
                    )
                return None
            self._queued[call] = None
            if self._post is None:
                self._post = post(self._run)
            poster = self._post
        try:
            poster(call)
        except BaseException:
            with self._lock:
                self._queued.pop(call, None)
            raise
        if not self.wait:
            return None
        return self._outcome(call)

    def close(self) -> None:
        """Withdraw the calls not started yet and refuse new ones (idempotent, any thread)."""
        reason = f"on_qt_main_thread({_name(self.func)}) closed before the main thread ran it"
        with self._lock:
            self._closed = True
            queued, self._queued = list(self._queued), {}
            for call in queued:  # superqt still holds the call: let go of its arguments
                call.state, call.error = _State.WITHDRAWN, ChannelClosed(reason)
                call.args, call.kwargs = (), {}
        for call in queued:
            call.finished.set()
        if queued and not self.wait:
            logger.warning("%s: %d queued calls dropped", reason, len(queued))

    def __enter__(self) -> QtMainThreadCall:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _direct(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.wait:
            return self.func(*args, **kwargs)
        try:
            self.func(*args, **kwargs)
        except Exception:
            logger.exception("%s failed on the Qt main thread", _name(self.func))
        return None

    def _outcome(self, call: _Call) -> Any:
        """Wait for ``call`` (the caller's thread); withdraw or abandon it on timeout."""
        if not call.finished.wait(self.timeout):
            with self._lock:
                state = call.state
                if state is _State.QUEUED:
                    call.state = _State.WITHDRAWN
                    call.args, call.kwargs = (), {}  # superqt holds the call until it runs
                    self._queued.pop(call, None)
                elif state is _State.RUNNING:
                    call.state = _State.ABANDONED
            what = f"{_name(self.func)} on the Qt main thread"
            if state is _State.QUEUED:
                raise ZMQTimeoutError(
                    f"{what} did not start within {self.timeout}s (is the event loop running, "
                    "and free? a long task on the main thread blocks it); withdrawn, it will "
                    "not run"
                )
            if state is _State.RUNNING:
                raise ZMQTimeoutError(
                    f"{what} did not finish within {self.timeout}s; it goes on there and its "
                    "outcome is logged"
                )
        if call.error is not None:
            raise call.error
        return call.result

    def _run(self, call: _Call) -> None:
        """The main thread's side: run ``call`` unless it was withdrawn; never raises."""
        with self._lock:
            if call.state is not _State.QUEUED:
                return  # withdrawn: its caller has already been told
            self._queued.pop(call, None)
            dropped = 0 if self._queued else self._dropped
            self._dropped -= dropped
            call.state = _State.RUNNING if self.wait else _State.ABANDONED
        if dropped:
            logger.warning("the Qt main thread caught up; %d calls were dropped", dropped)
        try:
            call.result = self.func(*call.args, **call.kwargs)
        except BaseException as exc:  # handed to the caller, or logged
            call.error = exc
        with self._lock:
            told = call.state is _State.RUNNING
            call.state = _State.DONE
        if told:
            call.finished.set()
        elif call.error is not None:
            late = " after its caller timed out" if self.wait else ""
            error = call.error
            logger.error(
                "%s failed on the Qt main thread%s",
                _name(self.func),
                late,
                exc_info=(type(error), error, error.__traceback__),
            )
        elif self.wait:
            logger.warning(
                "%s finished on the Qt main thread after its caller timed out (%ss)",
                _name(self.func),
                self.timeout,
            )


def on_qt_main_thread(
    func: Callable[..., Any],
    *,
    wait: bool = True,
    timeout: float = 30.0,
    max_queued: int = MAX_QUEUED,
) -> QtMainThreadCall:
    """``func`` wrapped to run on the Qt main thread (see :class:`QtMainThreadCall`).

    ``StreamingServer.bind(endpoint, on_qt_main_thread(show))`` acks each image once ``show``
    returned on the GUI thread; ``client.on_progress(on_qt_main_thread(update, wait=False))``
    updates a progress bar without blocking the client's I/O thread. Raises ``ImportError``
    (saying what to install) where superqt or a Qt binding is missing and
    :class:`~zmqruntime.ConfigurationError` for a ``timeout`` or ``max_queued`` that cannot
    work; the Qt application may be created after this, before the first call.
    """
    _qt()
    return QtMainThreadCall(func, wait, timeout, max_queued)


def _qt() -> tuple[Any, Callable[[], Any], Callable[..., Any]]:
    """The Qt application (or None), ``QThread.currentThread`` and superqt's main-thread
    poster, imported on first use."""
    try:
        from qtpy.QtCore import QCoreApplication, QThread  # noqa: PLC0415 - optional extra
        from superqt.utils import ensure_main_thread  # noqa: PLC0415 - optional extra
    except ImportError as exc:
        raise ImportError(
            "on_qt_main_thread needs Qt: pip install 'zmqruntime[napari]' "
            f"(or superqt with PyQt6 or PySide6): {exc}"
        ) from exc
    return QCoreApplication.instance(), QThread.currentThread, ensure_main_thread


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)
