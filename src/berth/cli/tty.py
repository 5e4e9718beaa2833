"""The local terminal for ``run -it``/``exec -it``/``attach``: raw mode, its size, and resize on SIGWINCH."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any


def size(stream: Any) -> tuple[int, int] | None:
    """(rows, cols) of the terminal behind ``stream``, or None when it is not one."""
    import fcntl
    import termios

    try:
        packed = fcntl.ioctl(stream.fileno(), termios.TIOCGWINSZ, b"\0" * 8)
    except (AttributeError, OSError, ValueError):
        return None
    rows, cols = struct.unpack("HHHH", packed)[:2]
    return rows, cols


@contextlib.contextmanager
def raw_mode(stream: Any) -> Iterator[None]:
    """Put the terminal in raw mode (like moby/term.MakeRaw) and restore it afterwards, whatever happens."""
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def on_resize(resize: Callable[[], None]) -> Iterator[None]:
    """Call ``resize`` (in a thread: it talks HTTP) whenever the window changes size."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=_quietly, args=(resize,), daemon=True).start()

    previous = signal.signal(signal.SIGWINCH, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def _quietly(fn: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):
        fn()


def is_terminal(stream: Any) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
