"""Volume routes: list, create, inspect, remove, prune (``/volumes``)."""

from __future__ import annotations

import asyncio
from typing import Any

from berth.api.http import Request, Response, empty, json_response
from berth.api.router import Router
from berth.engine.services import Engine
from berth.engine.volumes import VolumeService
from berth.errors import InvalidArgument, NotImplementedYet


def _service(engine: Engine) -> VolumeService:
    if engine.volumes is None:
        raise NotImplementedYet("volumes are not available in this daemon")
    return engine.volumes


def _str_map(body: dict[str, Any], key: str) -> dict[str, str]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidArgument(f"invalid {key}: must be an object of strings")
    return dict(value)


def register(router: Router) -> None:
    @router.route("GET", "/volumes")
    async def list_volumes(req: Request, engine: Engine) -> Response:
        return json_response(await asyncio.to_thread(_service(engine).list_volumes, req.qfilters()))

    @router.route("POST", "/volumes/create")
    async def create(req: Request, engine: Engine) -> Response:
        body = await req.json() or {}
        if not isinstance(body, dict):
            raise InvalidArgument("invalid JSON: the volume configuration must be an object")
        name, driver = body.get("Name") or "", body.get("Driver") or ""
        if not isinstance(name, str) or not isinstance(driver, str):
            raise InvalidArgument("invalid JSON: Name and Driver must be strings")
        result = await asyncio.to_thread(_service(engine).create, name, driver, _str_map(body, "DriverOpts"),
                                         _str_map(body, "Labels"))
        return json_response(result, status=201)

    @router.route("POST", "/volumes/prune")
    async def prune(req: Request, engine: Engine) -> Response:
        return json_response(await asyncio.to_thread(_service(engine).prune, req.qfilters()))

    @router.route("GET", "/volumes/{name}")
    async def inspect(req: Request, engine: Engine, name: str) -> Response:
        return json_response(await asyncio.to_thread(_service(engine).inspect, name))

    @router.route("DELETE", "/volumes/{name}")
    async def remove(req: Request, engine: Engine, name: str) -> Response:
        await asyncio.to_thread(_service(engine).remove, name, req.qbool("force"))
        return empty(204)
