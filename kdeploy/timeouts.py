"""A socket timeout for the duration of a block: downloads (datasets, model weights) fail instead of hanging."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Every new socket in the block times out after ``seconds`` per operation; the old default comes back after."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
