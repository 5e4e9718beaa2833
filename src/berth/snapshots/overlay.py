"""The overlayfs snapshotter: each snapshot's ``fs`` is an overlay upper dir; parents are its lower dirs.

Mounts it returns (``fs(x)`` is ``root/s/<id>/fs``)::

    prepare, no parent        bind fs(new) rw
    prepare on P1 <- P2 ...   overlay lowerdir=fs(P1):fs(P2):...,upperdir=fs(new),workdir=work(new)
    view / committed, 1 layer bind fs(layer) ro
    view / committed, more    overlay lowerdir=fs(nearest):...:fs(base)   (read-only: no upper dir)

Depth limit: mount(2) data is one page (4096 bytes). Ids are short numbers under a short root, so
about 4000 / len("<root>/s/NNN/fs:") layers fit (~95 under ``/var/lib/berth/snapshots/overlayfs``);
beyond a page ``berth.kernel.mount`` switches to fsconfig ``lowerdir+`` (Linux >= 6.8), up to the
kernel's 500 lower layers, which :data:`MAX_DEPTH` enforces with Docker's "max depth exceeded".
"""

from __future__ import annotations

from pathlib import Path

from berth.errors import InvalidArgument
from berth.kernel.mount import Mount
from berth.snapshots.base import Kind, LocalSnapshotter, _Row

MAX_DEPTH = 500
"""overlayfs stacks at most 500 lower layers (OVL_MAX_STACK)."""


def _index_on() -> bool:
    """With overlay's index on, lowers shared by mounts can be refused; containerd turns it off."""
    try:
        with open("/sys/module/overlay/parameters/index", encoding="ascii") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


class OverlaySnapshotter(LocalSnapshotter):
    """Snapshots as overlayfs layers (see the module docstring for the mounts)."""

    name = "overlayfs"
    needs_workdir = True

    def __init__(self, root: Path) -> None:
        if any(c in str(root) for c in ",:"):
            raise InvalidArgument(f"overlay snapshotter root {root} must not contain ',' or ':'")
        super().__init__(root)
        self._extra: tuple[str, ...] = ("index=off",) if _index_on() else ()

    def _check_depth(self, parent_chain: list[int]) -> None:
        if len(parent_chain) + 1 > MAX_DEPTH:
            depth = len(parent_chain) + 1
            raise InvalidArgument(f"max depth exceeded: {depth} layers, overlayfs stacks {MAX_DEPTH}")

    def _bind(self, sid: int, readonly: bool) -> list[Mount]:
        return [Mount("bind", str(self._fs(sid)), ("rbind", "ro" if readonly else "rw"))]

    def _lowerdir(self, ids: list[int]) -> str:
        return "lowerdir=" + ":".join(str(self._fs(i)) for i in ids)

    def _mounts(self, row: _Row, chain: list[int]) -> list[Mount]:
        if row.kind is Kind.ACTIVE:
            if not chain:
                return self._bind(row.id, readonly=False)
            options = (
                *self._extra,
                self._lowerdir(chain),
                f"upperdir={self._fs(row.id)}",
                f"workdir={self._work(row.id)}",
            )
            return [Mount("overlay", "overlay", options)]
        layers = chain if row.kind is Kind.VIEW else [row.id, *chain]
        if not layers:
            return self._bind(row.id, readonly=True)
        if len(layers) == 1:
            return self._bind(layers[0], readonly=True)
        return [Mount("overlay", "overlay", (*self._extra, self._lowerdir(layers)))]
