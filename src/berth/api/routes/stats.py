"""Container resource routes: stats (one reading or a stream), top, and update."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from berth.api.http import Request, Response, StreamResponse, json_line, json_response, thread_stream
from berth.api.router import Router
from berth.engine.services import Engine
from berth.engine.stats import StatsService
from berth.errors import Unavailable


def _stats(engine: Engine) -> StatsService:
    if engine.stats is None:
        raise Unavailable("container stats are not available in this daemon")
    return engine.stats


def register(router: Router) -> None:
    @router.route("GET", "/containers/{name}/stats")
    async def stats(req: Request, engine: Engine, name: str) -> Response | StreamResponse:
        service = _stats(engine)
        if not req.qbool("stream", True):
            one_shot = req.qbool("one-shot")
            return json_response(await asyncio.to_thread(service.stats, name, one_shot))
        await asyncio.to_thread(engine.containers.resolve, name)  # a 404 before the headers go out

        def work(emit: Callable[[bytes], None]) -> None:
            def send(doc: dict[str, Any]) -> None:
                emit(json_line(doc))
            service.stream(name, send)
        return StreamResponse(thread_stream(work))

    @router.route("GET", "/containers/{name}/top")
    async def top(req: Request, engine: Engine, name: str) -> Response:
        return json_response(await asyncio.to_thread(_stats(engine).top, name, req.q("ps_args")))

    @router.route("POST", "/containers/{name}/update")
    async def update(req: Request, engine: Engine, name: str) -> Response:
        body = await req.json()
        return json_response(await asyncio.to_thread(_stats(engine).update, name, body))
