"""List a root filesystem the way shared/fixtures/multilayer-expected-rootfs.json records one, for comparisons."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

FIXTURES = Path(os.environ.get("BERTH_FIXTURES", Path(__file__).resolve().parents[4] / "shared" / "fixtures"))

# Created by an engine when it makes a container, not by the image (see shared/fixtures/README.md).
ENGINE_PATHS = ("/.dockerenv", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/etc/mtab")
ENGINE_TREES = ("/dev/", "/proc/", "/sys/")

Entry = tuple[str, str, int, int, int, str | None]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"), (stat.S_ISREG, "file"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo")):
        if test(mode):
            return name
    return "other"


def _engine_made(path: str) -> bool:
    return path in ENGINE_PATHS or path.startswith(ENGINE_TREES)


def list_tree(root: Path) -> dict[str, Entry]:
    """Every path under ``root`` (as ``/rel``) with type, mode (octal string), uid, gid, size, link target."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, root)
            if _engine_made(rel):
                continue
            st = os.lstat(full)
            kind = _kind(st.st_mode)
            out[rel] = (kind, oct(st.st_mode), st.st_uid, st.st_gid, st.st_size if kind == "file" else 0,
                        os.readlink(full) if kind == "symlink" else None)
    return out


def expected_tree(name: str = "multilayer-expected-rootfs.json") -> dict[str, Entry]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return {
        e["path"]: (e["type"], e["mode"], e["uid"], e["gid"], e["size"] if e["type"] == "file" else 0, e["link"])
        for e in doc["entries"] if not _engine_made(e["path"])
    }
