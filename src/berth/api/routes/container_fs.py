"""Container filesystem routes: the archive endpoints (``docker cp``), changes (``diff``), export and commit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from berth.api.http import EmitWriter, Request, Response, StreamResponse, json_response, thread_stream
from berth.api.router import Router
from berth.engine.archive import STAT_HEADER, ArchiveService
from berth.engine.commit import CommitService
from berth.engine.services import Engine
from berth.errors import InvalidArgument, Unavailable

TAR = "application/x-tar"




def _archive(engine: Engine) -> ArchiveService:
    if engine.archive is None:
        raise Unavailable("container filesystem access is not available in this daemon")
    return engine.archive


def _commits(engine: Engine) -> CommitService:
    if engine.commits is None:
        raise Unavailable("commit is not available in this daemon")
    return engine.commits


def _path(req: Request) -> str:
    path = req.q("path") or ""
    if not path:
        raise InvalidArgument("Path cannot be empty")
    return path


def register(router: Router) -> None:
    @router.route("HEAD", "/containers/{name}/archive")
    async def stat_path(req: Request, engine: Engine, name: str) -> Response:
        st = await asyncio.to_thread(_archive(engine).stat_path, name, _path(req))
        return Response(status=200, headers={STAT_HEADER: st.header_value()})

    @router.route("GET", "/containers/{name}/archive")
    async def get_archive(req: Request, engine: Engine, name: str) -> StreamResponse:
        service = _archive(engine)
        path = _path(req)
        st = await asyncio.to_thread(service.stat_path, name, path)

        def work(emit: Callable[[bytes], None]) -> None:
            out = EmitWriter(emit)
            service.get_archive(name, path, out)  # type: ignore[arg-type]
            out.flush()
        return StreamResponse(thread_stream(work), content_type=TAR, json_errors=False,
                              headers={STAT_HEADER: st.header_value()})

    @router.route("PUT", "/containers/{name}/archive")
    async def put_archive(req: Request, engine: Engine, name: str) -> Response:
        service = _archive(engine)
        path = _path(req)
        await asyncio.to_thread(service.put_archive, name, path, req.blocking_reader(),
                                no_overwrite_dir_non_dir=req.qbool("noOverwriteDirNonDir"),
                                copy_uid_gid=req.qbool("copyUIDGID"))
        return Response(status=200)

    @router.route("GET", "/containers/{name}/changes")
    async def changes(req: Request, engine: Engine, name: str) -> Response:
        result = await asyncio.to_thread(_archive(engine).changes, name)
        return json_response(result or None)  # dockerd encodes "no changes" as null

    @router.route("GET", "/containers/{name}/export")
    async def export(req: Request, engine: Engine, name: str) -> StreamResponse:
        service = _archive(engine)
        await asyncio.to_thread(engine.containers.resolve, name)  # a 404 before the headers go out

        def work(emit: Callable[[bytes], None]) -> None:
            out = EmitWriter(emit)
            service.export(name, out)  # type: ignore[arg-type]
            out.flush()
        return StreamResponse(thread_stream(work), content_type=TAR, json_errors=False)

    @router.route("POST", "/commit")
    async def commit(req: Request, engine: Engine) -> Response:
        service = _commits(engine)
        container = req.q("container") or ""
        if not container:
            raise InvalidArgument("No container specified")
        config = await req.json()
        image_id = await asyncio.to_thread(
            service.commit, container, repo=req.q("repo") or "", tag=req.q("tag") or "",
            comment=req.q("comment") or "", author=req.q("author") or "", pause=req.qbool("pause", True),
            changes=req.qall("changes"), config=config)
        return json_response({"Id": image_id}, status=201)
