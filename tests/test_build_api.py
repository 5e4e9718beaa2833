"""Dockerfile builds through the real docker CLI (legacy builder, ``DOCKER_BUILDKIT=0``) and docker-py.

The oracle: ``multilayer.Dockerfile`` in the shared fixtures is what real Docker built the multilayer fixture
image from; berth building it on the same busybox must give the same config, the same history and the same
container filesystem.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from berth.testing.daemon import request
from berth.testing.rootfs import FIXTURES
from test_layers_fixture import expected_listing, listing

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]

BUSYBOX = FIXTURES / "busybox-docker-save.tar"
MULTILAYER = FIXTURES / "multilayer-docker-save.tar"


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    shared_berthd.docker("load", "-i", str(MULTILAYER))
    return shared_berthd


def make_context(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def build(daemon: Any, ctx: Path | str, *args: str, check: bool = True,
          input: bytes | str | None = None) -> subprocess.CompletedProcess[str]:
    return daemon.docker("build", *args, str(ctx), check=check, input=input)  # type: ignore[no-any-return]


def inspect_image(daemon: Any, ref: str) -> dict[str, Any]:
    return json.loads(daemon.docker("image", "inspect", ref).stdout)[0]  # type: ignore[no-any-return]


def test_the_fixtures_dockerfile_gives_dockers_image(daemon: Any, tmp_path: Path) -> None:
    greeting = daemon.docker("run", "--rm", "berth-fixture/multilayer:1.0").stdout
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": (FIXTURES / "multilayer.Dockerfile").read_text(),
                                      "greeting.txt": greeting})
    res = build(daemon, ctx, "-t", "rebuilt:1")
    assert "Step 1/11 : FROM busybox" in res.stdout and "Successfully tagged rebuilt:1\n" in res.stdout
    assert " ---> Running in " in res.stdout
    ours, theirs = inspect_image(daemon, "rebuilt:1"), inspect_image(daemon, "berth-fixture/multilayer:1.0")
    for key in ("Env", "WorkingDir", "ExposedPorts", "Volumes", "Labels", "Cmd", "Entrypoint", "User"):
        assert ours["Config"][key] == theirs["Config"][key], key
    assert len(ours["RootFS"]["Layers"]) == len(theirs["RootFS"]["Layers"])
    assert ours["RootFS"]["Layers"][0] == theirs["RootFS"]["Layers"][0]  # busybox's layer, shared
    fmt = ("--no-trunc", "--format", "{{.CreatedBy}}")
    assert daemon.docker("history", *fmt, "rebuilt:1").stdout.splitlines()[:-1] == \
        daemon.docker("history", *fmt, "berth-fixture/multilayer:1.0").stdout.splitlines()[:-1]
    # the container filesystem, compared with what real Docker exported from its build
    cid = daemon.docker("create", "rebuilt:1").stdout.strip()
    exported = subprocess.run(["docker", "export", cid], env=daemon.docker_env(), capture_output=True,
                              check=True).stdout
    root = tmp_path / "rootfs"
    root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", "-", "-C", str(root)], input=exported, check=True)
    assert listing(root) == expected_listing()
    daemon.docker("rm", cid)
    # and it runs
    assert daemon.docker("run", "--rm", "rebuilt:1").stdout == greeting


def test_cache_reuses_steps_and_says_why_it_missed(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {
        "Dockerfile": "FROM busybox\nRUN echo built > /built\nCOPY app.txt /app/\nRUN cat /app/app.txt\n",
        "app.txt": "v1\n",
    })
    first = build(daemon, ctx, "-t", "cached:1")
    assert first.stdout.count("Using cache") == 0
    again = build(daemon, ctx, "-t", "cached:2")
    assert again.stdout.count(" ---> Using cache") == 3, again.stdout
    assert inspect_image(daemon, "cached:1")["Id"] == inspect_image(daemon, "cached:2")["Id"]
    (ctx / "app.txt").write_text("v2\n")
    changed = build(daemon, ctx, "-t", "cached:3")
    assert changed.stdout.count(" ---> Using cache") == 1  # the RUN before the COPY
    assert " ---> Cache miss: this instruction ran here before with other inputs" in changed.stdout
    assert "v2" in changed.stdout
    nocache = build(daemon, ctx, "--no-cache", "-t", "cached:4")
    assert "Using cache" not in nocache.stdout and "Cache miss" not in nocache.stdout
    # intermediate images: hidden from `docker images`, shown with -a, removed with the image
    plain = daemon.docker("images", "-q", "--no-trunc").stdout.split()
    everything = daemon.docker("images", "-a", "-q", "--no-trunc").stdout.split()
    assert len(everything) > len(plain)
    assert inspect_image(daemon, "cached:3")["Parent"].startswith("sha256:")
    removed = daemon.docker("rmi", "cached:4").stdout
    assert removed.count("Deleted: ") == 3  # the image and its two intermediates (FROM busybox stays)


def test_a_failing_run_fails_the_build_with_its_code(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo before; exit 3\nRUN echo never\n"})
    res = build(daemon, ctx, check=False)
    assert res.returncode == 3, res
    assert "The command '/bin/sh -c echo before; exit 3' returned a non-zero code: 3" in res.stderr
    assert "before\n" in res.stdout and "never" not in res.stdout


def test_multi_stage_target_args(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": (
        "ARG BASE=busybox SECOND=x\n"
        "FROM ${BASE} AS builder\n"
        "ARG GREETING=hello\n"
        "RUN mkdir /out && echo \"$GREETING from builder\" > /out/msg\n"
        "FROM busybox AS tester\n"
        "RUN echo tester-ran > /t\n"
        "FROM $BASE\n"
        "ARG SECOND\n"
        "RUN test \"$SECOND\" = x\n"
        "COPY --from=builder /out/msg /msg\n"
        "CMD [\"cat\", \"/msg\"]\n")})
    res = build(daemon, ctx, "-t", "multi:1", "--build-arg", "GREETING=hi", "--build-arg", "UNUSED=1")
    assert "Step 1/11 : ARG BASE=busybox SECOND=x" in res.stdout
    assert "[Warning] One or more build-args [UNUSED] were not consumed" in res.stdout
    assert daemon.docker("run", "--rm", "multi:1").stdout == "hi from builder\n"
    res = build(daemon, ctx, "-t", "multi:tester", "--target", "tester")
    assert daemon.docker("run", "--rm", "multi:tester", "cat", "/t").stdout == "tester-ran\n"
    res = build(daemon, ctx, "--target", "nosuch", check=False)
    assert res.returncode != 0 and 'target stage "nosuch" could not be found' in res.stderr


def test_dockerignore_stdin_dockerfile_and_errors(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {
        ".dockerignore": "secret*\n*.log\n!keep.log\n",
        "secret.txt": "no", "a.log": "no", "keep.log": "yes", "app/main.py": "print('hi')\n",
    })
    dockerfile = "FROM busybox\nCOPY . /ctx/\nRUN find /ctx -type f | sort\n"
    res = daemon.docker("build", "-f", "-", str(ctx), input=dockerfile)
    files = [line for line in res.stdout.splitlines() if line.startswith("/ctx/")]
    assert files == ["/ctx/.dockerignore", "/ctx/app/main.py", "/ctx/keep.log"]
    # the docker CLI looks for the Dockerfile itself; the daemon's answer, for other clients
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("hello")
        tf.addfile(info, io.BytesIO(b""))
    status, _headers, body = request(daemon.http(), "POST", "/v1.44/build", buf.getvalue(),
                                     {"Content-Type": "application/x-tar"})
    assert (status, json.loads(body)) == (400, {"message": "Cannot locate specified Dockerfile: Dockerfile"})
    status, _headers, body = request(daemon.http(), "POST", "/v1.44/build?t=Bad:Tag", buf.getvalue())
    assert status == 400 and "invalid reference format" in json.loads(body)["message"]
    (ctx / "Dockerfile").write_text("FROM busybox\nFOOBAR x\n")
    res = daemon.docker("build", str(ctx), check=False)
    assert res.returncode != 0 and "unknown instruction: FOOBAR" in res.stderr
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY ../outside /x\n")
    res = daemon.docker("build", str(ctx), check=False)
    assert res.returncode != 0 and "outside the build context" in res.stderr + res.stdout


def test_scratch_copy_symlinks_stay_links_and_add_extracts_safely(daemon: Any, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/../../../../.."
        tf.addfile(link)
        data = b"inside\n"
        f = tarfile.TarInfo("escape/pwned")
        f.size = len(data)
        tf.addfile(f, io.BytesIO(data))
    before = daemon.docker("images", "-a", "-q").stdout.split()
    ctx = make_context(tmp_path / "ctx", {"bundle.tar.gz": buf.getvalue(), "hello": "hello\n"})
    (ctx / "links").mkdir()
    os.symlink("/etc/passwd", ctx / "links" / "passwd-link")  # inside a copied directory: stays a link
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY hello links /files/\nADD bundle.tar.gz /unpacked/\n")
    res = build(daemon, ctx, "-t", "scratchy:1", check=False)
    # whatever the verdict on the hostile member, nothing may land outside the image
    assert not Path("/pwned").exists()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY links/passwd-link /x\n")
    followed = build(daemon, ctx, check=False)  # a source that is a link is followed, inside the context
    assert followed.returncode != 0 and "stat links/passwd-link: file does not exist" in followed.stderr
    assert res.returncode == 0, res.stderr
    cid = daemon.docker("create", "scratchy:1", "x").stdout.strip()
    out = subprocess.run(["docker", "export", cid], env=daemon.docker_env(), capture_output=True,
                         check=True).stdout
    daemon.docker("rm", cid)
    with tarfile.open(fileobj=io.BytesIO(out)) as tf:
        members = {m.name.rstrip("/"): m for m in tf.getmembers()}
    assert members["files/passwd-link"].issym() and members["files/passwd-link"].linkname == "/etc/passwd"
    assert members["pwned"].isfile()  # written through the planted link: it resolved inside the image
    assert members["files/hello"].isfile()
    # the zero-layer base the scratch stage stood on is not an image anyone sees, even with -a
    added = set(daemon.docker("images", "-a", "-q").stdout.split()) - set(before)
    assert added and all(json.loads(daemon.docker("image", "inspect", i).stdout)[0]["RootFS"]["Layers"]
                         for i in added)


def test_docker_py_build_quiet_and_iidfile(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nLABEL via=docker-py\nENV X=1\n"})
    client = daemon.client()
    image, logs = client.images.build(path=str(ctx), tag="pybuilt:1", labels={"extra": "yes"})
    assert image.labels == {"via": "docker-py", "extra": "yes"}
    assert any("Successfully built" in (chunk.get("stream") or "") for chunk in logs)
    res = daemon.docker("build", "-q", str(ctx))
    assert res.stdout.strip().startswith("sha256:") and "Step" not in res.stdout
    iid = tmp_path / "iid"
    daemon.docker("build", "--iidfile", str(iid), str(ctx))
    assert iid.read_text().startswith("sha256:")


def test_symlink_breakout_through_add(daemon: Any, tmp_path: Path) -> None:
    """moby's TestBuildSymlinkBreakout (security.md §1.4): an ADDed tar plants symlinks that lead to the host's
    root and then to a host folder; the next ADD writes through them, and must land inside the image."""
    host_dir = tmp_path / "host-target"
    host_dir.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, target in (("symlink2", "/../../../../../../../../../../../../../../"),
                             ("symlink", "symlink2" + str(host_dir))):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nADD symlink.tar /\nADD inject /symlink/\n",
                                          "symlink.tar": buf.getvalue(), "inject": "x\n"})
    build(daemon, ctx, "--no-cache", "-t", "breakout:1")
    assert not (host_dir / "inject").exists(), "symlink breakout: ADD wrote into a host folder"
    assert daemon.docker("run", "--rm", "breakout:1", "cat", f"{host_dir}/inject").stdout == "x\n"


def test_image_prune_during_a_build_leaves_its_images(daemon: Any, tmp_path: Path) -> None:
    """An earlier stage's image is untagged and childless while later stages run: `docker image prune` (compose and
    test suites run it often) must not take it from under the build's COPY --from."""
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": (
        "FROM busybox AS builder\nRUN echo built > /artifact\n"
        "FROM busybox\nRUN sleep 2\nCOPY --from=builder /artifact /artifact\nRUN cat /artifact\n")})
    proc = subprocess.Popen(["docker", "build", "--no-cache", "-t", "pruned-under:1", str(ctx)],
                            env=daemon.docker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Step 4/6" in line:
            break
    pruned = daemon.docker("image", "prune", "-f").stdout
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, pruned + out + err
    assert "built\n" in out
