"""Task serializers: how task payloads and results become zmq frames and back.

:class:`SafeSerializer`, the default, never executes what it receives;
:class:`PickleSerializer` carries any picklable object, for trusted setups only.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import ClassVar, final

import attrs
from typing_extensions import Buffer

from zmqruntime.core.safe_format import MAX_DEPTH, dump_tree, load_tree
from zmqruntime.errors import RemoteProtocolError

__all__ = ["MAX_DEPTH", "PickleSerializer", "SafeSerializer", "serializer_name"]


def serializer_name(serializer: object) -> str:
    """The name a serializer is known by on the wire (its ``name``, else its class name)."""
    return str(getattr(serializer, "name", type(serializer).__name__))


@final
@attrs.frozen
class SafeSerializer:
    """The default serializer: JSON values, ``bytes`` and numpy arrays; never executes input.

    ``dumps`` accepts ``None``, ``bool``, ``int`` (any size), ``float`` (``nan`` and ``inf``
    included), ``str``, ``list``, ``tuple``, ``dict`` with ``str`` keys, ``bytes``,
    ``bytearray``, ``memoryview``, and numpy arrays (any shape, byte order or memory layout, up
    to 32 dimensions) and scalars whose dtype the wire carries (:mod:`zmqruntime.core.wire`: not
    object, structured or long double), nested up to 100 levels. Anything else raises
    ``TypeError`` naming where in the object it sits, e.g.
    ``cannot serialize set at obj['items'][3]: ...``. Arrays and bytes travel out of band, one
    frame each; C-contiguous arrays and bytes objects are handed to the transport as they are
    (no copy), so do not mutate them until sent.

    ``loads`` raises :class:`~zmqruntime.RemoteProtocolError` on anything it cannot accept.
    What comes back differs from what went in only as :mod:`zmqruntime.core.safe_format` says
    (tuples become lists, arrays are read-only zero-copy views of the received frames …).
    """

    name: ClassVar[str] = "safe"
    dumps = staticmethod(dump_tree)
    loads = staticmethod(load_tree)


@final
@attrs.frozen
class PickleSerializer:
    """Pickle protocol 5 with out-of-band buffers. **FOR TRUSTED SETUPS ONLY.**

    .. warning::
       ``loads`` unpickles bytes that came from the network, and unpickling **executes code
       chosen by the sender**. Anyone who can reach the socket can run anything as this
       process. Use it only when every peer is trusted (same user, private IPC, or CURVE
       with client authentication), and only by asking for it explicitly.

    Frames: ``[pickle bytes, *raw buffers]`` — large contiguous buffers (numpy arrays,
    :class:`pickle.PickleBuffer`) travel as their own frames without copying.
    """

    name: ClassVar[str] = "pickle"

    def dumps(self, obj: object, /) -> list[Buffer]:
        """Pickle ``obj`` (protocol 5); its out-of-band buffers become extra frames."""
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        frames: list[Buffer] = [data]
        for buffer in buffers:
            try:
                frames.append(buffer.raw())
            except BufferError:  # not contiguous: let the transport read it as it is
                frames.append(buffer)
        return frames

    def loads(self, frames: Sequence[Buffer], /) -> object:
        """Unpickle frames made by :meth:`dumps`. Executes code from the sender: trusted only."""
        if len(frames) == 0:
            raise RemoteProtocolError("malformed pickle payload: no frames")
        try:
            return pickle.loads(frames[0], buffers=frames[1:])
        except (pickle.UnpicklingError, EOFError) as exc:
            raise RemoteProtocolError(f"malformed pickle payload: {exc}") from exc
