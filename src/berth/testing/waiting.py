"""Waiting in tests: poll a condition until a deadline, and pick a free loopback port to publish on."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable


def until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
          ignore: tuple[type[Exception], ...] = (), interval: float = 0.05) -> Any:
    """Call ``check`` until it returns something truthy and return that; AssertionError after ``timeout`` s.

    ``ignore`` names exceptions that mean "not yet" (a port not listening yet raises OSError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s (last: {value!r})")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick; another process may take it later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
