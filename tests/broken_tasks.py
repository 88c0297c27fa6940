"""A task module whose import fails with an error other than ImportError (a worker test)."""

from __future__ import annotations

import os

SETTING = os.environ["OMNIQ_TEST_SETTING_THAT_IS_NEVER_SET"]


def never_runs() -> None:
    """Unreachable: importing this module raises KeyError."""
