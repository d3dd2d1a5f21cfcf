"""``python -m zmqruntime``: the command line (see :mod:`zmqruntime.cli`)."""

from __future__ import annotations

import sys

from zmqruntime.cli import main

if __name__ == "__main__":
    sys.exit(main())
