"""The one base class of the problems a user can fix.

Every module's user-facing error derives from `PoseopsError`; the command line catches
that one class, prints its message once (no traceback) and exits 1. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class PoseopsError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""
