"""``python -m benchmarks``: the side-by-side suite (see benchmarks/run.py and README.md)."""

import sys

from benchmarks.run import main

sys.exit(main())
