"""``berth build`` (also ``berth image build`` / ``berth builder build``): the docker CLI's legacy-builder client.

Mirrors docker/cli ``cli/command/image/build.go`` (runBuild) and ``build/context.go``: the context (a directory,
a tar or Dockerfile on stdin, or a URL passed as ``remote=``) goes to ``POST /build`` as a chunked, uncompressed
tar, streamed as it is made; the JSON answer is shown like jsonmessage, ``-q`` prints only the image ID.

A directory becomes a tar like moby's ``archive.TarWithOptions`` with ``ChownOpts{0,0}``: lexical walk order,
modes kept, uid/gid 0 and no user names, mtimes truncated to seconds, hard links as links, no sockets, and the
``.dockerignore`` patterns applied (the Dockerfile and ``.dockerignore`` are always sent; the daemon drops them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TextIO

from berth.cli.command import Arity, CliError, Command, CommandParser, Context, Group

if TYPE_CHECKING:
    import argparse
    import tarfile

DEFAULT_DOCKERFILE = "Dockerfile"
DOCKERIGNORE = ".dockerignore"
SENDING = "Sending build context to Docker daemon"
# the file progress of moby's progress.Reader: one update per 512 kB, at most one per 100 ms
_UPDATE_EVERY = 512 * 1024
_UPDATE_INTERVAL = 0.1
_BLOCK = 1 << 20
_ARCHIVE_MAGIC = (b"\x1f\x8b\x08", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


# ---- where the context comes from -----------------------------------------------------------------------

def is_url(text: str) -> bool:
    """urlutil.IsURL."""
    return text.startswith(("http://", "https://"))


def is_git_url(text: str) -> bool:
    """urlutil.IsGitURL: ``http(s)://….git[#frag]``, ``git://``, ``git@``, ``github.com/``."""
    import re

    if is_url(text) and re.search(r"\.git(?:#.+)?$", text):
        return True
    return text.startswith(("git://", "github.com/", "git@"))


def detect_context_type(spec: str) -> str:
    """build.DetectContextType: ``stdin``, ``local``, ``git`` or ``remote``."""
    if spec == "-":
        return "stdin"
    if os.path.exists(spec):
        return "local"
    if is_git_url(spec):
        return "git"
    if is_url(spec):
        return "remote"
    raise CliError(f'unable to prepare context: path "{spec}" not found')


def resolve_context_dir(given: str) -> str:
    """resolveAndValidateContextPath: the absolute, symlink-free context directory."""
    path = _eval_symlinks(os.path.abspath(given), "unable to evaluate symlinks in context path")
    if not os.path.isdir(path):
        raise CliError(f"unable to prepare context: context must be a directory: {path}")
    return path


def dockerfile_rel_path(context_dir: str, given: str = "") -> str:
    """getDockerfileRelPath: the Dockerfile relative to the context (``../x`` when it lies outside).

    ``given`` is relative to the current directory (``-f``); empty means ``Dockerfile`` in the context, or
    ``dockerfile`` when only that exists."""
    if given == "-":
        return given
    path = os.path.abspath(given) if given else os.path.join(context_dir, DEFAULT_DOCKERFILE)
    if not given and not os.path.lexists(path):
        lower = os.path.join(context_dir, DEFAULT_DOCKERFILE.lower())
        if os.path.lexists(lower):
            path = lower
    path = _eval_symlinks(path, "unable to evaluate symlinks in Dockerfile path")
    return os.path.relpath(path, context_dir)


def _eval_symlinks(path: str, what: str) -> str:
    try:
        return os.path.realpath(path, strict=True)
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        raise CliError(f"unable to prepare context: {what}: lstat {err.filename or path}: {reason}") from None


def read_dockerignore(context_dir: str) -> list[str]:
    """build.ReadDockerignore: the patterns of the context's ``.dockerignore`` (none when it is missing)."""
    from berth import dockerignore

    try:
        with open(os.path.join(context_dir, DOCKERIGNORE), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise CliError(f"error reading .dockerignore: {err.strerror or err}") from None
    return list(dockerignore.parse(data))


def trim_build_files(excludes: list[str], dockerfile: str, from_stdin: bool) -> list[str]:
    """TrimBuildFilesFromExcludes: re-include ``.dockerignore`` and the Dockerfile when the patterns drop them."""
    out = list(excludes)
    if _matches(DOCKERIGNORE, out):
        out.append("!" + DOCKERIGNORE)
    if not from_stdin and _matches(dockerfile, out):
        out.append("!" + dockerfile)
    return out


def _matches(rel: str, patterns: list[str]) -> bool:
    """patternmatcher.Matches: the path or one of its parents is excluded."""
    from berth import dockerignore

    rel = os.path.normpath(rel)
    if rel == "." or not patterns:
        return False
    try:
        matcher = dockerignore.Matcher(patterns)
    except dockerignore.BadPattern:
        return False  # the CLI ignores this error here; the context walk reports it
    excluded = False
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        excluded = matcher.excluded("/".join(parts[:i]), parent_excluded=excluded)
    return excluded


# ---- the tar of a directory -----------------------------------------------------------------------------

def context_entries(context_dir: str, excludes: list[str]) -> list[str]:
    """The relative paths TarWithOptions sends, in its order (Tarballer.Do with ``include "."``).

    Also ValidateContextDirectory's check: an unreadable file fails here, before anything is sent."""
    from berth import dockerignore

    try:
        matcher = dockerignore.Matcher(excludes) if excludes else None
    except dockerignore.BadPattern as err:
        raise CliError(f"checking context: {err}") from None
    exceptions = [os.path.normpath(p.strip()[1:].strip()) for p in excludes if p.strip().startswith("!")]
    out: list[str] = []

    def walk(rel_dir: str, parent_excluded: bool) -> None:
        try:
            with os.scandir(os.path.join(context_dir, rel_dir)) as it:
                entries = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError:
            return  # moby logs unreadable directories and goes on
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            skip = matcher is not None and matcher.excluded(rel, parent_excluded=parent_excluded)
            if skip:
                # an excluded directory is still walked when an exception (!dir/file) may reach inside it
                if is_dir and matcher is not None and matcher.has_exceptions() and any(
                        (p + "/").startswith(rel + "/") for p in exceptions):
                    walk(rel, True)
                continue
            _check_readable(entry)
            out.append(rel)
            if is_dir:
                walk(rel, False)

    walk("", False)
    return out


def _check_readable(entry: os.DirEntry[str]) -> None:
    import stat

    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except PermissionError:
        raise CliError(f"checking context: can't stat '{entry.path}'") from None
    except FileNotFoundError:
        raise CliError(f"checking context: file ('{entry.path}') not found or excluded by .dockerignore") from None
    if not stat.S_ISREG(mode):
        return  # symlinks may dangle; opening a fifo would hang
    try:
        os.close(os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK))
    except PermissionError:
        raise CliError(f"checking context: no permission to read from '{entry.path}'") from None


@dataclass(frozen=True)
class ExtraFile:
    """A file the CLI puts into the context itself (``-f -``'s Dockerfile, a rewritten ``.dockerignore``)."""

    name: str
    data: bytes
    mode: int = 0o600


def tar_directory(context_dir: str, entries: Iterable[str], replace: Mapping[str, bytes] | None = None,
                  extra: Iterable[ExtraFile] = ()) -> Iterator[bytes]:
    """A tar of ``entries`` under ``context_dir``, made while it is read (files are never held whole).

    ``replace`` swaps the content of entries (header kept, size updated, like archive.ReplaceFileTarWrapper);
    ``extra`` files are appended at the end."""
    import tarfile
    import time

    replace = dict(replace or {})
    inodes: dict[int, str] = {}
    pieces: list[bytes] = []
    for rel in entries:
        path = os.path.join(context_dir, rel)
        try:
            info = _tar_info(path, rel, inodes)
        except OSError:
            continue  # vanished since the walk: moby logs and skips it
        if info is None:
            continue
        if rel in replace and info.isreg():
            data = replace.pop(rel)
            info.size = len(data)
            pieces += [_header(info), data, _padding(len(data))]
        else:
            pieces.append(_header(info))
            if info.isreg() and info.size:
                yield from _coalesce(pieces)
                pieces = []
                yield from _file_blocks(path, info.size)
                pieces.append(_padding(info.size))
        if sum(map(len, pieces)) >= _BLOCK:
            yield from _coalesce(pieces)
            pieces = []
    now = int(time.time())
    for item in extra:
        info = tarfile.TarInfo(item.name)
        info.size, info.mode, info.mtime, info.uname, info.gname = len(item.data), item.mode, now, "", ""
        pieces += [_header(info), item.data, _padding(len(item.data))]
    pieces.append(b"\0" * (2 * tarfile.BLOCKSIZE))
    yield from _coalesce(pieces)


def _coalesce(pieces: list[bytes]) -> Iterator[bytes]:
    data = b"".join(pieces)
    if data:
        yield data


def _header(info: tarfile.TarInfo) -> bytes:
    import tarfile

    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % 512)


def _file_blocks(path: str, size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of the file: cut when it grew, zero-filled when it shrank since the header."""
    left = size
    with open(path, "rb") as f:
        while left:
            block = f.read(min(left, _BLOCK))
            if not block:
                break
            left -= len(block)
            yield block
    while left:
        fill = min(left, _BLOCK)
        left -= fill
        yield b"\0" * fill


def _tar_info(path: str, rel: str, inodes: dict[int, str]) -> tarfile.TarInfo | None:
    """archive.FileInfoHeader + tarAppender.addTarFile with ChownOpts{0,0}; None for a socket."""
    import stat
    import tarfile

    st = os.lstat(path)
    mode = st.st_mode
    info = tarfile.TarInfo(rel + "/" if stat.S_ISDIR(mode) else rel)
    info.mode = stat.S_IMODE(mode)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISREG(mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        return None  # Go's tar refuses sockets; moby logs and skips them
    if not stat.S_ISDIR(mode) and st.st_nlink > 1:
        # moby keys hard links by inode alone; the first name carries the data
        first = inodes.get(st.st_ino)
        if first is not None:
            info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
        else:
            inodes[st.st_ino] = info.name
    try:
        cap = os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        cap = b""
    if cap:
        if len(cap) > 3 and cap[3] == 3:
            # VFS_CAP_REVISION_3 → 2: a root uid means nothing outside the namespace (ReadSecurityXattrToTarHeader)
            cap = cap[:3] + b"\x02" + cap[4:20]
        info.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
    return info


def dockerfile_member(dockerignore: bytes | None) -> tuple[str, bytes]:
    """AddDockerfileToBuildContext's naming: ``.dockerfile.<20 hex>``, and the ``.dockerignore`` that lists it
    (the context's own, or one listing ``.dockerignore`` itself when it has none)."""
    import secrets

    name = ".dockerfile." + secrets.token_hex(32)[:20]
    base = dockerignore if dockerignore is not None else DOCKERIGNORE.encode()
    return name, base + b"\n" + name.encode() + b"\n"


def wrap_dockerfile(data: bytes) -> Iterator[bytes]:
    """GetContextFromReader for a Dockerfile on stdin: a tar holding only ``Dockerfile``."""
    import tarfile
    import time

    info = tarfile.TarInfo(DEFAULT_DOCKERFILE)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    info.uid, info.gid, info.uname, info.gname = os.getuid(), os.getgid(), "", ""
    yield _header(info) + data + _padding(len(data)) + b"\0" * 1024


def is_archive(head: bytes) -> bool:
    """build.isArchive: compressed, or the first 512 bytes are a valid tar header."""
    import tarfile

    if head.startswith(_ARCHIVE_MAGIC):
        return True
    if len(head) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(head[:tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _read_stream(source: IO[bytes], head: bytes) -> Iterator[bytes]:
    if head:
        yield head
    while True:
        block = source.read(_BLOCK)
        if not block:
            return
        yield block


def _read_exactly(source: IO[bytes], size: int) -> bytes:
    out = b""
    while len(out) < size:
        block = source.read(size - len(out))
        if not block:
            break
        out += block
    return out


def gzip_stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """build.Compress (``--compress``)."""
    import zlib

    z = zlib.compressobj(wbits=31)
    for chunk in chunks:
        out = z.compress(chunk)
        if out:
            yield out
    yield z.flush()


# ---- upload progress --------------------------------------------------------------------------------------

class SendProgress:
    """progress.NewProgressReader(…, "Sending build context to Docker daemon") with the raw formatter.

    On a terminal the line is redrawn every 512 kB (at most every 100 ms); otherwise only the last update is
    written (docker's lastProgressOutput). The last one ends with ``\\r\\r\\n``."""

    def __init__(self, out: TextIO, is_terminal: bool, clock: Callable[[], float] | None = None) -> None:
        import time

        self.out = out
        self.is_terminal = is_terminal
        self.current = 0
        self._last_update = 0
        self._clock = clock or time.monotonic
        self._next_allowed = float("-inf")

    def count(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Pass ``chunks`` through, counting them; the final line is written once they are exhausted."""
        for chunk in chunks:
            self.current += len(chunk)
            if self.current - self._last_update > _UPDATE_EVERY:
                self._update(last=False)
                self._last_update = self.current
            yield chunk
        self._update(last=True)

    def _update(self, last: bool) -> None:
        from berth.units import human_size

        now = self._clock()
        if not last:
            if not self.is_terminal or now < self._next_allowed:
                return
            self._next_allowed = now + _UPDATE_INTERVAL
        self.out.write(f"{SENDING} {human_size(self.current):>8}\r" + ("\r\n" if last else ""))
        self.out.flush()


# ---- the request ----------------------------------------------------------------------------------------

def go_json(value: Any) -> str:
    """encoding/json.Marshal: compact, ``<``, ``>``, ``&`` escaped. Go sorts map keys but keeps struct fields in
    declaration order, so callers pass maps already sorted."""
    import json

    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def build_params(ns: argparse.Namespace, dockerfile: str, remote: str = "",
                 environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """client.imageBuildOptionsToQuery for parsed ``berth build`` flags, keys sorted like url.Values.Encode."""
    from berth.cli.containers import ram_in_bytes

    env = os.environ if environ is None else environ
    params: dict[str, Any] = {}
    if ns.tag:
        params["t"] = [_valid_tag(t) for t in ns.tag]
    if ns.security_opt:
        params["securityopt"] = _split_list(ns.security_opt)
    if ns.add_host:
        params["extrahosts"] = [_valid_extra_host(h) for h in ns.add_host]
    if ns.quiet:
        params["q"] = "1"
    if remote:
        params["remote"] = remote
    if ns.no_cache:
        params["nocache"] = "1"
    if not ns.rm:
        params["rm"] = "0"
    if ns.force_rm:
        params["forcerm"] = "1"
    if ns.pull:
        params["pull"] = "1"
    if ns.squash:
        params["squash"] = "1"
    if ns.isolation and ns.isolation != "default":
        params["isolation"] = ns.isolation
    if ns.cpuset_cpus:
        params["cpusetcpus"] = ns.cpuset_cpus
    if ns.network and ns.network != "default":
        params["networkmode"] = ns.network
    if ns.cpuset_mems:
        params["cpusetmems"] = ns.cpuset_mems
    for key, flag in (("cpushares", "cpu_shares"), ("cpuquota", "cpu_quota"), ("cpuperiod", "cpu_period")):
        value = getattr(ns, flag)
        if value:
            params[key] = str(_int_flag(value, "--" + flag.replace("_", "-")))
    for key, flag, shown in (("memory", "memory", "-m, --memory"), ("memswap", "memory_swap", "--memory-swap"),
                             ("shmsize", "shm_size", "--shm-size")):
        value = getattr(ns, flag)
        if not value:
            continue
        if key == "memswap" and value == "-1":
            params[key] = "-1"
            continue
        try:
            params[key] = str(ram_in_bytes(value))
        except ValueError as err:
            raise CliError(f'invalid argument "{value}" for "{shown}" flag: {err}', 125) from None
    if ns.cgroup_parent:
        params["cgroupparent"] = ns.cgroup_parent
    if dockerfile:
        params["dockerfile"] = dockerfile
    if ns.target:
        params["target"] = ns.target
    if ns.ulimit:
        from berth.cli.containers import parse_ulimits

        params["ulimits"] = go_json(parse_ulimits(ns.ulimit))
    args = build_args(ns.build_arg, env)
    if args:
        params["buildargs"] = go_json(dict(sorted(args.items())))
    labels = _labels(ns.label)
    if labels:
        params["labels"] = go_json(dict(sorted(labels.items())))
    cache_from = _split_list(ns.cache_from)
    if cache_from:
        params["cachefrom"] = go_json(cache_from)
    if ns.platform:
        params["platform"] = _valid_platform(ns.platform)
    params["version"] = "1"
    return dict(sorted(params.items()))


def build_args(items: Iterable[str], environ: Mapping[str, str]) -> dict[str, str | None]:
    """opts.ValidateEnv + ConvertKVStringsToMapWithNil: ``K=V``; ``K`` from the environment, else null."""
    out: dict[str, str | None] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            raise CliError(f'invalid argument "{item}" for "--build-arg" flag: invalid environment variable: {item}',
                           125)
        if eq:
            out[key] = value
        else:
            out[key] = environ.get(key)
    return out


def _labels(items: Iterable[str]) -> dict[str, str]:
    """opts.ValidateLabel + ConvertKVStringsToMap."""
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise CliError(f"invalid argument \"{item}\" for \"--label\" flag: invalid label '{item}': empty name",
                           125)
        out[key] = value
    return out


def _valid_tag(text: str) -> str:
    from berth.errors import BerthError
    from berth.oci.reference import parse

    try:
        parse(text)
    except BerthError as err:
        raise CliError(f'invalid argument "{text}" for "-t, --tag" flag: {err}', 125) from None
    return text


def _valid_extra_host(text: str) -> str:
    """opts.ValidateExtraHost: ``host:ip`` or ``host=ip``; ``host-gateway`` allowed."""
    import ipaddress

    name, eq, addr = text.partition("=")
    if not eq:
        name, eq, addr = text.partition(":")
    if not eq or not name:
        raise CliError(f'invalid argument "{text}" for "--add-host" flag: bad format for add-host: "{text}"', 125)
    if addr != "host-gateway":
        try:
            ipaddress.ip_address(addr.strip("[]"))
        except ValueError:
            raise CliError(f'invalid argument "{text}" for "--add-host" flag: invalid IP address in add-host: '
                           f'"{addr}"', 125) from None
    return text


def _valid_platform(text: str) -> str:
    parts = text.lower().split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise CliError(f'"{text}": unknown operating system or architecture: invalid argument')
    return "/".join(parts)


def _int_flag(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliError(f'invalid argument "{text}" for "{flag}" flag: strconv.ParseInt: parsing "{text}": '
                       "invalid syntax", 125) from None


def _split_list(items: Iterable[str]) -> list[str]:
    """pflag StringSlice: each value may hold several, comma separated."""
    return [part for item in items for part in item.split(",") if part]


def registry_config() -> str:
    """``X-Registry-Config``: base64url JSON of every stored login (ConfigFile.GetAllCredentials); ``e30=`` if none."""
    import base64

    from berth.cli.images import HUB_SERVER, load_credentials, read_docker_config

    doc = read_docker_config()
    keys: list[str] = []
    for section in ("auths", "credHelpers"):
        entries = doc.get(section)
        if isinstance(entries, dict):
            keys += [k for k in entries if isinstance(k, str) and k not in keys]
    creds: dict[str, dict[str, str]] = {}
    for key in keys:
        found = load_credentials("docker.io" if key == HUB_SERVER else key)
        if found:
            order = ("username", "password", "auth", "serveraddress", "identitytoken", "registrytoken")
            creds[key] = {k: found[k] for k in order if found.get(k)}
    return base64.urlsafe_b64encode(go_json(dict(sorted(creds.items()))).encode()).decode()


# ---- the answer -------------------------------------------------------------------------------------------

def show_build_stream(messages: Iterable[Any], out: TextIO, is_terminal: bool, err: TextIO) -> str:
    """jsonstream.Display with runBuild's aux callback; returns the last ``aux.ID`` (``""`` when none came).

    An ``errorDetail`` raises ``progress.StreamError`` (its ``code`` is the RUN's exit status)."""
    from berth.cli.progress import display

    image_id = ""

    def aux(msg: Mapping[str, Any]) -> None:
        nonlocal image_id
        value = msg.get("aux")
        if isinstance(value, Mapping):
            image_id = str(value.get("ID") or "")
        else:
            import json

            err.write(f"Failed to parse aux message: json: cannot unmarshal {type(value).__name__} "
                      f"into Go value of type build.Result ({json.dumps(value)})")

    display(messages, out, is_terminal, on_aux=aux)
    return image_id


# ---- the command ------------------------------------------------------------------------------------------

@dataclass
class _Upload:
    """What goes out: the body (None: empty) and the ``dockerfile`` parameter."""

    body: Iterable[bytes] | None
    dockerfile: str
    remote: str = ""


def _prepare(ctx: Context, ns: argparse.Namespace) -> _Upload:
    """runBuild up to ImageBuild: find the context and make the body (lazily)."""
    spec = ns.args[0]
    kind = detect_context_type(spec)
    from_stdin = ns.file == "-"
    if from_stdin and kind == "stdin":
        raise CliError("invalid argument: can't use stdin for both build context and dockerfile")
    if kind == "stdin":
        return _stdin_context(ctx, ns.file)
    if kind in ("git", "remote"):
        # berthd fetches remote contexts itself (docker's CLI clones/downloads them on the client)
        if from_stdin:
            raise CliError("unable to prepare context: a Dockerfile on stdin needs a local context")
        return _Upload(None, ns.file, remote=spec)
    context_dir = resolve_context_dir(spec)
    rel = dockerfile_rel_path(context_dir, ns.file)
    dockerfile_data: bytes | None = None
    if from_stdin:
        dockerfile_data = ctx.binary_stdin().read()
    elif rel.startswith("../"):
        # a Dockerfile outside the context travels inside it under a random name
        try:
            with open(ns.file, "rb") as f:
                dockerfile_data = f.read()
        except OSError as err:
            raise CliError(f"unable to open Dockerfile: {err}") from None
    excludes = trim_build_files(read_dockerignore(context_dir), rel, from_stdin)
    entries = context_entries(context_dir, excludes)
    if dockerfile_data is None:
        return _Upload(tar_directory(context_dir, entries), rel)
    ignore_path = os.path.join(context_dir, DOCKERIGNORE)
    existing: bytes | None = None
    if DOCKERIGNORE in entries and os.path.isfile(ignore_path):
        with open(ignore_path, "rb") as f:
            existing = f.read()
    name, ignore_text = dockerfile_member(existing)
    extra = [ExtraFile(name, dockerfile_data)]
    replace: dict[str, bytes] = {}
    if existing is not None:
        replace[DOCKERIGNORE] = ignore_text
    else:
        extra.insert(0, ExtraFile(DOCKERIGNORE, ignore_text))
    return _Upload(tar_directory(context_dir, entries, replace, extra), name)


def _stdin_context(ctx: Context, dockerfile: str) -> _Upload:
    source = ctx.binary_stdin()
    head = _read_exactly(source, 1024)
    if is_archive(head):
        return _Upload(_read_stream(source, head), dockerfile)
    if dockerfile == "-":
        raise CliError("unable to prepare context from STDIN: build context is not an archive")
    if dockerfile:
        raise CliError("unable to prepare context from STDIN: ambiguous Dockerfile source: both stdin and flag "
                       "correspond to Dockerfiles")
    return _Upload(wrap_dockerfile(head + source.read()), DEFAULT_DOCKERFILE)


def _build(ctx: Context, ns: argparse.Namespace) -> int:
    import io

    from berth.cli.progress import StreamError
    from berth.errors import BerthError

    if ns.platform:
        _valid_platform(ns.platform)
    # -q: progress and build output are kept, and shown only when the build fails
    prog_buf, build_buf = (io.StringIO(), io.StringIO()) if ns.quiet else (None, None)
    if ns.iidfile:
        try:
            os.remove(ns.iidfile)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise CliError(f"removing image ID file: {err}") from None
    upload = _prepare(ctx, ns)
    params = build_params(ns, upload.dockerfile, upload.remote)
    body = upload.body
    if body is not None:
        if ns.compress:
            body = gzip_stream(body)
        body = SendProgress(prog_buf or ctx.stdout, ctx.stdout_is_tty()).count(body)
    headers = {"Content-Type": "application/x-tar", "X-Registry-Config": registry_config()}
    try:
        resp = ctx.client.post("/build", params, body=body, headers=headers, stream=True)
    except BerthError:
        if prog_buf is not None:
            ctx.err(prog_buf.getvalue())
        raise
    with resp:
        try:
            image_id = show_build_stream(resp.iter_json(), build_buf or ctx.stdout,
                                         build_buf is None and ctx.stdout_is_tty(), ctx.stderr)
        except StreamError as err:
            if prog_buf is not None and build_buf is not None:
                ctx.err(prog_buf.getvalue() + build_buf.getvalue())
            raise CliError(err.message, err.code or 1) from None
    if build_buf is not None:
        image_id = build_buf.getvalue()
        ctx.out(image_id)
        ctx.stdout.flush()
    if ns.iidfile:
        if not image_id:
            raise CliError(f"Server did not provide an image ID. Cannot write {ns.iidfile}")
        try:
            with open(ns.iidfile, "w") as f:
                f.write(image_id)
        except OSError as err:
            raise CliError(f"open {ns.iidfile}: {(err.strerror or str(err)).lower()}") from None
    return 0


def _configure(p: CommandParser) -> None:
    many: dict[str, Any] = {"action": "append", "default": []}
    p.add_argument("--add-host", metavar="list", help='Add a custom host-to-IP mapping ("host:ip")', **many)
    p.add_argument("--build-arg", metavar="list", help="Set build-time variables", **many)
    p.add_argument("--cache-from", metavar="strings", help="Images to consider as cache sources", **many)
    p.add_argument("--cgroup-parent", default="", metavar="string",
                   help='Set the parent cgroup for the "RUN" instructions during build')
    p.add_bool("--compress", help="Compress the build context using gzip")
    p.add_argument("--cpu-period", default="", metavar="int",
                   help="Limit the CPU CFS (Completely Fair Scheduler) period")
    p.add_argument("--cpu-quota", default="", metavar="int", help="Limit the CPU CFS (Completely Fair Scheduler) quota")
    p.add_argument("-c", "--cpu-shares", default="", metavar="int", help="CPU shares (relative weight)")
    p.add_argument("--cpuset-cpus", default="", metavar="string", help="CPUs in which to allow execution (0-3, 0,1)")
    p.add_argument("--cpuset-mems", default="", metavar="string", help="MEMs in which to allow execution (0-3, 0,1)")
    p.add_argument("-f", "--file", default="", metavar="string", help='Name of the Dockerfile (Default is '
                   '"PATH/Dockerfile")')
    p.add_bool("--force-rm", help="Always remove intermediate containers")
    p.add_argument("--iidfile", default="", metavar="string", help="Write the image ID to the file")
    p.add_argument("--isolation", default="", metavar="string", help="Container isolation technology")
    p.add_argument("--label", metavar="list", help="Set metadata for an image", **many)
    p.add_argument("-m", "--memory", default="", metavar="bytes", help="Memory limit")
    p.add_argument("--memory-swap", default="", metavar="bytes",
                   help="Swap limit equal to memory plus swap: -1 to enable unlimited swap")
    p.add_argument("--network", default="default", metavar="string",
                   help="Set the networking mode for the RUN instructions during build")
    p.add_bool("--no-cache", help="Do not use cache when building the image")
    p.add_argument("--platform", default=os.environ.get("DOCKER_DEFAULT_PLATFORM", ""), metavar="string",
                   help="Set platform if server is multi-platform capable")
    p.add_bool("--pull", help="Always attempt to pull a newer version of the image")
    p.add_bool("-q", "--quiet", help="Suppress the build output and print image ID on success")
    p.add_bool("--rm", default=True, help="Remove intermediate containers after a successful build")
    p.add_argument("--security-opt", metavar="strings", help="Security options", **many)
    p.add_argument("--shm-size", default="", metavar="bytes", help='Size of "/dev/shm"')
    p.add_bool("--squash", help="Squash newly built layers into a single new layer")
    p.add_argument("-t", "--tag", metavar="list", help='Name and optionally a tag in the "name:tag" format', **many)
    p.add_argument("--target", default="", metavar="string", help="Set the target build stage to build.")
    p.add_argument("--ulimit", metavar="ulimit", help="Ulimit options", **many)


BUILD = Command("build", "Build an image from a Dockerfile", "[OPTIONS] PATH | URL | -", _build, _configure,
                Arity(1, 1), metavar="PATH")

# ---- builder prune ---------------------------------------------------------------------------------------------

def _configure_prune(p: CommandParser) -> None:
    from berth.cli.objects import add_prune_flags

    add_prune_flags(p, all_help="Remove all unused build cache, not just dangling ones")
    p.add_argument("--keep-storage", default="", metavar="bytes", help="Amount of disk space to keep for cache")


def _prune(ctx: Context, ns: Any) -> int:
    """``docker builder prune``: berth's build cache is the RUN cache mounts (the layer cache is images)."""
    from berth.cli.command import filters_from
    from berth.cli.containers import ram_in_bytes
    from berth.cli.objects import confirm, filter_query, show_deleted, show_reclaimed

    warning = f"WARNING! This will remove all {'' if ns.all else 'dangling '}build cache."
    if not ns.force and not confirm(ctx, warning):
        return 0
    params: dict[str, Any] = {"filters": filter_query(filters_from(ns.filter)), "all": True if ns.all else None}
    if ns.keep_storage:
        params["keep-storage"] = ram_in_bytes(ns.keep_storage)
    report: dict[str, Any] = ctx.client.post("/build/prune", params).json() or {}
    show_deleted(ctx, "Deleted build cache objects:", list(report.get("CachesDeleted") or []))
    show_reclaimed(ctx, report)
    return 0


PRUNE = Command("prune", "Remove build cache", "[OPTIONS]", _prune, _configure_prune, Arity(0, 0))

COMMANDS = (BUILD,)
GROUPS = (
    Group("image", "Manage images", (BUILD,)),
    Group("builder", "Manage builds", (BUILD, PRUNE)),
)
