"""The ``berth`` CLI end to end: the real executable against a real berthd, compared with the real docker CLI.

Where both CLIs can show the same daemon state, the test runs both and compares stdout, stderr and the exit
status; CREATED ages can cross a boundary ("59 seconds" → "About a minute") between the two runs, so a
mismatch is retried once before it counts.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pty
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.testing.daemon import BerthDaemon
from berth.testing.rootfs import FIXTURES

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]

BERTH = str(Path(sys.executable).with_name("berth"))
MULTI = FIXTURES / "multilayer-docker-save.tar"
OCI = FIXTURES / "multilayer-oci.tar"
BUSYBOX = FIXTURES / "busybox-docker-save.tar"
MULTI_ID = "sha256:626be372821f11314d992e0ea4e16e1f6311496ea17610d41a4142451e8e11a5"
OCI_ID = "sha256:aed6cee837d96277486419d1594429c08c581f3456d37d4b291ee636a752f2ec"
BUSYBOX_ID = "sha256:c244b7a5c541c3948abd126dc9b89fc3d2c3836dee829271b7bd3e8b2a10b0e0"


def _env(host: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    if host is not None:
        env["BERTH_HOST"] = host
    return env


def run_berth(host: str | None, *args: str, input: bytes | None = None, via_env: bool = False,
              stdout: Any = subprocess.PIPE, stdin: Any = None) -> subprocess.CompletedProcess[str]:
    """Run .venv/bin/berth with ``-H host`` (or ``BERTH_HOST`` with ``via_env``); text output, never raises."""
    argv = [BERTH, *args] if via_env or host is None else [BERTH, "-H", host, *args]
    raw = subprocess.run(argv, input=input, stdout=stdout, stderr=subprocess.PIPE, stdin=stdin,
                         env=_env(host if via_env else None), timeout=60, check=False)
    return subprocess.CompletedProcess(raw.args, raw.returncode, (raw.stdout or b"").decode(errors="replace"),
                                       raw.stderr.decode(errors="replace"))


def berth(d: BerthDaemon, *args: str, input: bytes | None = None,
          via_env: bool = False) -> subprocess.CompletedProcess[str]:
    return run_berth(d.host, *args, input=input, via_env=via_env)


def ok(d: BerthDaemon, *args: str, input: bytes | None = None) -> str:
    res = berth(d, *args, input=input)
    assert res.returncode == 0, f"berth {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def outcome(res: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    return res.returncode, res.stdout, res.stderr


def same_as_docker(d: BerthDaemon, *args: str) -> str:
    """Run ``berth ARGS`` and ``docker ARGS`` on the same daemon; assert identical output; return stdout."""
    for attempt in range(2):
        mine = outcome(berth(d, *args))
        theirs = outcome(d.docker(*args, check=False))
        if mine == theirs or attempt:
            break
    assert mine == theirs, f"berth {' '.join(args)} differs from docker"
    return mine[1]


def load_fixtures(d: BerthDaemon) -> None:
    """Tagged multilayer (OCI), tagged busybox, and the docker-save multilayer left dangling by the OCI load."""
    for archive in (MULTI, BUSYBOX, OCI):
        ok(d, "load", "-q", "-i", str(archive))


def ensure_fixtures(d: BerthDaemon) -> None:
    """For tests on the module's shared daemon: the three fixture images, whichever test runs first."""
    if set(ok(d, "images", "-q", "--no-trunc").split()) != {MULTI_ID, OCI_ID, BUSYBOX_ID}:
        load_fixtures(d)


def run_on_pty(d: BerthDaemon, *args: str) -> tuple[int, str]:
    """Run berth with stdin and stdout on a pseudo-terminal; returns the status and stderr."""
    primary, secondary = pty.openpty()
    try:
        res = run_berth(d.host, *args, stdout=secondary, stdin=secondary)
    finally:
        os.close(secondary)
        os.close(primary)
    return res.returncode, res.stderr


# ---- version / info -----------------------------------------------------------------------------------

def test_version_and_info(berthd: BerthDaemon) -> None:
    out = ok(berthd, "version")
    assert out.startswith("Client:\n Version:")
    server = out.split("\n\n", 1)[1]
    assert server == berthd.docker("version").stdout.split("\n\n", 1)[1]
    assert ok(berthd, "version", "--format", "{{.Server.ApiVersion}}") == "1.44\n"
    info = ok(berthd, "info")
    assert info.startswith("Client:\n Version:")
    # the docker CLI prints the Runtimes map in Go's random map order: compare everything else
    def server_part(text: str) -> list[str]:
        return [ln for ln in text.split("Server:\n", 1)[1].splitlines() if not ln.startswith(" Runtimes:")]
    assert server_part(info) == server_part(berthd.docker("info").stdout)
    assert f" Docker Root Dir: {berthd.data_root}\n" in info
    assert ok(berthd, "system", "info", "--format", "{{.Images}}") == "0\n"


def test_host_from_env_and_flag_precedence(berthd: BerthDaemon, tmp_path: Path) -> None:
    res = berth(berthd, "version", "--format", "{{.Server.Version}}", via_env=True)
    assert res.returncode == 0 and res.stdout.strip()
    # -H wins over BERTH_HOST
    missing = f"unix://{tmp_path}/none.sock"
    argv = [BERTH, "-H", missing, "images"]
    raw = subprocess.run(argv, capture_output=True, env=_env(berthd.host), timeout=30, check=False)
    assert raw.returncode == 1
    assert raw.stderr.decode() == f"Cannot connect to the berth daemon at {missing}. Is berthd running?\n"


# ---- images -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("images",),
    ("image", "ls"),
    ("images", "-q"),
    ("images", "--digests"),
    ("images", "--no-trunc"),
    ("images", "-a"),
    ("images", "busybox"),
    ("images", "--filter", "dangling=true"),
    ("images", "--filter", "dangling=false", "-q"),
    ("images", "--filter", "reference=berth-fixture/*"),
    ("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}"),
    ("images", "--format", "table {{.Repository}}\t{{.Size}}"),
    ("images", "--format", "json"),
    ("images", "--filter", "bogus=1"),
])
def test_images_matches_docker(shared_berthd: BerthDaemon, args: tuple[str, ...]) -> None:
    ensure_fixtures(shared_berthd)
    same_as_docker(shared_berthd, *args)


def test_images_values(berthd: BerthDaemon) -> None:
    load_fixtures(berthd)
    ids = ok(berthd, "images", "-q", "--no-trunc").split()
    # newest first; the two multilayer images share a creation time
    assert set(ids[:2]) == {MULTI_ID, OCI_ID} and ids[2] == BUSYBOX_ID
    rows = [line.split() for line in ok(berthd, "images").splitlines()]
    assert rows[0] == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert {(r[0], r[1], r[2]) for r in rows[1:]} == {
        ("<none>", "<none>", MULTI_ID[7:19]), ("berth-fixture/multilayer", "1.0", OCI_ID[7:19]),
        ("busybox", "latest", BUSYBOX_ID[7:19])}
    assert ok(berthd, "images", "--filter", "dangling=true", "-q") == MULTI_ID[7:19] + "\n"
    assert ok(berthd, "images", "--format", "{{.Repository}}", "busybox") == "busybox\n"
    res = berth(berthd, "images", "--filter", "nonsense")
    assert res.returncode == 125 and "bad format of filter" in res.stderr


# ---- load / save --------------------------------------------------------------------------------------

def test_load_from_file_and_stdin(berthd: BerthDaemon) -> None:
    assert ok(berthd, "load", "-i", str(MULTI)) == "Loaded image: berth-fixture/multilayer:1.0\n"
    assert ok(berthd, "load", input=BUSYBOX.read_bytes()) == "Loaded image: busybox:latest\n"
    assert ok(berthd, "image", "load", "--input", str(OCI)) == (
        f"The image berth-fixture/multilayer:1.0 already exists, renaming the old one with ID {MULTI_ID} "
        "to empty string\nLoaded image: berth-fixture/multilayer:1.0\n")
    res = berth(berthd, "load", input=BUSYBOX.read_bytes(), via_env=True)
    assert (res.returncode, res.stdout) == (0, "Loaded image: busybox:latest\n")
    bad = berth(berthd, "load", input=b"not a tar archive")
    assert bad.returncode == 1 and bad.stderr.startswith("Error response from daemon: ")
    missing = berth(berthd, "load", "-i", "/nonexistent/x.tar")
    assert (missing.returncode, missing.stderr) == (1, "open /nonexistent/x.tar: no such file or directory\n")


def test_save_to_file_and_stdout(berthd: BerthDaemon, berthd_factory: Any, tmp_path: Path) -> None:
    ok(berthd, "load", "-i", str(MULTI))
    out = tmp_path / "saved.tar"
    assert ok(berthd, "save", "-o", str(out), "berth-fixture/multilayer:1.0") == ""
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".berth_temp_")]
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", "index.json", "oci-layout", f"blobs/sha256/{MULTI_ID[7:]}"} <= names
    piped = tmp_path / "piped.tar"
    with piped.open("wb") as sink:
        raw = subprocess.run([BERTH, "-H", berthd.host, "image", "save", "berth-fixture/multilayer:1.0"],
                             stdout=sink, stderr=subprocess.PIPE, env=_env(None), timeout=60, check=False)
    assert raw.returncode == 0, raw.stderr
    with tarfile.open(piped) as tar:
        assert set(tar.getnames()) == names
    other = berthd_factory()
    assert ok(other, "load", "-i", str(piped)) == "Loaded image: berth-fixture/multilayer:1.0\n"
    assert ok(other, "images", "-q", "--no-trunc") == MULTI_ID + "\n"


def test_save_and_load_refuse_a_terminal(berthd: BerthDaemon) -> None:
    ok(berthd, "load", "-i", str(BUSYBOX))
    assert run_on_pty(berthd, "save", "busybox") == (
        1, "cowardly refusing to save to a terminal. Use the -o flag or redirect\n")
    assert run_on_pty(berthd, "load") == (1, "requested load from stdin, but stdin is empty\n")


def test_save_errors(berthd: BerthDaemon, tmp_path: Path) -> None:
    ok(berthd, "load", "-i", str(BUSYBOX))
    res = berth(berthd, "save", "-o", str(tmp_path / "no" / "x.tar"), "busybox")
    assert res.returncode == 1
    assert res.stderr == f'failed to save image: invalid output path: directory "{tmp_path / "no"}" does not exist\n'
    res = berth(berthd, "save", "-o", str(tmp_path / "x.tar"), "busybox", "nope")
    assert (res.returncode, res.stderr) == (1, "Error response from daemon: No such image: nope\n")
    assert not (tmp_path / "x.tar").exists()
    assert not list(tmp_path.iterdir())


# ---- tag / rmi ----------------------------------------------------------------------------------------

def test_tag_and_rmi(berthd: BerthDaemon) -> None:
    ok(berthd, "load", "-i", str(BUSYBOX))
    assert ok(berthd, "tag", "busybox", "mybox:1") == ""
    assert ok(berthd, "image", "tag", "busybox:latest", "localhost:5000/team/box") == ""
    tags = json.loads(ok(berthd, "image", "inspect", "--format", "{{json .RepoTags}}", "busybox"))
    assert sorted(tags) == ["busybox:latest", "localhost:5000/team/box:latest", "mybox:1"]
    assert same_as_docker(berthd, "rmi", BUSYBOX_ID[7:19]) == ""
    res = berth(berthd, "rmi", BUSYBOX_ID[7:19])
    assert res.returncode == 1
    assert res.stderr == (f"Error response from daemon: conflict: unable to delete {BUSYBOX_ID[7:19]} (must be "
                          "forced) - image is referenced in multiple repositories\n")
    assert ok(berthd, "rmi", "mybox:1") == "Untagged: mybox:1\n"
    assert ok(berthd, "image", "rm", "localhost:5000/team/box") == "Untagged: localhost:5000/team/box:latest\n"
    assert ok(berthd, "rmi", "busybox") == f"Untagged: busybox:latest\nDeleted: {BUSYBOX_ID}\n"
    assert ok(berthd, "images", "-q") == ""


def test_rmi_force(berthd: BerthDaemon) -> None:
    ok(berthd, "load", "-i", str(BUSYBOX))
    ok(berthd, "tag", "busybox", "mybox:2")
    assert ok(berthd, "rmi", "-f", BUSYBOX_ID[7:19]) == (
        f"Untagged: busybox:latest\nUntagged: mybox:2\nDeleted: {BUSYBOX_ID}\n")
    ok(berthd, "load", "-i", str(BUSYBOX))
    # -f tolerates a missing image (reported, exit 0) like docker; without -f it is an error
    res = berth(berthd, "rmi", "-f", "nope", "busybox")
    assert (res.returncode, res.stdout) == (0, f"Untagged: busybox:latest\nDeleted: {BUSYBOX_ID}\n")
    assert res.stderr == "Error response from daemon: No such image: nope\n"
    assert same_as_docker(berthd, "rmi", "-f", "nope") == ""


@pytest.mark.parametrize("args", [
    ("tag", "busybox", "Bad:Name"),
    ("tag", "busybox", "x@sha256:aaaa"),
    ("tag", "nope", "x"),
    ("tag", "busybox"),
    ("rmi",),
    ("rmi", "nope"),
    ("image", "inspect"),
    ("history",),
    ("save",),
    ("load", "x"),
    ("import",),
    ("system", "df", "x"),
    ("version", "x"),
])
def test_tag_rmi_errors_match_docker(shared_berthd: BerthDaemon, args: tuple[str, ...]) -> None:
    ensure_fixtures(shared_berthd)
    res = berth(shared_berthd, *args)
    theirs = shared_berthd.docker(*args, check=False)
    assert res.returncode == theirs.returncode != 0
    # usage errors name the program itself
    assert res.stderr == theirs.stderr.replace("docker", "berth")


# ---- inspect / history --------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("image", "inspect", "busybox"),
    ("image", "inspect", "berth-fixture/multilayer:1.0", MULTI_ID[7:19]),
    ("image", "inspect", "--format", "{{.Config.Cmd}} {{.Os}}/{{.Architecture}}", "busybox"),
    ("image", "inspect", "-f", "{{json .Config.Env}}", "berth-fixture/multilayer:1.0"),
    ("image", "inspect", "nope"),
    ("image", "inspect", "busybox", "nope"),
    ("history", "busybox"),
    ("history", "berth-fixture/multilayer:1.0"),
    ("history", "--no-trunc", "berth-fixture/multilayer:1.0"),
    ("history", "-q", "berth-fixture/multilayer:1.0"),
    ("history", "-q", "--no-trunc", "busybox"),
    ("history", "-H=false", "busybox"),
    ("image", "history", "--format", "{{.ID}} {{.Size}} {{.Comment}}", "busybox"),
    ("history", "nope"),
])
def test_inspect_and_history_match_docker(shared_berthd: BerthDaemon, args: tuple[str, ...]) -> None:
    ensure_fixtures(shared_berthd)
    same_as_docker(shared_berthd, *args)


def test_inspect_and_history_values(berthd: BerthDaemon) -> None:
    ok(berthd, "load", "-i", str(MULTI))
    info = json.loads(ok(berthd, "image", "inspect", "berth-fixture/multilayer:1.0"))[0]
    assert info["Id"] == MULTI_ID
    assert info["Config"]["Cmd"] == ["cat", "/srv/greeting.txt"]
    assert len(info["RootFS"]["Layers"]) == 5
    hist = ok(berthd, "history", "--no-trunc", "berth-fixture/multilayer:1.0").splitlines()
    assert hist[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert hist[1].startswith(MULTI_ID) and len(hist) == 12
    assert 'CMD ["cat" "/srv/greeting.txt"]' in hist[1]
    quiet = ok(berthd, "history", "-q", "berth-fixture/multilayer:1.0").split()
    assert quiet == [MULTI_ID[7:19]] + ["<missing>"] * 10
    truncated = ok(berthd, "history", "berth-fixture/multilayer:1.0")
    assert "…" in truncated and "mkdir -p /data/keep /data/gone /opt/app" not in truncated


# ---- prune / df ---------------------------------------------------------------------------------------

def test_prune_matches_docker(berthd: BerthDaemon, berthd_factory: Any) -> None:
    twin = berthd_factory()
    load_fixtures(berthd)
    load_fixtures(twin)
    mine = berth(berthd, "image", "prune", "-f")
    theirs = twin.docker("image", "prune", "-f")
    assert (mine.returncode, mine.stdout) == (0, theirs.stdout)
    assert mine.stdout.startswith(f"Deleted Images:\ndeleted: {MULTI_ID}\n\nTotal reclaimed space: ")
    mine = berth(berthd, "image", "prune", "-a", "-f")
    theirs = twin.docker("image", "prune", "-a", "-f")
    assert (mine.returncode, mine.stdout) == (0, theirs.stdout)
    assert "untagged: busybox:latest\n" in mine.stdout and f"deleted: {BUSYBOX_ID}\n" in mine.stdout
    assert ok(berthd, "images", "-q") == ""
    assert ok(berthd, "image", "prune", "-f") == "Total reclaimed space: 0B\n"
    assert not list((berthd.data_root / "content").rglob("blobs/sha256/*"))


def test_prune_prompt(berthd: BerthDaemon) -> None:
    load_fixtures(berthd)
    res = berth(berthd, "image", "prune", input=b"n\n")
    assert (res.returncode, res.stdout) == (0, "WARNING! This will remove all dangling images.\n"
                                               "Are you sure you want to continue? [y/N] ")
    assert res.stdout == berthd.docker("image", "prune", input="n\n").stdout
    assert len(ok(berthd, "images", "-q").split()) == 3
    res = berth(berthd, "image", "prune", "-a", input=b"y\n")
    assert res.returncode == 0
    assert res.stdout.startswith("WARNING! This will remove all images without at least one container associated "
                                 "to them.\nAre you sure you want to continue? [y/N] Deleted Images:\n")
    assert ok(berthd, "images", "-q") == ""


def test_system_df_matches_docker(berthd: BerthDaemon) -> None:
    empty = same_as_docker(berthd, "system", "df")
    assert empty.splitlines()[1].split() == ["Images", "0", "0", "0B", "0B"]
    load_fixtures(berthd)
    table = same_as_docker(berthd, "system", "df")
    assert table.splitlines()[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert table.splitlines()[1].split()[:3] == ["Images", "3", "0"]
    same_as_docker(berthd, "system", "df", "--format", "{{.Type}}: {{.TotalCount}} {{.Reclaimable}}")
    assert same_as_docker(berthd, "system", "df", "--format", "json").count("\n") == 4
    # a container makes its image active and shows its own writable layer
    images = berthd.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    base = next(i for i in images if i.startswith("busybox"))
    berthd.docker("run", "--name", "df1", base, "sh", "-c", "head -c 100000 /dev/zero > /big")
    try:
        table = same_as_docker(berthd, "system", "df")
        rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
        assert rows["Images"][2] == "1" and rows["Containers"][1:3] == ["1", "0"]
        assert rows["Containers"][3] != "0B", table
    finally:
        berthd.docker("rm", "df1")


# ---- import -------------------------------------------------------------------------------------------

@pytest.fixture
def rootfs_tar(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello").write_text("hi\n")
    (root / "bin").mkdir()
    os.symlink("/etc/hello", root / "bin" / "link")
    out = tmp_path / "rootfs.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(root, arcname=".")
    return out


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """A throw-away HTTP server for ``directory`` on 127.0.0.1 (an ephemeral port); yields its base URL."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _layers(d: BerthDaemon, image: str) -> list[str]:
    layers: list[str] = json.loads(ok(d, "image", "inspect", "-f", "{{json .RootFS.Layers}}", image))
    return layers


def test_import_file_stdin_and_url(berthd: BerthDaemon, rootfs_tar: Path) -> None:
    out = ok(berthd, "import", str(rootfs_tar), "imp:file")
    assert out.startswith("sha256:") and len(out.strip()) == 71
    assert ok(berthd, "images", "-q", "--no-trunc", "imp:file") == out
    out = ok(berthd, "image", "import", "-", "imp:stdin", input=rootfs_tar.read_bytes())
    assert ok(berthd, "images", "-q", "--no-trunc", "imp:stdin") == out
    with serve_directory(rootfs_tar.parent) as base:
        out = ok(berthd, "import", f"{base}/{rootfs_tar.name}", "imp:url")
        assert ok(berthd, "images", "-q", "--no-trunc", "imp:url") == out
        res = berth(berthd, "import", f"{base}/missing.tar", "imp:missing")
        assert res.returncode == 1 and res.stderr.startswith("Error response from daemon: ")
    # the same tar makes the same layer whichever way it came in
    assert len(_layers(berthd, "imp:file")) == 1
    assert _layers(berthd, "imp:file") == _layers(berthd, "imp:stdin") == _layers(berthd, "imp:url")
    untagged = ok(berthd, "import", str(rootfs_tar)).strip()
    assert ok(berthd, "images", "--filter", "dangling=true", "-q", "--no-trunc").strip() == untagged
    res = berth(berthd, "import", "/nonexistent.tar")
    assert (res.returncode, res.stderr) == (1, "open /nonexistent.tar: no such file or directory\n")


def test_import_with_changes_and_message(berthd: BerthDaemon, rootfs_tar: Path) -> None:
    ok(berthd, "import", "-c", 'CMD ["cat", "/etc/hello"]', "-c", "ENV A=b", "--change", "WORKDIR /etc",
       "-m", "from a test", str(rootfs_tar), "imp:changes")
    info = json.loads(ok(berthd, "image", "inspect", "imp:changes"))[0]
    assert info["Config"]["Cmd"] == ["cat", "/etc/hello"]
    assert info["Config"]["Env"] == ["A=b"]
    assert info["Config"]["WorkingDir"] == "/etc"
    assert info["Comment"] == "from a test"
    hist = same_as_docker(berthd, "history", "--format", "{{.Size}} {{.Comment}}", "imp:changes")
    assert hist.strip().endswith("from a test")
    res = berth(berthd, "import", "-c", "BOGUS x", str(rootfs_tar), "imp:bad")
    assert res.returncode == 1 and res.stderr.startswith("Error response from daemon: ")


# ---- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("image", "inspect", "x"),
    ("history", "x"),
    ("rmi", "x"),
    ("tag", "x", "y"),
    ("save", "x"),
    ("image", "save", "-o", "/tmp/never-written-by-berth-tests.tar", "x"),
])
def test_unknown_image(shared_berthd: BerthDaemon, args: tuple[str, ...]) -> None:
    res = berth(shared_berthd, *args)
    assert res.returncode == 1
    assert res.stderr == "Error response from daemon: No such image: x\n"
    assert not Path("/tmp/never-written-by-berth-tests.tar").exists()


def test_daemon_not_running(tmp_path: Path) -> None:
    missing = f"unix://{tmp_path}/missing.sock"
    for args in (("images",), ("image", "inspect", "busybox"), ("load", "-i", str(BUSYBOX))):
        res = run_berth(missing, *args)
        assert (res.returncode, res.stdout, res.stderr) == (
            1, "", f"Cannot connect to the berth daemon at {missing}. Is berthd running?\n")
    # a socket file nobody listens on (a daemon that crashed) says the same
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))
        res = run_berth(f"unix://{stale}", "images", via_env=True)
    assert (res.returncode, res.stderr) == (1, f"Cannot connect to the berth daemon at unix://{stale}. "
                                               "Is berthd running?\n")
    res = run_berth(missing, "version")
    assert res.returncode == 1 and res.stdout.startswith("Client:\n") and "Server:" not in res.stdout
    assert res.stderr == f"Cannot connect to the berth daemon at {missing}. Is berthd running?\n"
    res = run_berth(missing, "info")
    assert res.returncode == 1
    assert f"ERROR: Cannot connect to the berth daemon at {missing}. Is berthd running?\n" in res.stdout
    assert res.stderr == "errors pretty printing info\n"


def test_unsupported_host() -> None:
    res = run_berth("tcp://127.0.0.1:2375", "images")
    assert res.returncode == 1
    assert res.stderr.startswith("Failed to initialize: unable to resolve berth endpoint: unsupported daemon host")
    assert "Error response from daemon" not in res.stderr


def test_help_and_unknown_command() -> None:
    res = run_berth(None, "--help")
    assert res.returncode == 0 and "Management Commands:" in res.stdout and "images" in res.stdout
    res = run_berth(None, "image", "--help")
    assert res.returncode == 0 and "bootstrap" in res.stdout
    res = run_berth(None, "frobnicate")
    assert res.returncode == 1 and res.stderr.startswith("berth: unknown command: berth frobnicate")
