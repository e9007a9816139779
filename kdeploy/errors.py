"""Errors the user can fix (one line, exit 2) versus bugs (tracebacks)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user caused and can fix: bad recipe, missing data, wrong file.

    ``str(error)`` is the whole message the CLI prints: one line naming the problem and the fix.
    """


class GateFailed(Exception):
    """A quality gate (parity, accuracy drop, speed-up) was missed: the CLI exits 1."""
