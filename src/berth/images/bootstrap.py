"""Offline base images: root filesystems built from Debian's packages when Docker Hub is out of reach.

``recipe_for(name)`` names what an image tag becomes; ``build_rootfs_tar`` builds that root filesystem and
streams it as one uncompressed tar (a single image layer). The lead's image service turns the tar and the
recipe's config into an image. Packages come only from the Debian mirror configured in the host's apt
sources (read at run time, never hard-coded):

- ``busybox:latest`` — ``busybox-static`` fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``
  inside the workdir, so the host's installed packages are never changed; applet links as
  ``busybox --install -s`` would make them, all in ``/bin`` like Docker's busybox image.
- ``debian:bookworm`` — ``debootstrap --variant=minbase``; ``python:3.11`` adds python3, pip and venv.
  debootstrap runs from the host when installed, otherwise from its package unpacked into the workdir.

The workdir owns this layout (everything is safe to delete; it is only a cache)::

    workdir/
    ├── .lock                           flock held while a build runs
    ├── debs/busybox-static_*.deb       downloaded once
    ├── tools/debootstrap/              debootstrap unpacked from its .deb when the host lacks it
    ├── tarballs/<key>.tgz              debootstrap --make-tarball output: a rebuild needs no network
    └── build-<random>/rootfs/          the tree being built; removed when the tar is written
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from berth.errors import InternalError, InvalidArgument, Unavailable
from berth.oci.reference import DEFAULT_DOMAIN, parse

Progress = Callable[[str], None]

APT_ETC = Path("/etc/apt")
SUITE = "bookworm"
STD_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Python's official images put /usr/local/bin first so `python`/`pip` shims win.
PY_PATH = "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
# The version bookworm ships; Debian only patches it within a release.
BOOKWORM_PYTHON = "3.11.2"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Recipe:
    """What one bootstrap produces: the tags, the image config's ``config`` part and a history line."""

    ref: str
    aliases: tuple[str, ...]
    config: dict[str, Any]
    history_comment: str

    def __post_init__(self) -> None:
        if ":" not in self.ref:
            raise InvalidArgument(f"bootstrap recipe ref must be tagged: {self.ref}")


_RECIPES: dict[str, Recipe] = {
    "busybox:latest": Recipe(
        ref="busybox:latest",
        aliases=(),
        config={"Env": [STD_PATH], "Cmd": ["sh"]},
        history_comment="berth bootstrap: busybox-static from Debian bookworm",
    ),
    "debian:bookworm": Recipe(
        ref="debian:bookworm",
        aliases=("debian:latest", "debian:12", "debian:bookworm-slim", "debian:12-slim"),
        config={"Env": [STD_PATH], "Cmd": ["bash"]},
        history_comment="berth bootstrap: debootstrap --variant=minbase bookworm",
    ),
    "python:3.11": Recipe(
        ref="python:3.11",
        aliases=(
            "python:3.11-slim",
            "python:3.11-bookworm",
            "python:3.11-slim-bookworm",
            "python:3",
            "python:latest",
        ),
        config={
            "Env": [
                PY_PATH,
                "LANG=C.UTF-8",
                f"PYTHON_VERSION={BOOKWORM_PYTHON}",
                "PIP_BREAK_SYSTEM_PACKAGES=1",
            ],
            "Cmd": ["python3"],
        },
        history_comment="berth bootstrap: debootstrap --variant=minbase bookworm"
        " + python3 python3-pip python3-venv",
    ),
}


def recipe_for(name: str) -> Recipe:
    """The recipe for an image name; any tag of a recipe ("debian", "python:3", "busybox:latest") finds it."""
    known = ", ".join(sorted(_RECIPES))
    try:
        ref = parse(name).with_default_tag()
    except InvalidArgument:
        raise InvalidArgument(f"no bootstrap recipe for {name} (known: {known})") from None
    if ref.domain == DEFAULT_DOMAIN and ref.digest is None:
        wanted = ref.familiar()
        for recipe in _RECIPES.values():
            if wanted == recipe.ref or wanted in recipe.aliases:
                return recipe
        # A bare repository name means the canonical tag even where "latest" is not an alias.
        if ":" not in name:
            for recipe in _RECIPES.values():
                if recipe.ref.split(":", 1)[0] == ref.familiar_name:
                    return recipe
    raise InvalidArgument(f"no bootstrap recipe for {name} (known: {known})")


def build_rootfs_tar(recipe: Recipe, workdir: Path, out: BinaryIO, progress: Progress) -> None:
    """Build the recipe's root filesystem under ``workdir``; stream it to ``out`` as an uncompressed tar."""
    builders: dict[str, Callable[[Path, Path, Progress], None]] = {
        "busybox:latest": _build_busybox,
        "debian:bookworm": lambda w, r, p: _build_debian(w, r, p, ()),
        "python:3.11": _build_python,
    }
    builder = builders.get(recipe.ref)
    if builder is None:
        raise InvalidArgument(f"no bootstrap recipe for {recipe.ref} (known: {', '.join(sorted(builders))})")
    if os.geteuid() != 0:
        raise Unavailable("bootstrapping a base image needs root (device nodes, chroot, file ownership)")
    workdir.mkdir(parents=True, exist_ok=True)
    with _locked(workdir), _scratch(workdir) as scratch:
        rootfs = scratch / "rootfs"
        rootfs.mkdir(mode=0o755)
        try:
            builder(workdir, rootfs, progress)
            _assert_no_mounts(rootfs)
            progress(f"Writing the {recipe.ref} root filesystem as a tar")
            write_tar(rootfs, out)
        finally:
            _unmount_below(rootfs)
    progress(f"Bootstrapped {recipe.ref}")


# --- the Debian mirror, from the host's apt sources -------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` line (or one deb822 stanza with one URI) of the host's apt configuration."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def apt_sources(etc_apt: Path = APT_ETC) -> list[AptSource]:
    """Every enabled ``deb`` source, in apt's order: sources.list, then sources.list.d/*.list|*.sources."""
    files = [etc_apt / "sources.list"]
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    out: list[AptSource] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        out += _parse_deb822(text) if f.suffix == ".sources" else _parse_one_line(text)
    return out


def apt_mirror(suite: str = SUITE, etc_apt: Path = APT_ETC) -> str:
    """The URI of the first configured mirror that carries ``suite``'s main component."""
    for src in apt_sources(etc_apt):
        if suite in src.suites and "main" in src.components and src.uri.split(":", 1)[0] in ("http", "https"):
            return src.uri.rstrip("/")
    raise Unavailable(
        f"no Debian package mirror for {suite} main is configured in {etc_apt}/sources.list "
        f"or {etc_apt}/sources.list.d"
    )


def probe_mirror(mirror: str, suite: str = SUITE, timeout: float = 15.0) -> None:
    """Raise ``Unavailable`` unless ``mirror`` answers for ``suite``'s Release file."""
    url = f"{mirror}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise _unreachable(f"{url}: {getattr(e, 'reason', e)}") from None


def _unreachable(detail: str) -> Unavailable:
    where = "/etc/apt/sources.list"
    return Unavailable(f"cannot reach the Debian package mirror configured in {where}: {detail}")


def _parse_one_line(text: str) -> list[AptSource]:
    out: list[AptSource] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            # Options such as [arch=amd64 signed-by=...] may span several words.
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            out.append(AptSource(words[0], (words[1],), tuple(words[2:])))
    return out


def _parse_deb822(text: str) -> list[AptSource]:
    out: list[AptSource] = []
    for stanza in _deb822_stanzas(text):
        if "deb" not in stanza.get("types", "").split() or stanza.get("enabled", "yes").lower() == "no":
            continue
        suites, comps = tuple(stanza.get("suites", "").split()), tuple(stanza.get("components", "").split())
        out += [AptSource(uri, suites, comps) for uri in stanza.get("uris", "").split()]
    return out


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif raw[0] in " \t" and key:
            fields[key] += " " + raw.strip()
        elif ":" in raw:
            k, _, v = raw.partition(":")
            key = k.strip().lower()
            fields[key] = v.strip()


# --- busybox -----------------------------------------------------------------------------------------

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
_GROUP = "root:x:0:\nnobody:x:65534:\n"


def _build_busybox(workdir: Path, rootfs: Path, progress: Progress) -> None:
    deb = _download_deb(workdir, "busybox-static", progress)
    unpacked = rootfs.parent / "busybox-static"
    progress(f"Unpacking {deb.name}")
    _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
    binary = unpacked / "bin" / "busybox"
    if not binary.is_file():
        raise InternalError(f"{deb.name} has no bin/busybox")
    for name, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755), ("proc", 0o755),
                       ("root", 0o700), ("sys", 0o755), ("tmp", 0o1777), ("var", 0o755)):
        (rootfs / name).mkdir()
        os.chmod(rootfs / name, mode)  # mkdir's mode is masked by the umask and never sets the sticky bit
    shutil.copy2(binary, rootfs / "bin" / "busybox")
    os.chmod(rootfs / "bin" / "busybox", 0o755)
    applets = _run([str(binary), "--list"]).split()
    progress(f"Linking {len(applets)} busybox applets into /bin")
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc" / "passwd").write_text(_PASSWD)
    (rootfs / "etc" / "group").write_text(_GROUP)
    for f in ("passwd", "group"):
        os.chmod(rootfs / "etc" / f, 0o644)
    # One timestamp (the packaged binary's) makes the layer, and so its diff ID, reproducible.
    _set_mtimes(rootfs, int(binary.stat().st_mtime))


def _download_deb(workdir: Path, package: str, progress: Progress) -> Path:
    debs = workdir / "debs"
    debs.mkdir(exist_ok=True)
    cached = sorted(debs.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    if cached:
        progress(f"Using cached {cached[-1].name}")
        return cached[-1]
    if shutil.which("apt-get") is None:
        raise Unavailable(f"cannot fetch {package}: apt-get is not installed on this host")
    progress(f"Downloading {package} from the configured Debian mirror")
    # Root in a directory _apt cannot write: skip apt's privilege drop instead of warning.
    cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package]
    done = subprocess.run(cmd, cwd=debs, capture_output=True, text=True, check=False)
    if done.returncode != 0 and "Unable to locate package" in done.stderr:
        progress("Refreshing apt's package lists (apt-get update)")
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, check=False)
        done = subprocess.run(cmd, cwd=debs, capture_output=True, text=True, check=False)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if done.returncode != 0 or not found:
        raise _unreachable(f"apt-get download {package}: {_tail(done.stderr or done.stdout)}")
    return found[-1]


# --- debian and python via debootstrap ---------------------------------------------------------------

_PYTHON_PACKAGES = ("python3", "python3-pip", "python3-venv")
# The apt settings Docker's official Debian images carry, so `apt-get install` in a build stays small.
_APT_DOCKER_CLEAN = (
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
    '/var/cache/apt/*.bin || true"; };\n'
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
    '/var/cache/apt/*.bin || true"; };\n'
    'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n'
)
_APT_NO_LANGUAGES = 'Acquire::Languages "none";\n'


def _build_python(workdir: Path, rootfs: Path, progress: Progress) -> None:
    _build_debian(workdir, rootfs, progress, _PYTHON_PACKAGES)
    progress("Linking python -> python3 and pip -> pip3 in /usr/local/bin")
    bindir = rootfs / "usr" / "local" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for link, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
        if not (rootfs / target.lstrip("/")).exists():
            raise InternalError(f"python bootstrap: {target} is missing from the root filesystem")
        os.symlink(target, bindir / link)


def _build_debian(workdir: Path, rootfs: Path, progress: Progress, include: tuple[str, ...]) -> None:
    tarballs = workdir / "tarballs"
    tarballs.mkdir(exist_ok=True)
    key = f"{SUITE}-minbase" + ("+" + "+".join(include) if include else "")
    tarball = tarballs / f"{key}.tgz"
    mirror = apt_mirror()
    debootstrap, env = _debootstrap(workdir, progress)
    args = [debootstrap, "--variant=minbase"]
    if include:
        args.append("--include=" + ",".join(include))
    if not tarball.is_file():
        probe_mirror(mirror)
        progress(f"Downloading packages for {key} (debootstrap --make-tarball)")
        scratch = rootfs.parent / "download"
        partial = tarball.with_suffix(".partial")
        try:
            _debootstrap_run([*args, f"--make-tarball={partial}", SUITE, str(scratch), mirror], env, progress)
            os.replace(partial, tarball)
        finally:
            partial.unlink(missing_ok=True)
            _unmount_below(scratch)
            _assert_no_mounts(scratch)
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        progress(f"Using cached packages {tarball.name}")
    progress(f"Installing {key} (debootstrap --unpack-tarball)")
    try:
        _debootstrap_run([*args, f"--unpack-tarball={tarball}", SUITE, str(rootfs), mirror], env, progress)
    finally:
        _unmount_below(rootfs)
    _tidy_debian(rootfs, progress)


def _debootstrap(workdir: Path, progress: Progress) -> tuple[str, dict[str, str]]:
    env = {**os.environ, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    env.pop("LC_ALL", None)
    host = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.access(p, os.X_OK)), None
    )
    if host:
        return host, env
    tool = workdir / "tools" / "debootstrap"
    script = tool / "usr" / "sbin" / "debootstrap"
    if not script.is_file():
        deb = _download_deb(workdir, "debootstrap", progress)
        progress(f"Unpacking {deb.name} into the workdir (the host is not changed)")
        shutil.rmtree(tool, ignore_errors=True)
        tool.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(tool)])
    # debootstrap reads its scripts and functions from DEBOOTSTRAP_DIR when not installed.
    env["DEBOOTSTRAP_DIR"] = str(tool / "usr" / "share" / "debootstrap")
    return str(script), env


def _debootstrap_run(cmd: list[str], env: dict[str, str], progress: Progress) -> None:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        lines = [*lines[-40:], line]
        if line.startswith(("I: ", "W: ", "E: ")):
            progress(line[3:])
    if proc.wait() != 0:
        text = "\n".join(lines)
        if any(s in text for s in ("Failed getting release", "Couldn't download", "Failed to fetch",
                                   "Could not resolve", "unable to resolve")):
            raise _unreachable(_tail(text))
        raise InternalError(f"debootstrap failed (exit {proc.returncode}): {_tail(text)}")


def _tidy_debian(rootfs: Path, progress: Progress) -> None:
    progress("Cleaning apt caches and host files out of the root filesystem")
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*",
                    "var/log/*.log", "var/log/apt/*"):
        for p in rootfs.glob(pattern):
            if p.is_file() or p.is_symlink():
                p.unlink()
    # debootstrap copies the host's name and resolver; the runtime mounts the container's own over them.
    for name in ("etc/hostname", "etc/resolv.conf"):
        (rootfs / name).unlink(missing_ok=True)
    (rootfs / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    machine_id = rootfs / "etc" / "machine-id"
    if machine_id.exists():
        machine_id.write_text("")
    conf = rootfs / "etc" / "apt" / "apt.conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "docker-clean").write_text(_APT_DOCKER_CLEAN)
    (conf / "docker-no-languages").write_text(_APT_NO_LANGUAGES)
    # Docker's images ship an empty /dev; the runtime mounts a fresh one.
    dev = rootfs / "dev"
    if dev.is_dir() and not dev.is_symlink():
        for entry in dev.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


# --- tar, mounts, processes --------------------------------------------------------------------------


def write_tar(rootfs: Path, out: BinaryIO) -> None:
    """Stream ``rootfs`` to ``out`` as a tar: numeric owners, device nodes, hard links and xattrs kept."""
    cmd = [
        "tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--sort=name", "--format=posix",
        # Fixed pax header names and no atime/ctime keep the tar reproducible.
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        "--one-file-system", "-C", str(rootfs), "-cf", "-", ".",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := proc.stdout.read(_CHUNK):
            out.write(chunk)
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        code = proc.wait()
    if code != 0:
        raise InternalError(f"writing the root filesystem tar failed: {_tail(err)}")


def _set_mtimes(root: Path, mtime: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))


def _mounts_below(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == prefix[:-1]:
                found.append(point)
    return found


def _unmount_below(root: Path) -> None:
    """Detach whatever a failed or finished debootstrap left mounted under ``root`` (proc, sys, dev binds)."""
    if not root.exists():
        return
    for point in sorted(_mounts_below(root), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _assert_no_mounts(root: Path) -> None:
    # Deleting a tree with a host bind mount inside would delete the host's files.
    if root.exists() and (left := _mounts_below(root)):
        raise InternalError(f"bootstrap: could not unmount {', '.join(left)}; leaving {root} in place")


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[None]:
    with open(workdir / ".lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _scratch(workdir: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="build-", dir=workdir))
    try:
        yield path
    finally:
        _unmount_below(path)
        if not _mounts_below(path):
            shutil.rmtree(path, ignore_errors=True)


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InternalError(f"{cmd[0]} failed (exit {done.returncode}): {_tail(done.stderr or done.stdout)}")
    return done.stdout


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(x.strip() for x in text.strip().splitlines()[-lines:] if x.strip()) or "no output"
