"""Container routes: create, inspect, list, rename, remove, prune, and the running verbs (start ... attach)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from berth.api.http import Hijack, Request, Response, StreamResponse, empty, json_line, json_response
from berth.api.router import Router
from berth.engine.services import Engine
from berth.errors import InvalidArgument

RAW = "application/vnd.docker.raw-stream"
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"


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
        await engine.runner.remove(name, req.qbool("force"), req.qbool("v"))
        return empty(204)

    @router.route("POST", "/containers/{name}/start")
    async def start(req: Request, engine: Engine, name: str) -> Response:
        await engine.runner.start(name)
        return empty(204)

    @router.route("POST", "/containers/{name}/stop")
    async def stop(req: Request, engine: Engine, name: str) -> Response:
        t = req.q("t")
        await engine.runner.stop(name, None if t in (None, "") else req.qint("t", 10), req.q("signal"))
        return empty(204)

    @router.route("POST", "/containers/{name}/restart")
    async def restart(req: Request, engine: Engine, name: str) -> Response:
        t = req.q("t")
        await engine.runner.restart(name, None if t in (None, "") else req.qint("t", 10), req.q("signal"))
        return empty(204)

    @router.route("POST", "/containers/{name}/kill")
    async def kill(req: Request, engine: Engine, name: str) -> Response:
        await engine.runner.kill(name, req.q("signal"))
        return empty(204)

    @router.route("POST", "/containers/{name}/pause")
    async def pause(req: Request, engine: Engine, name: str) -> Response:
        await engine.runner.pause(name)
        return empty(204)

    @router.route("POST", "/containers/{name}/unpause")
    async def unpause(req: Request, engine: Engine, name: str) -> Response:
        await engine.runner.unpause(name)
        return empty(204)

    @router.route("POST", "/containers/{name}/resize")
    async def resize(req: Request, engine: Engine, name: str) -> Response:
        await engine.runner.resize(name, req.qint("h", 0), req.qint("w", 0))
        return Response(status=200)

    @router.route("POST", "/containers/{name}/wait")
    async def wait(req: Request, engine: Engine, name: str) -> StreamResponse:
        waiter = await engine.runner.wait(name, req.q("condition") or "not-running")

        async def body() -> AsyncIterator[bytes]:
            yield json_line(await waiter())
        return StreamResponse(body(), eager_headers=True)

    @router.route("POST", "/containers/{name}/attach")
    async def attach(req: Request, engine: Engine, name: str) -> Hijack:
        if not req.qbool("stream") and not req.qbool("logs"):
            raise InvalidArgument("at least one of stream or logs must be set")
        _cid, tty, run = await engine.runner.attach(
            name, stdin=req.qbool("stdin"), stdout=req.qbool("stdout"), stderr=req.qbool("stderr"),
            detach_keys=req.q("detachKeys"))
        return Hijack(run, content_type=RAW if tty else MULTIPLEXED)
