"""``berth build``: the context tar (.dockerignore, ``-f -``, stdin), flags → ``POST /build`` query, and the
rendering of the daemon's JSON stream, against a recording fake daemon on a unix socket."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from berth.cli import build
from berth.cli.command import CliError, Context
from berth.cli.main import execute
from berth.testing.fakedaemon import Fake as FakeDaemon
from berth.testing.fakedaemon import Reply, Req, serve
from berth.testing.fakedaemon import TextStream as Stream

IMAGE_ID = "sha256:" + "4a" * 32
OK_STREAM: list[dict[str, Any]] = [
    {"stream": "Step 1/2 : FROM busybox"}, {"stream": "\n"}, {"stream": " ---> b2aa39c304c2\n"},
    {"stream": "Step 2/2 : RUN echo hi"}, {"stream": "\n"}, {"stream": " ---> Running in 5f6c1a2b3c4d\n"},
    {"stream": "hi\n"}, {"stream": " ---> Removed intermediate container 5f6c1a2b3c4d\n"},
    {"stream": " ---> 4a4a4a4a4a4a\n"}, {"aux": {"ID": IMAGE_ID}},
    {"stream": "Successfully built 4a4a4a4a4a4a\n"}, {"stream": "Successfully tagged foo:latest\n"},
]
OK_TEXT = ("Step 1/2 : FROM busybox\n ---> b2aa39c304c2\nStep 2/2 : RUN echo hi\n ---> Running in 5f6c1a2b3c4d\n"
           "hi\n ---> Removed intermediate container 5f6c1a2b3c4d\n ---> 4a4a4a4a4a4a\n"
           "Successfully built 4a4a4a4a4a4a\nSuccessfully tagged foo:latest\n")
FAIL_STREAM: list[dict[str, Any]] = [
    {"stream": "Step 1/2 : FROM busybox"}, {"stream": "\n"},
    {"errorDetail": {"code": 3, "message": "The command '/bin/sh -c exit 3' returned a non-zero code: 3"},
     "error": "The command '/bin/sh -c exit 3' returned a non-zero code: 3"},
]


# ---- a fake berthd that records builds (berth.testing.fakedaemon) ----------------------------------------


@dataclass
class Fake:
    """The generic fake daemon with one route, POST /build, answering ``answer`` (or a 500 when ``status``)."""

    daemon: FakeDaemon
    answer: list[dict[str, Any]] = field(default_factory=lambda: list(OK_STREAM))
    status: int = 200

    @property
    def sock(self) -> str:
        return self.daemon.sock

    @property
    def seen(self) -> list[Req]:
        return self.daemon.requests

    def members(self) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
        return tar_members(self.seen[-1].body)

    def reply(self, req: Req) -> Reply:
        if self.status != 200:
            return Reply(self.status, {"message": "Cannot locate specified Dockerfile: Dockerfile"})
        return Reply(chunks=[json.dumps(msg).encode() + b"\r\n" for msg in self.answer])


def tar_members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        for info in tf:
            f = tf.extractfile(info) if info.isreg() else None
            out[info.name] = (info, f.read() if f else b"")
    return out


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("DOCKER_DEFAULT_PLATFORM", raising=False)
    with serve(str(tmp_path / "berth.sock")) as daemon:
        f = Fake(daemon)
        daemon.on("POST", "/build", f.reply)
        yield f


@dataclass
class Result:
    rc: int
    out: str
    err: str


def berth(fake: Fake, *argv: str, stdin: bytes = b"", tty: bool = False) -> Result:
    out, err = Stream(tty=tty), Stream()
    rc = execute(["-H", f"unix://{fake.sock}", *argv], Context(stdin=Stream(stdin), stdout=out, stderr=err))
    return Result(rc, out.text(), err.text())


@pytest.fixture
def ctxdir(tmp_path: Path) -> Path:
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "Dockerfile").write_text("FROM busybox\nRUN echo hi\n")
    return d


# ---- the context tar --------------------------------------------------------------------------------------

def test_directory_tar_is_ordered_owned_by_root_with_modes_and_links(ctxdir: Path, fake: Fake) -> None:
    (ctxdir / "b").mkdir()
    (ctxdir / "b" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(ctxdir / "b" / "run.sh", 0o4755)
    (ctxdir / "a.txt").write_bytes(b"x" * 1500)
    os.utime(ctxdir / "a.txt", (1_600_000_000.7, 1_600_000_000.7))
    os.symlink("a.txt", ctxdir / "link")
    os.link(ctxdir / "a.txt", ctxdir / "z-hard")
    os.chown(ctxdir / "a.txt", 1234, 5678)
    res = berth(fake, "build", str(ctxdir))
    assert res.rc == 0, res.err
    names = list(fake.members())
    assert names == ["Dockerfile", "a.txt", "b", "b/run.sh", "link", "z-hard"]
    assert b"b/\0\0" in fake.seen[-1].body  # directories carry a trailing slash (tarfile strips it on reading)
    m = fake.members()
    info, data = m["a.txt"]
    assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "", "", 1_600_000_000)
    assert data == b"x" * 1500
    assert m["b/run.sh"][0].mode == 0o4755 and m["b"][0].isdir()
    assert m["link"][0].issym() and m["link"][0].linkname == "a.txt"
    assert m["z-hard"][0].islnk() and m["z-hard"][0].linkname == "a.txt"
    seen = fake.seen[-1]
    assert seen.headers["Content-Type"] == "application/x-tar" and seen.headers["Transfer-Encoding"] == "chunked"
    assert seen.body.endswith(b"\0" * 1024) and len(seen.body) % 512 == 0


def test_dockerignore_excludes_but_dockerfile_and_itself_are_always_sent(ctxdir: Path, fake: Fake) -> None:
    (ctxdir / ".dockerignore").write_text("# comment\nDockerfile\n.dockerignore\n*.log\nnode_modules\n"
                                          "docs\n!docs/keep.md\n")
    (ctxdir / "app.log").write_text("x")
    (ctxdir / "main.py").write_text("print()")
    (ctxdir / "node_modules" / "pkg").mkdir(parents=True)
    (ctxdir / "node_modules" / "pkg" / "index.js").write_text("x")
    (ctxdir / "docs").mkdir()
    (ctxdir / "docs" / "keep.md").write_text("k")
    (ctxdir / "docs" / "drop.md").write_text("d")
    assert berth(fake, "build", str(ctxdir)).rc == 0
    # an excluded directory is walked for its exception, but not sent itself (moby's Tarballer)
    assert list(fake.members()) == [".dockerignore", "Dockerfile", "docs/keep.md", "main.py"]


def test_dockerfile_from_stdin_joins_the_context_under_a_random_name(ctxdir: Path, fake: Fake) -> None:
    (ctxdir / "data.txt").write_text("d")
    res = berth(fake, "build", "-f", "-", str(ctxdir), stdin=b"FROM scratch\nCOPY data.txt /\n")
    assert res.rc == 0, res.err
    name = fake.seen[-1].query["dockerfile"][0]
    assert name.startswith(".dockerfile.") and len(name) == len(".dockerfile.") + 20
    int(name.rsplit(".", 1)[1], 16)
    m = fake.members()
    assert list(m)[-2:] == [".dockerignore", name]
    assert m[name][1] == b"FROM scratch\nCOPY data.txt /\n" and m[name][0].mode == 0o600
    assert m[".dockerignore"][1] == f".dockerignore\n{name}\n".encode()
    # with a .dockerignore of its own, that file is rewritten in place
    (ctxdir / ".dockerignore").write_text("*.tmp")
    assert berth(fake, "build", "-f", "-", str(ctxdir), stdin=b"FROM scratch\n").rc == 0
    name = fake.seen[-1].query["dockerfile"][0]
    m = fake.members()
    assert list(m) == [".dockerignore", "Dockerfile", "data.txt", name]
    assert m[".dockerignore"][1] == f"*.tmp\n{name}\n".encode()


def test_dockerfile_outside_the_context_is_sent_inside_it(ctxdir: Path, tmp_path: Path, fake: Fake,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Other.dockerfile").write_text("FROM other\n")
    sub = ctxdir / "sub"
    sub.mkdir()
    (sub / "Dockerfile.dev").write_text("FROM dev\n")
    monkeypatch.chdir(tmp_path)
    assert berth(fake, "build", "-f", "Other.dockerfile", "ctx").rc == 0
    name = fake.seen[-1].query["dockerfile"][0]
    assert name.startswith(".dockerfile.") and fake.members()[name][1] == b"FROM other\n"
    # -f is relative to the current directory, and inside the context it is passed by its relative path
    assert berth(fake, "build", "-f", "ctx/sub/Dockerfile.dev", "ctx").rc == 0
    assert fake.seen[-1].query["dockerfile"] == ["sub/Dockerfile.dev"]


def test_context_errors_use_docker_wording(tmp_path: Path, fake: Fake) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = berth(fake, "build", str(empty))
    assert res.rc == 1
    assert res.err == (f"unable to prepare context: unable to evaluate symlinks in Dockerfile path: "
                       f"lstat {empty}/Dockerfile: no such file or directory\n")
    res = berth(fake, "build", str(tmp_path / "nope"))
    assert res.err == f'unable to prepare context: path "{tmp_path}/nope" not found\n'
    res = berth(fake, "build", "-f", "-", "-")
    assert res.err == "invalid argument: can't use stdin for both build context and dockerfile\n"
    assert berth(fake, "build").err.startswith("berth: 'berth build' requires 1 argument")
    (empty / "dockerfile").write_text("FROM x\n")
    assert berth(fake, "build", str(empty)).rc == 0
    assert fake.seen[-1].query["dockerfile"] == ["dockerfile"]
    assert not fake.seen[:-1]


def test_stdin_tar_is_sent_as_is_and_a_stdin_dockerfile_is_wrapped(fake: Fake) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        info = tarfile.TarInfo("Dockerfile")
        info.size = 13
        tf.addfile(info, io.BytesIO(b"FROM busybox\n"))
    assert berth(fake, "build", "-", stdin=raw.getvalue()).rc == 0
    assert fake.seen[-1].body == raw.getvalue() and "dockerfile" not in fake.seen[-1].query
    assert berth(fake, "build", "-", stdin=b"FROM busybox\nRUN true\n").rc == 0
    m = fake.members()
    assert list(m) == ["Dockerfile"] and m["Dockerfile"][1] == b"FROM busybox\nRUN true\n"
    assert fake.seen[-1].query["dockerfile"] == ["Dockerfile"]
    res = berth(fake, "build", "-f", "x", "-", stdin=b"FROM busybox\n")
    assert res.err == ("unable to prepare context from STDIN: ambiguous Dockerfile source: both stdin and flag "
                       "correspond to Dockerfiles\n")


def test_url_context_goes_as_remote_with_an_empty_body(fake: Fake) -> None:
    res = berth(fake, "build", "-q", "https://example.com/repo.git#main:sub")
    assert res.rc == 0
    seen = fake.seen[-1]
    assert seen.query["remote"] == ["https://example.com/repo.git#main:sub"] and seen.body == b""
    assert build.detect_context_type("git@github.com:a/b") == "git"
    assert build.detect_context_type("http://example.com/ctx.tar.gz") == "remote"


# ---- flags → query ----------------------------------------------------------------------------------------

def test_flags_become_the_cli_query(ctxdir: Path, fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_ENV", "e")
    monkeypatch.delenv("UNSET_ARG", raising=False)
    res = berth(fake, "build", "-t", "foo:1", "--tag", "bar", "--build-arg", "A=1", "--build-arg", "FROM_ENV",
                "--build-arg", "UNSET_ARG", "--label", "x=<y>", "--label", "bare", "--target", "final",
                "--no-cache", "--pull", "--network", "host", "--add-host", "db:10.0.0.2", "--rm=false",
                "--force-rm", "--platform", "linux/AMD64", "--shm-size", "64m", "-m", "1g", "--ulimit",
                "nofile=10:20", "--cache-from", "a,b", str(ctxdir))
    assert res.rc == 0, res.err
    seen = fake.seen[-1]
    assert seen.query == {
        "t": ["foo:1", "bar"], "buildargs": ['{"A":"1","FROM_ENV":"e","UNSET_ARG":null}'],
        "labels": ['{"bare":"","x":"\\u003cy\\u003e"}'], "target": ["final"], "nocache": ["1"], "pull": ["1"],
        "networkmode": ["host"], "extrahosts": ["db:10.0.0.2"], "rm": ["0"], "forcerm": ["1"],
        "platform": ["linux/amd64"], "shmsize": [str(64 << 20)], "memory": [str(1 << 30)],
        "ulimits": ['[{"Name":"nofile","Hard":20,"Soft":10}]'], "cachefrom": ['["a","b"]'],
        "dockerfile": ["Dockerfile"], "version": ["1"],
    }
    assert seen.headers["X-Registry-Config"] == "e30="
    # the defaults send only what docker sends, keys in url.Values order
    assert berth(fake, "build", str(ctxdir)).rc == 0
    assert fake.seen[-1].query == {"dockerfile": ["Dockerfile"], "version": ["1"]}


def test_bad_flag_values_fail_before_anything_is_sent(ctxdir: Path, fake: Fake) -> None:
    cases = {
        ("-t", "Foo"): 'invalid argument "Foo" for "-t, --tag" flag: invalid reference format: repository name '
                       "(library/Foo) must be lowercase",
        ("--build-arg", "=x"): 'invalid argument "=x" for "--build-arg" flag: invalid environment variable: =x',
        ("-m", "lots"): "invalid argument \"lots\" for \"-m, --memory\" flag: invalid size: 'lots'",
        ("--add-host", "nohost"): 'invalid argument "nohost" for "--add-host" flag: bad format for add-host: '
                                  '"nohost"',
    }
    for flag, message in cases.items():
        res = berth(fake, "build", *flag, str(ctxdir))
        assert (res.rc, res.err) == (125, message + "\n")
    assert not fake.seen


def test_registry_config_carries_every_stored_login(ctxdir: Path, tmp_path: Path, fake: Fake) -> None:
    config = tmp_path / "docker-config" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"auths": {"localhost:5000": {"auth": base64.b64encode(b"user:pass").decode()}}}))
    assert berth(fake, "build", str(ctxdir)).rc == 0
    sent = base64.urlsafe_b64decode(fake.seen[-1].headers["X-Registry-Config"])
    assert sent == b'{"localhost:5000":{"username":"user","password":"pass","serveraddress":"localhost:5000"}}'


# ---- the answer -------------------------------------------------------------------------------------------

def test_stream_is_printed_as_is_after_the_sending_line(ctxdir: Path, fake: Fake, tmp_path: Path) -> None:
    iid = tmp_path / "iid"
    iid.write_text("stale")
    res = berth(fake, "build", "--iidfile", str(iid), str(ctxdir))
    assert res.rc == 0 and res.err == ""
    size = len(fake.seen[-1].body)
    assert res.out == f"Sending build context to Docker daemon  {size / 1000:.4g}kB\r\r\n" + OK_TEXT
    assert iid.read_text() == IMAGE_ID


def test_quiet_prints_only_the_id_and_the_iidfile_gets_it(ctxdir: Path, fake: Fake, tmp_path: Path) -> None:
    fake.answer = [{"stream": IMAGE_ID + "\n"}]
    iid = tmp_path / "iid"
    res = berth(fake, "build", "-q", "--iidfile", str(iid), str(ctxdir))
    assert (res.rc, res.out, res.err) == (0, IMAGE_ID + "\n", "")
    assert fake.seen[-1].query["q"] == ["1"]
    assert iid.read_text() == IMAGE_ID + "\n"


def test_error_detail_goes_to_stderr_with_the_run_exit_code(ctxdir: Path, fake: Fake, tmp_path: Path) -> None:
    fake.answer = FAIL_STREAM
    iid = tmp_path / "iid"
    iid.write_text("stale")
    res = berth(fake, "build", "--iidfile", str(iid), str(ctxdir))
    assert res.rc == 3
    assert res.out.endswith("Step 1/2 : FROM busybox\n")
    assert res.err == "The command '/bin/sh -c exit 3' returned a non-zero code: 3\n"
    assert not iid.exists()  # removed up front so a failed build leaves no stale ID
    # quiet: the buffered output is shown on stderr before the error
    res = berth(fake, "build", "-q", str(ctxdir))
    assert res.rc == 3 and res.out == ""
    assert res.err.startswith("Sending build context to Docker daemon")
    assert res.err.endswith("Step 1/2 : FROM busybox\nThe command '/bin/sh -c exit 3' returned a non-zero code: 3\n")
    fake.answer = [{"error": "no code"}]
    assert berth(fake, "build", str(ctxdir)).rc == 1


def test_iidfile_without_an_aux_id_fails(ctxdir: Path, fake: Fake, tmp_path: Path) -> None:
    fake.answer = [{"stream": "Successfully built 4a4a4a4a4a4a\n"}]
    res = berth(fake, "build", "--iidfile", str(tmp_path / "iid"), str(ctxdir))
    assert res.rc == 1 and res.err == f"Server did not provide an image ID. Cannot write {tmp_path / 'iid'}\n"


def test_an_error_before_the_stream_is_an_error_response(ctxdir: Path, fake: Fake) -> None:
    fake.status = 500
    res = berth(fake, "build", str(ctxdir))
    assert res.rc == 1 and res.err == "Error response from daemon: Cannot locate specified Dockerfile: Dockerfile\n"


def test_send_progress_redraws_on_a_terminal_only() -> None:
    ticks = iter([0.0, 0.05, 0.2, 0.25])
    out = io.StringIO()
    chunks = list(build.SendProgress(out, True, clock=lambda: next(ticks)).count([b"x" * 600_000] * 3 + [b"x"]))
    assert len(chunks) == 4
    lines = out.getvalue().split("\r")
    # one update per 512 kB: at 600 kB, at 1.2 MB (dropped: 50 ms after the last), at 1.8 MB; then the last one
    assert lines[:-1] == [f"Sending build context to Docker daemon {s:>8}" for s in ("600kB", "1.8MB", "1.8MB")] + [""]
    assert out.getvalue().endswith("1.8MB\r\r\n")
    quiet = io.StringIO()
    list(build.SendProgress(quiet, False).count([b"x" * 400_000] * 5))
    assert quiet.getvalue() == "Sending build context to Docker daemon      2MB\r\r\n"


def test_archive_detection() -> None:
    assert build.is_archive(b"\x1f\x8b\x08\x00rest")
    assert not build.is_archive(b"FROM busybox\n" + b" " * 1024)
    assert not build.is_archive(b"\0" * 1024)
    with pytest.raises(CliError):
        build.detect_context_type("/definitely/not/here")


# ---- end to end: the real berth executable against a real berthd ------------------------------------------

@pytest.mark.root
@pytest.mark.docker_cli
def test_build_end_to_end_matches_the_docker_cli(berthd: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    from berth.testing.rootfs import FIXTURES

    exe = str(Path(sys.executable).with_name("berth"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")

    def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        raw = subprocess.run([exe, "-H", berthd.host, *args], input=stdin, capture_output=True, env=env,
                             timeout=120, check=False)
        return subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode())

    assert run("load", "-q", "-i", str(FIXTURES / "busybox-docker-save.tar")).returncode == 0
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx/\nRUN cat /ctx/hello.txt\n")
    (ctx / "hello.txt").write_text("hello from the context\n")
    (ctx / ".dockerignore").write_text("*.log\n")
    (ctx / "junk.log").write_text("ignored\n")
    iid = tmp_path / "iid"
    res = run("build", "-t", "built:1", "--iidfile", str(iid), str(ctx))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("Sending build context to Docker daemon ")
    assert "hello from the context\n" in res.stdout and "Successfully tagged built:1\n" in res.stdout
    image_id = iid.read_text()
    assert run("image", "inspect", "-f", "{{.Id}}", "built:1").stdout == image_id + "\n"
    # .dockerignore applied by the CLI, and -f - sends a Dockerfile the image never sees
    check = b"FROM built:1\nRUN test ! -e /ctx/junk.log && test -e /ctx/hello.txt\nCOPY . /again/\n" \
            b"RUN ls -A /again && test ! -e /again/junk.log && ! ls /again/.dockerfile.* 2>/dev/null\n"
    res = run("build", "-q", "-f", "-", str(ctx), stdin=check)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("sha256:") and len(res.stdout) == 72
    # a Dockerfile outside the context (it travels inside it under a random name)
    (tmp_path / "Dockerfile.fail").write_text("FROM busybox\nRUN exit 3\n")
    res = run("build", "-f", str(tmp_path / "Dockerfile.fail"), str(ctx))
    assert res.returncode == 3
    assert res.stderr.endswith("The command '/bin/sh -c exit 3' returned a non-zero code: 3\n")
    # a rebuild is all cache hits, so the docker CLI prints exactly what berth prints (same tar, same steps)
    mine = run("build", "-t", "built:1", str(ctx))
    theirs = berthd.docker("build", "-t", "built:1", str(ctx), check=False)
    assert mine.returncode == theirs.returncode == 0
    assert " ---> Using cache\n" in mine.stdout
    assert mine.stdout == theirs.stdout
