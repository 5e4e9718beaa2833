"""Container routes that need no running process: create, inspect, list, rename, remove, prune."""

from __future__ import annotations

import asyncio

from berth.api.http import Request, Response, empty, json_response
from berth.api.router import Router
from berth.engine.services import Engine
from berth.errors import InvalidArgument


def register(router: Router) -> None:
    @router.route("POST", "/containers/create")
    async def create(req: Request, engine: Engine) -> Response:
        ctype = (req.headers.get("content-type") or "").split(";")[0].strip()
        body = await req.body()
        if body.strip() and ctype and ctype != "application/json":
            raise InvalidArgument(f"unsupported Content-Type header ({ctype}): must be 'application/json'")
        doc = await req.json()
        result = await asyncio.to_thread(engine.containers.create, req.q("name"), doc)
        return json_response(result, status=201)

    @router.route("GET", "/containers/json")
    async def list_containers(req: Request, engine: Engine) -> Response:
        result = await asyncio.to_thread(
            engine.containers.list_containers,
            req.qbool("all"),
            req.qint("limit", -1),
            req.qbool("size"),
            req.qfilters(),
        )
        return json_response(result)

    @router.route("POST", "/containers/prune")
    async def prune(req: Request, engine: Engine) -> Response:
        return json_response(await asyncio.to_thread(engine.containers.prune, req.qfilters()))

    @router.route("GET", "/containers/{name}/json")
    async def inspect(req: Request, engine: Engine, name: str) -> Response:
        return json_response(await asyncio.to_thread(engine.containers.inspect, name))

    @router.route("POST", "/containers/{name}/rename")
    async def rename(req: Request, engine: Engine, name: str) -> Response:
        await asyncio.to_thread(engine.containers.rename, name, req.q("name") or "")
        return empty(204)

    @router.route("DELETE", "/containers/{name}")
    async def remove(req: Request, engine: Engine, name: str) -> Response:
        await asyncio.to_thread(engine.containers.remove, name, req.qbool("force"), req.qbool("v"))
        return empty(204)
