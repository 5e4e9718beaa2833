"""Build routes: ``POST /build`` (the classic builder, version 1) and ``POST /build/prune``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

from berth.api.http import Request, Response, StreamResponse, json_line, json_response, thread_stream
from berth.api.router import Router
from berth.api.routes.images import open_url
from berth.engine.build import BuildOptions, StepFailed
from berth.engine.services import Engine
from berth.errors import InvalidArgument, NotImplementedYet
from berth.oci.reference import parse
from berth.units import parse_go_duration


def register(router: Router) -> None:
    @router.route("POST", "/build")
    async def build(req: Request, engine: Engine) -> StreamResponse:
        if engine.builds is None:
            raise NotImplementedYet("this daemon has no builder")
        opts = build_options(req)
        remote = req.q("remote") or ""
        if remote and not remote.startswith(("http://", "https://")):
            raise InvalidArgument(f"unsupported remote build context {remote!r}: berth builds from a tar or an "
                                  "http(s) URL of a tar or Dockerfile, not from git")
        body = await asyncio.to_thread(open_url, remote) if remote else req.blocking_reader()
        loop = asyncio.get_running_loop()
        builds = engine.builds

        def work(emit: Any) -> None:
            def message(msg: dict[str, Any]) -> None:
                emit(json_line(msg))
            try:
                builds.build(body, opts, message, loop, alive=lambda: emit(b""))  # emit raises once the client left
            except StepFailed as e:  # the CLI exits with the RUN step's code
                message({"errorDetail": {"code": e.code, "message": e.message}, "error": e.message})
        return StreamResponse(thread_stream(work))

    @router.route("POST", "/build/prune")
    async def prune(req: Request, engine: Engine) -> Response:
        # the classic builder's layer cache is its intermediate images (docker image prune); this prunes the
        # RUN --mount=type=cache directories
        until_s = _prune_until(req.qfilters())
        keep = req.qint("keep-storage", 0)
        if engine.builds is None:
            return json_response({"CachesDeleted": None, "SpaceReclaimed": 0})
        return json_response(await asyncio.to_thread(engine.builds.prune, until_s, keep))


def _prune_until(filters: dict[str, list[str]]) -> float:
    """moby builder-next ``toBuildkitPruneInfo``: ``until`` (or the older ``unused-for``) is one Go duration."""
    until, unused_for = filters.get("until", []), filters.get("unused-for", [])
    if until and unused_for:
        raise InvalidArgument("conflicting filters: \"until\" and \"unused-for\"")
    key = "unused-for" if unused_for else "until"
    values = until + unused_for
    if not values:
        return 0.0
    if len(values) > 1:
        raise InvalidArgument("filters expect only one value")
    ns = parse_go_duration(values[0])
    if ns is None:
        raise InvalidArgument(f"\"{key}\" filter expects a duration (e.g., '24h'): time: invalid duration "
                              f"\"{values[0]}\"")
    return ns / 1e9


def build_options(req: Request) -> BuildOptions:
    """The query of ``POST /build`` checked up front, so that bad input is a plain 400 before any output."""
    if (req.q("version") or "1") == "2":
        raise InvalidArgument("BuildKit (builder version 2) is not supported by berth: use the classic builder "
                              "(DOCKER_BUILDKIT=0)")
    tags = tuple(req.qall("t"))
    for tag in tags:
        ref = parse(tag)
        if ref.digest is not None:
            raise InvalidArgument(f"invalid reference format: {tag} (a digest cannot be a build tag)")
    buildargs = _json_object(req.q("buildargs"), "buildargs")
    labels = _json_object(req.q("labels"), "labels")
    return BuildOptions(
        tags=tags, dockerfile=req.q("dockerfile") or "Dockerfile",
        buildargs={str(k): (None if v is None else str(v)) for k, v in buildargs.items()},
        labels={str(k): str(v) for k, v in labels.items()},
        nocache=req.qbool("nocache"), pull=req.qbool("pull"), quiet=req.qbool("q"),
        rm=req.qbool("rm", True), forcerm=req.qbool("forcerm"), target=req.q("target") or "",
        network_mode=req.q("networkmode") or "", extra_hosts=tuple(req.qall("extrahosts")),
        shm_size=req.qint("shmsize", 0), memory=req.qint("memory", 0), memswap=req.qint("memswap", 0),
        cpu_shares=req.qint("cpushares", 0), cpuset_cpus=req.q("cpusetcpus") or "",
        cpu_period=req.qint("cpuperiod", 0), cpu_quota=req.qint("cpuquota", 0), platform=req.q("platform") or "",
        registry_auth=_registry_config(req.headers.get("x-registry-config")),
    )


def _json_object(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidArgument(f"error reading {what}: invalid JSON") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"error reading {what}: expected a JSON object")
    return value


def _registry_config(value: str | None) -> dict[str, Any]:
    """``X-Registry-Config``: base64url JSON of auth configs by registry; dockerd ignores what it cannot decode."""
    if not value:
        return {}
    text = value.strip()
    try:
        doc = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) or b"{}")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return {}
    return {str(k): v for k, v in doc.items() if isinstance(v, dict)} if isinstance(doc, dict) else {}
