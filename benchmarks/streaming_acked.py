"""Acknowledged image streaming, against raw zero-copy pyzmq in the same run.

Run: ``python -m benchmarks.streaming_acked [--frames N] [--mode tcp|ipc]``.

Workloads: 512x512 and 2048x2048 uint16 frames, stop-and-wait (one frame in flight) and
windowed (8 in flight), every frame acknowledged after the receiver touched it. The raw
baseline is a PUSH/PULL pair sending header + pixels with ``copy=False`` and a DEALER/ROUTER
pair carrying the acks; zmqruntime is an :class:`~zmqruntime.streaming.ImageSender` and a
:class:`~zmqruntime.streaming.StreamingServer` with a sink that reads one pixel. Both live in
``benchmarks/systems/`` and are shared with the full suite (``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from benchmarks.systems import ours, raw_stream
from zmqruntime import TransportMode

SIZES = (512, 2048)
WINDOWS = (1, 8)


def main(argv: list[str] | None = None) -> int:
    """Run every workload and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--mode", choices=["tcp", "ipc"], default="tcp")
    args = parser.parse_args(argv)
    mode = TransportMode(args.mode)
    out = sys.stdout
    out.write(f"acked uint16 frames over {mode.value}, {args.frames} per workload\n\n")
    out.write("| frame | in flight | raw pyzmq | zmqruntime | ratio |\n|---|---|---|---|---|\n")
    with tempfile.TemporaryDirectory(prefix="zmqrt-bench-") as folder:
        for size in SIZES:
            frames = args.frames if size <= 512 else max(20, args.frames // 8)
            for window in WINDOWS:
                raw_rate = raw_stream.stream_rate(mode.value, folder, size, window, frames)
                (our_rate,) = ours.stream_rate(mode.value, folder, size, window, frames)
                out.write(
                    f"| {size}x{size} | {window} | {raw_rate:,.0f}/s | {our_rate:,.0f}/s "
                    f"| {our_rate / raw_rate:.2f}x |\n"
                )
                out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
