"""``python -m omniq``: the same as the ``omniq`` command."""

from __future__ import annotations

import sys

from omniq.cli import main

sys.exit(main())
