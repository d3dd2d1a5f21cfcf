"""zmqruntime: a generic ZeroMQ runtime for running work in another process or host.

Tier 1 (this package's top level) is the transport core: addressing, the versioned message
protocol and its sans-IO codec, safe serializers, :class:`ZMQServer` / :class:`ZMQClient`,
queue tracking and the acknowledgement channel. Execution lives in
:mod:`zmqruntime.execution`, image streaming in :mod:`zmqruntime.streaming`.
"""

from __future__ import annotations

__version__ = "0.1.0"
