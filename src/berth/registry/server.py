"""berth's registry server: the OCI distribution API over HTTP/1.1 (asyncio + h11 on TCP) on a ``StorageDriver``.

Routes and error codes come from ``berth.registry.protocol``; who may do what from ``berth.registry.auth``.
Handlers run storage calls in worker threads; request bodies (uploads) are streamed into the driver chunk by
chunk, blob downloads streamed out (with ``Range``). ``main`` is ``berth registry serve|gc``.

Behaviour follows distribution 2.8 (Debian's ``docker-registry``), which the conformance tests run side by side:
manifests byte-exact by digest with ``Docker-Content-Digest``, ``mediaType`` must equal ``Content-Type``
(CVE-2021-41190), 4 MiB manifest limit (413), referenced blobs must be in the repository (``subject`` excepted,
echoed as ``OCI-Subject``), catalog page capped (CVE-2023-2253), upload sessions expire after ``upload_ttl_s``
idle, write routes answer DENIED on read-only storage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qs, unquote

import h11

from berth.errors import BerthError, Conflict, Forbidden, InvalidArgument, NotFound
from berth.httpserver.connection import (
    NO_BODY_STATUSES,
    READ_SIZE,
    ConnectionSet,
    HttpConnection,
    HttpDate,
    RequestBody,
    encode_head,
    header_dict,
    reason,
)
from berth.oci import media
from berth.oci.digest import Digest
from berth.registry import protocol
from berth.registry.auth import (
    TOKEN_PATH,
    Anonymous,
    Authorizer,
    BasicAuth,
    Challenged,
    Htpasswd,
    TokenAuth,
    TokenIssuer,
    TokenServer,
)
from berth.registry.protocol import (
    CATALOG_SCOPE,
    DELETE,
    PULL,
    PUSH,
    ErrorCode,
    RegistryError,
    Route,
    Scope,
    path_for,
)
from berth.registry.storage import FilesystemDriver, ImageStoreView, MemoryDriver, StorageDriver, UploadWriter

log = logging.getLogger("berth.registry")

T = TypeVar("T")

_SEND_CHUNK = 1 << 20
_MAX_HEADER_BYTES = 64 * 1024
_DRAIN_LIMIT = 16 << 20  # unread request body we swallow to keep the connection; past it we close
_CONTENT_RANGE = re.compile(r"^(?:bytes )?([0-9]+)-([0-9]+)$")
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
_WRITE_ROUTES = {(Route.MANIFEST, "PUT"), (Route.MANIFEST, "DELETE"), (Route.BLOB, "DELETE"),
                 (Route.UPLOADS, "POST"), (Route.UPLOAD, "PATCH"), (Route.UPLOAD, "PUT"),
                 (Route.UPLOAD, "GET"), (Route.UPLOAD, "DELETE")}
_NOT_FOUND_CODE = {Route.MANIFEST: ErrorCode.MANIFEST_UNKNOWN, Route.BLOB: ErrorCode.BLOB_UNKNOWN,
                   Route.UPLOADS: ErrorCode.BLOB_UNKNOWN, Route.UPLOAD: ErrorCode.BLOB_UPLOAD_UNKNOWN,
                   Route.TAGS: ErrorCode.NAME_UNKNOWN}
_INVALID_CODE = {Route.MANIFEST: ErrorCode.MANIFEST_INVALID, Route.BLOB: ErrorCode.DIGEST_INVALID,
                 Route.UPLOADS: ErrorCode.BLOB_UPLOAD_INVALID, Route.UPLOAD: ErrorCode.BLOB_UPLOAD_INVALID,
                 Route.REFERRERS: ErrorCode.DIGEST_INVALID}
_FOREIGN_LAYER_HINTS = ("nondistributable", "foreign")


@dataclass(frozen=True)
class ServerConfig:
    upload_ttl_s: float = 24 * 3600.0
    catalog_max: int = 1000          # distribution's catalog.maxentries: larger or negative n is refused
    max_manifest_bytes: int = protocol.MAX_MANIFEST_BYTES
    idle_timeout_s: float = 120.0    # a client that sends nothing for this long is dropped (slowloris)


@dataclass
class Reply:
    """One response: a fixed body, or ``stream`` (with ``length`` bytes) sent in pieces."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    length: int | None = None


def _json_reply(obj: Any, status: int = 200, content_type: str = protocol.JSON_TYPE,
                headers: dict[str, str] | None = None) -> Reply:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return Reply(status, {"Content-Type": content_type, **(headers or {})}, body)


def _error_reply(err: RegistryError) -> Reply:
    headers = {"Content-Type": protocol.JSON_TYPE}
    if isinstance(err, Challenged):
        headers[protocol.WWW_AUTHENTICATE] = str(err.challenge)
    return Reply(err.status, headers, protocol.error_body([err]))


class _Request:
    """A parsed request whose body is read on demand from the connection."""

    def __init__(self, conn: _Connection, event: h11.Request) -> None:
        target = bytes(event.target).decode("latin-1")
        raw_path, _, raw_query = target.partition("?")
        self.method = event.method.decode("ascii", "replace").upper()
        self.path = unquote(raw_path)
        self.query = parse_qs(raw_query, keep_blank_values=True)
        self.headers = header_dict(event.headers)
        self.peer = conn.peer
        self.source = RequestBody(conn)

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    async def receive(self) -> bytes:
        """The next piece of the body, ``b""`` at its end."""
        return await self.source.receive()

    async def body(self, limit: int) -> bytes | None:
        """The whole body, or None once it exceeds ``limit`` bytes."""
        return await self.source.read(limit)


class _Connection(HttpConnection):
    """One client connection: a request in, the server's reply out."""

    log = log

    def __init__(self, server: RegistryServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer, max_header_bytes=_MAX_HEADER_BYTES,
                         idle_timeout_s=server.config.idle_timeout_s)
        self.server = server

    async def handle(self, event: h11.Request) -> bool:
        req = _Request(self, event)
        reply = await self.server.dispatch(req)
        keep = await self._send(req, reply)
        return keep and (req.source.done or await req.source.drain(_DRAIN_LIMIT))

    def _headers(self, reply: Reply, length: int | None) -> list[tuple[str, str]]:
        out = [(protocol.API_VERSION_HEADER, protocol.API_VERSION),
               ("Date", self.server.date.now().decode()),
               ("X-Content-Type-Options", "nosniff")]
        out += list(reply.headers.items())
        if length is not None and reply.status not in NO_BODY_STATUSES:
            out.append(("Content-Length", str(length)))
        return out

    async def _send(self, req: _Request, reply: Reply) -> bool:
        """Send ``reply``; returns whether the connection may carry another request."""
        with_body = req.method != "HEAD" and reply.status not in NO_BODY_STATUSES
        if reply.stream is None:
            await self.send_fixed(reply.status, self._headers(reply, len(reply.body)), reply.body,
                                  with_body=with_body)
        else:
            self.start_response(reply.status, self._headers(reply, reply.length))
            await self.send_stream(reply.stream, with_body=with_body)
        return self.h11.our_state is h11.DONE

    def bad_request(self, err: h11.RemoteProtocolError) -> bytes:
        status = err.error_status_hint
        body = protocol.error_body([RegistryError(ErrorCode.UNKNOWN, f"bad request: {err}", status=status)])
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode()),
                   (b"Connection", b"close")]
        return encode_head(status, reason(status), headers) + body


def _content_type(req: _Request) -> str:
    return req.headers.get("content-type", "").split(";")[0].strip()


def _upload_headers(name: str, uuid: str, size: int) -> dict[str, str]:
    # distribution's Range: "0-<last byte>", and "0-0" for an empty upload
    return {"Location": path_for(Route.UPLOAD, name=name, uuid=uuid), "Range": f"0-{max(size - 1, 0)}",
            protocol.UPLOAD_UUID: uuid, "Content-Length": "0"}


def _parse_digest(text: str | None, code: ErrorCode = ErrorCode.DIGEST_INVALID) -> Digest:
    if not text:
        raise RegistryError(code, "digest missing")
    try:
        return Digest.parse(text)
    except InvalidArgument as err:
        raise RegistryError(code, str(err)) from None


def _page_size(req: _Request, maximum: int | None) -> int | None:
    text = req.q("n")
    if text is None or text == "":
        return maximum
    try:
        n = int(text)
    except ValueError:
        raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, detail={"n": text}) from None
    if n < 0 or (maximum is not None and n > maximum):
        raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, detail={"n": n, "max": maximum})
    return n


def _paginate(items: list[str], req: _Request, n: int | None, path: str) -> tuple[list[str], dict[str, str]]:
    last = req.q("last")
    if last:
        items = [i for i in items if i > last]
    if n is None or len(items) <= n:
        return items, {}
    page = items[:n]
    if not page:
        return page, {}
    return page, {"Link": protocol.next_link(path, {"last": page[-1], "n": str(n)})}


class RegistryServer:
    """Serves one storage driver; ``start`` binds, ``close`` stops. Runs on the caller's event loop."""

    def __init__(self, driver: StorageDriver, authorizer: Authorizer | None = None,
                 token_server: TokenServer | None = None, config: ServerConfig | None = None) -> None:
        self.driver = driver
        self.authorizer: Authorizer = authorizer or Anonymous()
        self.token_server = token_server
        self.config = config or ServerConfig()
        self._server: asyncio.AbstractServer | None = None
        self._connections = ConnectionSet(lambda reader, writer: _Connection(self, reader, writer))
        self.date = HttpDate()
        self._upload_locks: dict[str, asyncio.Lock] = {}
        self._purger: asyncio.Task[None] | None = None
        self.address: tuple[str, int] = ("", 0)

    async def start(self, host: str = "127.0.0.1", port: int = 5000) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._connections.accept, host, port, limit=READ_SIZE,
                                                  reuse_address=True)
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        self._purger = asyncio.create_task(self._purge_loop())
        return self.address

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
        if self._server is not None:
            self._server.close()
        await self._connections.close(grace=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _purge_loop(self) -> None:
        period = min(max(self.config.upload_ttl_s / 2, 0.5), 60.0)
        while True:
            await asyncio.sleep(period)
            try:
                await asyncio.to_thread(self.purge_uploads)
                live = {u.uuid for u in await asyncio.to_thread(self.driver.uploads)}
            except Exception:
                log.exception("purging expired uploads failed")
                continue
            # per-session locks of sessions that are gone (abandoned, expired) go too
            for uuid in [u for u, lock in self._upload_locks.items() if u not in live and not lock.locked()]:
                del self._upload_locks[uuid]

    def purge_uploads(self) -> int:
        """Cancel upload sessions idle for longer than ``upload_ttl_s``; returns how many."""
        cutoff = time.time() - self.config.upload_ttl_s
        purged = 0
        for state in self.driver.uploads():
            if state.touched_at < cutoff:
                with contextlib.suppress(NotFound):
                    self.driver.cancel_upload(state.repo, state.uuid)
                    purged += 1
        return purged

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    # --- dispatch --------------------------------------------------------------------------------------

    async def dispatch(self, req: _Request) -> Reply:
        started = time.monotonic()
        route: Route | None = None
        try:
            if req.path == TOKEN_PATH and self.token_server is not None:
                reply = await self._token(req)
            else:
                found = protocol.match(req.path)
                if found is None:
                    raise RegistryError(ErrorCode.NAME_INVALID if req.path.startswith("/v2/")
                                        else ErrorCode.UNSUPPORTED, "page not found", status=404)
                route, params = found
                reply = await self._route(req, route, params)
        except RegistryError as err:
            reply = _error_reply(err)
        except Forbidden as err:
            reply = _error_reply(RegistryError(ErrorCode.DENIED, detail=str(err)))
        except NotFound as err:
            code = _NOT_FOUND_CODE.get(route, ErrorCode.NAME_UNKNOWN) if route else ErrorCode.NAME_UNKNOWN
            reply = _error_reply(RegistryError(code, detail=str(err)))
        except Conflict as err:
            reply = _error_reply(RegistryError(ErrorCode.RANGE_INVALID, detail=str(err)))
        except InvalidArgument as err:
            code = _INVALID_CODE.get(route, ErrorCode.NAME_INVALID) if route else ErrorCode.NAME_INVALID
            reply = _error_reply(RegistryError(code, detail=str(err)))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:
            log.exception("%s %s failed", req.method, req.path)
            reply = _error_reply(RegistryError(ErrorCode.UNKNOWN, detail=f"{type(err).__name__}: {err}"))
        log.debug("%s %s -> %d (%.1f ms)", req.method, req.path, reply.status, (time.monotonic() - started) * 1e3)
        return reply

    def _needed(self, route: Route, method: str, name: str) -> list[Scope]:
        if route is Route.BASE:
            return []
        if route is Route.CATALOG:
            return [CATALOG_SCOPE]
        if method == "DELETE" and route in (Route.MANIFEST, Route.BLOB):
            return [Scope.repository(name, DELETE)]
        if (route, method) in _WRITE_ROUTES:
            return [Scope.repository(name, PULL, PUSH)]
        return [Scope.repository(name, PULL)]

    async def _route(self, req: _Request, route: Route, params: dict[str, str]) -> Reply:
        name = params.get("name", "")
        if route not in (Route.BASE, Route.CATALOG) and not protocol.valid_name(name):
            raise RegistryError(ErrorCode.NAME_INVALID, detail={"name": name})
        if req.method not in route.methods:
            raise RegistryError(ErrorCode.UNSUPPORTED, status=405)
        identity = await self._io(self.authorizer.authorize, req.headers.get("authorization"),
                                  self._needed(route, req.method, name), req.peer)
        if self.driver.read_only and (route, req.method) in _WRITE_ROUTES:
            raise RegistryError(ErrorCode.DENIED, detail="this registry is read-only")
        method = "get" if req.method == "HEAD" else req.method.lower()
        handler = getattr(self, f"_{route.name.lower()}_{method}")
        if route is Route.UPLOADS:
            return await handler(req, name, identity)  # type: ignore[no-any-return]
        return await handler(req, **params)  # type: ignore[no-any-return]

    async def _token(self, req: _Request) -> Reply:
        assert self.token_server is not None
        form = None
        if req.method == "POST":
            raw = await req.body(64 * 1024) or b""
            form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        elif req.method != "GET":
            raise RegistryError(ErrorCode.UNSUPPORTED, status=405)
        status, doc = await self._io(self.token_server.token, req.headers.get("authorization"), req.query,
                                     req.peer, form)
        headers = {}
        if status == 401:
            headers[protocol.WWW_AUTHENTICATE] = 'Basic realm="berth-registry-token"'
        return _json_reply(doc, status, headers=headers)

    # --- base and catalog ------------------------------------------------------------------------------

    async def _base_get(self, req: _Request) -> Reply:
        return _json_reply({})

    async def _catalog_get(self, req: _Request) -> Reply:
        n = _page_size(req, self.config.catalog_max)
        repos = await self._io(self.driver.repositories)
        page, headers = _paginate(repos, req, n, path_for(Route.CATALOG))
        return _json_reply({"repositories": page}, headers=headers)

    async def _tags_get(self, req: _Request, name: str) -> Reply:
        n = _page_size(req, None)
        tags = await self._io(self.driver.tags, name)
        page, headers = _paginate(tags, req, n, path_for(Route.TAGS, name=name))
        return _json_reply({"name": name, "tags": page}, headers=headers)

    # --- manifests -------------------------------------------------------------------------------------

    async def _resolve(self, name: str, reference: str) -> Digest:
        if protocol.valid_tag(reference):
            return await self._io(self.driver.resolve_tag, name, reference)
        return _parse_digest(reference)

    async def _manifest_get(self, req: _Request, name: str, reference: str) -> Reply:
        digest = await self._resolve(name, reference)
        stored = await self._io(self.driver.get_manifest, name, digest)
        headers: dict[str, str] = {"Content-Type": stored.media_type, protocol.CONTENT_DIGEST: str(digest),
                   "ETag": f'"{digest}"'}
        return Reply(200, headers, stored.data)

    async def _manifest_put(self, req: _Request, name: str, reference: str) -> Reply:
        limit = self.config.max_manifest_bytes
        declared = req.headers.get("content-length", "")
        too_big = RegistryError(ErrorCode.MANIFEST_INVALID, "manifest too big",
                                detail={"limit": limit}, status=413)
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        tag: str | None = None
        wanted: Digest | None = None
        if protocol.valid_tag(reference):
            tag = reference
        else:
            wanted = _parse_digest(reference)
        data = await req.body(limit)
        if data is None:
            raise too_big
        media_type, doc = _check_manifest(data, _content_type(req))
        digest = Digest.of_bytes(data)
        if wanted is not None:
            if wanted.algorithm != "sha256":
                got = wanted.hasher()
                got.update(data)
                if Digest.from_hasher(got) != wanted:
                    raise RegistryError(ErrorCode.DIGEST_INVALID, detail={"digest": str(wanted)})
                raise RegistryError(ErrorCode.UNSUPPORTED, "only sha256 manifest digests are stored",
                                    detail={"digest": str(wanted)}, status=400)
            if wanted != digest:
                raise RegistryError(ErrorCode.DIGEST_INVALID, detail={"expected": str(wanted),
                                                                      "computed": str(digest)})
        tags = [tag] if tag else []
        extra_tags = req.query.get("tag", []) if wanted is not None else []
        for t in extra_tags:
            if not protocol.valid_tag(t):
                raise RegistryError(ErrorCode.TAG_INVALID, detail={"tag": t})
        tags += extra_tags
        subject = _subject_of(doc)
        await self._io(self._store_manifest, name, data, media_type, doc, subject, tags)
        headers = {"Location": path_for(Route.MANIFEST, name=name, reference=str(digest)),
                   protocol.CONTENT_DIGEST: str(digest)}
        if subject is not None:
            headers[protocol.OCI_SUBJECT] = str(subject)
        if extra_tags:
            headers[protocol.OCI_TAG] = ", ".join(extra_tags)
        return Reply(201, headers)

    def _store_manifest(self, name: str, data: bytes, media_type: str, doc: dict[str, Any],
                        subject: Digest | None, tags: Sequence[str]) -> None:
        with self.driver.shared():
            for digest, is_manifest in _references(media_type, doc):
                present = (self._has_manifest(name, digest) if is_manifest
                           else self.driver.has_link(name, digest))
                if not present:
                    raise RegistryError(ErrorCode.MANIFEST_BLOB_UNKNOWN, detail={"digest": str(digest)})
            digest = self.driver.put_manifest(name, data, media_type, subject)
            for t in tags:
                self.driver.set_tag(name, t, digest)

    def _has_manifest(self, name: str, digest: Digest) -> bool:
        try:
            self.driver.get_manifest(name, digest)
            return True
        except NotFound:
            return False

    async def _manifest_delete(self, req: _Request, name: str, reference: str) -> Reply:
        if protocol.valid_tag(reference):
            await self._io(self.driver.delete_tag, name, reference)
        else:
            await self._io(self.driver.delete_manifest, name, _parse_digest(reference))
        return Reply(202, {"Content-Length": "0"})

    # --- referrers -------------------------------------------------------------------------------------

    async def _referrers_get(self, req: _Request, name: str, digest: str) -> Reply:
        subject = _parse_digest(digest)
        wanted = req.q("artifactType")
        found = await self._io(self._referrer_descriptors, name, subject)
        headers = {}
        if wanted:
            found = [d for d in found if d.get("artifactType") == wanted]
            headers[protocol.OCI_FILTERS_APPLIED] = "artifactType"
        index = {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": found}
        return _json_reply(index, content_type=media.OCI_INDEX, headers=headers)

    def _referrer_descriptors(self, name: str, subject: Digest) -> list[dict[str, Any]]:
        out = []
        for digest in self.driver.referrers(name, subject):
            try:
                stored = self.driver.get_manifest(name, digest)
                doc = json.loads(stored.data)
            except (NotFound, ValueError):
                continue
            desc: dict[str, Any] = {"mediaType": stored.media_type, "digest": str(digest), "size": len(stored.data)}
            artifact = doc.get("artifactType")
            if not artifact and isinstance(doc.get("config"), dict):
                artifact = doc["config"].get("mediaType")
            if artifact:
                desc["artifactType"] = artifact
            if isinstance(doc.get("annotations"), dict) and doc["annotations"]:
                desc["annotations"] = doc["annotations"]
            out.append(desc)
        return out

    # --- blobs -----------------------------------------------------------------------------------------

    async def _blob_get(self, req: _Request, name: str, digest: str) -> Reply:
        d = _parse_digest(digest)
        if not await self._io(self.driver.has_link, name, d):
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(d)})
        size = await self._io(self.driver.blob_size, d)
        headers = {"Content-Type": protocol.OCTET_STREAM, protocol.CONTENT_DIGEST: str(d), "ETag": f'"{d}"',
                   "Accept-Ranges": "bytes", "Cache-Control": "max-age=31536000"}
        start, end, status = 0, size - 1, 200
        wanted = req.headers.get("range")
        if wanted and req.method == "GET":
            parsed = _byte_range(wanted, size)
            if parsed is None:
                return Reply(416, {"Content-Range": f"bytes */{size}", **headers, "Content-Type": "text/plain"},
                             b"")
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        if req.method == "HEAD":
            return Reply(200, headers, stream=_empty(), length=size)
        f = await self._io(self.driver.open_blob, d)
        return Reply(status, headers, stream=self._read_blob(f, start, length), length=length)

    async def _read_blob(self, f: BinaryIO, start: int, length: int) -> AsyncIterator[bytes]:
        try:
            if start:
                f.seek(start)
            left = length
            while left > 0:
                chunk = await self._io(f.read, min(_SEND_CHUNK, left))
                if not chunk:
                    raise ConnectionError("blob shorter than its size")
                left -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def _blob_delete(self, req: _Request, name: str, digest: str) -> Reply:
        await self._io(self.driver.unlink_blob, name, _parse_digest(digest))
        return Reply(202, {"Content-Length": "0"})

    # --- uploads ---------------------------------------------------------------------------------------

    async def _uploads_post(self, req: _Request, name: str, identity: Any) -> Reply:
        mount, source = req.q("mount"), req.q("from")
        if mount and source:
            d = _parse_digest(mount)
            allowed = protocol.valid_name(source) and identity.allows(Scope.repository(source, PULL))
            if allowed and await self._io(self._mount, name, source, d):
                return Reply(201, {"Location": path_for(Route.BLOB, name=name, digest=str(d)),
                                   protocol.CONTENT_DIGEST: str(d), "Content-Length": "0"})
        uuid = await self._io(self.driver.start_upload, name)
        digest_text = req.q("digest")
        if digest_text is None:
            return Reply(202, _upload_headers(name, uuid, 0))
        try:
            expected = _parse_digest(digest_text)
            await self._write_chunk(req, name, uuid, 0)
            try:
                await self._io(self.driver.commit_upload, name, uuid, expected)
            except InvalidArgument as err:
                raise RegistryError(ErrorCode.DIGEST_INVALID, detail=str(err)) from None
        except BaseException:
            with contextlib.suppress(NotFound):
                await self._io(self.driver.cancel_upload, name, uuid)
            raise
        return Reply(201, {"Location": path_for(Route.BLOB, name=name, digest=str(expected)),
                           protocol.CONTENT_DIGEST: str(expected), "Content-Length": "0"})

    def _mount(self, name: str, source: str, digest: Digest) -> bool:
        if not self.driver.has_link(source, digest):
            return False
        with self.driver.shared():
            self.driver.link_blob(name, digest)
        return True

    async def _upload_state(self, name: str, uuid: str) -> Any:
        state = await self._io(self.driver.upload_state, name, uuid)
        if state.touched_at < time.time() - self.config.upload_ttl_s:
            with contextlib.suppress(NotFound):
                await self._io(self.driver.cancel_upload, name, uuid)
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, detail="upload session expired")
        return state

    async def _upload_get(self, req: _Request, name: str, uuid: str) -> Reply:
        state = await self._upload_state(name, uuid)
        return Reply(204, _upload_headers(name, uuid, state.size))

    def _lock(self, uuid: str) -> asyncio.Lock:
        lock = self._upload_locks.get(uuid)
        if lock is None:
            lock = self._upload_locks[uuid] = asyncio.Lock()
        return lock

    async def _write_chunk(self, req: _Request, name: str, uuid: str, size: int) -> int:
        """Check ``Content-Range`` against the session's size, then stream the body in; returns the new size."""
        content_range = req.headers.get("content-range")
        declared = req.headers.get("content-length", "")
        if content_range:
            m = _CONTENT_RANGE.match(content_range.strip())
            if not m:
                raise RegistryError(ErrorCode.RANGE_INVALID, detail={"Content-Range": content_range})
            start, end = int(m.group(1)), int(m.group(2))
            if start != size or end < start or (declared.isdigit() and int(declared) != end - start + 1):
                raise RegistryError(ErrorCode.RANGE_INVALID,
                                    detail={"Content-Range": content_range, "size": size})
        writer: UploadWriter = await self._io(self.driver.upload_writer, name, uuid, size)
        try:
            while chunk := await req.receive():
                writer.write(chunk)
                size += len(chunk)
        finally:
            writer.close()
        return size

    async def _upload_patch(self, req: _Request, name: str, uuid: str) -> Reply:
        async with self._lock(uuid):
            state = await self._upload_state(name, uuid)
            size = await self._write_chunk(req, name, uuid, state.size)
        return Reply(202, _upload_headers(name, uuid, size))

    async def _upload_put(self, req: _Request, name: str, uuid: str) -> Reply:
        expected = _parse_digest(req.q("digest"))
        async with self._lock(uuid):
            state = await self._upload_state(name, uuid)
            await self._write_chunk(req, name, uuid, state.size)
            try:
                await self._io(self.driver.commit_upload, name, uuid, expected)
            except InvalidArgument as err:
                raise RegistryError(ErrorCode.DIGEST_INVALID, detail=str(err)) from None
        self._upload_locks.pop(uuid, None)
        return Reply(201, {"Location": path_for(Route.BLOB, name=name, digest=str(expected)),
                           protocol.CONTENT_DIGEST: str(expected), "Content-Length": "0"})

    async def _upload_delete(self, req: _Request, name: str, uuid: str) -> Reply:
        await self._io(self.driver.cancel_upload, name, uuid)
        self._upload_locks.pop(uuid, None)
        return Reply(204)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=a-b`` range, clamped to the blob; None when unsatisfiable."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):
        suffix = int(m.group(2))
        if suffix == 0:
            return None
        return max(size - suffix, 0), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def _check_manifest(data: bytes, content_type: str) -> tuple[str, dict[str, Any]]:
    """The media type to store and the parsed document; MANIFEST_INVALID for anything ambiguous or unknown."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise RegistryError(ErrorCode.MANIFEST_INVALID, detail=f"invalid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise RegistryError(ErrorCode.MANIFEST_INVALID, detail="not a JSON object")
    if doc.get("schemaVersion") == 1 or content_type in (protocol.DOCKER_SCHEMA1, protocol.DOCKER_SCHEMA1_SIGNED):
        raise RegistryError(ErrorCode.MANIFEST_INVALID, detail="schema 1 manifests are not supported")
    if doc.get("schemaVersion") != 2:
        raise RegistryError(ErrorCode.MANIFEST_INVALID, detail="schemaVersion must be 2")
    declared = doc.get("mediaType")
    if declared is not None and (not isinstance(declared, str) or (content_type and declared != content_type)):
        # CVE-2021-41190: the document's own mediaType must agree with the Content-Type it was pushed as
        raise RegistryError(ErrorCode.MANIFEST_INVALID,
                            detail=f"mediaType in manifest ({declared}) does not match Content-Type ({content_type})")
    media_type = declared or content_type
    if media_type not in protocol.MANIFEST_TYPES:
        raise RegistryError(ErrorCode.MANIFEST_INVALID, detail=f"unsupported manifest media type {media_type!r}")
    if media_type in protocol.INDEX_MANIFESTS:
        if not isinstance(doc.get("manifests"), list) or "config" in doc or "layers" in doc:
            raise RegistryError(ErrorCode.MANIFEST_INVALID, detail=f"not a valid {media_type}")
    elif not isinstance(doc.get("config"), dict) or "manifests" in doc:
        raise RegistryError(ErrorCode.MANIFEST_INVALID, detail=f"not a valid {media_type}")
    elif not isinstance(doc.get("layers", []), list):
        raise RegistryError(ErrorCode.MANIFEST_INVALID, detail="layers must be a list")
    return media_type, doc


def _descriptor_digest(item: Any) -> Digest:
    if not isinstance(item, dict) or not isinstance(item.get("digest"), str) \
            or not isinstance(item.get("size"), int):
        raise RegistryError(ErrorCode.MANIFEST_INVALID, detail="descriptor needs digest and size")
    try:
        return Digest.parse(item["digest"])
    except InvalidArgument as err:
        raise RegistryError(ErrorCode.MANIFEST_INVALID, detail=str(err)) from None


def _references(media_type: str, doc: dict[str, Any]) -> list[tuple[Digest, bool]]:
    """(digest, is a manifest) for everything the document needs in the repository (``subject`` excluded)."""
    if media_type in protocol.INDEX_MANIFESTS:
        return [(_descriptor_digest(m), True) for m in doc.get("manifests") or []]
    out = [(_descriptor_digest(doc["config"]), False)]
    for layer in doc.get("layers") or []:
        digest = _descriptor_digest(layer)
        kind = str(layer.get("mediaType", ""))
        if any(h in kind for h in _FOREIGN_LAYER_HINTS):
            continue  # non-distributable layers live elsewhere
        out.append((digest, False))
    return out


def _subject_of(doc: dict[str, Any]) -> Digest | None:
    subject = doc.get("subject")
    return None if subject is None else _descriptor_digest(subject)


# --- running it --------------------------------------------------------------------------------------------


class RunningRegistry:
    """A ``RegistryServer`` on its own event loop in a background thread (tests, and embedding)."""

    def __init__(self, server: RegistryServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, args=(host, port), name="berth-registry", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self, host: str, port: int) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                await self.server.start(host, port)
            except BaseException as err:
                self._error = err
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.server.close()

        self._loop.run_until_complete(main())
        self._loop.close()

    @property
    def host(self) -> str:
        return self.server.address[0]

    @property
    def port(self) -> int:
        return self.server.address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> RunningRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"invalid address {text!r}: want HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def build_server(root: Path | None = None, from_store: Path | None = None, htpasswd: Path | None = None,
                 token: bool = False, token_realm: str | None = None, token_service: str = "berth-registry",
                 addr: tuple[str, int] = ("127.0.0.1", 5000), anonymous_pull: bool = False,
                 config: ServerConfig | None = None) -> RegistryServer:
    """The server ``berth registry serve`` runs: storage, then Basic or token auth from the flags."""
    driver: StorageDriver
    if from_store is not None:
        driver = ImageStoreView.open(from_store)
    elif root is not None:
        driver = FilesystemDriver(root)
    else:
        driver = MemoryDriver()
    users = Htpasswd.load(htpasswd) if htpasswd is not None else None
    authorizer: Authorizer | None = None
    token_server = None
    if token or token_realm:
        realm = token_realm or f"http://{addr[0]}:{addr[1]}{TOKEN_PATH}"
        issuer = TokenIssuer(issuer="berth-registry-token", service=token_service)
        authorizer = TokenAuth(issuer, realm)
        token_server = TokenServer(issuer, users, anonymous_pull)
    elif users is not None:
        authorizer = BasicAuth(users)
    return RegistryServer(driver, authorizer, token_server, config)


def _serve(ns: argparse.Namespace) -> int:
    addr = parse_addr(ns.addr)
    config = ServerConfig(upload_ttl_s=ns.upload_ttl, catalog_max=ns.catalog_max)
    server = build_server(Path(ns.root) if ns.root else None, Path(ns.from_store) if ns.from_store else None,
                          Path(ns.htpasswd) if ns.htpasswd else None, ns.token, ns.token_realm, ns.token_service,
                          addr, ns.anonymous_pull, config)

    async def run() -> None:
        host, port = await server.start(*addr)
        print(f"berth registry listening on {host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()

    asyncio.run(run())
    return 0


def _gc(ns: argparse.Namespace) -> int:
    from berth.registry.gc import collect

    report = collect(FilesystemDriver(Path(ns.root)), dry_run=ns.dry_run, delete_untagged=ns.delete_untagged,
                     grace_s=ns.grace)
    verb = "would delete" if ns.dry_run else "deleted"
    for repo, digest in report.manifests_removed:
        print(f"{verb} manifest {repo}@{digest}")
    for digest in report.blobs_removed:
        print(f"{verb} blob {digest}")
    done = "would be deleted" if ns.dry_run else "deleted"
    print(f"{report.marked} blobs marked, {len(report.blobs_removed)} blobs {done} ({report.bytes_removed} bytes)")
    return 0


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="berth registry", description="Run berth's own registry")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Serve a registry")
    serve.add_argument("--addr", default="127.0.0.1:5000", help="HOST:PORT to listen on")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--root", help="Storage directory (filesystem driver)")
    where.add_argument("--from-store", metavar="DATA_ROOT", help="Serve berthd's image store read-only")
    serve.add_argument("--htpasswd", help="htpasswd file (bcrypt) for Basic auth, or users of the token server")
    serve.add_argument("--token", action="store_true", help="Require bearer tokens from the built-in token server")
    serve.add_argument("--token-realm", help="Token realm URL in challenges (default: this server's /token)")
    serve.add_argument("--token-service", default="berth-registry", help="Token service (audience) name")
    serve.add_argument("--anonymous-pull", action="store_true", help="Token server grants pull without login")
    serve.add_argument("--upload-ttl", type=float, default=ServerConfig.upload_ttl_s,
                       help="Seconds an idle upload session lives")
    serve.add_argument("--catalog-max", type=int, default=ServerConfig.catalog_max,
                       help="Largest catalog page a client may ask for")
    gc = sub.add_parser("gc", help="Remove blobs no manifest references")
    gc.add_argument("--root", required=True, help="Storage directory")
    gc.add_argument("--dry-run", action="store_true", help="Only report what would be deleted")
    gc.add_argument("--delete-untagged", action="store_true", help="Also delete manifests no tag reaches")
    gc.add_argument("--grace", type=float, default=600.0, help="Keep blobs touched in the last SECONDS")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return _serve(ns) if ns.command == "serve" else _gc(ns)
    except BerthError as err:
        print(f"berth registry: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
