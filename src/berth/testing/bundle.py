"""OCI bundles for runtime tests: a busybox rootfs unpacked from the docker-save fixture plus a config.json.

``unpack_busybox(dest)`` applies the fixture's layers in order with ``berth.layers.apply``;
``make_bundle(dir, spec)`` writes ``dir/config.json`` and fills ``dir/rootfs`` (copying a cached rootfs
with ``cp -a`` when one is given, which is faster than unpacking again). ``build_probe`` compiles a tiny
static C program for the syscall checks busybox cannot make; :class:`Harness` drives one runtime's CLI
(berth-runtime or runc) with a private state root and cgroup parent and removes everything afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

from berth.kernel.cgroups import open_cgroup
from berth.layers.apply import apply_layer
from berth.oci.runtime_spec import Spec
from berth.runtime.spec import default_spec
from berth.testing.rootfs import FIXTURES

BUSYBOX_TAR = FIXTURES / "busybox-docker-save.tar"


def unpack_busybox(dest: Path, archive: Path = BUSYBOX_TAR) -> Path:
    """Unpack every layer of a ``docker save`` archive into ``dest`` (created); returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        manifest = json.loads(manifest_file.read())
        for layer in manifest[0]["Layers"]:
            stream = tar.extractfile(layer)
            assert stream is not None
            apply_layer(dest, stream)  # type: ignore[arg-type]
    return dest


def make_bundle(bundle: Path, spec: Spec, rootfs_cache: Path | None = None) -> Path:
    """A bundle at ``bundle`` running ``spec``; ``spec.root.path`` must be relative (usually ``rootfs``)."""
    bundle.mkdir(parents=True, exist_ok=True)
    rootfs = bundle / spec.root.path
    if rootfs_cache is not None:
        subprocess.run(["cp", "-a", os.fspath(rootfs_cache), os.fspath(rootfs)], check=True)
    else:
        unpack_busybox(rootfs)
    (bundle / "config.json").write_text(spec.to_json())
    return bundle


def remove_bundle(bundle: Path) -> None:
    shutil.rmtree(bundle, ignore_errors=True)


PROBE_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case 0: return "OK"; case EPERM: return "EPERM"; case EACCES: return "EACCES"; case EROFS: return "EROFS";
    case ENOSYS: return "ENOSYS"; case EAGAIN: return "EAGAIN"; case EINVAL: return "EINVAL";
    case ENOENT: return "ENOENT"; case EAFNOSUPPORT: return "EAFNOSUPPORT"; default: return strerror(e);
    }
}

static int report(long rc) { puts(name(rc < 0 ? errno : 0)); return 0; }

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *op = argv[1];
    if (!strcmp(op, "keyctl")) return report(syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 0));
    if (!strcmp(op, "socket")) return report(socket(atoi(argv[2]), SOCK_STREAM, 0));
    if (!strcmp(op, "unshare")) return report(unshare(CLONE_NEWUSER));
    if (!strcmp(op, "clone-newns")) return report(unshare(CLONE_NEWNS));
    if (!strcmp(op, "mount")) return report(mount("none", "/mnt", "tmpfs", 0, NULL));
    if (!strcmp(op, "write")) return report(open(argv[2], O_WRONLY));
    if (!strcmp(op, "alloc")) {
        size_t n = (size_t)atoi(argv[2]) << 20;
        char *p = malloc(n);
        for (size_t i = 0; p && i < n; i += 4096) p[i] = 1;
        puts(p ? "allocated" : "ENOMEM");
        return 0;
    }
    if (!strcmp(op, "fork")) {
        int want = atoi(argv[2]), got = 0, err = 0;
        pid_t kids[4096];
        for (; got < want && got < 4096; got++) {
            pid_t pid = fork();
            if (pid == 0) { pause(); _exit(0); }
            if (pid < 0) { err = errno; break; }
            kids[got] = pid;
        }
        for (int i = 0; i < got; i++) { kill(kids[i], SIGKILL); waitpid(kids[i], NULL, 0); }
        printf("forked %d %s\n", got, name(err));
        return 0;
    }
    return 2;
}
"""


def build_probe(dest: Path, workdir: Path) -> Path:
    """Compile the static probe (syscall checks busybox cannot make) to ``dest``; needs ``gcc -static``."""
    src = workdir / "probe.c"
    src.write_text(PROBE_SOURCE)
    subprocess.run(["gcc", "-static", "-O1", "-o", os.fspath(dest), os.fspath(src)], check=True,
                   capture_output=True)
    return dest


def runtime_command(name: str) -> list[str] | None:
    """The argv prefix for a runtime under test: ``berth-runtime`` (this interpreter) or an installed one."""
    if name == "berth-runtime":
        return [sys.executable, "-m", "berth.runtime.cli"]
    path = shutil.which(name)
    return [path] if path else None


class Harness:
    """Runs busybox containers under one runtime with a private state root and cgroup parent; cleans up."""

    def __init__(self, runtime: list[str], workdir: Path, rootfs_cache: Path) -> None:
        self.runtime = runtime
        self.workdir = workdir
        self.rootfs_cache = rootfs_cache
        self.state_root = workdir / "state"
        self.cgroup_parent = f"berth-test-{uuid.uuid4().hex[:12]}"
        self.ids: list[str] = []

    def cli(self, *args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        return subprocess.run([*self.runtime, "--root", os.fspath(self.state_root), *args], text=True,
                              timeout=timeout, **kw)

    def bundle(self, args: list[str], **spec_kw: Any) -> tuple[str, Path]:
        """A fresh container id and a bundle for it running ``args`` with Docker's default spec."""
        cid = f"c{len(self.ids)}-{uuid.uuid4().hex[:8]}"
        self.ids.append(cid)
        spec_kw.setdefault("cgroups_path", f"/{self.cgroup_parent}/{cid}")
        spec_kw.setdefault("hostname", cid[:12])
        spec = default_spec(args, **spec_kw)
        return cid, make_bundle(self.workdir / cid, spec, self.rootfs_cache)

    def run(self, args: list[str], *, timeout: float = 30, **spec_kw: Any) -> subprocess.CompletedProcess[str]:
        """``run`` in the foreground: exit status and captured output of the container."""
        cid, bundle = self.bundle(args, **spec_kw)
        return self.cli("run", "--bundle", os.fspath(bundle), cid, timeout=timeout, stdin=subprocess.DEVNULL)

    def cleanup(self) -> None:
        for cid in self.ids:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.cli("delete", "--force", cid, timeout=15)
        with contextlib.suppress(Exception):
            open_cgroup(self.cgroup_parent).destroy()
        shutil.rmtree(self.workdir, ignore_errors=True)
