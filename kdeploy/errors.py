"""Errors the user can fix (one line, exit 2) versus bugs (tracebacks)."""

from __future__ import annotations

import errno


class UserError(Exception):
    """A problem the user caused and can fix: bad recipe, missing data, wrong file.

    ``str(error)`` is the whole message the CLI prints: one line naming the problem and the fix.
    """


class GateFailed(Exception):
    """A quality gate (parity, accuracy drop, speed-up) was missed: the CLI exits 1."""


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when the message is empty), at most ``limit``
    characters: what one-line errors and manifest reasons quote from a library's multi-line message."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return text.splitlines()[0][:limit]


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


def os_error_message(exc: OSError) -> str | None:
    """One line for a file-system error a user can fix (disk full, read-only or wrong folder), else None (a bug)."""
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_SPACE:
        return f"cannot write {where}: {reason}; free disk space or choose a folder on another disk (--out DIR)"
    if exc.errno in _NOT_WRITABLE:
        return f"cannot access {where}: {reason}; check the path and its permissions, or choose another folder"
    return None
