"""The one exception users see: a problem with their input or setup, stated in one line that names the
file or config key and what to do. Anything else escaping a job is a bug in qcal."""

from __future__ import annotations


class QcalError(Exception):
    """Bad input or setup; the message is complete on its own (no traceback is needed to act on it)."""
