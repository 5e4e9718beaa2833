"""More Dockerfile builds end to end, each checked against what dockerd's classic builder does.

The real docker CLI (``DOCKER_BUILDKIT=0``), docker-py and docker-compose drive one shared berthd loaded with the
busybox fixture. ADD from URLs and remote contexts come from a ``http.server`` this module starts on 127.0.0.1.
"""

from __future__ import annotations

import bz2
import gzip
import http.server
import io
import lzma
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from berth.testing.rootfs import FIXTURES
from berth.testing.waiting import free_port, until
from test_build_api import build, inspect_image, make_context

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]

BUSYBOX = FIXTURES / "busybox-docker-save.tar"
COMPOSE = shutil.which("docker-compose")


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        if self.path == "/attachment/":  # a URL with no file name; the name comes from Content-Disposition
            data = b"disposed\n"
            self.send_response(200)
            self.send_header("Content-Disposition", 'attachment; filename="named.txt"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A static file server on 127.0.0.1: its base URL and the directory it serves."""
    root = tmp_path_factory.mktemp("www")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _run(daemon: Any, image: str, script: str, *args: str) -> str:
    return daemon.docker("run", "--rm", *args, image, "sh", "-c", script).stdout  # type: ignore[no-any-return]


def _tar(files: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- ADD ------------------------------------------------------------------------------------------------------------


def test_add_from_a_url(daemon: Any, web: tuple[str, Path], tmp_path: Path) -> None:
    base, www = web
    (www / "remote.txt").write_text("from the web\n")
    (www / "remote.tar.gz").write_bytes(_tar({"inside": b"x"}, "w:gz"))  # a remote archive is not extracted
    os.utime(www / "remote.txt", (1_600_000_000, 1_600_000_000))  # Last-Modified becomes the file's mtime
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": (
        f"FROM busybox\nADD {base}/remote.txt /dl/\nADD {base}/remote.txt /renamed\n"
        "RUN mkdir /isdir\n"
        f"ADD {base}/remote.txt /isdir\n"
        f"ADD {base}/remote.tar.gz /dl/\n"
        "RUN test -f /dl/remote.tar.gz && test ! -e /dl/inside\n"
        f"ADD {base}/attachment/ /dl/\n"
        "RUN cat /dl/named.txt\n"
        "RUN stat -c '%a %Y %n' /dl/remote.txt /renamed /isdir/remote.txt && cat /renamed\n")})
    res = build(daemon, ctx, "-t", "addurl:1")
    assert "600 1600000000 /dl/remote.txt\n600 1600000000 /renamed\n600 1600000000 /isdir/remote.txt\n" \
        "from the web\n" in res.stdout and "disposed\n" in res.stdout, res.stdout
    ctx = make_context(tmp_path / "ctx404", {"Dockerfile": f"FROM busybox\nADD {base}/missing.txt /dl/\n"})
    res = build(daemon, ctx, check=False)
    assert res.returncode != 0
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD {base}/ /dl/\n")
    nameless = build(daemon, ctx, check=False)
    assert nameless.returncode != 0 and f"cannot determine filename for source {base}/" in nameless.stderr
    assert f"failed to GET {base}/missing.txt with status 404 File not found: " in res.stderr, res.stderr


def test_add_extracts_local_archives(daemon: Any, tmp_path: Path) -> None:
    files = {"a/one.txt": b"one\n", "two.txt": b"two\n"}
    ctx = make_context(tmp_path / "ctx", {
        "plain.tar": _tar(files), "gz.tar.gz": _tar(files, "w:gz"), "xz.tar.xz": _tar(files, "w:xz"),
        "bz.tar.bz2": _tar(files, "w:bz2"), "notatar.gz": gzip.compress(b"just gzip\n"),
        "file.txt": "plain\n",
        "Dockerfile": ("FROM busybox\nADD plain.tar /p/\nADD gz.tar.gz /g\nADD xz.tar.xz /x/\nADD bz.tar.bz2 /b/\n"
                       "ADD notatar.gz file.txt /n/\n"
                       "RUN cd / && find p g x b n -type f | sort && cat /g/a/one.txt /x/two.txt\n"),
    })
    res = build(daemon, ctx)
    listing = [line for line in res.stdout.splitlines() if line[:2] in ("p/", "g/", "x/", "b/", "n/")]
    assert listing == ["b/a/one.txt", "b/two.txt", "g/a/one.txt", "g/two.txt", "n/file.txt", "n/notatar.gz",
                       "p/a/one.txt", "p/two.txt", "x/a/one.txt", "x/two.txt"], res.stdout
    assert "one\ntwo\n" in res.stdout
    assert bz2.decompress(bz2.compress(b"x")) == b"x" and lzma  # the stdlib codecs the fixtures used


# -- COPY -----------------------------------------------------------------------------------------------------------


def test_copy_from_images_stages_and_chown(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"f.txt": "f\n", "Dockerfile": (
        "FROM busybox AS first\nRUN echo zero > /zero\n"
        "FROM busybox\n"
        "RUN echo 'app:x:1001:1001::/:/bin/sh' >> /etc/passwd && echo 'appgrp:x:2002:' >> /etc/group"
        " && echo 'app:x:3003:' >> /etc/group\n"
        "COPY --from=busybox /bin/busybox /copied/busybox\n"
        "COPY --from=0 /zero /zero\n"
        "COPY --chown=app:appgrp f.txt /owned/byname\n"
        "COPY --chown=1234:5678 f.txt /owned/bynum\n"
        "COPY --chown=app f.txt /owned/useronly\n"
        "COPY --chown=42 f.txt /owned/numonly\n"
        "RUN stat -c '%u:%g %n' /owned/* && cat /zero && /copied/busybox true && echo ok\n")})
    res = build(daemon, ctx)
    assert ("1001:2002 /owned/byname\n1234:5678 /owned/bynum\n42:42 /owned/numonly\n1001:3003 /owned/useronly\n"
            "zero\nok\n") in res.stdout, res.stdout
    ctx = make_context(tmp_path / "ctx2", {"f.txt": "f\n",
                                       "Dockerfile": "FROM busybox\nCOPY --chown=nosuchuser f.txt /x\n"})
    res = build(daemon, ctx, check=False)
    assert res.returncode != 0, res
    assert ("unable to convert uid/gid chown string to host mapping: can't find uid for user nosuchuser: "
            "no such user: nosuchuser") in res.stderr, res.stderr


def test_copy_semantics(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {
        "dir/sub/deep.txt": "deep\n", "dir/top.txt": "top\n", "a.txt": "a\n", "b.txt": "b\n", "c.md": "c\n",
        "Dockerfile": (
            "FROM busybox\n"
            "RUN ln -s /tmp /link && mkdir /existing\n"
            "COPY dir /d1\n"
            "COPY *.txt /wild/\n"
            "COPY a.txt /existing\n"
            "WORKDIR /work\n"
            "COPY b.txt rel/\n"
            "COPY c.md here.md\n"
            "COPY a.txt /link/\n"
            "RUN find /d1 /wild /existing /work /tmp/a.txt | sort && test -L /link && echo link-kept\n")})
    res = build(daemon, ctx)
    found = [line for line in res.stdout.splitlines() if line.startswith("/")]
    assert found == ["/d1", "/d1/sub", "/d1/sub/deep.txt", "/d1/top.txt", "/existing", "/existing/a.txt",
                     "/tmp/a.txt", "/wild", "/wild/a.txt", "/wild/b.txt", "/work", "/work/here.md", "/work/rel",
                     "/work/rel/b.txt"], res.stdout
    assert "link-kept" in res.stdout
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY a.txt b.txt /nodir\n")
    res = build(daemon, ctx, check=False)
    assert res.returncode != 0
    assert "When using COPY with more than one source file, the destination must be a directory and end with a /" \
        in res.stderr
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY *.txt /nodir\n")
    res = build(daemon, ctx, check=False)
    assert res.returncode != 0 and "the destination must be a directory and end with a /" in res.stderr
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY nothing* /x/\n")
    res = build(daemon, ctx, check=False)
    assert res.returncode != 0 and "no source files were specified" in res.stderr, res.stderr


# -- ARG / ENV ------------------------------------------------------------------------------------------------------


def test_args_and_env(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": (
        "ARG IMG=busybox\nARG V=global\n"
        "FROM $IMG\n"
        "ARG V\n"
        "ARG FROMENV\n"
        "ARG OVER=arg\n"
        "ENV OVER=env\n"
        "ENV A=${UNSET:-dflt} B=${V:+set} C=${UNSET:+never}x\n"
        "RUN echo \"v=$V fromenv=$FROMENV over=$OVER a=$A b=$B c=$C\"\n")})
    env_before = os.environ.get("FROMENV")
    os.environ["FROMENV"] = "from-client"
    try:
        res = daemon.docker("build", "--build-arg", "FROMENV", "-t", "args:1", str(ctx))
    finally:
        if env_before is None:
            del os.environ["FROMENV"]
        else:
            os.environ["FROMENV"] = env_before
    # docker_env() copies os.environ at call time: the CLI reads FROMENV from it
    assert "v=global fromenv=from-client over=env a=dflt b=set c=x\n" in res.stdout, res.stdout
    cfg = inspect_image(daemon, "args:1")["Config"]
    assert not any(e.startswith(("V=", "FROMENV=")) for e in cfg["Env"])
    assert {"OVER=env", "A=dflt", "B=set", "C=x"} <= set(cfg["Env"])
    history = daemon.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", "args:1").stdout.splitlines()
    # OVER is left out: ENV sets it (moby's FilterAllowed)
    assert history[0] == ('|2 FROMENV=from-client V=global /bin/sh -c echo "v=$V fromenv=$FROMENV '
                          'over=$OVER a=$A b=$B c=$C"'), history[0]


def test_user_shell_onbuild_and_config(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "parent", {"Dockerfile": (
        "FROM busybox\n"
        "ONBUILD RUN echo triggered > /trigger\n"
        "ONBUILD ENV FROM_TRIGGER=yes\n"
        "USER 1234:5678\n"
        "RUN echo \"uid=$(id -u) gid=$(id -g)\"\n"
        "USER root\n"
        'SHELL ["/bin/sh", "-xc"]\n'
        "RUN echo shell-changed\n"
        'HEALTHCHECK --interval=5s --timeout=2s --retries=4 CMD ["true"]\n'
        "STOPSIGNAL SIGUSR1\n"
        "EXPOSE 8000-8002/udp 80\n"
        "VOLUME /data /logs\n")})
    res = build(daemon, ctx, "-t", "onb-parent:1")
    assert "+ echo shell-changed\n" in res.stdout and "uid=1234 gid=5678\n" in res.stdout, res.stdout
    cfg = inspect_image(daemon, "onb-parent:1")["Config"]
    assert cfg["OnBuild"] == ["RUN echo triggered > /trigger", "ENV FROM_TRIGGER=yes"]
    assert cfg["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 5_000_000_000, "Timeout": 2_000_000_000,
                                  "Retries": 4}
    assert cfg["StopSignal"] == "SIGUSR1"
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "8000/udp": {}, "8001/udp": {}, "8002/udp": {}}
    assert cfg["Volumes"] == {"/data": {}, "/logs": {}}
    assert cfg["Shell"] == ["/bin/sh", "-xc"]
    child = make_context(tmp_path / "child", {"Dockerfile": "FROM onb-parent:1\nRUN cat /trigger\n"})
    res = build(daemon, child, "-t", "onb-child:1")
    assert "# Executing 2 build triggers\n" in res.stdout and "triggered\n" in res.stdout, res.stdout
    cfg = inspect_image(daemon, "onb-child:1")["Config"]
    assert cfg["OnBuild"] is None and "FROM_TRIGGER=yes" in cfg["Env"]


# -- context --------------------------------------------------------------------------------------------------------


def test_dockerignore_exceptions_and_per_dockerfile(daemon: Any, tmp_path: Path) -> None:
    listing = "FROM busybox\nCOPY . /ctx/\nRUN cd /ctx && find . -type f | sort\n"
    ctx = make_context(tmp_path / "ctx", {
        ".dockerignore": "**/*.log\n!keep/**/*.log\ndocs\n",
        "a.log": "x", "deep/er/b.log": "x", "keep/sub/c.log": "y", "docs/readme": "x", "src/main.c": "m",
        "Dockerfile": listing, "build/Dockerfile": listing, "build/Dockerfile.dockerignore": "src\n",
    })
    res = build(daemon, ctx)
    files = [line for line in res.stdout.splitlines() if line.startswith("./")]
    assert files == ["./.dockerignore", "./Dockerfile", "./build/Dockerfile", "./build/Dockerfile.dockerignore",
                     "./keep/sub/c.log", "./src/main.c"], res.stdout
    # the docker CLI applies the root .dockerignore itself; the daemon then applies <Dockerfile>.dockerignore
    res = build(daemon, ctx, "-f", str(ctx / "build" / "Dockerfile"))
    files = [line for line in res.stdout.splitlines() if line.startswith("./")]
    assert "./src/main.c" not in files and "./keep/sub/c.log" in files, res.stdout
    # a client that sends everything: <Dockerfile>.dockerignore wins over .dockerignore (BuildKit's rule)
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as tf:
        tf.add(str(ctx), arcname=".")
    body.seek(0)
    chunks = list(daemon.client().api.build(fileobj=body, custom_context=True, dockerfile="build/Dockerfile",
                                            rm=True, decode=True))
    files = [line for line in "".join(c.get("stream", "") for c in chunks).splitlines() if line.startswith("./")]
    assert "./src/main.c" not in files and "./a.log" in files and "./docs/readme" in files, chunks


def test_stdin_tar_and_remotemake_context(daemon: Any, web: tuple[str, Path], tmp_path: Path) -> None:
    context_tar = _tar({"Dockerfile": b"FROM busybox\nCOPY hello /hello\nRUN cat /hello\n", "hello": b"tar-ctx\n"})
    res = daemon.docker("build", "-t", "stdin:1", "-", input=context_tar)
    assert "tar-ctx\n" in res.stdout
    res = daemon.docker("build", "-", input="FROM busybox\nRUN echo dockerfile-on-stdin\n")
    assert "dockerfile-on-stdin\n" in res.stdout
    base, www = web
    (www / "ctx.tar").write_bytes(context_tar)
    res = daemon.docker("build", "--no-cache", "-t", "remote:1", f"{base}/ctx.tar")
    assert "tar-ctx\n" in res.stdout and "Successfully tagged remote:1" in res.stdout
    (www / "Dockerfile.remote").write_text("FROM busybox\nRUN echo remote-dockerfile\n")
    res = daemon.docker("build", f"{base}/Dockerfile.remote")
    assert "remote-dockerfile\n" in res.stdout


# -- network --------------------------------------------------------------------------------------------------------


def test_network_none_add_host_and_buildkit_flags(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": (
        "FROM busybox\nRUN ip -o link | cut -d: -f2 | sed 's/^ */if=/' && grep myhost /etc/hosts\n")})
    res = build(daemon, ctx, "--network", "none", "--add-host", "myhost:10.1.2.3", "--no-cache")
    assert [line for line in res.stdout.splitlines() if line.startswith("if=")] == ["if=lo"], res.stdout
    assert "10.1.2.3\tmyhost" in res.stdout or "10.1.2.3 myhost" in res.stdout, res.stdout
    for flag in ("--security=insecure", "--device=/dev/null"):
        (ctx / "Dockerfile").write_text(f"FROM busybox\nRUN {flag} true\n")
        res = build(daemon, ctx, check=False)
        name = flag.split("=", 1)[0]
        assert res.returncode != 0
        assert f"the {name} option requires BuildKit" in res.stderr, res.stderr


# -- docker-py ------------------------------------------------------------------------------------------------------


def test_docker_py_low_level(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nARG GREET\nRUN echo \"$GREET\"\n"})
    client = daemon.client()
    chunks = list(client.api.build(path=str(ctx), buildargs={"GREET": "py-hello"}, nocache=True, decode=True,
                                   rm=True, tag="lowlevel:1"))
    text = "".join(c.get("stream", "") for c in chunks)
    assert "py-hello\n" in text and "Using cache" not in text
    assert any("aux" in c and c["aux"]["ID"].startswith("sha256:") for c in chunks)
    assert not any("error" in c for c in chunks)
    chunks = list(client.api.build(path=str(ctx), buildargs={"GREET": "py-hello"}, decode=True))
    assert "Using cache" in "".join(c.get("stream", "") for c in chunks)


# -- the cache ------------------------------------------------------------------------------------------------------


def test_cache_rules(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {
        ".dockerignore": "ignored.txt\n", "ignored.txt": "1", "used.txt": "u",
        "Dockerfile": "FROM busybox\nARG A=1\nRUN echo \"arg $A\"\nCOPY . /app/\nRUN echo after-copy\n",
    })
    first = build(daemon, ctx)
    again = build(daemon, ctx)
    assert again.stdout.count(" ---> Using cache") == 4, again.stdout
    (ctx / "ignored.txt").write_text("2")
    assert build(daemon, ctx).stdout.count(" ---> Using cache") == 4
    changed = build(daemon, ctx, "--build-arg", "A=2")
    assert changed.stdout.count(" ---> Using cache") == 1, changed.stdout  # the ARG step; RUN misses
    assert "arg 2" in changed.stdout
    # after a miss nothing later in the stage comes from the cache, even a step seen before on some parent
    (ctx / "used.txt").write_text("v")
    res = build(daemon, ctx)
    assert res.stdout.count(" ---> Using cache") == 2 and "after-copy" in res.stdout
    assert "Using cache" not in build(daemon, ctx, "--no-cache").stdout
    assert first.returncode == 0


# -- interruption ---------------------------------------------------------------------------------------------------


def test_client_disconnect_removes_the_run_container(daemon: Any, tmp_path: Path) -> None:
    assert daemon.docker("ps", "-aq").stdout == ""
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo started && sleep 30\n"})
    proc = subprocess.Popen(["docker", "build", "--no-cache", str(ctx)], env=daemon.docker_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 20
        while b"\nstarted\n" not in seen and time.monotonic() < deadline:
            seen += proc.stdout.readline()
        assert b"\nstarted\n" in seen, seen
        assert daemon.docker("ps", "-q").stdout.strip()  # the RUN's container
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    deadline = time.monotonic() + 5  # the RUN would take 30 s: the build must stop when its client goes
    while (left := daemon.docker("ps", "-a", "--format", "{{.ID}} {{.Command}} {{.Status}}").stdout) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == "", left


# -- compose --------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed")
def test_compose_builds_and_runs_a_service(daemon: Any, tmp_path: Path) -> None:
    assert COMPOSE is not None
    port = free_port()
    project = make_context(tmp_path / "proj", {
        "Dockerfile": "FROM busybox\nRUN mkdir /srv && echo built-by-compose > /srv/index.html\n"
                      "EXPOSE 8080\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/srv\"]\n",
        "docker-compose.yml": f'version: "3.8"\nservices:\n  web:\n    build: .\n'
                              f'    ports: ["127.0.0.1:{port}:8080"]\n',
    })
    env = {**os.environ, "DOCKER_HOST": daemon.host, "COMPOSE_INTERACTIVE_NO_CLI": "1"}

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([COMPOSE, "-p", "bldmore", *args], cwd=project, env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get() -> str:
        with opener.open(f"http://127.0.0.1:{port}/", timeout=3) as r:
            return str(r.read().decode())

    try:
        built = compose("build")
        assert built.returncode == 0, built.stdout + built.stderr
        up = compose("up", "-d")
        assert up.returncode == 0, up.stderr
        assert until(get, ignore=(OSError,), timeout=20) == "built-by-compose\n"
    finally:
        down = compose("down", "--rmi", "local")
    assert down.returncode == 0, down.stderr
