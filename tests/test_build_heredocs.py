"""Dockerfile heredocs (``RUN <<EOF``, ``COPY <<EOF``) built through the real docker CLI (``DOCKER_BUILDKIT=0``).

dockerd's classic builder reads heredocs but does not run them; berth gives them BuildKit's meaning (Dockerfile
syntax 1.4+): a lone heredoc is the RUN's script, a command line with heredocs goes to the shell whole, a ``#!``
script runs as a file, and ``COPY <<NAME`` makes the file NAME.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from berth.testing.rootfs import FIXTURES
from test_build_api import build, inspect_image, make_context

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(FIXTURES / "busybox-docker-save.tar"))
    return shared_berthd


def _cat(daemon: Any, image: str, *paths: str) -> str:
    return daemon.docker("run", "--rm", image, "cat", *paths).stdout  # type: ignore[no-any-return]


def test_run_heredocs(daemon: Any, tmp_path: Path) -> None:
    dockerfile = (
        "FROM busybox\n"
        "ENV WHO=world\n"
        "RUN <<EOF\n"
        "echo \"hello $WHO\" > /simple\n"
        "echo second line >> /simple\n"
        "EOF\n"
        "RUN <<-EOF\n"
        "\techo tabs stripped > /chomped\n"
        "\tEOF\n"
        "RUN cat <<A > /a && cat <<'B' > /b\n"
        "a says $WHO\n"
        "A\n"
        "b keeps $WHO\n"
        "B\n"
        "RUN <<EOT\n"
        "#!/bin/sh\n"
        "echo \"script at $0\" > /script\n"
        "EOT\n"
        "RUN true\n"
    )
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": dockerfile})
    res = build(daemon, ctx, "-t", "heredoc-run:1")
    assert "Step 3/7 : RUN <<EOF\necho \"hello $WHO\" > /simple\necho second line >> /simple\nEOF\n" in res.stdout
    assert "Step 7/7 : RUN true\n" in res.stdout  # the heredoc lines are no instructions
    assert _cat(daemon, "heredoc-run:1", "/simple", "/chomped", "/a", "/b", "/script") == (
        "hello world\nsecond line\ntabs stripped\na says world\nb keeps $WHO\nscript at /dev/pipes/EOT\n")
    # the script's mount leaves nothing in the image
    assert daemon.docker("run", "--rm", "heredoc-run:1", "ls", "-A", "/dev/pipes", check=False).returncode != 0
    history = daemon.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", "heredoc-run:1").stdout
    assert "/bin/sh -c /dev/pipes/EOT" in history


def test_run_heredoc_failure_and_cache(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN <<EOF\necho one\nexit 4\nEOF\n"})
    res = build(daemon, ctx, check=False)
    assert res.returncode == 4 and "one\n" in res.stdout
    assert "The command '/bin/sh -c echo one\nexit 4\n' returned a non-zero code: 4" in res.stderr
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN <<EOT\n#!/bin/sh\necho v1 > /v\nEOT\n")
    first = build(daemon, ctx, "-t", "heredoc-cache:1")
    again = build(daemon, ctx, "-t", "heredoc-cache:2")
    assert "Using cache" not in first.stdout and " ---> Using cache" in again.stdout
    assert inspect_image(daemon, "heredoc-cache:1")["Id"] == inspect_image(daemon, "heredoc-cache:2")["Id"]
    # the script's text keys the step, though its argv (the script's path) did not change
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN <<EOT\n#!/bin/sh\necho v2 > /v\nEOT\n")
    changed = build(daemon, ctx, "-t", "heredoc-cache:3")
    assert "Using cache" not in changed.stdout
    assert _cat(daemon, "heredoc-cache:3", "/v") == "v2\n"


def test_copy_heredocs(daemon: Any, tmp_path: Path) -> None:
    dockerfile = (
        "FROM busybox\n"
        "ARG GREETING=hi\n"
        "ENV NAME=berth\n"
        "COPY <<EOF /etc/motd\n"
        "$GREETING from $NAME\n"
        "EOF\n"
        "COPY <<'raw.txt' <<-chomped.txt from-context.txt /files/\n"
        "left as $NAME\n"
        "raw.txt\n"
        "\t\"$NAME\" \\$NAME\n"
        "\tchomped.txt\n"
        "COPY --chmod=750 <<run.sh /usr/local/bin/\n"
        "#!/bin/sh\n"
        "echo run\n"
        "run.sh\n"
    )
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": dockerfile, "from-context.txt": "ctx\n"})
    res = build(daemon, ctx, "-t", "heredoc-copy:1", "--build-arg", "GREETING=hello")
    shown = "Step 5/6 : COPY <<'raw.txt' <<-chomped.txt from-context.txt /files/\nleft as $NAME\nraw.txt\n"
    assert shown + "\t\"$NAME\" \\$NAME\nchomped.txt\n" in res.stdout  # a terminator shows as its name
    assert _cat(daemon, "heredoc-copy:1", "/etc/motd") == "hello from berth\n"
    assert _cat(daemon, "heredoc-copy:1", "/files/raw.txt", "/files/chomped.txt", "/files/from-context.txt") == (
        "left as $NAME\n\"berth\" $NAME\nctx\n")
    modes = daemon.docker("run", "--rm", "heredoc-copy:1", "stat", "-c", "%a %u:%g %n", "/etc/motd",
                          "/files/raw.txt", "/usr/local/bin/run.sh").stdout
    assert modes == "644 0:0 /etc/motd\n644 0:0 /files/raw.txt\n750 0:0 /usr/local/bin/run.sh\n"
    assert daemon.docker("run", "--rm", "heredoc-copy:1", "/usr/local/bin/run.sh").stdout == "run\n"
    # the bodies key the step: the same build is cached, a changed body is not
    again = build(daemon, ctx, "-t", "heredoc-copy:2", "--build-arg", "GREETING=hello")
    assert again.stdout.count(" ---> Using cache") == 5
    other = build(daemon, ctx, "-t", "heredoc-copy:3", "--build-arg", "GREETING=bye")
    assert _cat(daemon, "heredoc-copy:3", "/etc/motd") == "bye from berth\n"
    assert other.stdout.count(" ---> Using cache") == 2  # ARG and ENV: the value given is an input of the COPY


def test_heredoc_errors(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN <<EOF\necho never\n"})
    res = build(daemon, ctx, check=False)
    assert res.returncode != 0 and "failed to parse Dockerfile: unterminated heredoc" in res.stderr
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY <<A <<B\nx\nA\ny\nB\n")
    res = build(daemon, ctx, check=False)
    assert res.returncode != 0 and "COPY cannot accept a heredoc as a destination" in res.stderr
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY <<A <<B /two\nx\nA\ny\nB\n")
    res = build(daemon, ctx, check=False)
    assert res.returncode != 0 and "the destination must be a directory and end with a /" in res.stderr
