"""``RUN --mount`` (cache, bind, tmpfs), ``RUN --network`` and ``docker builder prune`` on berth's classic builder.

Docker's legacy builder refuses these flags; berth gives them BuildKit's meaning. The parser and the cache store
are tested directly; the rest through the real docker CLI (``DOCKER_BUILDKIT=0``).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from berth.build.mounts import CacheMounts, RunMount, mount_target, parse_mount
from berth.errors import InvalidArgument
from test_build_api import BUSYBOX, build, make_context

# --- the flag grammar (buildkit commands_runmount.go) -----------------------------------------------------------


def test_parse_defaults_and_aliases() -> None:
    m = parse_mount("type=cache,target=/root/.cache/pip")
    assert (m.type, m.target, m.readonly, m.sharing, m.cache_id) == ("cache", "/root/.cache/pip", False, "shared",
                                                                    "/root/.cache/pip")
    b = parse_mount("source=data,dst=/mnt")
    assert (b.type, b.source, b.target, b.readonly) == ("bind", "data", "/mnt", True)
    assert not parse_mount("type=bind,src=x,target=/m,rw").readonly
    assert not parse_mount("type=bind,target=/m,readwrite=true").readonly
    assert parse_mount("type=tmpfs,target=/t,size=1m").size == 1 << 20
    c = parse_mount("type=cache,id=pip,target=/c,sharing=locked,mode=0700,uid=1000,gid=1000,ro")
    assert (c.cache_id, c.sharing, c.mode, c.uid, c.gid, c.readonly) == ("pip", "locked", 0o700, 1000, 1000, True)
    assert c.cache_key == "pip:1000:1000:700"
    assert parse_mount("type=cache,target=/c/").cache_key == "/c"
    assert parse_mount("type=bind,target=$T", lambda s: s.replace("$T", "/x")).target == "/x"
    assert parse_mount('type=bind,"target=/a b"').target == "/a b"
    assert mount_target(parse_mount("type=cache,target=cache"), "/app") == "/app/cache"


@pytest.mark.parametrize(("value", "message"), [
    ("type=cahce,target=/c", 'unsupported mount type "cahce" (did you mean cache?)'),
    ("type=cache,target=/c,sharing=nope", 'unsupported sharing value "nope"'),
    ("type=bind,target=/c,mode=0755", 'mode not allowed for "bind" type mounts'),
    ("type=tmpfs,target=/c,uid=1", 'uid not allowed for "tmpfs" type mounts'),
    ("type=cache,target=/c,size=1m", "unexpected key 'size' for mount type 'cache'"),
    ("type=cache,target=/c,mode=9", "invalid value 9 for mode"),
    ("type=cache,target=/c,bogus=1", "unexpected key 'bogus' in 'bogus=1'"),
    ("type=bind,target=/c,ro=maybe", "invalid value for ro: maybe"),
    ("type=bind,target", "invalid field 'target' must be a key=value pair"),
    ("type=bind,target=/c,required", "unexpected key 'required' for mount type 'bind'"),
    ("type=bind,target=/c,sharing=locked", "invalid cache sharing set for bind mount"),
    ("type=bind,from=$STAGE,target=/c", "'from' doesn't support variable expansion, define alias stage instead"),
    ("type=secret,from=x,id=a", "secret mount should not have a from"),
    ("type=secret", "invalid secret mount. one of source, target required"),
])
def test_parse_errors_are_buildkits(value: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_mount(value)
    assert message in str(err.value)


def test_target_root_is_refused() -> None:
    with pytest.raises(InvalidArgument, match='invalid mount target "/"'):
        mount_target(parse_mount("type=cache"), "/")


# --- the cache store ------------------------------------------------------------------------------------------


@pytest.mark.root  # the cache directory is chowned to the mount's uid:gid
def test_cache_store_sharing_modes_and_prune(tmp_path: Path) -> None:
    store = CacheMounts(tmp_path / "build-cache")
    shared = RunMount(type="cache", target="/c", readonly=False)
    with store.use(shared) as a, store.use(shared) as b:
        assert a == b  # shared: one directory for concurrent users
        (a / "f").write_text("x")
        assert store.prune() == []  # in use: kept
        assert [u.in_use for u in store.usage()] == [True]
    private = RunMount(type="cache", target="/c", readonly=False, sharing="private")
    with store.use(private) as p1, store.use(private) as p2:
        assert p1 == a and p2 != p1 and not (p2 / "f").exists()  # a busy private cache gets a fresh copy
    owned = RunMount(type="cache", target="/o", readonly=False, uid=1234, gid=4321, mode=0o700)
    with store.use(owned) as o:
        st = o.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 4321, 0o700)
    # locked: a second user waits for the first
    locked = RunMount(type="cache", target="/l", readonly=False, sharing="locked")
    order: list[str] = []

    def second() -> None:
        with store.use(locked):
            order.append("second")

    with store.use(locked):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first-done")
    t.join(5)
    assert order == ["first-done", "second"]
    removed = store.prune(until_s=3600)
    assert removed == []  # all used just now
    removed = store.prune()
    assert {u.id for u in removed} >= {"/c", "/o"} and sum(u.size for u in removed) > 0
    assert not (tmp_path / "build-cache" / removed[0].name).exists()


def test_cache_store_never_follows_links_when_sizing_or_pruning(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    store = CacheMounts(tmp_path / "build-cache")
    if os.geteuid() != 0:
        pytest.skip("needs root: the cache directory is chowned")
    with store.use(RunMount(type="cache", target="/c", readonly=False)) as data:
        (data / "escape").symlink_to(outside)
    store.prune()
    assert (outside / "keep").read_text() == "precious"


def test_prune_skips_a_cache_whose_lock_is_held(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the cache directory is chowned")
    store = CacheMounts(tmp_path / "build-cache")
    with store.use(RunMount(type="cache", target="/c", readonly=False)):
        pass
    (entry,) = (tmp_path / "build-cache").iterdir()
    fd = os.open(entry / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert store.prune() == []
    finally:
        os.close(fd)
    assert len(store.prune()) == 1


# --- end to end through the docker CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


@pytest.mark.root
@pytest.mark.docker_cli
def test_cache_mount_persists_across_builds_and_stays_out_of_the_image(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": (
        "FROM busybox\n"
        "RUN --mount=type=cache,target=/root/.cache/pip "
        "sh -c 'echo \"seen:$(cat /root/.cache/pip/f 2>/dev/null)\"; echo run >> /root/.cache/pip/f'\n")})
    first = build(daemon, ctx, "-t", "cm:1")
    assert "seen:\n" in first.stdout
    again = build(daemon, ctx, "-t", "cm:2")
    assert " ---> Using cache" in again.stdout  # the mount's spec is in the key, not its contents
    second = build(daemon, ctx, "--no-cache", "-t", "cm:3")
    assert "seen:run\n" in second.stdout, second.stdout
    listing = daemon.docker("run", "--rm", "cm:3", "ls", "-A", "/root/.cache/pip").stdout
    assert listing == ""  # the cache's files are not in the layer
    # another target is another cache; the same id shares it
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nRUN --mount=type=cache,id=/root/.cache/pip,target=/elsewhere,sharing=locked "
        "cat /elsewhere/f\n")
    shared = build(daemon, ctx, "-t", "cm:4")
    assert " ---> Cache miss" in shared.stdout and "run\nrun\n" in shared.stdout
    pruned = daemon.docker("builder", "prune", "-f")
    assert "Deleted build cache objects:" in pruned.stdout and "Total reclaimed space:" in pruned.stdout
    assert list((daemon.data_root / "build-cache").iterdir()) == []
    third = build(daemon, ctx, "--no-cache", check=False)
    assert third.returncode != 0  # the cache is gone: cat fails


@pytest.mark.root
@pytest.mark.docker_cli
def test_bind_mounts_from_context_and_stage(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {
        "data/hello.txt": "hello from context\n",
        "Dockerfile": (
            "FROM busybox AS tools\n"
            "RUN mkdir /out && echo built-in-stage > /out/artifact\n"
            "FROM busybox\n"
            "RUN --mount=type=bind,source=data,target=/mnt "
            "sh -c 'cat /mnt/hello.txt; touch /mnt/x 2>/dev/null && echo WRITABLE || echo read-only'\n"
            "RUN --mount=type=bind,source=data,target=/mnt,rw "
            "sh -c 'echo changed > /mnt/hello.txt && cat /mnt/hello.txt'\n"
            "RUN --mount=type=bind,from=tools,source=/out,target=/tools cat /tools/artifact\n"
            "RUN --mount=type=bind,source=data/hello.txt,target=/one.txt cat /one.txt\n"
            "RUN --mount=type=bind,from=tools,source=/out,target=/tools,rw sh -c 'echo scribbled > /tools/artifact'\n"
            "RUN --mount=type=bind,from=tools,source=/out/artifact,target=/a cat /a\n"),
    })
    (ctx / "escape").symlink_to("/etc")
    res = build(daemon, ctx, "-t", "bind:1")
    out = res.stdout
    assert "hello from context\nread-only\n" in out and "\nWRITABLE\n" not in out
    assert "changed\n" in out and (ctx / "data/hello.txt").read_text() == "hello from context\n"
    assert out.count("built-in-stage\n") == 2  # a rw bind's writes go to a copy, thrown away
    mounted = Path("/proc/self/mountinfo").read_text()
    assert str(daemon.data_root) + "/tmp/" not in mounted  # the stage trees were unmounted
    assert out.count("hello from context\n") == 2
    files = daemon.docker("run", "--rm", "bind:1", "sh", "-c",
                          "ls -A /mnt /tools; test -s /one.txt && echo FILE || echo no-file").stdout
    assert "hello.txt" not in files and "artifact" not in files and "no-file" in files
    # a context change reruns the step that binds it
    (ctx / "data/hello.txt").write_text("v2\n")
    rerun = build(daemon, ctx, "-t", "bind:2")
    assert "v2\n" in rerun.stdout
    # a symlink in the source resolves inside the context: /etc of the host is out of reach
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=bind,source=escape/hostname,target=/h cat /h\n")
    bad = build(daemon, ctx, check=False)
    assert bad.returncode != 0 and "file not found in build context" in bad.stderr, bad
    # a stage defined later cannot be mounted
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nRUN --mount=from=later,target=/l true\nFROM busybox AS later\n")
    bad = build(daemon, ctx, check=False)
    assert 'cannot mount from stage "later" to "/l", stage needs to be defined before current command' in bad.stderr


@pytest.mark.root
@pytest.mark.docker_cli
def test_tmpfs_network_and_refusals(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": (
        "FROM busybox\n"
        "RUN --mount=type=tmpfs,target=/scratch,size=4m "
        "sh -c 'grep \" /scratch tmpfs\" /proc/mounts && echo data > /scratch/f && cp /bin/true /scratch/true "
        "&& /scratch/true && echo ran-from-tmpfs'\n"
        "RUN --network=none sh -c 'echo ifaces=$(grep -c : /proc/net/dev)'\n"
        "RUN --mount=type=secret,id=token sh -c 'test -e /run/secrets/token || echo no-secret'\n")})
    res = build(daemon, ctx, "-t", "tmpfs:1")
    assert "size=4096k" in res.stdout and "ran-from-tmpfs" in res.stdout and "ifaces=1\n" in res.stdout, res.stdout
    assert "[Warning] RUN --mount=type=secret,id=token skipped" in res.stdout and "no-secret" in res.stdout
    assert daemon.docker("run", "--rm", "tmpfs:1", "ls", "-A", "/scratch").stdout == ""
    for line, message in [
        ("RUN --mount=type=secret,id=t,required true", "cannot receive secret mounts"),
        ("RUN --mount=type=cahce,target=/c true", 'unsupported mount type "cahce"'),
        ("RUN --mount=type=cache true", 'invalid mount target "/"'),
        ("RUN --security=insecure true", "the --security option requires BuildKit"),
        ("RUN --network=host true", "network.host is not allowed"),
        ("RUN --network=bridge true", 'invalid network mode "bridge"'),
        ("RUN --mount=type=tmpfs,target=/a --mount=type=tmpfs,target=/a true", "duplicate mount target /a"),
    ]:
        (ctx / "Dockerfile").write_text(f"FROM busybox\n{line}\n")
        bad = build(daemon, ctx, check=False)
        assert bad.returncode != 0 and message in bad.stderr, (line, bad)


@pytest.mark.root
@pytest.mark.docker_cli
def test_builder_prune_with_until_and_df(daemon: Any, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {
        "Dockerfile": "FROM busybox\nRUN --mount=type=cache,target=/c,id=prune-me sh -c 'echo x > /c/f'\n"})
    build(daemon, ctx, "--no-cache")
    before = set((daemon.data_root / "build-cache").iterdir())
    kept = daemon.docker("builder", "prune", "-f", "--filter", "until=1h").stdout
    assert "Total reclaimed space: 0B" in kept
    assert set((daemon.data_root / "build-cache").iterdir()) == before  # all used within the hour
    df = daemon.docker("system", "df").stdout
    cache_row = next(line for line in df.splitlines() if line.startswith("Build Cache"))
    assert cache_row.split()[2] != "0", df  # the cache mount is counted
    assert "exec.cachemount" in daemon.docker("system", "df", "-v").stdout
    bad = daemon.docker("builder", "prune", "-f", "--filter", "until=soon", check=False)
    assert bad.returncode != 0 and "filter expects a duration" in bad.stderr
    gone = daemon.docker("builder", "prune", "-f", "--all").stdout
    assert "Deleted build cache objects:" in gone
    assert list((daemon.data_root / "build-cache").iterdir()) == []


def test_berth_builder_prune(daemon: Any, tmp_path: Path) -> None:
    """`berth builder prune` shows what `docker builder prune` shows."""
    ctx = make_context(tmp_path / "ctx", {
        "Dockerfile": "FROM busybox\nRUN --mount=type=cache,target=/c,id=berth-cli-prune sh -c 'echo x > /c/f'\n"})
    build(daemon, ctx, "--no-cache")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = daemon.host
    berth = str(Path(sys.executable).with_name("berth"))
    done = subprocess.run([berth, "builder", "prune", "-f", "--all"], env=env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.startswith("Deleted build cache objects:\n") and "Total reclaimed space: " in done.stdout
    again = subprocess.run([berth, "builder", "prune", "-f"], env=env, capture_output=True, text=True, check=True)
    assert again.stdout == "Total reclaimed space: 0B\n"
