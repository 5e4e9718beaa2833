"""Garbage collection for berth's registry storage: mark what manifests reference, sweep the other blobs.

Like distribution's ``registry garbage-collect``: every manifest revision in every repository is a root (with
``delete_untagged``, only tagged ones, the manifests their indexes name, and referrers of kept manifests — the
others are deleted first); a kept manifest marks itself, its config and layers, and the manifests an index names.
Unmarked blobs are removed, then repository links to removed blobs.

Safe while the server runs: the sweep holds the driver's ``exclusive()`` lock, which writers that make a blob
referenced (upload commit, mount, manifest PUT) take shared, and blobs touched within ``grace_s`` before the
collection started are kept, so a layer pushed just before its manifest is never taken.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from berth.errors import Forbidden, InvalidArgument, NotFound
from berth.oci.digest import Digest
from berth.registry.protocol import INDEX_MANIFESTS
from berth.registry.storage import StorageDriver

log = logging.getLogger("berth.registry.gc")

DEFAULT_GRACE_S = 600.0


@dataclass(frozen=True)
class GCReport:
    marked: int
    blobs_removed: tuple[Digest, ...]
    bytes_removed: int
    manifests_removed: tuple[tuple[str, Digest], ...] = field(default=())
    links_removed: int = 0
    dry_run: bool = False


def _children(driver: StorageDriver, repo: str, digest: Digest) -> tuple[list[Digest], list[Digest]]:
    """(blobs, child manifests) a manifest references."""
    try:
        stored = driver.get_manifest(repo, digest)
        doc = json.loads(stored.data)
    except (NotFound, ValueError, UnicodeDecodeError):
        return [], []
    if not isinstance(doc, dict):
        return [], []

    def digests(items: object) -> list[Digest]:
        out = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("digest"), str):
                try:
                    out.append(Digest.parse(item["digest"]))
                except InvalidArgument:
                    continue
        return out

    if stored.media_type in INDEX_MANIFESTS or "manifests" in doc:
        return [], digests(doc.get("manifests"))
    return digests([doc.get("config"), *(doc.get("layers") or [])]), []


def _subject(driver: StorageDriver, repo: str, digest: Digest) -> Digest | None:
    try:
        doc = json.loads(driver.get_manifest(repo, digest).data)
        return Digest.parse(doc["subject"]["digest"])
    except (NotFound, ValueError, UnicodeDecodeError, KeyError, TypeError, InvalidArgument):
        return None


def mark(driver: StorageDriver, delete_untagged: bool = False) -> tuple[set[Digest], list[tuple[str, Digest]]]:
    """The blobs to keep, and (with ``delete_untagged``) the manifests nothing keeps."""
    keep: set[Digest] = set()
    doomed: list[tuple[str, Digest]] = []
    for repo in driver.repositories():
        revisions = driver.manifests(repo)
        if delete_untagged:
            roots: set[Digest] = set()
            for tag in driver.tags(repo):
                try:
                    roots.add(driver.resolve_tag(repo, tag))
                except NotFound:
                    continue
        else:
            roots = set(revisions)
        kept: set[Digest] = set()
        pending = list(roots)
        while pending:
            digest = pending.pop()
            if digest in kept:
                continue
            kept.add(digest)
            blobs, manifests = _children(driver, repo, digest)
            keep.update(blobs)
            pending += manifests
            if delete_untagged:
                # a referrer lives as long as its subject
                pending += driver.referrers(repo, digest)
        if delete_untagged:
            for digest in revisions:
                if digest not in kept and _subject(driver, repo, digest) not in kept:
                    doomed.append((repo, digest))
                elif digest not in kept:
                    kept.add(digest)
                    blobs, _ = _children(driver, repo, digest)
                    keep.update(blobs)
        keep.update(kept)
    return keep, doomed


def collect(driver: StorageDriver, dry_run: bool = False, delete_untagged: bool = False,
            grace_s: float = DEFAULT_GRACE_S) -> GCReport:
    """Mark and sweep under the driver's exclusive lock; ``dry_run`` only reports."""
    if driver.read_only:
        raise Forbidden("garbage collection needs writable storage")
    started = time.time()
    with driver.exclusive():
        keep, doomed = mark(driver, delete_untagged)
        if not dry_run:
            for repo, digest in doomed:
                try:
                    driver.delete_manifest(repo, digest)
                except NotFound:
                    continue
                log.info("deleted untagged manifest %s@%s", repo, digest)
        removed: list[Digest] = []
        freed = 0
        for info in list(driver.walk_blobs()):
            if info.digest in keep or info.touched_at >= started - grace_s:
                continue
            removed.append(info.digest)
            freed += info.size
            if not dry_run:
                driver.delete_blob(info.digest)
        links = 0
        if not dry_run:
            gone = set(removed)
            for repo in driver.repositories():
                for digest in driver.linked_blobs(repo):
                    if digest in gone:
                        try:
                            driver.unlink_blob(repo, digest)
                            links += 1
                        except NotFound:
                            continue
    return GCReport(len(keep), tuple(sorted(removed)), freed, tuple(doomed), links, dry_run)
