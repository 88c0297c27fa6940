"""OmniQ benchmarks: ``python bench/run.py`` (``--quick`` for a smoke-sized run)."""
