"""A module whose import has a side effect: a worker must never import it.

When ``OMNIQ_HARDENING_IMPORT_MARKER`` names a file, importing this module
appends a line to it. The allow-list tests enqueue ``tests.hardening.
import_tripwire:run`` and check that the file stays absent.
"""

from __future__ import annotations

import os

from tests.hardening.tasks import append_line

_MARKER = os.environ.get("OMNIQ_HARDENING_IMPORT_MARKER")
if _MARKER:
    append_line(_MARKER, "imported")


def run(*_args: object) -> str:
    """Would run if a worker imported and called it."""
    return "ran"
