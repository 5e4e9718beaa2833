"""Volumes and mounts in running containers, driven by the real docker CLI against one berthd per module.

Covers named and anonymous volumes, copy-up from the image (and ``nocopy``), read-only and tmpfs mounts, a
read-only host folder served by busybox httpd, ``--volumes-from``, mounted (``type=tmpfs``) and chowned volumes,
destinations that are image symlinks pointing out of the root, and Docker's 400s for bad mount input.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.kernel.mount import is_mountpoint
from berth.testing import rootfs
from berth.testing.daemon import BerthDaemon, running

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]

IMAGE = "volimg:1"


@pytest.fixture(scope="module")
def daemon() -> Iterator[BerthDaemon]:
    """One berthd with busybox and an image whose ``VOLUME /data`` holds a file owned by 1000:1000, plus
    ``/www -> /etc`` and ``/up -> ../../..`` symlinks (made with ``docker commit``)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: containers and mounts")
    with running(BerthDaemon(), rootfs.FIXTURES / "busybox-docker-save.tar") as d:
        d.docker("run", "--name", "mkimg", "busybox", "sh", "-c",
                 "mkdir -p /data/sub && echo hello > /data/f && echo deep > /data/sub/g && chown -R 1000:1000 /data "
                 "&& chmod 750 /data && ln -s /etc /www && ln -s ../../.. /up")
        d.docker("commit", "--change", "VOLUME /data", "mkimg", IMAGE)
        d.docker("rm", "mkimg")
        yield d


def mounts_of(d: BerthDaemon, name: str) -> list[dict[str, Any]]:
    return list(json.loads(d.docker("inspect", name).stdout)[0]["Mounts"])


def volume_names(d: BerthDaemon) -> set[str]:
    return set(d.docker("volume", "ls", "-q").stdout.split())


def test_named_volume_is_shared_between_containers(daemon: BerthDaemon) -> None:
    daemon.docker("volume", "create", "shared1")
    daemon.docker("run", "--rm", "-v", "shared1:/data", "busybox", "sh", "-c", "echo x > /data/f")
    assert daemon.docker("run", "--rm", "-v", "shared1:/data", "busybox", "cat", "/data/f").stdout == "x\n"
    daemon.docker("create", "--name", "holder1", "-v", "shared1:/data:ro", "busybox", "true")
    try:
        (m,) = mounts_of(daemon, "holder1")
        mountpoint = json.loads(daemon.docker("volume", "inspect", "shared1").stdout)[0]["Mountpoint"]
        assert m == {"Type": "volume", "Name": "shared1", "Source": mountpoint, "Destination": "/data",
                     "Driver": "local", "Mode": "ro", "RW": False, "Propagation": ""}
        res = daemon.docker("volume", "rm", "shared1", check=False)
        cid = daemon.docker("inspect", "-f", "{{.Id}}", "holder1").stdout.strip()
        assert res.returncode == 1
        assert f"remove shared1: volume is in use - [{cid}]" in res.stderr
    finally:
        daemon.docker("rm", "holder1")
    daemon.docker("volume", "rm", "shared1")


def test_image_volume_is_prefilled_and_removed_with_rm_v(daemon: BerthDaemon) -> None:
    before = volume_names(daemon)
    out = daemon.docker("run", "--name", "anon1", IMAGE, "sh", "-c",
                        "cat /data/f /data/sub/g; stat -c '%u:%g %a' /data /data/f").stdout
    assert out.split("\n")[:4] == ["hello", "deep", "1000:1000 750", "1000:1000 644"]
    (m,) = mounts_of(daemon, "anon1")
    assert m["Type"] == "volume" and m["Destination"] == "/data" and re.fullmatch(r"[0-9a-f]{64}", m["Name"])
    assert m["Mode"] == "" and m["RW"] is True
    assert volume_names(daemon) - before == {m["Name"]}
    labels = json.loads(daemon.docker("volume", "inspect", m["Name"]).stdout)[0]["Labels"]
    assert labels == {"com.docker.volume.anonymous": ""}
    daemon.docker("rm", "-v", "anon1")
    assert volume_names(daemon) == before
    # `-v /path` is an anonymous volume too, and --rm takes it along
    daemon.docker("run", "--rm", "-v", "/scratch", "busybox", "sh", "-c", "touch /scratch/x")
    assert volume_names(daemon) == before


def test_named_volume_prefilled_on_first_use_unless_nocopy(daemon: BerthDaemon) -> None:
    assert daemon.docker("run", "--rm", "-v", "pre1:/data", IMAGE, "cat", "/data/f").stdout == "hello\n"
    # not empty any more: a second use sees the container's change, not a new copy
    daemon.docker("run", "--rm", "-v", "pre1:/data", IMAGE, "rm", "/data/f")
    assert daemon.docker("run", "--rm", "-v", "pre1:/data", IMAGE, "ls", "/data").stdout == "sub\n"
    assert daemon.docker("run", "--rm", "-v", "pre2:/data:nocopy", IMAGE, "ls", "-A", "/data").stdout == ""
    assert daemon.docker("run", "--rm", "--mount", "type=volume,src=pre3,dst=/data,volume-nocopy", IMAGE,
                         "ls", "-A", "/data").stdout == ""
    daemon.docker("volume", "rm", "pre1", "pre2", "pre3")


def test_readonly_volume_mount(daemon: BerthDaemon) -> None:
    res = daemon.docker("run", "--rm", "--mount", "type=volume,src=ro1,dst=/d,readonly", "busybox",
                        "touch", "/d/x", check=False)
    assert res.returncode == 1 and "Read-only file system" in res.stderr
    daemon.docker("volume", "rm", "ro1")


def test_tmpfs_flag_and_mount(daemon: BerthDaemon) -> None:
    out = daemon.docker("run", "--rm", "--tmpfs", "/t:size=1m", "busybox", "sh", "-c", "df -k /t | tail -1").stdout
    assert out.split()[0] == "tmpfs" and out.split()[1] == "1024"
    out = daemon.docker("run", "--rm", "--mount", "type=tmpfs,dst=/t,tmpfs-size=2m", "busybox", "sh", "-c",
                        "df -k /t | tail -1").stdout
    assert out.split()[1] == "2048"


def test_readonly_bind_serves_a_host_folder(daemon: BerthDaemon, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("served from the host\n")
    daemon.docker("run", "-d", "--name", "web1", "--cap-add", "NET_ADMIN", "-v", f"{www}:/www:ro", "busybox", "sh",
                  "-c", "ip link set lo up; exec httpd -f -p 8080 -h /www")
    try:
        body = ""
        for _ in range(50):
            res = daemon.docker("exec", "web1", "wget", "-qO-", "http://127.0.0.1:8080/", check=False)
            if res.returncode == 0:
                body = res.stdout
                break
            time.sleep(0.1)
        assert body == "served from the host\n"
        res = daemon.docker("exec", "web1", "touch", "/www/x", check=False)
        assert res.returncode != 0 and not (www / "x").exists()
        (m,) = mounts_of(daemon, "web1")
        assert m == {"Type": "bind", "Source": str(www), "Destination": "/www", "Mode": "ro", "RW": False,
                     "Propagation": "rprivate"}
    finally:
        daemon.docker("rm", "-f", "web1")


def test_file_mount_point_inside_a_read_only_bind(daemon: BerthDaemon, tmp_path: Path) -> None:
    """A single file bound into a read-only folder bind needs a mount point the folder cannot take: runc's error,
    naming the mount, and nothing created in the host folder; with the file already there it works."""
    www = tmp_path / "www"
    www.mkdir()
    conf = tmp_path / "conf.txt"
    conf.write_text("v1\n")
    res = daemon.docker("run", "--rm", "-v", f"{www}:/www:ro", "-v", f"{conf}:/www/conf.txt:ro", "busybox",
                        "cat", "/www/conf.txt", check=False)
    assert res.returncode != 0
    assert (f'error mounting "{conf}" to rootfs at "/www/conf.txt": create mountpoint for /www/conf.txt mount: '
            "read-only file system") in res.stderr
    assert list(www.iterdir()) == []
    (www / "conf.txt").write_text("placeholder\n")
    assert daemon.docker("run", "--rm", "-v", f"{www}:/www:ro", "-v", f"{conf}:/www/conf.txt:ro", "busybox",
                         "cat", "/www/conf.txt").stdout == "v1\n"


def test_volumes_from(daemon: BerthDaemon, tmp_path: Path) -> None:
    (tmp_path / "h").write_text("host\n")
    daemon.docker("create", "--name", "src1", "-v", "vf1:/data", "-v", f"{tmp_path}:/h", "busybox", "true")
    try:
        daemon.docker("run", "--rm", "--volumes-from", "src1", "busybox", "sh", "-c", "echo shared > /data/f")
        out = daemon.docker("run", "--rm", "--volumes-from", "src1:ro", "busybox", "sh", "-c",
                            "cat /data/f /h/h; touch /data/y 2>&1 || echo refused").stdout
        assert out.startswith("shared\nhost\n") and out.rstrip().endswith("refused")
        res = daemon.docker("run", "--rm", "--volumes-from", "nosuch1", "busybox", "true", check=False)
        assert res.returncode == 125 and "No such container: nosuch1" in res.stderr
    finally:
        daemon.docker("rm", "src1")
    daemon.docker("volume", "rm", "vf1")


def test_volume_with_mount_options_and_owner(daemon: BerthDaemon) -> None:
    daemon.docker("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", "o=size=10m",
                  "--opt", "uid=1000", "tv1")
    data = Path(json.loads(daemon.docker("volume", "inspect", "tv1").stdout)[0]["Mountpoint"])
    out = daemon.docker("run", "--rm", "--user", "1000", "-v", "tv1:/data", "busybox", "sh", "-c",
                        "touch /data/ok && df -k /data | tail -1").stdout
    assert out.split()[0] == "tmpfs" and out.split()[1] == "10240"
    for _ in range(50):  # unmounted after its last user stopped (--rm answers the CLI before that cleanup)
        if not is_mountpoint(data):
            break
        time.sleep(0.05)
    assert not is_mountpoint(data)
    daemon.docker("volume", "create", "--opt", "uid=1000", "--opt", "gid=1000", "--opt", "mode=0750", "own1")
    out = daemon.docker("run", "--rm", "--user", "1000:1000", "-v", "own1:/data", "busybox", "sh", "-c",
                        "touch /data/ok && stat -c '%u:%g %a' /data").stdout
    assert out == "1000:1000 750\n"
    daemon.docker("volume", "rm", "tv1", "own1")


def test_destination_through_an_image_symlink_stays_in_the_root(daemon: BerthDaemon, tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("m\n")
    # /www -> /etc inside the image: the bind lands on the container's /etc, never the host's
    out = daemon.docker("run", "--rm", "-v", f"{tmp_path}:/www", IMAGE, "cat", "/etc/marker").stdout
    assert out == "m\n" and not Path("/etc/marker").exists()
    # /up -> ../../.. clamps at the container's root: /up/mnt2 is the container's /mnt2
    out = daemon.docker("run", "--rm", "-v", f"{tmp_path}:/up/mnt2", IMAGE, "cat", "/mnt2/marker").stdout
    assert out == "m\n" and not Path("/mnt2").exists()
    # copy-up reads the image's /etc through the symlink, not the host's
    out = daemon.docker("run", "--rm", "-v", "sym1:/www", IMAGE, "ls", "/www").stdout.split()
    assert "passwd" in out and "debian_version" not in out
    daemon.docker("volume", "rm", "sym1")


@pytest.mark.parametrize(("args", "message"), [
    (["-v", "/tmp:relative"], "invalid volume specification: '/tmp:relative': invalid mount config for type "
                              "\"bind\": invalid mount path: 'relative' mount path must be absolute"),
    (["-v", "/tmp:/"], "invalid volume specification: '/tmp:/': invalid mount config for type \"bind\": "
                       "invalid specification: destination can't be '/'"),
    (["--mount", "type=bind,src=/nonexistent-berth-src,dst=/x"],
     "invalid mount config for type \"bind\": bind source path does not exist: /nonexistent-berth-src"),
    (["-v", "/tmp:/x", "-v", "/etc:/x"], "Duplicate mount point: /x"),
    (["--mount", "type=volume,src=ok1,dst=/x", "-v", "/tmp:/x"], "Duplicate mount point: /x"),
    (["-v", "bad!name:/x"], "includes invalid characters for a local volume name"),
])
def test_bad_mount_input_is_refused_at_create(daemon: BerthDaemon, args: list[str], message: str) -> None:
    res = daemon.docker("create", *args, "busybox", "true", check=False)
    assert res.returncode == 1, res  # `docker create` exits 1 on a daemon error (`run` 125)
    assert message in res.stderr
    assert "ok1" not in volume_names(daemon)


def test_missing_legacy_bind_source_is_created(daemon: BerthDaemon, tmp_path: Path) -> None:
    src = tmp_path / "made" / "here"
    daemon.docker("run", "--rm", "-v", f"{src}:/x", "busybox", "touch", "/x/f")
    assert (src / "f").exists()
