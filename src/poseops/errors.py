"""The one base class of the problems a user can fix.

Every module's user-facing error derives from `PoseopsError`; the command line catches
that one class, prints its message once (no traceback) and exits 1. Anything else is a
bug and keeps its traceback. Its message never holds a secret poseops knows of
(`poseops.settings.redact`), even when it quotes a server that echoed one back, so
neither the terminal nor a store that keeps errors (Prefect's database) gets one.
"""

from __future__ import annotations


class PoseopsError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""

    def __init__(self, *args: object) -> None:
        from poseops.settings import redact

        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))
