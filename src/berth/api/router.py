"""Method + path → handler. Exact paths win over patterns; patterns are tried in registration order.

Patterns: ``{x}`` matches one path segment, ``{x:REGEX}`` a regex (``{name:.*}`` for image names, which
contain slashes and colons). Every route module in ``berth.api.routes`` exposes ``register(router)``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from berth.api.http import Hijack, Response, StreamResponse

Handler = Callable[..., Awaitable[Response | StreamResponse | Hijack]]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]*(?:\{[^{}]*\}[^{}]*)*))?\}")


@dataclass(frozen=True)
class _Pattern:
    method: str
    regex: re.Pattern[str]
    handler: Handler


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Turn ``/images/{name:.*}/json`` into an anchored regex with named groups."""
    out: list[str] = []
    pos = 0
    for m in _PARAM.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>{m.group(2) or '[^/]+'})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(out) + "$")


class Router:
    """Holds the route table; ``match`` finds the handler and its path parameters."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._patterns: list[_Pattern] = []

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator registering ``handler`` for ``method pattern``."""

        def register(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler

        return register

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        method = method.upper()
        if "{" not in pattern:
            if (method, pattern) in self._exact:
                raise ValueError(f"duplicate route {method} {pattern}")
            self._exact[(method, pattern)] = handler
        else:
            self._patterns.append(_Pattern(method, compile_pattern(pattern), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        """The handler and parameters for a request, or ``None`` (dockerd answers 404 for both an unknown
        path and a wrong method)."""
        method = method.upper()
        handler = self._exact.get((method, path))
        if handler is not None:
            return handler, {}
        for p in self._patterns:
            if p.method == method:
                m = p.regex.match(path)
                if m is not None:
                    return p.handler, m.groupdict()
        return None

    def routes(self) -> list[tuple[str, str]]:
        """(method, pattern) pairs, for diagnostics and tests."""
        out = [(m, p) for (m, p) in self._exact]
        out += [(p.method, p.regex.pattern) for p in self._patterns]
        return out


def build_router() -> Router:
    """The daemon's router with every route module registered."""
    from berth.api.routes import build, container_fs, containers, execs, images, logs, networks, stats, system, volumes

    router = Router()
    modules: list[Any] = [system, images, containers, logs, execs, stats, container_fs, volumes, networks, build]
    for module in modules:
        module.register(router)
    return router
