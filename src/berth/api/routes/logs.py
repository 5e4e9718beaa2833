"""``GET /containers/{name}/logs``: the stored output of a container, framed, optionally followed (engine-api §8)."""

from __future__ import annotations

from berth.api.http import Request, StreamResponse
from berth.api.router import Router
from berth.engine.logs import parse_log_time, parse_tail
from berth.engine.services import Engine


def register(router: Router) -> None:
    @router.route("GET", "/containers/{name}/logs")
    async def logs(req: Request, engine: Engine, name: str) -> StreamResponse:
        stream = await engine.logs.logs(
            name,
            follow=req.qbool("follow"),
            stdout=req.qbool("stdout"),
            stderr=req.qbool("stderr"),
            since=parse_log_time(req.q("since")),
            until=parse_log_time(req.q("until")),
            timestamps=req.qbool("timestamps"),
            tail=parse_tail(req.q("tail")),
            details=req.qbool("details"),
        )
        # headers at once, before any line exists (dockerd does so on purpose, moby#47448); a failure mid-way
        # cuts the connection, since a log stream has no in-band error format
        return StreamResponse(stream.chunks, content_type=stream.content_type(req.api_version), json_errors=False,
                              eager_headers=True)
