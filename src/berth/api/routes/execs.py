"""Exec routes: create an exec in a container, start it (hijacked stream or detached), inspect, resize."""

from __future__ import annotations

import asyncio

from berth.api.http import Hijack, Request, Response, empty, json_response
from berth.api.router import Router
from berth.engine.execs import ExecService
from berth.engine.services import Engine
from berth.errors import InvalidArgument, Unavailable

RAW = "application/vnd.docker.raw-stream"
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
EXEC_SETTLE_S = 0.005


def _execs(engine: Engine) -> ExecService:
    if engine.execs is None:
        raise Unavailable("exec is not available in this daemon")
    return engine.execs


def register(router: Router) -> None:
    @router.route("POST", "/containers/{name}/exec")
    async def create(req: Request, engine: Engine, name: str) -> Response:
        return json_response(await _execs(engine).create(name, await req.json()), status=201)

    @router.route("POST", "/exec/{eid}/start")
    async def start(req: Request, engine: Engine, eid: str) -> Response | Hijack:
        body = await req.json() or {}
        if not isinstance(body, dict):
            raise InvalidArgument("invalid JSON: the exec start configuration must be an object")
        detach = bool(body.get("Detach"))
        run = await _execs(engine).start(eid, detach=detach, console_size=body.get("ConsoleSize"))
        if run is None:
            return empty(200)
        # dockerd picks the content type from the start body's Tty; the framing follows the exec's own Tty
        old_api = tuple(int(p) if p.isdigit() else 0 for p in req.api_version.split(".")) < (1, 42)
        # starting the process (fork, setns, exec: 8+ ms) is most of the pause docker-py needs after the header
        return Hijack(run, content_type=RAW if body.get("Tty") or old_api else MULTIPLEXED, settle_s=EXEC_SETTLE_S)

    @router.route("GET", "/exec/{eid}/json")
    async def inspect(req: Request, engine: Engine, eid: str) -> Response:
        return json_response(await asyncio.to_thread(_execs(engine).inspect, eid))

    @router.route("POST", "/exec/{eid}/resize")
    async def resize(req: Request, engine: Engine, eid: str) -> Response:
        await _execs(engine).resize(eid, req.qint("h", 0), req.qint("w", 0))
        return Response(status=200)
