"""How the docker CLI writes things: aligned tables (Go's text/tabwriter), sizes and ages (docker/go-units),
Go time formats, truncated IDs, and inspect's indented JSON. Pure functions over strings and numbers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from berth.units import bytes_size, human_duration, human_size

__all__ = ["bytes_size", "human_duration", "human_size"]


def since(unix: float, now: float) -> str:
    """Docker's CREATED column: ``HumanDuration(now - t) + " ago"``."""
    return human_duration(now - unix) + " ago"


def local_time(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC).astimezone()


def go_time_string(unix: float) -> str:
    """Go's ``time.Time.String()`` for whole seconds: ``2024-01-02 15:04:05 +0000 UTC``."""
    t = local_time(unix)
    return t.strftime("%Y-%m-%d %H:%M:%S %z ") + (t.tzname() or "")


def rfc3339(t: datetime) -> str:
    """Go's ``time.RFC3339``: seconds precision, ``Z`` for UTC."""
    offset = t.utcoffset()
    if offset is None or offset.total_seconds() == 0:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")
    zone = t.strftime("%z")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + zone[:3] + ":" + zone[3:]


def rfc3339_nano(unix: float) -> str:
    """jsonmessage's RFC3339NanoFixed in local time: ``2006-01-02T15:04:05.000000000Z07:00``."""
    t = local_time(unix)
    base = rfc3339(t)
    nanos = f".{round((unix % 1) * 1e9) % 1_000_000_000:09d}"
    return base[:19] + nanos + base[19:]


def ansic(t: datetime) -> str:
    """Go's ``time.ANSIC``: ``Mon Jan  2 15:04:05 2006``."""
    return f"{t:%a %b} {t.day:2d} {t:%H:%M:%S %Y}"


_FRACTION = re.compile(r"\.(\d{6})\d+")


def parse_rfc3339(text: str) -> datetime | None:
    """An RFC 3339 (nano) timestamp as Go writes it, or None."""
    try:
        return datetime.fromisoformat(_FRACTION.sub(r".\1", text.replace("Z", "+00:00")))
    except ValueError:
        return None


def reformat_date(text: str) -> str:
    """docker version's "Built:" line: an RFC 3339 time shown in ANSIC, anything else as given."""
    t = parse_rfc3339(text)
    return ansic(t) if t is not None else text


def short_id(ident: str) -> str:
    """stringid.TruncateID: drop the algorithm prefix, keep 12 characters."""
    _, _, hexpart = ident.rpartition(":")
    return hexpart[:12]


def ellipsis(text: str, width: int) -> str:
    """formatter.Ellipsis: cut to ``width`` characters, the last one an ellipsis."""
    if len(text) <= width:
        return text
    if width <= 0:
        return ""
    return text[: width - 1] + "…"


def tabwrite(text: str, minwidth: int = 10, padding: int = 3) -> str:
    """Go's text/tabwriter (padchar ' ', no flags): tab-terminated cells aligned per column block."""
    trailing = text.endswith("\n")
    lines = [line.split("\t") for line in (text[:-1] if trailing else text).split("\n")]
    out: list[str] = []
    _format_block(lines, 0, len(lines), [], minwidth, padding, out)
    return "\n".join(out) + ("\n" if trailing else "")


def _format_block(
    lines: list[list[str]], line0: int, line1: int, widths: list[int], minwidth: int, padding: int,
    out: list[str],
) -> None:
    column = len(widths)
    this = line0
    while this < line1:
        if column >= len(lines[this]) - 1:
            this += 1
            continue
        _write_lines(lines, line0, this, widths, out)
        line0 = this
        width = minwidth
        while this < line1 and column < len(lines[this]) - 1:
            width = max(width, len(lines[this][column]) + padding)
            this += 1
        _format_block(lines, line0, this, [*widths, width], minwidth, padding, out)
        line0 = this
    _write_lines(lines, line0, line1, widths, out)


def _write_lines(lines: list[list[str]], line0: int, line1: int, widths: list[int], out: list[str]) -> None:
    for cells in lines[line0:line1]:
        parts = [cell.ljust(widths[j]) if j < len(widths) and j < len(cells) - 1 else cell
                 for j, cell in enumerate(cells)]
        out.append("".join(parts))


def indent_json(value: Any) -> str:
    """inspect's output: 4-space indented JSON, UTF-8 kept, no trailing newline."""
    import json

    return json.dumps(value, indent=4, ensure_ascii=False)


def go_json(value: Any) -> str:
    """Go's json.Marshal: compact, map keys sorted, HTML characters escaped."""
    import json

    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def go_print(value: Any) -> str:
    """How Go's fmt prints a value in a template: ``true``, ``[a b]``, ``map[k:v]``, ``<no value>``."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, list):
        return "[" + " ".join(go_print(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_print(value[k])}" for k in sorted(value)) + "]"
    return str(value)
