"""System routes: ``/_ping``, ``/version``, ``/info``, ``/events``, ``/auth`` (registry login)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from berth.api.http import Request, Response, StreamResponse, json_line, json_response
from berth.api.router import Router
from berth.engine.services import Engine
from berth.errors import InvalidArgument, NotImplementedYet

_PING_HEADERS = {
    "Builder-Version": "1",
    "Swarm": "inactive",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
}
_TEXT = "text/plain; charset=utf-8"
_TIMESTAMP = re.compile(r"^-?[0-9]+(\.[0-9]{1,9})?$")


def parse_event_time(name: str, value: str | None) -> float | None:
    """``since``/``until``: unix seconds with an optional fraction, the only form dockerd parses."""
    if value is None or value == "":
        return None
    if not _TIMESTAMP.match(value.strip()):
        raise InvalidArgument(f"invalid value for {name}: {value!r} is not a unix timestamp")
    return float(value.strip())


def register(router: Router) -> None:
    @router.route("GET", "/_ping")
    async def ping(req: Request, engine: Engine) -> Response:
        return Response(body=b"OK", content_type=_TEXT, headers=dict(_PING_HEADERS))

    @router.route("HEAD", "/_ping")
    async def ping_head(req: Request, engine: Engine) -> Response:
        return Response(body=b"", content_type=_TEXT, headers=dict(_PING_HEADERS))

    @router.route("POST", "/auth")
    async def auth(req: Request, engine: Engine) -> Response:
        if engine.registry is None:
            raise NotImplementedYet("this daemon has no registry client")
        body = await req.json()
        return json_response(await asyncio.to_thread(engine.registry.login, body))

    @router.route("GET", "/version")
    async def version(req: Request, engine: Engine) -> Response:
        return json_response(engine.system.version())

    @router.route("GET", "/info")
    async def info(req: Request, engine: Engine) -> Response:
        images = engine.images.count() if engine.images is not None else 0
        c = engine.containers.counts() if engine.containers is not None else {}
        return json_response(
            engine.system.info(
                images=images,
                containers=c.get("containers", 0),
                running=c.get("running", 0),
                paused=c.get("paused", 0),
                stopped=c.get("stopped", 0),
            )
        )

    @router.route("GET", "/events")
    async def events(req: Request, engine: Engine) -> StreamResponse:
        since = parse_event_time("since", req.q("since"))
        until = parse_event_time("until", req.q("until"))
        if until is not None and since is not None and until < since:
            raise InvalidArgument(
                f"`since` time ({req.q('since')}) cannot be after `until` time ({req.q('until')})"
            )
        # subscribe before the headers go out: a client that acts once it has them misses nothing
        subscription = engine.events.subscribe(since, until, req.qfilters())

        async def lines() -> AsyncIterator[bytes]:
            async for event in subscription:
                yield json_line(event.to_json())

        return StreamResponse(lines(), eager_headers=True)
