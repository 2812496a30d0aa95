"""``python -m autowarm.bench``: the benchmark command (also ``autowarm bench``)."""

from __future__ import annotations

import sys

from autowarm.bench._cli import main

if __name__ == "__main__":
    sys.exit(main())
