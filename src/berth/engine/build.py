"""Dockerfile builds: dockerd's classic builder (``POST /build``, builder version 1).

Each instruction makes an image on top of the previous one, as the classic builder does: RUN runs in a container
(``ContainerRunner``) whose changes become a layer; COPY/ADD write into a created container's tree
(``ArchiveService``) and commit it; the other instructions change only the config (an ``empty_layer`` history
entry). Every step's image records its parent and a cache key, so the next build with the same parent and key
reuses it (``ImageDB.cached``); when a step misses, the build says why ("Cache miss: ..."), which Docker does not.

The build runs in a worker thread (the route's ``thread_stream``); container verbs that live on the event loop are
called through ``asyncio.run_coroutine_threadsafe``. Output is dockerd's stream (``{"stream": ...}`` lines,
``{"aux": {"ID": ...}}``, ``errorDetail`` with the RUN exit code) so the docker CLI and docker-py read it unchanged.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import copy
import datetime
import email.message
import hashlib
import json
import logging
import os
import posixpath
import queue
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import berth.build.context as build_context
import berth.build.dockerfile as df
import berth.build.mounts as run_mounts
from berth.engine.archive import ArchiveService, canonical
from berth.engine.commit import CommitService
from berth.engine.containers import ContainerService
from berth.engine.images import ImageService
from berth.engine.registry import RegistryService, credentials_from, registry_domain
from berth.engine.running import ContainerRunner
from berth.errors import BerthError, InvalidArgument, NoSuchImage, NotFound, NotImplementedYet
from berth.oci.reference import parse
from berth.runtime.users import parse_group, parse_passwd, read_in_root

log = logging.getLogger("berth.engine.build")

T = TypeVar("T")
Emit = Callable[[dict[str, Any]], None]

DEFAULT_SHELL = ("/bin/sh", "-c")
# build args Docker accepts without an ARG line; passed to RUN, kept out of the image and the cache key
BUILTIN_ARGS = frozenset({"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
                          "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"})
_CONFIG_ONLY = frozenset({"env", "label", "cmd", "entrypoint", "expose", "volume", "user", "workdir", "arg",
                          "shell", "stopsignal", "healthcheck", "onbuild", "maintainer"})
_EMPTY_CREATED = "1970-01-01T00:00:00Z"  # the zero-layer base of a scratch stage: the same ID every build


@dataclass(frozen=True)
class BuildOptions:
    """The query of ``POST /build`` (engine-api.md §11.2), parsed by the route."""

    tags: tuple[str, ...] = ()
    dockerfile: str = "Dockerfile"
    buildargs: Mapping[str, str | None] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    nocache: bool = False
    pull: bool = False
    quiet: bool = False
    rm: bool = True
    forcerm: bool = False
    target: str = ""
    network_mode: str = ""
    extra_hosts: tuple[str, ...] = ()
    shm_size: int = 0
    memory: int = 0
    memswap: int = 0
    cpu_shares: int = 0
    cpuset_cpus: str = ""
    cpu_period: int = 0
    cpu_quota: int = 0
    platform: str = ""
    registry_auth: Mapping[str, Any] = field(default_factory=dict)  # X-Registry-Config, by registry host


class StepFailed(BerthError):
    """A RUN step exited non-zero: dockerd's message, and the code the CLI exits with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Stage:
    """Where a stage stands: its current image and config, the ARGs in scope, whether CMD was set here."""

    index: int
    name: str | None
    image: str                              # "" = scratch, nothing committed yet
    config: dict[str, Any]
    args: dict[str, str | None] = field(default_factory=dict)
    cmd_set: bool = False
    author: str = ""                        # MAINTAINER, kept for the stage's later images
    rebuilt: bool = False                   # a step of this stage already missed the cache

    def env(self) -> dict[str, str]:
        """What ``$VAR`` expands to: the stage's ARGs, then ENV over them (Docker's precedence)."""
        out = {k: v for k, v in self.args.items() if v is not None}
        for item in self.config.get("Env") or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out


class _Output:
    """The build's stream: each message goes out at once, or is held back under ``-q`` (shown on error only)."""

    def __init__(self, emit: Emit, quiet: bool) -> None:
        self._emit = emit
        self.quiet = quiet
        self.held: list[dict[str, Any]] = []

    def __call__(self, text: str) -> None:
        self.message({"stream": text})

    def message(self, msg: dict[str, Any]) -> None:
        if self.quiet:
            self.held.append(msg)
        else:
            self._emit(msg)

    def final(self, msg: dict[str, Any]) -> None:
        self._emit(msg)

    def flush_held(self) -> None:
        for msg in self.held:
            self._emit(msg)
        self.held = []


class _RunSink:
    """The hijacked-stream side of an attach, for a RUN step: multiplexed frames in, text out to a queue."""

    def __init__(self, out: queue.Queue[bytes | None]) -> None:
        self._out = out
        self._buf = b""

    async def read(self, n: int = 65536) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= 8:
            size = int.from_bytes(self._buf[4:8], "big")
            if len(self._buf) < 8 + size:
                return
            self._out.put(self._buf[8:8 + size])
            self._buf = self._buf[8 + size:]

    async def drain(self) -> None:
        return None

    def close_write(self) -> None:
        return None


class BuildService:
    """Runs builds (blocking; from a worker thread, with the event loop that the container verbs live on)."""

    def __init__(self, images: ImageService, containers: ContainerService, runner: ContainerRunner,
                 archive: ArchiveService, commits: CommitService, registry: RegistryService | None,
                 scratch: Path, cache_mounts: run_mounts.CacheMounts | None = None) -> None:
        self.images = images
        self.store = images.store
        self.containers = containers
        self.runner = runner
        self.archive = archive
        self.commits = commits
        self.registry = registry
        self.scratch = scratch
        self.cache_mounts = cache_mounts  # RUN --mount=type=cache directories (<data-root>/build-cache)
        self._held: collections.Counter[str] = collections.Counter()
        self._held_lock = threading.Lock()
        images.held = self.held_images

    # --- the whole build -------------------------------------------------------------------------------

    def build(self, body: Any, opts: BuildOptions, emit: Emit, loop: asyncio.AbstractEventLoop,
              alive: Callable[[], None] = lambda: None) -> str:
        """Build from the request body (a context tar or a Dockerfile); returns the image ID.

        ``alive`` raises once the client has gone; the build calls it while a RUN step is silent, so that a
        disconnected client's build stops and its container goes (dockerd cancels the build's context)."""
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=self.scratch))
        out = _Output(emit, opts.quiet)
        try:
            ctx = build_context.open_context(body, workdir, opts.dockerfile or "Dockerfile")
            parsed = df.parse(ctx.dockerfile, name=ctx.dockerfile_name)
            run = _Build(self, opts, out, loop, ctx.root, parsed, alive)
            try:
                image_id = run.build()
            except BerthError as e:
                if not out.quiet or not out.held:
                    raise
                out.flush_held()  # -q: dockerd shows what it held back, then the error
                raise e from None
            finally:
                self._release(run.holding)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return image_id

    def hold(self, image_id: str) -> None:
        """Keep ``image_id`` from ``image prune`` and from a ``rmi`` cascade while a build stands on it."""
        with self._held_lock:
            self._held[image_id] += 1

    def _release(self, image_ids: Iterable[str]) -> None:
        with self._held_lock:
            for image_id in image_ids:
                self._held[image_id] -= 1
                if self._held[image_id] <= 0:
                    del self._held[image_id]

    def held_images(self) -> frozenset[str]:
        """The images running builds stand on (their bases and every step's image so far)."""
        with self._held_lock:
            return frozenset(self._held)

    # --- small verbs the steps use -------------------------------------------------------------------

    def call(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def prune(self, until_s: float = 0.0, keep_bytes: int = 0) -> dict[str, Any]:
        """``POST /build/prune``: the RUN cache mounts no step holds (the classic builder's own cache is its
        intermediate images, which ``image prune`` removes); buildkit prunes cache mounts with or without ``all``."""
        removed = self.cache_mounts.prune(until_s, keep_bytes) if self.cache_mounts is not None else []
        return {"CachesDeleted": [u.name for u in removed] or None,
                "SpaceReclaimed": sum(u.size for u in removed)}

    def cache_usage(self) -> list[dict[str, Any]]:
        """``GET /system/df``'s ``BuildCache`` rows (buildkit's ``client.UsageInfo`` as dockerd answers it)."""
        if self.cache_mounts is None:
            return []
        return [{"ID": u.name, "Parents": None, "Type": "exec.cachemount", "Description":
                 f"cached mount {u.id} from exec", "InUse": u.in_use, "Shared": False, "Size": u.size,
                 "CreatedAt": _rfc3339(u.created), "LastUsedAt": _rfc3339(u.last_used), "UsageCount": 1}
                for u in self.cache_mounts.usage()]

    def resolve_image(self, name: str, opts: BuildOptions, out: _Output) -> str:
        """FROM's image: local, else pulled (always pulled with ``--pull``), as dockerd's classic builder."""
        if not opts.pull:
            with contextlib.suppress(NoSuchImage, NotFound):
                return self.store.resolve(name).id
        if self.registry is None:
            raise NoSuchImage(name)
        ref = parse(name)
        auth_doc = None
        for server, doc in opts.registry_auth.items():
            with contextlib.suppress(InvalidArgument):
                if registry_domain(server) == ref.domain:
                    auth_doc = doc
        try:
            return self.registry.pull(name, "", credentials_from(auth_doc), opts.platform, out.message)
        except BerthError as e:
            if not opts.pull:
                raise
            # --pull with an image that exists locally and a registry that cannot be reached: dockerd fails too,
            # but berth usually runs with no registry at hand, so a local image still serves
            with contextlib.suppress(NoSuchImage, NotFound):
                found = self.store.resolve(name).id
                out(f" ---> [Warning] could not pull {name} ({e}); using the local image\n")
                return found
            raise


class _Build:
    """One build's state: the stages built so far and the step counter."""

    def __init__(self, svc: BuildService, opts: BuildOptions, out: _Output, loop: asyncio.AbstractEventLoop,
                 context_root: Path, parsed: df.Dockerfile, alive: Callable[[], None] = lambda: None) -> None:
        self.svc = svc
        self.alive = alive
        self.opts = opts
        self.out = out
        self.loop = loop
        self.context_root = context_root
        self.df = parsed
        self.step = 0
        self.total = 0
        self.consumed: set[str] = set()
        self.global_args: dict[str, str | None] = {}
        self.stage_images: dict[int, str] = {}
        self.stage_names: dict[str, int] = {}
        self.live: set[str] = set()   # containers this build made and has not removed yet
        self.holding: set[str] = set()  # images it stands on, kept from prune until it ends
        self.empty_base = ""

    def build(self) -> str:
        last = self.df.stage_index(self.opts.target) if self.opts.target else len(self.df.stages) - 1
        self.total = self.df.steps(last) + (1 if self.opts.labels else 0)
        try:
            for instr in self.df.global_args:
                self._announce(instr)
                for name, default in df.arg_decls(instr, self._global_env(), self.df.escape):  # ARG A=1 B=2
                    self.global_args[name] = self._arg_value(name, default)
            stage: _Stage | None = None
            for st in self.df.stages[: last + 1]:
                stage = self._from(st)
                for instr in st.instructions:
                    self._announce(instr)
                    self._dispatch(stage, instr)
                if st.index == last and self.opts.labels:
                    self.step += 1
                    text = "LABEL " + " ".join(f'"{k}"="{v}"' for k, v in self.opts.labels.items())
                    self.out(f"Step {self.step}/{self.total} : {text}\n")
                    stage.config["Labels"] = {**(stage.config.get("Labels") or {}), **self.opts.labels}
                    self._commit_config(stage, "LABEL", text, {"labels": dict(self.opts.labels)})
                self.stage_images[st.index] = stage.image
                if st.name:
                    self.stage_names[st.name] = st.index
            assert stage is not None
            if not stage.image:  # a scratch stage with no step: dockerd refuses too
                raise InvalidArgument("No image was generated. Is your Dockerfile empty?")
        finally:
            for cid in list(self.live):
                self._remove(cid)
        unused = sorted(k for k in self.opts.buildargs if k not in self.consumed and k not in BUILTIN_ARGS)
        if unused:
            self.out(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n")
        image_id = stage.image
        short = image_id.removeprefix("sha256:")[:12]
        if self.out.quiet:
            self.out.final({"stream": image_id + "\n"})
        else:
            self.out.final({"aux": {"ID": image_id}})
            self.out(f"Successfully built {short}\n")
        for tag in self.opts.tags:
            self.svc.images.tag(image_id, tag, None)
            if not self.out.quiet:
                self.out(f"Successfully tagged {parse(tag).with_default_tag().familiar()}\n")
        return image_id

    # --- steps -----------------------------------------------------------------------------------------

    def _announce(self, instr: df.Instruction) -> None:
        self.step += 1
        self.out(f"Step {self.step}/{self.total} : {instr.original}")
        self.out("\n")

    def _global_env(self) -> dict[str, str]:
        return {k: v for k, v in self.global_args.items() if v is not None}

    def _arg_value(self, name: str, default: str | None) -> str | None:
        if name in self.opts.buildargs:
            self.consumed.add(name)
            given = self.opts.buildargs[name]
            return given if given is not None else default
        return default

    def _from(self, st: df.Stage) -> _Stage:
        self._announce(st.from_)
        base = df.expand(st.base, self._global_env(), self.df.escape)
        if not base:
            raise InvalidArgument("base name (" + st.from_.rest + ") should not be blank")
        if base.lower() in self.stage_names:
            image = self.stage_images[self.stage_names[base.lower()]]
        elif base == "scratch":
            image = ""
        else:
            image = self.svc.resolve_image(base, self.opts, self.out)
        base_cfg = self.svc.store.config(image) if image else None
        config = copy.deepcopy(base_cfg.config) if base_cfg else {}
        self.out(f" ---> {image.removeprefix('sha256:')[:12]}\n")
        self._hold(image)
        stage = _Stage(st.index, st.name, image, config, author=str(base_cfg.doc.get("author") or "") if base_cfg
                       else "")
        triggers = list(config.get("OnBuild") or [])
        if triggers:
            stage.config["OnBuild"] = None
            self.out(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}\n")
            for text in triggers:
                self._dispatch(stage, df.parse_trigger(text))
        return stage

    def _dispatch(self, stage: _Stage, instr: df.Instruction) -> None:
        kw = instr.keyword
        if kw == "run":
            self._run(stage, instr)
        elif kw in ("copy", "add"):
            self._copy(stage, instr)
        elif kw in _CONFIG_ONLY:
            self._config_step(stage, instr)
        else:
            raise InvalidArgument(f"unknown instruction: {kw.upper()}")

    def _config_step(self, stage: _Stage, instr: df.Instruction) -> None:
        """Instructions that change only the image config (dockerd commits them as ``#(nop)`` steps)."""
        kw = instr.keyword
        cfg = stage.config
        env = stage.env()
        esc = self.df.escape
        shell = list(cfg.get("Shell") or DEFAULT_SHELL)
        detail: Any = None
        if kw == "env":
            pairs = df.key_values(instr, env, esc)
            current = list(cfg.get("Env") or [])
            for k, v in pairs:
                current = [e for e in current if e.partition("=")[0] != k] + [f"{k}={v}"]
            cfg["Env"] = current
            detail = pairs
            shown = "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
        elif kw == "label":
            pairs = df.key_values(instr, env, esc)
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **dict(pairs)}
            detail = pairs
            shown = "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)
        elif kw in ("cmd", "entrypoint"):
            argv = df.command(instr, shell)
            if kw == "cmd":
                cfg["Cmd"] = argv
                stage.cmd_set = True
            else:
                cfg["Entrypoint"] = argv
                if not stage.cmd_set:
                    cfg["Cmd"] = None
            detail = argv
            shown = f"{kw.upper()} [" + " ".join(json.dumps(a) for a in argv) + "]"
        elif kw == "expose":
            ports = dict(cfg.get("ExposedPorts") or {})
            for word in df.expand_args(instr, env, esc):
                for port in _expand_ports(word):
                    ports[port] = {}
            cfg["ExposedPorts"] = ports
            detail = sorted(ports)
            shown = "EXPOSE " + " ".join(sorted(ports))
        elif kw == "volume":
            paths = df.expand_args(instr, env, esc)
            if not paths or any(not p.strip() for p in paths):
                raise InvalidArgument("VOLUME specified can not be an empty string")
            cfg["Volumes"] = {**(cfg.get("Volumes") or {}), **{p: {} for p in paths}}
            detail = paths
            shown = "VOLUME [" + " ".join(paths) + "]"
        elif kw == "user":
            cfg["User"] = detail = " ".join(df.expand_args(instr, env, esc))
            shown = f"USER {detail}"
        elif kw == "workdir":
            path = " ".join(df.expand_args(instr, env, esc))
            cfg["WorkingDir"] = detail = posixpath.normpath(posixpath.join("/", cfg.get("WorkingDir") or "/", path))
            shown = f"WORKDIR {detail}"
        elif kw == "arg":
            detail = []
            for name, default in df.arg_decls(instr, env, esc):
                # moby's dispatchArg commits "ARG name=default": the value given with --build-arg is not in the key
                detail.append([name, default])
                if default is None and name in self.global_args:
                    default = self.global_args[name]
                stage.args[name] = self._arg_value(name, default)
            shown = instr.original
        elif kw == "shell":
            if instr.json_args is None:
                raise InvalidArgument("SHELL requires the arguments to be in JSON form")
            cfg["Shell"] = detail = list(instr.json_args)
            shown = "SHELL [" + " ".join(json.dumps(a) for a in detail) + "]"
        elif kw == "stopsignal":
            cfg["StopSignal"] = detail = " ".join(df.expand_args(instr, env, esc))
            shown = f"STOPSIGNAL {detail}"
        elif kw == "healthcheck":
            cfg["Healthcheck"] = detail = df.healthcheck(instr)
            shown = "HEALTHCHECK " + instr.rest
        elif kw == "onbuild":
            cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), instr.rest.strip()]
            detail = instr.rest.strip()
            shown = f"ONBUILD {detail}"
        else:  # maintainer
            stage.author = detail = instr.rest.strip()
            shown = f"MAINTAINER {detail}"
        self._commit_config(stage, kw.upper(), shown, detail)

    def _commit_config(self, stage: _Stage, kw: str, shown: str, detail: Any) -> None:
        shell = " ".join(stage.config.get("Shell") or DEFAULT_SHELL)
        created_by = f"{shell} #(nop) {'' if kw in ('WORKDIR', 'COPY', 'ADD') else ' '}{shown}"
        key = self._key(stage, kw, detail)
        if self._cached(stage, key):
            return
        base = stage.image or self._scratch_base()
        cid = None
        if kw == "WORKDIR":  # dockerd makes the directory now (ContainerCreateWorkdir): a layer when it was missing
            cid = self._create(base, stage.config, [*DEFAULT_SHELL, f"#(nop) {shown}"], [])
            if self.svc.archive.ensure_dir(cid, str(detail)):
                self._remove(cid)
                cid = None
        image_cfg, _ = self.svc.commits.make_image(base, stage.config, {"created_by": created_by}, cid=cid,
                                                   author=stage.author, parent=base, cache_key=key, skip_empty=True)
        if cid is not None:
            self._remove(cid)
        self._advance(stage, str(image_cfg.id))

    def _scratch_base(self) -> str:
        """A zero-layer image with an empty config: what a scratch stage's first step builds on."""
        if not self.empty_base:
            image_cfg, _ = self.svc.commits.make_image("", {}, {}, created=_EMPTY_CREATED, history_entry=False)
            self.empty_base = str(image_cfg.id)
        return self.empty_base

    def _run(self, stage: _Stage, instr: df.Instruction) -> None:
        mounts, network, mount_key = self._run_flags(stage, instr)
        shell = list(stage.config.get("Shell") or DEFAULT_SHELL)
        argv = df.command(instr, shell)
        if instr.json_args is None and not instr.rest.strip():
            raise InvalidArgument("RUN requires at least one argument")
        script = df.run_script(instr)  # RUN <<EOF with "#!": argv names the script, which a bind mount provides
        if script is not None:
            mount_key = {**mount_key, "script": [script.name, script.data]}  # argv has only its path: key the text
        # moby's BuildArgs.FilterAllowed: an ARG that ENV also sets is the ENV's, not a build arg of the RUN
        env_keys = {e.partition("=")[0] for e in stage.config.get("Env") or []}
        build_env = {k: v for k, v in stage.args.items() if v is not None and k not in env_keys}
        proxies = {k: v for k, v in self.opts.buildargs.items() if k in BUILTIN_ARGS and v is not None}
        # dockerd's record of a RUN with build args: "|2 A=1 B=2 /bin/sh -c ..."
        prefix = f"|{len(build_env)} " + " ".join(f"{k}={v}" for k, v in sorted(build_env.items())) + " " \
            if build_env else ""
        created_by = prefix + " ".join(argv)
        key = self._key(stage, "RUN", {"argv": argv, "args": build_env, "net": network or self.opts.network_mode,
                                       **mount_key})
        if self._cached(stage, key):
            return
        base = stage.image or self._scratch_base()
        env = [*(stage.config.get("Env") or []),
               *(f"{k}={v}" for k, v in {**build_env, **proxies}.items()
                 if not any(e.startswith(k + "=") for e in stage.config.get("Env") or []))]
        with self._run_mounts(mounts, network) as step_host, \
                _script_mount(step_host, script, argv[-1], self.svc.scratch) as step_host:
            cid = self._create(base, stage.config, argv, env, step_host)
            self.out(f" ---> Running in {cid[:12]}\n")
            code = self._run_container(cid)
        if code != 0:
            if self.opts.forcerm or self.opts.rm:
                self._remove(cid)
            shown = json.dumps(argv) if instr.json_args is not None else " ".join(argv)
            raise StepFailed(f"The command '{shown}' returned a non-zero code: {code}", code)
        image_cfg, _ = self.svc.commits.make_image(base, stage.config, {"created_by": created_by}, cid=cid,
                                                   author=stage.author, parent=base, cache_key=key,
                                                   skip_empty=True)
        self._finish_container(cid, shown=True)
        self._advance(stage, str(image_cfg.id))

    def _copy(self, stage: _Stage, instr: df.Instruction) -> None:
        kw = instr.keyword.upper()
        env = stage.env()
        srcs, inline, dest = df.copy_sources(instr, env, self.df.escape)  # inline: the ``<<NAME`` sources
        workdir = stage.config.get("WorkingDir") or "/"
        dest_abs = posixpath.join(workdir, dest) if not dest.startswith("/") else dest
        if dest.endswith("/") and not dest_abs.endswith("/"):
            dest_abs += "/"
        chown = instr.flag("chown")
        chmod_text = instr.flag("chmod")
        chmod = None
        if chmod_text:
            try:
                chmod = int(chmod_text, 8)
            except ValueError:
                raise InvalidArgument(f"invalid chmod parameter: {chmod_text}") from None
        source = instr.flag("from")
        if source is not None and kw == "ADD":
            raise InvalidArgument("ADD --from is not supported; use COPY --from")
        base = stage.image or self._scratch_base()
        with self._source_root(source, env) as (root, label):
            urls = [s for s in srcs if kw == "ADD" and _is_url(s)]
            with tempfile.TemporaryDirectory(dir=self.svc.scratch) as tmp:
                downloaded = [self._download(u, Path(tmp), dest) for u in urls]
                local = [s for s in srcs if s not in urls]
                sources = build_context.resolve_sources(root, local, kw) if local else []
                # heredoc sources: files of their own (0644, dispatchCopy's llb.Mkfile), copied after the paths
                documents: list[Path] = []
                for i, doc in enumerate(inline):
                    if "/" in doc.name or doc.name in (".", ".."):
                        raise InvalidArgument(f"{kw} <<{doc.name}: a heredoc source's name must be a file name")
                    path = Path(tmp, f"doc-{i}", doc.name)
                    path.parent.mkdir()
                    path.write_bytes(doc.data.encode())
                    os.chmod(path, 0o644)
                    documents.append(path)
                build_context.check_dest([*sources, *(build_context.Source(p.name, False)
                                                      for p in (*downloaded, *documents))], dest_abs, kw)
                hashes = [build_context.source_hash(root, sources)] if sources else []
                hashes += [build_context.source_hash(p.parent, [build_context.Source(p.name, False)])
                           for p in (*downloaded, *documents)]
                digest = hashes[0] if len(hashes) == 1 else "multi:" + hashlib.sha256(
                    ",".join(hashes).encode()).hexdigest()
                key = self._key(stage, kw, {"srcs": srcs, "dest": dest_abs, "chown": chown, "chmod": chmod_text,
                                            "from": label, "content": digest})
                if self._cached(stage, key):
                    return
                cid = self._create(base, stage.config, [*DEFAULT_SHELL, f"#(nop) {kw} {' '.join(srcs)} {dest}"],
                                   list(stage.config.get("Env") or []))
                owner = self._owner(cid, chown) if chown else None
                archives = [s for s in sources if kw == "ADD" and not s.is_dir
                            and build_context.is_archive(root / s.rel)]
                plain = [s for s in sources if s not in archives]
                dest_is_dir = self._dest_is_dir(cid, dest_abs)
                with tempfile.TemporaryFile(dir=self.svc.scratch) as tar:
                    if plain:
                        target = build_context.copy_tar(root, plain, dest_abs, dest_is_dir, tar, chown=owner,
                                                        chmod=chmod)
                        self._extract(cid, target, tar, owner)
                    for path in downloaded:
                        tar.seek(0)
                        tar.truncate()
                        target = build_context.copy_tar(path.parent, [build_context.Source(path.name, False)],
                                                        dest_abs, dest_is_dir, tar, chown=owner,
                                                        chmod=chmod if chmod is not None else 0o600)
                        self._extract(cid, target, tar, owner)
                    for path in documents:
                        tar.seek(0)
                        tar.truncate()
                        target = build_context.copy_tar(path.parent, [build_context.Source(path.name, False)],
                                                        dest_abs, dest_is_dir, tar, chown=owner, chmod=chmod)
                        self._extract(cid, target, tar, owner)
                for src in archives:
                    target = dest_abs.rstrip("/") or "/"
                    with open(root / src.rel, "rb") as f:
                        self._extract(cid, target, f, owner)
                created_by = f"{' '.join(stage.config.get('Shell') or DEFAULT_SHELL)} #(nop) {kw} {digest} in {dest} "
                image_cfg, _ = self.svc.commits.make_image(base, stage.config, {"created_by": created_by}, cid=cid,
                                                           author=stage.author, parent=base, cache_key=key)
                self._finish_container(cid, shown=False)
                self._advance(stage, str(image_cfg.id))

    # --- pieces of the steps -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _source_root(self, source: str | None, env: Mapping[str, str]) -> Iterator[tuple[Path, str]]:
        """Where COPY reads from: the context, or (``--from``) a stage's or an image's tree, mounted for the block."""
        if source is None:
            yield self.context_root, ""
            return
        name = df.expand(source, env, self.df.escape)
        if name.lower() in self.stage_names:
            image = self.stage_images[self.stage_names[name.lower()]]
        elif name.isdigit() and int(name) in self.stage_images:
            image = self.stage_images[int(name)]
        elif name.isdigit():
            raise InvalidArgument(f"invalid from flag value {name}: refers to current build stage")
        else:
            image = self.svc.resolve_image(name, self.opts, self.out)
        if not image:
            raise InvalidArgument(f"COPY --from={name}: the stage has no files (FROM scratch with no step)")
        cid = self._create(image, {}, [*DEFAULT_SHELL, "#(nop) COPY --from"], [])
        try:
            with self.svc.archive.root(cid) as fd:
                yield Path(f"/proc/self/fd/{fd}"), image
        finally:
            self._remove(cid)

    def _create(self, image: str, config: Mapping[str, Any], argv: Sequence[str], env: Sequence[str],
                step_host: Mapping[str, Any] | None = None) -> str:
        opts = self.opts
        host: dict[str, Any] = {"NetworkMode": opts.network_mode or "default", "ExtraHosts": list(opts.extra_hosts),
                                **(step_host or {})}
        for key, value in (("ShmSize", opts.shm_size), ("Memory", opts.memory), ("MemorySwap", opts.memswap),
                           ("CpuShares", opts.cpu_shares), ("CpusetCpus", opts.cpuset_cpus),
                           ("CpuPeriod", opts.cpu_period), ("CpuQuota", opts.cpu_quota)):
            if value:
                host[key] = value
        body = {
            "Image": image, "Cmd": list(argv), "Entrypoint": [""], "Env": list(env),
            "WorkingDir": config.get("WorkingDir") or "", "User": config.get("User") or "",
            "AttachStdout": True, "AttachStderr": True, "Healthcheck": {"Test": ["NONE"]},
            "Labels": {}, "HostConfig": host,
        }
        cid = str(self.svc.containers.create(None, body)["Id"])
        self.live.add(cid)
        return cid

    def _run_flags(self, stage: _Stage, instr: df.Instruction) -> tuple[list[_StepMount], str, dict[str, Any]]:
        """RUN's BuildKit flags, which berth serves on the classic builder: the mounts (their sources resolved),
        the step's network mode ("" = the build's), and what they add to the step's cache key."""
        for name in ("security", "device"):
            if instr.flag_values(name):
                raise InvalidArgument(f"the --{name} option requires BuildKit. Refer to "
                                      "https://docs.docker.com/go/buildkit/ to learn how to build images with "
                                      "BuildKit enabled")
        network = ""
        given = instr.flag("network")
        if given is not None:
            mode = run_mounts.check_network(given)
            if mode == "host" and self.opts.network_mode != "host":
                # buildkit: host networking is an entitlement; the classic CLI grants it with --network host
                raise InvalidArgument("network.host is not allowed: build with --network host to allow it")
            network = "" if mode == "default" else mode
        env = stage.env()
        workdir = str(stage.config.get("WorkingDir") or "/")
        mounts: list[_StepMount] = []
        for value in instr.flag_values("mount"):
            m = run_mounts.parse_mount(value, lambda word: df.expand(word, env, self.df.escape))
            if m.type in ("secret", "ssh"):
                what = m.id or m.source or posixpath.basename(m.target) or "default"
                if m.required:
                    raise InvalidArgument(f"RUN --mount=type={m.type},id={what}: berth's classic build API cannot "
                                          f"receive {m.type} mounts from the client, and this one is required")
                # buildkit skips a missing optional secret or ssh socket; here every one is missing
                self.out(f"[Warning] RUN --mount=type={m.type},id={what} skipped: berth's classic build API cannot "
                         f"receive {m.type} mounts\n")
                continue
            target = run_mounts.mount_target(m, workdir)
            if m.type == "cache" and (m.from_ or m.source):
                raise NotImplementedYet("RUN --mount=type=cache with from= or source= is not supported by berth")
            if m.type == "cache" and self.svc.cache_mounts is None:
                raise NotImplementedYet("this daemon has no build cache directory for RUN --mount=type=cache")
            image, rel, content = "", "", ""
            if m.type == "bind":
                if m.from_:
                    image = self._mount_image(m.from_, target, stage)
                else:
                    found = build_context.resolve_sources(self.context_root, [m.source or "."], "RUN --mount")
                    if len(found) != 1:
                        raise InvalidArgument(f"RUN --mount: source {m.source} names {len(found)} paths")
                    rel = found[0].rel
                    content = build_context.source_hash(self.context_root, found)
            mounts.append(_StepMount(m, target, image, rel, content))
        run_mounts.check_unique_targets([sm.target for sm in mounts])
        key: dict[str, Any] = {}
        if mounts:
            key["mounts"] = [{**sm.mount.describe(), "dest": sm.target, "image": sm.image, "content": sm.content}
                             for sm in mounts]
        return mounts, network, key

    def _mount_image(self, name: str, target: str, stage: _Stage) -> str:
        """The image a ``from=`` names: an earlier stage (by name or index), else an image, pulled if missing."""
        if name.lower() in self.stage_names:
            image = self.stage_images[self.stage_names[name.lower()]]
        elif name.isdigit() and int(name) in self.stage_images:
            image = self.stage_images[int(name)]
        elif (name.isdigit() and int(name) < len(self.df.stages)) or any(
                st.name == name.lower() for st in self.df.stages):
            raise InvalidArgument(f"cannot mount from stage \"{name}\" to \"{target}\", stage needs to be defined "
                                  "before current command")
        else:
            image = self.svc.resolve_image(name, self.opts, self.out)
        if not image:
            raise InvalidArgument(f"RUN --mount from={name}: the stage has no files (FROM scratch with no step)")
        return image

    @contextlib.contextmanager
    def _run_mounts(self, mounts: Sequence[_StepMount], network: str) -> Iterator[dict[str, Any]]:
        """The RUN container's extra ``HostConfig`` (``Mounts``, ``NetworkMode``), its sources held for the block."""
        host: dict[str, Any] = {"NetworkMode": network} if network else {}
        if not mounts:
            yield host
            return
        entries: list[dict[str, Any]] = []
        with contextlib.ExitStack() as held:
            for sm in mounts:
                m = sm.mount
                if m.type == "tmpfs":
                    # buildkit's tmpfsMount is nosuid but exec: programs run from it (pip builds do); nodev kept
                    entries.append({"Type": "tmpfs", "Target": sm.target, "ReadOnly": m.readonly,
                                    "TmpfsOptions": {"SizeBytes": m.size, "Options": [["exec"]]}})
                    continue
                if m.type == "cache":
                    assert self.svc.cache_mounts is not None
                    source = held.enter_context(self.svc.cache_mounts.use(m))
                else:
                    source = held.enter_context(self._mount_tree(sm))
                    if not m.readonly:
                        source = self._scratch_copy(source, held)
                entries.append({"Type": "bind", "Source": str(source), "Target": sm.target, "ReadOnly": m.readonly,
                                "BindOptions": {"Propagation": "rprivate"}})
            yield {**host, "Mounts": entries}

    @contextlib.contextmanager
    def _mount_tree(self, sm: _StepMount) -> Iterator[Path]:
        """A bind mount's host path: in the context, or in a stage's/image's tree (mounted for the block); the
        source's symlinks are followed inside that root, never out of it."""
        if not sm.image:
            yield self.context_root / sm.rel if sm.rel else self.context_root
            return
        cid = self._create(sm.image, {}, [*DEFAULT_SHELL, "#(nop) RUN --mount"], [])
        try:
            with self.svc.archive.root(cid) as fd:
                parts = canonical(fd, [p for p in sm.mount.source.split("/") if p])
                try:
                    os.stat("/".join(parts) or ".", dir_fd=fd, follow_symlinks=False)
                except OSError:
                    raise InvalidArgument(f"failed to mount {sm.target}: {sm.mount.source or '/'}: not found in "
                                          f"{sm.mount.from_}") from None
                yield Path(os.readlink(f"/proc/self/fd/{fd}"), *parts)
        finally:
            self._remove(cid)

    def _scratch_copy(self, source: Path, held: contextlib.ExitStack) -> Path:
        """A ``rw`` bind's writable copy: the step may write there, and what it writes is dropped with it."""
        tmp = Path(tempfile.mkdtemp(prefix="mount-", dir=self.svc.scratch))
        held.callback(shutil.rmtree, tmp, True)
        copy_path = tmp / "src"
        # cp -a keeps owners, modes, links and special files as they are, and follows no symlink
        done = subprocess.run(["cp", "-a", "--", str(source), str(copy_path)], capture_output=True, check=False)
        if done.returncode != 0:
            raise InvalidArgument(f"failed to copy the source of a rw mount: {done.stderr.decode(errors='replace')}")
        return copy_path

    def _run_container(self, cid: str) -> int:
        """Start a RUN step's container, pass its output to the build's stream, return its exit code."""
        chunks: queue.Queue[bytes | None] = queue.Queue()
        runner = self.svc.runner

        async def go() -> int:
            _cid, _tty, pump = await runner.attach(cid, stdin=False, stdout=True, stderr=True, detach_keys=None)
            waiter = await runner.wait(cid, "next-exit")
            sink = _RunSink(chunks)
            pumping = asyncio.ensure_future(pump(sink))
            try:
                await runner.start(cid)
                result = await waiter()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(pumping), 5)
            finally:
                pumping.cancel()
                chunks.put(None)
            return int(result.get("StatusCode", 0))

        fut = asyncio.run_coroutine_threadsafe(go(), self.loop)
        text = codecs.getincrementaldecoder("utf-8")("replace")  # a character may straddle two chunks
        try:
            while True:
                try:
                    data = chunks.get(timeout=0.25)
                except queue.Empty:
                    self.alive()  # a silent step (sleep 30) still notices the client leaving
                    continue
                if data is None:
                    if rest := text.decode(b"", final=True):
                        self.out(rest)
                    break
                if shown := text.decode(data):
                    self.out(shown)
        except BaseException:
            fut.cancel()
            raise
        return fut.result()

    def _remove(self, cid: str) -> None:
        self.live.discard(cid)
        try:
            self.svc.call(self.loop, self.svc.runner.remove(cid, force=True))
        except BerthError as e:
            log.warning("build: could not remove container %s: %s", cid[:12], e)

    def _finish_container(self, cid: str, shown: bool) -> None:
        if self.opts.rm or self.opts.forcerm:
            self._remove(cid)
            if shown:
                self.out(f" ---> Removed intermediate container {cid[:12]}\n")
        else:
            self.live.discard(cid)

    def _owner(self, cid: str, chown: str) -> tuple[int, int]:
        """moby's ``parseChownFlag``: "user[:group]", a lone user also names the group (not the user's own gid)."""
        parts = chown.split(":")
        if len(parts) > 2:
            raise InvalidArgument(f"unable to convert uid/gid chown string to host mapping: invalid chown string "
                                  f"format: {chown}")
        user, group = parts[0], parts[-1]
        with self.svc.archive.root(cid) as fd:
            root = f"/proc/self/fd/{fd}"
            try:
                uid = _chown_id(user, "user", lambda: [(e.name, e.uid) for e in parse_passwd(
                    read_in_root(root, "/etc/passwd"))])
                gid = _chown_id(group, "group", lambda: [(e.name, e.gid) for e in parse_group(
                    read_in_root(root, "/etc/group"))])
            except BerthError as e:
                raise InvalidArgument(f"unable to convert uid/gid chown string to host mapping: {e}") from None
        return uid, gid

    def _in_root(self, cid: str, path: str) -> str:
        """``path`` with its symlinks followed inside the container's root (moby's ``ResolveScopedPath``)."""
        with self.svc.archive.root(cid) as fd:
            try:
                return "/" + "/".join(canonical(fd, [p for p in path.split("/") if p]))
            except OSError as e:
                raise InvalidArgument(f"failed to copy files: {path}: {e.strerror or e}") from None

    def _dest_is_dir(self, cid: str, dest: str) -> bool:
        try:
            return self.svc.archive.stat_path(cid, self._in_root(cid, dest)).is_dir
        except NotFound:
            return False

    def _extract(self, cid: str, target: str, stream: Any, owner: tuple[int, int] | None) -> None:
        # a destination below a symlink (/link -> /tmp) lands where the link points, inside the root
        target = self._in_root(cid, target)
        self.svc.archive.ensure_dir(cid, target, *(owner or (0, 0)))
        stream.seek(0)
        self.svc.archive.put_archive(cid, target, stream)

    def _download(self, url: str, into: Path, dest: str) -> Path:
        """ADD <url>: the file (0600), named as moby's ``downloadSource`` and ``getCopyInfoForSourcePath`` do."""
        mtime = 0.0  # moby: the Last-Modified time, else the zero time (the epoch)
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                name = _download_name(urllib.parse.urlparse(url).path, resp.headers.get("Content-Disposition"))
                if not name and dest.endswith("/"):
                    raise InvalidArgument(f"cannot determine filename for source {url}")
                path = into / f"dl-{uuid.uuid4().hex}" / (name or "__unnamed__")
                path.parent.mkdir()
                with open(path, "wb") as f:
                    shutil.copyfileobj(resp, f)
                with contextlib.suppress(TypeError, ValueError, OverflowError):
                    mtime = parsedate_to_datetime(resp.headers.get("Last-Modified") or "").timestamp()
        except urllib.error.HTTPError as e:
            # moby's remotecontext.GetWithStatusError: the status line as sent, then the trimmed body
            body = e.read().decode("utf-8", "replace").strip()
            kind = NotFound if e.code == 404 else InvalidArgument
            raise kind(f"failed to GET {url} with status {e.code} {e.reason}: {body}") from None
        except urllib.error.URLError as e:
            raise InvalidArgument(f"Get \"{url}\": {e.reason}") from None
        except OSError as e:
            raise InvalidArgument(f"Get \"{url}\": {e.strerror or e}") from None
        os.chmod(path, 0o600)
        os.utime(path, (mtime, mtime))
        return path

    # --- images and the cache ----------------------------------------------------------------------------

    def _key(self, stage: _Stage, kw: str, detail: Any) -> str:
        """``<instruction hash>:<inputs hash>``: the first half tells "changed text" from "changed inputs"."""
        text = json.dumps({"kw": kw, "detail": detail}, sort_keys=True, default=str)
        inputs = json.dumps({"config": stage.config, "author": stage.author, "text": text}, sort_keys=True,
                            default=str)
        return hashlib.sha256(kw.encode()).hexdigest()[:8] + ":" + hashlib.sha256(inputs.encode()).hexdigest()

    def _cached(self, stage: _Stage, key: str) -> bool:
        """Reuse the image an earlier build made for this step on this parent; say why when there is none."""
        parent = stage.image or self._scratch_base()
        # moby's imageProber: after the first miss the stage probes no more (reset at each FROM)
        if not self.opts.nocache and not stage.rebuilt:
            hit = self.svc.store.db.cached(parent, key)
            if hit is not None:
                self.out(" ---> Using cache\n")
                self._advance(stage, hit)
                return True
            self.out(f" ---> Cache miss: {self._why(parent, key)}\n")
        stage.rebuilt = True
        return False

    def _why(self, parent: str, key: str) -> str:
        children = self.svc.store.db.child_keys(parent)
        kind = key.split(":", 1)[0]
        if not children:
            return f"no earlier build ran this step on {parent.removeprefix('sha256:')[:12]}"
        if any((k or "").split(":", 1)[0] == kind for k in children):
            return "this instruction ran here before with other inputs (files, arguments, or config changed)"
        return "the instruction differs from the one an earlier build ran at this point"

    def _hold(self, image_id: str) -> None:
        if image_id and image_id not in self.holding:
            self.holding.add(image_id)
            self.svc.hold(image_id)

    def _advance(self, stage: _Stage, image_id: str) -> None:
        self._hold(image_id)
        stage.image = image_id
        stage.config = copy.deepcopy(self.svc.store.config(image_id).config)
        self.out(f" ---> {image_id.removeprefix('sha256:')[:12]}\n")


@dataclass(frozen=True)
class _StepMount:
    """A RUN mount as the step uses it: the parsed flag, its absolute target, and the tree it binds."""

    mount: run_mounts.RunMount
    target: str
    image: str = ""        # bind from a stage or image: its ID; "" = the context (or not a bind)
    rel: str = ""          # bind from the context: the source, resolved in the context
    content: str = ""      # bind from the context: the source's content hash, part of the step's cache key


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextlib.contextmanager
def _script_mount(host: Mapping[str, Any], script: df.InlineFile | None, target: str,
                  scratch: Path) -> Iterator[dict[str, Any]]:
    """``host`` plus a read-only bind of a RUN heredoc's ``#!`` script (0755) at ``target``, for the block."""
    if script is None:
        yield dict(host)
        return
    with tempfile.TemporaryDirectory(prefix="heredoc-", dir=scratch) as tmp:
        path = Path(tmp, "script")
        path.write_bytes(script.data.encode())
        os.chmod(path, 0o755)
        bind = {"Type": "bind", "Source": str(path), "Target": target, "ReadOnly": True,
                "BindOptions": {"Propagation": "rprivate"}}
        yield {**host, "Mounts": [*(host.get("Mounts") or []), bind]}


def _chown_id(name: str, kind: str, table: Callable[[], list[tuple[str, int]]]) -> int:
    """moby's ``lookupUser``/``lookupGroup``: a number as is, else the first entry with that name."""
    if name.isdigit():
        return int(name)
    found = next((number for entry, number in table() if entry == name), None)
    if found is None:
        what = "uid for user" if kind == "user" else "gid for group"
        raise InvalidArgument(f"can't find {what} {name}: no such {kind}: {name}")
    return found


def _download_name(path: str, disposition: str | None) -> str:
    """moby's ``getFilenameForDownload``: the URL path's last component, else Content-Disposition's filename."""
    if path and not path.endswith("/") and posixpath.basename(path):
        return posixpath.basename(path)
    if disposition:
        msg = email.message.Message()
        msg["content-disposition"] = disposition
        filename = msg.get_param("filename", header="content-disposition")
        if isinstance(filename, str) and filename and not filename.endswith("/"):
            return posixpath.basename(filename)
    return ""


def _is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def _expand_ports(word: str) -> list[str]:
    """EXPOSE words: ``80``, ``80/udp``, ``8000-8002/tcp`` → Docker's ``port/proto`` keys."""
    port, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidArgument(f"invalid proto: {proto}")
    lo, _, hi = port.partition("-")
    try:
        start, end = int(lo), int(hi or lo)
    except ValueError:
        raise InvalidArgument(f"invalid containerPort: {port}") from None
    if not (0 < start <= end <= 65535):
        raise InvalidArgument(f"invalid port range: {port}")
    return [f"{p}/{proto}" for p in range(start, end + 1)]
