"""Image routes: list, inspect, history, tag, remove, prune, load, save, import, pull, push, distribution, system df,
and berth's bootstrap."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any, BinaryIO

from berth.api.http import EmitWriter, Request, Response, StreamResponse, empty, json_line, json_response, thread_stream
from berth.api.router import Router
from berth.engine import system
from berth.engine.registry import RegistryService, decode_auth_header
from berth.engine.services import Engine
from berth.errors import InvalidArgument, NotImplementedYet, Unavailable

TAR = "application/x-tar"




def register(router: Router) -> None:
    @router.route("GET", "/images/json")
    async def list_images(req: Request, engine: Engine) -> Response:
        result = await asyncio.to_thread(engine.images.list_images, req.qfilters(), req.qbool("all"),
                                         req.qbool("digests"))
        return json_response(result)

    @router.route("GET", "/images/get")
    async def save_many(req: Request, engine: Engine) -> StreamResponse:
        return await _save(engine, req.qall("names"))

    @router.route("POST", "/images/load")
    async def load(req: Request, engine: Engine) -> StreamResponse:
        quiet = req.qbool("quiet", True)
        body = req.blocking_reader()

        def work(emit: Any) -> None:
            engine.images.load(body, lambda msg: emit(json_line(msg)), quiet=quiet)
        return StreamResponse(thread_stream(work))

    @router.route("POST", "/images/create")
    async def create(req: Request, engine: Engine) -> Response | StreamResponse:
        src = req.q("fromSrc")
        if src is None:
            return await _pull(req, engine)
        return await _import(req, engine, src)

    @router.route("POST", "/images/{name:.*}/push")
    async def push(req: Request, engine: Engine, name: str) -> StreamResponse:
        registry = _registry(engine)
        auth = decode_auth_header(req.headers.get("x-registry-auth"))
        tag = req.q("tag") or ""

        def work(emit: Any) -> None:
            registry.push(name, tag, auth, lambda msg: emit(json_line(msg)))
        return StreamResponse(thread_stream(work))

    @router.route("GET", "/distribution/{name:.*}/json")
    async def distribution(req: Request, engine: Engine, name: str) -> Response:
        registry = _registry(engine)
        auth = decode_auth_header(req.headers.get("x-registry-auth"))
        return json_response(await asyncio.to_thread(registry.distribution, name, auth))

    @router.route("POST", "/images/prune")
    async def prune(req: Request, engine: Engine) -> Response:
        return json_response(await asyncio.to_thread(engine.images.prune, req.qfilters()))

    @router.route("GET", "/system/df")
    async def disk_usage(req: Request, engine: Engine) -> Response:
        images = await asyncio.to_thread(engine.images.disk_usage)
        containers = await asyncio.to_thread(engine.containers.list_containers, True, -1, True)
        volumes = await asyncio.to_thread(engine.volumes.disk_usage) if engine.volumes is not None else []
        cache = await asyncio.to_thread(engine.builds.cache_usage) if engine.builds is not None else []
        return json_response(system.disk_usage(images, containers, volumes, cache))

    @router.route("POST", "/berth/images/bootstrap")
    async def bootstrap(req: Request, engine: Engine) -> StreamResponse:
        name = req.q("image") or req.q("name")
        if not name:
            raise InvalidArgument("image is required (e.g. busybox, debian:bookworm, python:3.11)")

        def work(emit: Any) -> None:
            engine.images.bootstrap(name, lambda msg: emit(json_line(msg)))
        return StreamResponse(thread_stream(work))

    @router.route("GET", "/images/{name:.*}/json")
    async def inspect(req: Request, engine: Engine, name: str) -> Response:
        return json_response(await asyncio.to_thread(engine.images.inspect, name))

    @router.route("GET", "/images/{name:.*}/history")
    async def history(req: Request, engine: Engine, name: str) -> Response:
        return json_response(await asyncio.to_thread(engine.images.history, name))

    @router.route("GET", "/images/{name:.*}/get")
    async def save_one(req: Request, engine: Engine, name: str) -> StreamResponse:
        return await _save(engine, [name])

    @router.route("POST", "/images/{name:.*}/tag")
    async def tag(req: Request, engine: Engine, name: str) -> Response:
        await asyncio.to_thread(engine.images.tag, name, req.q("repo") or "", req.q("tag"))
        return empty(201)

    @router.route("DELETE", "/images/{name:.*}")
    async def remove(req: Request, engine: Engine, name: str) -> Response:
        result = await asyncio.to_thread(engine.images.remove, name, req.qbool("force"), req.qbool("noprune"))
        return json_response(result)


async def _save(engine: Engine, names: list[str]) -> StreamResponse:
    await asyncio.to_thread(engine.images.check_exists, names)

    def work(emit: Any) -> None:
        out = EmitWriter(emit)
        engine.images.save(names, out)  # type: ignore[arg-type]
        out.flush()
    return StreamResponse(thread_stream(work), content_type=TAR, json_errors=False)


def _registry(engine: Engine) -> RegistryService:
    if engine.registry is None:
        raise NotImplementedYet("this daemon has no registry client")
    return engine.registry


async def _pull(req: Request, engine: Engine) -> StreamResponse:
    registry = _registry(engine)
    image = req.q("fromImage") or ""
    if not image:
        raise InvalidArgument("fromImage or fromSrc is required")
    auth = decode_auth_header(req.headers.get("x-registry-auth"))
    tag = req.q("tag") or ""
    platform = req.q("platform") or ""

    def work(emit: Any) -> None:
        registry.pull(image, tag, auth, platform, lambda msg: emit(json_line(msg)))
    return StreamResponse(thread_stream(work))


async def _import(req: Request, engine: Engine, src: str) -> StreamResponse:
    repo = req.q("repo") or ""
    tag = req.q("tag") or ""
    changes = req.qall("changes")
    message = req.q("message") or ""
    body: BinaryIO
    if src == "-":
        body = req.blocking_reader()
    elif src.startswith(("http://", "https://")):
        body = await asyncio.to_thread(open_url, src)
    else:
        raise InvalidArgument(f"unsupported import source {src!r}: give - (the request body) or an http(s) URL")

    def work(emit: Any) -> None:
        try:
            image_id = engine.images.import_(body, repo, tag, changes, message, src)
        finally:
            body.close()
        emit(json_line({"status": image_id}))
    return StreamResponse(thread_stream(work))


def open_url(url: str) -> BinaryIO:
    """A URL's body (import and build from a URL); unreachable is Docker's "Get ..." error."""
    try:
        return urllib.request.urlopen(url, timeout=30)  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError) as e:
        raise Unavailable(f"Get \"{url}\": {getattr(e, 'reason', e)}") from None
