"""Network routes: list, inspect, create, remove, prune, connect, disconnect (``/networks``)."""

from __future__ import annotations

import asyncio

from berth.api.http import Request, Response, empty, json_response
from berth.api.router import Router
from berth.engine.networks import NetworkService
from berth.engine.services import Engine
from berth.errors import InvalidArgument, NotImplementedYet


def _service(engine: Engine) -> NetworkService:
    if engine.networks is None:
        raise NotImplementedYet("networks are not available in this daemon")
    return engine.networks


def register(router: Router) -> None:
    @router.route("GET", "/networks")
    async def list_networks(req: Request, engine: Engine) -> Response:
        return json_response(await asyncio.to_thread(_service(engine).list_networks, req.qfilters()))

    @router.route("POST", "/networks/create")
    async def create(req: Request, engine: Engine) -> Response:
        body = await req.json()
        return json_response(await asyncio.to_thread(_service(engine).create, body), status=201)

    @router.route("POST", "/networks/prune")
    async def prune(req: Request, engine: Engine) -> Response:
        return json_response(await asyncio.to_thread(_service(engine).prune, req.qfilters()))

    @router.route("GET", "/networks/{ref}")
    async def inspect(req: Request, engine: Engine, ref: str) -> Response:
        return json_response(await asyncio.to_thread(_service(engine).inspect, ref))

    @router.route("DELETE", "/networks/{ref}")
    async def remove(req: Request, engine: Engine, ref: str) -> Response:
        await asyncio.to_thread(_service(engine).remove, ref)
        return empty(204)

    async def _container_locked(engine: Engine, body: object, verb: str, ref: str) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("Container"), str):
            raise InvalidArgument(f"invalid {verb} request: Container is required")
        cid, _name, _doc = await asyncio.to_thread(engine.containers.resolve, body["Container"])
        # under the container's lock: a start or an exit must not race the hot-plug
        async with engine.runner.lock(cid):
            fn = _service(engine).connect if verb == "connect" else _service(engine).disconnect
            await asyncio.to_thread(fn, ref, {**body, "Container": cid})

    @router.route("POST", "/networks/{ref}/connect")
    async def connect(req: Request, engine: Engine, ref: str) -> Response:
        await _container_locked(engine, await req.json(), "connect", ref)
        return empty(200)

    @router.route("POST", "/networks/{ref}/disconnect")
    async def disconnect(req: Request, engine: Engine, ref: str) -> Response:
        await _container_locked(engine, await req.json(), "disconnect", ref)
        return empty(200)
