"""Show a JSON progress stream (pull, load, import, bootstrap) the way docker's pkg/jsonmessage does.

On a terminal, lines with an ``id`` and progress are redrawn in place (cursor movement, progress bars);
otherwise progress updates are dropped and every other message becomes one line.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from berth.cli.command import CliError
from berth.cli.render import human_size, rfc3339_nano
from berth.units import SECOND_NS, go_duration


class StreamError(CliError):
    """The daemon reported an error inside a stream that had already started (``errorDetail``); exit 1."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message, 1)
        self.code = code


def progress_bar(detail: Mapping[str, Any], width: int, now: float | None = None) -> str:
    """JSONProgress.String: ``[====>   ]  1.2MB/4.5MB 3s``, shaped by the terminal width."""
    current = int(detail.get("current") or 0)
    total = int(detail.get("total") or 0)
    units = str(detail.get("units") or "")
    if current <= 0 and total <= 0:
        return ""
    if total <= 0:
        return f"{human_size(current):>8}" if not units else f"{current} {units}"
    percentage = min(int(current / total * 100) // 2, 50)
    bar = ""
    if width > 110:
        bar = "[" + "=" * percentage + ">" + " " * max(50 - percentage, 0) + "] "
    numbers = ""
    if detail.get("hidecounts"):
        pass
    elif not units:
        numbers = f"{human_size(current):>8}/{human_size(total)}"
        if current > total:
            numbers = f"{human_size(current):>8}"
    else:
        numbers = f"{current}/{total} {units}"
        if current > total:
            numbers = f"{current} {units}"
    left = ""
    start = int(detail.get("start") or 0)
    if current > 0 and start > 0 and percentage < 50:
        elapsed = (time.time() if now is None else now) - start
        remaining = int((total - current) * (elapsed / current))
        if width > 50:
            left = " " + go_duration(max(remaining, 0) * SECOND_NS)
    return bar + numbers + left


def display(
    messages: Iterable[Mapping[str, Any]],
    out: TextIO,
    is_terminal: bool,
    on_aux: Callable[[Mapping[str, Any]], None] | None = None,
    width: int | None = None,
) -> None:
    """DisplayJSONMessagesStream: write each message; raise StreamError at the first error message."""
    if width is None:
        width = shutil.get_terminal_size((200, 24)).columns if is_terminal else 200
    ids: dict[str, int] = {}
    for msg in messages:
        if not isinstance(msg, Mapping):
            continue
        if msg.get("aux") is not None:
            if on_aux is not None:
                on_aux(msg)
            continue
        ident = str(msg.get("id") or "")
        has_progress = msg.get("progressDetail") is not None or bool(msg.get("progress"))
        diff = 0
        if ident and has_progress:
            line = ids.get(ident)
            if line is None:
                line = len(ids)
                ids[ident] = line
                if is_terminal:
                    out.write("\n")
            diff = len(ids) - line
            if is_terminal:
                out.write(f"\x1b[{diff}A")
        else:
            # a message that is not progress ends the block of lines that can be redrawn
            ids = {}
        try:
            _display_one(msg, out, is_terminal, width)
        finally:
            if ident and is_terminal and diff:
                out.write(f"\x1b[{diff}B")
        out.flush()


def _display_one(msg: Mapping[str, Any], out: TextIO, is_terminal: bool, width: int) -> None:
    """JSONMessage.Display."""
    detail = msg.get("errorDetail")
    if isinstance(detail, Mapping) and (detail.get("message") or detail.get("code")):
        raise StreamError(str(detail.get("message") or ""), int(detail.get("code") or 0))
    if msg.get("error"):
        raise StreamError(str(msg["error"]))
    progress = msg.get("progressDetail")
    bar = progress_bar(progress, width) if isinstance(progress, Mapping) else ""
    endl = ""
    stream = msg.get("stream") or ""
    if is_terminal and not stream and progress is not None:
        out.write("\x1b[2K\r")
        endl = "\r"
    elif progress is not None and bar:
        return  # progress bars only make sense on a terminal
    if msg.get("timeNano"):
        out.write(rfc3339_nano(int(msg["timeNano"]) / 1e9) + " ")
    elif msg.get("time"):
        out.write(rfc3339_nano(float(msg["time"])) + " ")
    if msg.get("id"):
        out.write(f"{msg['id']}: ")
    if msg.get("from"):
        out.write(f"(from {msg['from']}) ")
    status = msg.get("status") or ""
    if progress is not None and is_terminal:
        out.write(f"{status} {bar}{endl}")
    elif msg.get("progress"):
        out.write(f"{status} {msg['progress']}{endl}")
    elif stream:
        out.write(f"{stream}{endl}")
    else:
        out.write(f"{status}{endl}\n")
