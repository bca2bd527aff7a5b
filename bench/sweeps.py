"""`python -m bench.sweeps`: blind-sweep selection on held-out patients (quantize.sweeps)."""

from __future__ import annotations

import sys

from quantize.sweeps import main

if __name__ == "__main__":
    sys.exit(main())
