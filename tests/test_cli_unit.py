"""The berth CLI and its HTTP client against a fake daemon: a real HTTP server on a unix socket in a thread
that answers canned JSON and records every request (method, path, query, headers, decoded body)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from berth.cli import render
from berth.cli.command import Context
from berth.cli.main import execute
from berth.cli.progress import display, progress_bar
from berth.cli.template import Format, Template, TemplateError
from berth.client.http import (
    DEFAULT_HOST,
    Client,
    DaemonUnreachable,
    encode_filters,
    resolve_host,
    socket_path,
)
from berth.errors import Conflict, InternalError, InvalidArgument, NotFound
from berth.testing.fakedaemon import Fake, Reply, serve
from berth.testing.fakedaemon import TextStream as Stream

# ---- the fake daemon (berth.testing.fakedaemon) --------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Fake]:
    with serve(str(tmp_path / "berth.sock")) as f:
        yield f




@dataclass
class Result:
    rc: int
    out: str
    err: str
    raw: bytes


def berth(fake: Fake | None, *argv: str, stdin: bytes = b"", tty: bool = False, stdin_tty: bool = False) -> Result:
    out, err, inp = Stream(tty=tty), Stream(), Stream(stdin, tty=stdin_tty)
    host = ["-H", f"unix://{fake.sock}"] if fake is not None else []
    rc = execute([*host, *argv], Context(stdin=inp, stdout=out, stderr=err))
    return Result(rc, out.raw_value().decode("utf-8", "replace"), err.text(), out.raw_value())


NOW = time.time()
ID1 = "sha256:" + "ab" * 32
ID2 = "sha256:" + "cd" * 32

# ---- client -------------------------------------------------------------------------------------------


def test_host_resolution_flag_then_env_then_default() -> None:
    assert resolve_host("unix:///a.sock", {"BERTH_HOST": "unix:///b.sock"}) == "unix:///a.sock"
    assert resolve_host(None, {"BERTH_HOST": "unix:///b.sock"}) == "unix:///b.sock"
    assert resolve_host(None, {}) == DEFAULT_HOST == "unix:///run/berth/berth.sock"
    assert socket_path("unix:///run/x.sock") == "/run/x.sock"
    assert socket_path("/run/y.sock") == "/run/y.sock"
    with pytest.raises(InvalidArgument):
        socket_path("tcp://1.2.3.4:2375")


def test_filters_use_the_cli_shape_with_sorted_keys() -> None:
    assert encode_filters({"status": ["running"], "label": ["a=b"]}) == \
        '{"label":{"a=b":true},"status":{"running":true}}'


def test_get_sends_versioned_path_and_query(fake: Fake) -> None:
    fake.on("GET", "/containers/json", Reply(body=[{"Id": "x"}]))
    resp = Client(f"unix://{fake.sock}").get("/containers/json", {"all": True, "size": False, "limit": 3,
                                                                  "skip": None, "names": ["a", "b"]})
    assert resp.status == 200 and resp.json() == [{"Id": "x"}]
    req = fake.last()
    assert req.raw_path.startswith("/v1.44/containers/json?")
    assert req.query == {"all": ["1"], "size": ["0"], "limit": ["3"], "names": ["a", "b"]}
    assert req.headers["User-Agent"].startswith("berth-cli/")


def test_errors_become_berth_error_kinds_with_the_daemon_message(fake: Fake) -> None:
    fake.on("GET", "/images/nope/json", Reply(404, {"message": "No such image: nope:latest"}))
    fake.on("POST", "/images/x/tag", Reply(409, {"message": "conflict!"}))
    fake.on("GET", "/boom", Reply(500, b"plain text failure", content_type="text/plain"))
    client = Client(f"unix://{fake.sock}")
    with pytest.raises(NotFound, match=r"^No such image: nope:latest$"):
        client.get("/images/nope/json")
    with pytest.raises(Conflict, match="conflict!"):
        client.post("/images/x/tag")
    with pytest.raises(InternalError, match="plain text failure"):
        client.get("/boom")
    assert fake.requests[1].headers["Content-Length"] == "0"


def test_unknown_length_bodies_are_sent_chunked(fake: Fake, tmp_path: Path) -> None:
    fake.on("POST", "/images/load", Reply(body={"ok": True}))
    payload = os.urandom(3 * (1 << 20) + 17)
    src = tmp_path / "in.tar"
    src.write_bytes(payload)
    client = Client(f"unix://{fake.sock}")
    with src.open("rb") as f:
        client.post("/images/load", body=f)
    assert fake.last().headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in fake.last().headers
    assert fake.last().body == payload
    client.post("/images/load", body=iter([b"abc", b"", b"def"]))
    assert fake.last().body == b"abcdef"
    client.post("/images/load", json={"a": 1})
    assert fake.last().body == b'{"a": 1}' and fake.last().headers["Content-Type"] == "application/json"


def test_iter_json_decodes_messages_split_across_chunks(fake: Fake) -> None:
    chunks = [b'{"status":"one"}\r\n{"sta', b'tus":"tw\xc3', b'\xa9"}\n', b'{"id":"x","progressDetail":{}}']
    fake.on("POST", "/stream", Reply(chunks=chunks))
    with Client(f"unix://{fake.sock}").post("/stream", stream=True) as resp:
        assert list(resp.iter_json()) == [{"status": "one"}, {"status": "twé"}, {"id": "x", "progressDetail": {}}]


def test_missing_socket_says_the_daemon_is_not_running(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/none.sock"
    with pytest.raises(DaemonUnreachable) as info:
        Client(host).get("/version")
    assert str(info.value) == f"Cannot connect to the berth daemon at {host}. Is berthd running?"
    res = berth(None, "-H", host, "images")
    assert res.rc == 1 and res.err == f"Cannot connect to the berth daemon at {host}. Is berthd running?\n"


# ---- render and template ------------------------------------------------------------------------------


def test_sizes_and_durations_match_go_units() -> None:
    assert render.human_size(4_260_000, 3) == "4.26MB"
    assert render.human_size(0, 3) == "0B"
    assert render.human_size(999, 3) == "999B"
    assert render.human_size(1_000, 3) == "1kB"
    assert render.human_size(7_799_999, 3) == "7.8MB"
    assert render.human_size(16_430_000) == "16.43MB"
    assert render.bytes_size(15.5 * 1024**3) == "15.5GiB"
    assert render.human_duration(0.5) == "Less than a second"
    assert render.human_duration(1) == "1 second"
    assert render.human_duration(59) == "59 seconds"
    assert render.human_duration(61) == "About a minute"
    assert render.human_duration(45 * 60) == "45 minutes"
    assert render.human_duration(90 * 60) == "2 hours"  # Go rounds 1.5 hours up
    assert render.human_duration(3600) == "About an hour"
    assert render.human_duration(2 * 86400 + 5) == "2 days"
    assert render.human_duration(20 * 86400) == "2 weeks"
    assert render.human_duration(90 * 86400) == "3 months"
    assert render.human_duration(800 * 86400) == "2 years"
    assert render.short_id(ID1) == "abababababab"


def test_tabwriter_matches_go() -> None:
    text = "REPOSITORY\tTAG\tIMAGE ID\nbusybox\tlatest\tabc\nlocalhost:5000/app\tv1\tdef\n"
    assert render.tabwrite(text) == (
        "REPOSITORY           TAG       IMAGE ID\n"
        "busybox              latest    abc\n"
        "localhost:5000/app   v1        def\n"
    )
    # a line with fewer cells ends the column block
    assert render.tabwrite("a\tb\nno tabs here\nccc\td\n", minwidth=0, padding=1) == "a b\nno tabs here\nccc d\n"


def test_template_subset() -> None:
    data = {"Name": "x", "Labels": {"a": "1", "b": "2"}, "List": ["p", "q"], "Empty": "", "N": 3, "T": True}
    assert Template("{{.Name}}:{{.Labels.a}}").execute(data) == "x:1"
    assert Template("{{json .Labels}}").execute(data) == '{"a":"1","b":"2"}'
    assert Template("{{.Missing}}").execute(data) == "<no value>"
    assert Template("{{join .List \",\"}} {{.N}} {{.T}}").execute(data) == "p,q 3 true"
    assert Template("{{.Name | upper}}").execute(data) == "X"
    assert Template("{{index .Labels \"b\"}}").execute(data) == "2"
    assert Template("{{if .Empty}}yes{{else}}no{{end}}").execute(data) == "no"
    assert Template("{{range .List}}[{{.}}]{{end}}").execute(data) == "[p][q]"
    assert Template("{{with .Labels}}{{.a}}{{end}}").execute(data) == "1"
    assert Template("a  {{- .Name -}}  b").execute(data) == "axb"
    assert Template("{{.List}} {{.Labels}}").execute(data) == "[p q] map[a:1 b:2]"
    with pytest.raises(TemplateError, match='function "nope" not defined'):
        Template("{{nope .X}}")
    fmt = Format("table {{.A}}\\t{{.B | lower}}")
    assert fmt.render([{"A": "1", "B": "X"}], {"A": "AA", "B": "BB"}) == "AA        BB\n1         x\n"
    assert Format("json").render([{"A": 1}]) == '{"A":1}\n'


def test_progress_rendering_without_and_with_a_terminal() -> None:
    msgs: list[dict[str, Any]] = [
        {"status": "Pulling from library/busybox", "id": "latest"},
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "aaa"},
        {"status": "Downloading", "progressDetail": {"current": 500, "total": 1000}, "id": "aaa"},
        {"status": "Pull complete", "progressDetail": {}, "id": "aaa"},
        {"aux": {"ID": "sha256:x"}},
        {"stream": "Loaded image: busybox:latest\n"},
    ]
    out = io.StringIO()
    display(msgs, out, is_terminal=False)
    assert out.getvalue() == ("latest: Pulling from library/busybox\naaa: Pulling fs layer\n"
                              "aaa: Pull complete\nLoaded image: busybox:latest\n")
    tty = io.StringIO()
    display(msgs, tty, is_terminal=True, width=120)
    assert "\x1b[1A" in tty.getvalue() and "\x1b[2K\r" in tty.getvalue()
    assert "[=========================>                         ]     500B/1kB" in tty.getvalue()
    assert progress_bar({"current": 5, "total": 10, "units": "files"}, 80) == "5/10 files"


# ---- CLI: images --------------------------------------------------------------------------------------

def images_now() -> list[dict[str, object]]:
    """Image summaries with Created relative to the moment the test runs (ages are rendered from now)."""
    now = time.time()
    return [
    {"Id": ID1, "ParentId": "", "RepoTags": ["busybox:latest", "localhost:5000/bb:v1"],
     "RepoDigests": ["busybox@sha256:" + "11" * 32], "Created": int(now - 2 * 86400 - 10), "Size": 4_260_000,
     "SharedSize": -1, "Labels": None, "Containers": -1},
    {"Id": ID2, "ParentId": "", "RepoTags": [], "RepoDigests": [], "Created": int(now - 70),
     "Size": 1234, "SharedSize": -1, "Labels": None, "Containers": -1},
    ]


def test_images_table(fake: Fake) -> None:
    fake.on("GET", "/images/json", Reply(body=images_now()))
    res = berth(fake, "images")
    assert res.rc == 0, res.err
    assert res.out == (
        "REPOSITORY          TAG       IMAGE ID       CREATED              SIZE\n"
        "busybox             latest    abababababab   2 days ago           4.26MB\n"
        "localhost:5000/bb   v1        abababababab   2 days ago           4.26MB\n"
        "<none>              <none>    cdcdcdcdcdcd   About a minute ago   1.23kB\n"
    )
    assert fake.last().raw_path == "/v1.44/images/json"


def test_images_flags_and_formats(fake: Fake) -> None:
    fake.on("GET", "/images/json", Reply(body=images_now()))
    res = berth(fake, "image", "ls", "-a", "--filter", "dangling=true", "-q")
    assert res.out == "abababababab\nabababababab\ncdcdcdcdcdcd\n"
    assert fake.last().query == {"all": ["1"], "filters": ['{"dangling":{"true":true}}']}
    res = berth(fake, "images", "--no-trunc", "-q", "busybox")
    assert res.out.splitlines()[0] == ID1
    assert fake.last().query == {"filters": ['{"reference":{"busybox":true}}']}
    res = berth(fake, "images", "--format", "{{.Repository}}:{{.Tag}}")
    assert res.out == "busybox:latest\nlocalhost:5000/bb:v1\n<none>:<none>\n"
    res = berth(fake, "images", "--format", "{{json .}}")
    first = json.loads(res.out.splitlines()[0])
    assert first["Repository"] == "busybox" and first["Size"] == "4.26MB" and first["Containers"] == "N/A"
    assert list(first) == sorted(first)
    res = berth(fake, "images", "--format", "table {{.ID}}\t{{.Tag}}")
    assert res.out.splitlines()[0] == "IMAGE ID       TAG"
    res = berth(fake, "images", "--digests")
    assert res.out.splitlines()[0].split() == ["REPOSITORY", "TAG", "DIGEST", "IMAGE", "ID", "CREATED", "SIZE"]
    assert "sha256:" + "11" * 32 in res.out.splitlines()[1]
    assert res.out.splitlines()[2].split()[2] == "<none>"


def test_load_streams_the_file_and_prints_what_was_loaded(fake: Fake, tmp_path: Path) -> None:
    fake.on("POST", "/images/load", Reply(chunks=[b'{"stream":"Loaded image: busybox:latest\\n"}\r\n']))
    archive = tmp_path / "img.tar"
    archive.write_bytes(b"x" * 300_000)
    res = berth(fake, "load", "-i", str(archive))
    assert res.rc == 0 and res.out == "Loaded image: busybox:latest\n"
    req = fake.last()
    assert req.query == {"quiet": ["1"]}
    assert req.headers["Transfer-Encoding"] == "chunked" and req.headers["Content-Type"] == "application/x-tar"
    assert req.body == archive.read_bytes()
    res = berth(fake, "image", "load", stdin=b"from-stdin", tty=True)
    assert fake.last().body == b"from-stdin" and fake.last().query == {"quiet": ["0"]}
    res = berth(fake, "load", stdin_tty=True)
    assert res.rc == 1 and res.err == "requested load from stdin, but stdin is empty\n"
    res = berth(fake, "load", "-i", str(tmp_path / "missing.tar"))
    assert res.rc == 1 and "no such file or directory" in res.err


def test_load_error_inside_the_stream_exits_1(fake: Fake) -> None:
    fake.on("POST", "/images/load", Reply(chunks=[b'{"errorDetail":{"message":"bad tar"},"error":"bad tar"}\n']))
    res = berth(fake, "load", stdin=b"junk")
    assert res.rc == 1 and res.err == "bad tar\n"


def test_save_to_file_and_stdout(fake: Fake, tmp_path: Path) -> None:
    fake.on("GET", "/images/get", Reply(body=b"TARBYTES" * 1000, content_type="application/x-tar"))
    out = tmp_path / "out.tar"
    res = berth(fake, "save", "-o", str(out), "busybox", "alpine:3")
    assert res.rc == 0 and out.read_bytes() == b"TARBYTES" * 1000
    assert fake.last().query == {"names": ["busybox", "alpine:3"]}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".berth_temp_")] == []
    res = berth(fake, "image", "save", "busybox")
    assert res.raw == b"TARBYTES" * 1000
    res = berth(fake, "save", "busybox", tty=True)
    assert res.rc == 1 and res.err == "cowardly refusing to save to a terminal. Use the -o flag or redirect\n"
    res = berth(fake, "save")
    assert res.rc == 1 and "'berth save' requires at least 1 argument" in res.err


def test_tag_sends_normalized_repo_and_tag(fake: Fake) -> None:
    fake.on("POST", "/images/alpine/tag", Reply(201))
    assert berth(fake, "tag", "alpine", "localhost:5000/foo:1").rc == 0
    assert fake.last().query == {"repo": ["localhost:5000/foo"], "tag": ["1"]}
    assert berth(fake, "image", "tag", "alpine", "foo").rc == 0
    assert fake.last().query == {"repo": ["docker.io/library/foo"], "tag": ["latest"]}
    res = berth(fake, "tag", "alpine", "foo@sha256:" + "1" * 64)
    assert res.rc == 1 and res.err == "refusing to create a tag with a digest reference\n"
    res = berth(fake, "tag", "alpine", "Bad:Name:x")
    assert res.rc == 1 and res.err.startswith('Error parsing reference: "Bad:Name:x" is not a valid repository/tag')


def test_rmi_output_and_errors(fake: Fake) -> None:
    fake.on("DELETE", "/images/busybox", Reply(body=[{"Untagged": "busybox:latest"}, {"Deleted": ID1}]))
    fake.on("DELETE", "/images/ghost", Reply(404, {"message": "No such image: ghost:latest"}))
    res = berth(fake, "rmi", "busybox")
    assert res.rc == 0 and res.out == f"Untagged: busybox:latest\nDeleted: {ID1}\n"
    res = berth(fake, "rmi", "-f", "ghost", "busybox")
    assert res.rc == 0 and res.err == "Error response from daemon: No such image: ghost:latest\n"
    assert fake.last().query == {"force": ["1"]}
    res = berth(fake, "image", "rm", "ghost")
    assert res.rc == 1 and res.err == "Error response from daemon: No such image: ghost:latest\n"


def test_history_table(fake: Fake) -> None:
    fake.on("GET", "/images/busybox/history", Reply(body=[
        {"Id": ID1, "Created": int(NOW - 3 * 86400), "CreatedBy": "/bin/sh -c #(nop)  CMD [\"sh\"]",
         "Tags": ["busybox:latest"], "Size": 0, "Comment": ""},
        {"Id": "<missing>", "Created": int(NOW - 3 * 86400),
         "CreatedBy": "/bin/sh -c #(nop) ADD file:0123456789abcdef0123456789abcdef in / ", "Tags": None,
         "Size": 4_260_000, "Comment": "imported"},
    ]))
    res = berth(fake, "history", "busybox")
    lines = res.out.splitlines()
    assert lines[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert lines[1].startswith("abababababab   3 days ago")
    assert lines[2].startswith("<missing>      3 days ago")
    assert "/bin/sh -c #(nop) ADD file:0123456789abcdef0…" in lines[2]
    assert lines[2].rstrip().endswith("4.26MB    imported")
    res = berth(fake, "image", "history", "-q", "--no-trunc", "busybox")
    assert res.out == f"{ID1}\n<missing>\n"
    res = berth(fake, "history", "--human=false", "--format", "{{.Size}}", "busybox")
    assert res.out == "0\n4260000\n"


def test_image_inspect(fake: Fake) -> None:
    doc = {"Id": ID1, "RepoTags": ["busybox:latest"], "Config": {"Cmd": ["sh"], "Env": []}}
    fake.on("GET", "/images/busybox/json", Reply(body=doc))
    fake.on("GET", "/images/ghost/json", Reply(404, {"message": "No such image: ghost:latest"}))
    res = berth(fake, "image", "inspect", "busybox")
    assert res.rc == 0 and res.out == json.dumps([doc], indent=4) + "\n"
    assert res.out.startswith('[\n    {\n        "Id": ')
    res = berth(fake, "image", "inspect", "-f", "{{.Id}} {{json .Config.Cmd}}", "busybox")
    assert res.out == f'{ID1} ["sh"]\n'
    res = berth(fake, "image", "inspect", "ghost")
    assert res.rc == 1 and res.out == "[]\n" and res.err == "Error response from daemon: No such image: ghost:latest\n"


def test_image_prune(fake: Fake) -> None:
    fake.on("POST", "/images/prune", Reply(body={
        "ImagesDeleted": [{"Untagged": "busybox:latest"}, {"Deleted": ID1}], "SpaceReclaimed": 4_260_000}))
    res = berth(fake, "image", "prune", "-a", "-f")
    assert res.rc == 0
    assert fake.last().query == {"filters": ['{"dangling":{"false":true}}']}
    assert res.out == f"Deleted Images:\nuntagged: busybox:latest\ndeleted: {ID1}\n\nTotal reclaimed space: 4.26MB\n"
    count = len(fake.requests)
    res = berth(fake, "image", "prune", stdin=b"n\n")
    assert res.out == "WARNING! This will remove all dangling images.\nAre you sure you want to continue? [y/N] "
    assert len(fake.requests) == count
    res = berth(fake, "image", "prune", "--filter", "until=24h", stdin=b"y\n")
    assert fake.last().query == {"filters": ['{"dangling":{"true":true},"until":{"24h":true}}']}


def test_import_file_url_and_changes(fake: Fake, tmp_path: Path) -> None:
    fake.on("POST", "/images/create", Reply(chunks=[b'{"status":"sha256:' + b"ef" * 32 + b'"}\r\n']))
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(b"R" * 5000)
    res = berth(fake, "import", "-c", "CMD [\"sh\"]", "-c", "ENV A=1", "-m", "hello", str(rootfs), "mine:v1")
    assert res.rc == 0 and res.out == "sha256:" + "ef" * 32 + "\n"
    req = fake.last()
    assert req.query == {"fromSrc": ["-"], "repo": ["mine:v1"], "message": ["hello"],
                         "changes": ['CMD ["sh"]', "ENV A=1"]}
    assert req.body == b"R" * 5000
    berth(fake, "image", "import", "-", stdin=b"piped")
    assert fake.last().body == b"piped" and fake.last().query == {"fromSrc": ["-"]}
    berth(fake, "import", "https://example.invalid/rootfs.tar", "x")
    assert fake.last().query == {"fromSrc": ["https://example.invalid/rootfs.tar"], "repo": ["x"]}
    assert fake.last().body == b""


def test_bootstrap_renders_progress(fake: Fake) -> None:
    fake.on("POST", "/berth/images/bootstrap", Reply(chunks=[
        b'{"status":"Building busybox from busybox-static","id":"busybox"}\r\n',
        b'{"status":"Writing layer","progressDetail":{"current":10,"total":100},"id":"layer"}\r\n',
        b'{"status":"Done","progressDetail":{},"id":"layer"}\r\n',
        b'{"status":"Tagged busybox:latest"}\r\n',
    ]))
    res = berth(fake, "image", "bootstrap", "busybox")
    assert res.rc == 0
    assert res.out == "busybox: Building busybox from busybox-static\nlayer: Done\nTagged busybox:latest\n"
    assert fake.last().query == {"image": ["busybox"]}
    res = berth(fake, "image", "bootstrap", "busybox", tty=True)
    assert "\x1b[" in res.out and "Writing layer" in res.out
    fake.on("POST", "/berth/images/bootstrap", Reply(chunks=[
        b'{"status":"Starting"}\n',
        b'{"errorDetail":{"message":"debootstrap failed"},"error":"debootstrap failed"}\n',
    ]))
    res = berth(fake, "image", "bootstrap", "debian")
    assert res.rc == 1 and res.out == "Starting\n" and res.err == "debootstrap failed\n"
    fake.on("POST", "/berth/images/bootstrap", Reply(400, {"message": "unknown bootstrap image: nope"}))
    res = berth(fake, "image", "bootstrap", "nope")
    assert res.rc == 1 and res.err == "Error response from daemon: unknown bootstrap image: nope\n"


# ---- CLI: system --------------------------------------------------------------------------------------

VERSION = {
    "Platform": {"Name": "berth"}, "Version": "0.1.0", "ApiVersion": "1.44", "MinAPIVersion": "1.24",
    "Os": "linux", "Arch": "amd64", "KernelVersion": "6.18.0", "GitCommit": "abc1234", "GoVersion": "python3.11",
    "BuildTime": "2025-05-30T12:07:28.000000000+00:00", "Experimental": False,
    "Components": [{"Name": "Engine", "Version": "0.1.0", "Details": {
        "ApiVersion": "1.44", "MinAPIVersion": "1.24", "GitCommit": "abc1234", "GoVersion": "python3.11",
        "Os": "linux", "Arch": "amd64", "BuildTime": "2025-05-30T12:07:28.000000000+00:00",
        "Experimental": "false", "KernelVersion": "6.18.0"}}],
}


def test_version(fake: Fake) -> None:
    fake.on("GET", "/version", Reply(body=VERSION))
    res = berth(fake, "version")
    assert res.rc == 0
    lines = res.out.splitlines()
    assert lines[0] == "Client:"
    assert lines[1] == " Version:           0.1.0"
    assert " API version:       1.44" in lines
    assert "Server: berth" in lines and " Engine:" in lines
    assert "  API version:      1.44 (minimum version 1.24)" in lines
    assert "  Built:            Fri May 30 12:07:28 2025" in lines
    assert "  Experimental:     false" in lines
    assert berth(fake, "version", "--format", "{{.Server.Version}}").out == "0.1.0\n"
    res = berth(None, "-H", "unix:///nonexistent/x.sock", "version")
    assert res.rc == 1 and res.out.startswith("Client:\n") and "Server" not in res.out
    assert res.err == "Cannot connect to the berth daemon at unix:///nonexistent/x.sock. Is berthd running?\n"


def test_info(fake: Fake) -> None:
    fake.on("GET", "/info", Reply(body={
        "ID": "X1", "Containers": 3, "ContainersRunning": 1, "ContainersPaused": 0, "ContainersStopped": 2,
        "Images": 5, "Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]],
        "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"], "Log": ["json-file"]},
        "MemTotal": int(15.5 * 1024**3), "NCPU": 16, "OSType": "linux", "ServerVersion": "0.1.0",
        "Swarm": {"LocalNodeState": "inactive"}, "Runtimes": {"runc": {}, "berth": {}}, "DefaultRuntime": "berth",
        "SecurityOptions": ["name=seccomp,profile=builtin", "name=cgroupns"], "DockerRootDir": "/var/lib/berth",
        "Warnings": ["WARNING: No swap limit support"],
    }))
    res = berth(fake, "info")
    assert res.rc == 0
    assert res.out.startswith("Client:\n Version:    0.1.0\n Context:    default\n Debug Mode: false\n\nServer:\n"
                              " Containers: 3\n  Running: 1\n  Paused: 0\n  Stopped: 2\n Images: 5\n")
    for line in ["  Backing Filesystem: extfs", "  Network: bridge host null", " Runtimes: berth runc",
                 " Security Options:", "  seccomp", "   Profile: builtin", "  cgroupns", " CPUs: 16",
                 " Total Memory: 15.5GiB", " Docker Root Dir: /var/lib/berth", " Swarm: inactive"]:
        assert line in res.out.splitlines()
    assert res.err == "WARNING: No swap limit support\n"
    assert berth(fake, "system", "info", "--format", "{{.NCPU}} {{.Driver}}").out == "16 overlay2\n"


def test_system_df(fake: Fake) -> None:
    fake.on("GET", "/system/df", Reply(body={
        "LayersSize": 16_430_000,
        "Images": [{"Id": ID1, "Size": 4_800_000, "SharedSize": 0, "Containers": 1},
                   {"Id": ID2, "Size": 11_630_000, "SharedSize": 0, "Containers": 0}],
        "Containers": [{"Id": "c1", "State": "running", "SizeRw": 100}, {"Id": "c2", "State": "exited", "SizeRw": 0}],
        "Volumes": [{"Name": "v", "UsageData": {"Size": 36, "RefCount": 1}}],
        "BuildCache": None,
    }))
    res = berth(fake, "system", "df")
    assert res.rc == 0
    assert res.out == (
        "TYPE            TOTAL     ACTIVE    SIZE      RECLAIMABLE\n"
        "Images          2         1         16.43MB   11.63MB (70%)\n"
        "Containers      2         1         100B      0B (0%)\n"
        "Local Volumes   1         1         36B       0B (0%)\n"
        "Build Cache     0         0         0B        0B\n"
    )


# ---- CLI: grammar -------------------------------------------------------------------------------------


def test_grammar_errors_and_help() -> None:
    res = berth(None, "frobnicate")
    assert res.rc == 1 and res.err.startswith("berth: unknown command: berth frobnicate\n")
    res = berth(None, "image", "frobnicate")
    assert res.rc == 1 and "unknown command: berth image frobnicate" in res.err
    res = berth(None, "tag", "only-one")
    assert res.rc == 1 and res.err.startswith("berth: 'berth tag' requires 2 arguments\n\nUsage:  berth tag ")
    res = berth(None, "images", "--bogus")
    assert res.rc == 125 and res.err.startswith("unknown flag: --bogus\n\nUsage:  berth images")
    res = berth(None, "images", "a", "b")
    assert res.rc == 1 and "'berth images' accepts at most 1 argument" in res.err
    res = berth(None, "--nope")
    assert res.rc == 125
    res = berth(None, "-v")
    assert res.rc == 0 and res.out.startswith("berth version ")
    res = berth(None, "--help")
    assert res.rc == 0 and "Management Commands:" in res.out and "images" in res.out
    res = berth(None, "images", "--help")
    assert res.rc == 0 and "--digests" in res.out
    res = berth(None, "image")
    assert res.rc == 0 and "bootstrap" in res.out
    res = berth(None, "--log-level", "debug", "-H", "unix:///nonexistent/x.sock", "image", "ls")
    assert res.rc == 1 and "Cannot connect" in res.err


def test_help_is_fast() -> None:
    exe = Path(sys.executable).parent / "berth"
    if not exe.exists():
        pytest.skip("the berth entry point is not installed in this interpreter's environment")
    subprocess.run([str(exe), "--help"], check=True, capture_output=True)
    best = min(_timed([str(exe), "--help"]) for _ in range(3))
    base = min(_timed([sys.executable, "-c", "pass"]) for _ in range(3))
    assert best - base < 0.1, f"berth --help took {best - base:.3f}s beyond interpreter start"


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start
