"""Run the OmniQ benchmark suite: ``python bench/run.py [--quick]`` (or ``make bench``)."""

from __future__ import annotations

import sys
from pathlib import Path

# ``python bench/run.py`` puts bench/ (not the repository) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
