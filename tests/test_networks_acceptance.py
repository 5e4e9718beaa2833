"""Issue 4's acceptance list, step by step, with the real docker CLI and docker-py against one fresh berthd:
a host folder served on a published localhost port, a single-file bind that follows `mv`, names and aliases on
user networks, isolation between networks, an internal network without a route out, a named volume and an
image VOLUME, a SIGKILL of berthd while the port serves, and nothing of the project left on the host afterwards.

Traffic goes only to 127.0.0.1 and to the containers' own addresses."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from berth.testing.daemon import BerthDaemon
from berth.testing.rootfs import FIXTURES
from berth.testing.waiting import free_port, until

BUSYBOX = FIXTURES / "busybox-docker-save.tar"

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]


def _get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    with opener.open(url, timeout=3) as r:
        return str(r.read().decode())


def _leftovers(d: BerthDaemon) -> dict[str, list[str]]:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        mounts = [line.split()[4] for line in fh]
    roots = (str(d.data_root), str(d.exec_root))
    return {"links": [n for n in names if n.startswith(d.network_prefix) and n != f"{d.network_prefix}0"],
            "tables": [t for t in tables.splitlines() if t.split()[-1:] == [d.network_prefix]],
            "mounts": [m for m in mounts if m.startswith(roots)]}


def test_issue4_acceptance(berthd: BerthDaemon, tmp_path: Path) -> None:
    d = berthd
    d.docker("load", "-i", str(BUSYBOX))
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the host\n")
    conf = www / "conf.txt"
    conf.write_text("v1\n")
    port = free_port()

    # a host folder served through a port published on 127.0.0.1, a single file bound on top of it
    d.docker("run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:8080", "-v", f"{www}:/www:ro",
             "-v", f"{conf}:/www/conf.txt:ro", "busybox", "httpd", "-f", "-p", "8080", "-h", "/www")
    assert d.docker("port", "web").stdout.strip() == f"8080/tcp -> 127.0.0.1:{port}"
    assert d.docker("port", "web", "8080").stdout.strip() == f"127.0.0.1:{port}"
    assert until(lambda: _get(f"http://127.0.0.1:{port}/"), ignore=(OSError,)) == "hello from the host\n"
    assert _get(f"http://127.0.0.1:{port}/conf.txt") == "v1\n"
    new = www / "new"
    new.write_text("v2\n")
    new.rename(conf)  # `echo v2 > new && mv new conf.txt`: a new inode under the old name
    assert until(lambda: _get(f"http://127.0.0.1:{port}/conf.txt") == "v2\n", ignore=(OSError,))

    # names and aliases on a user network; no reach across networks; an internal network has no way out
    d.docker("network", "create", "front")
    d.docker("network", "create", "back")
    d.docker("network", "create", "--internal", "sealed")
    d.docker("run", "-d", "--name", "api", "--network", "front", "--network-alias", "service", "busybox",
             "sleep", "300")
    d.docker("run", "-d", "--name", "client", "--network", "front", "busybox", "sleep", "300")
    d.docker("run", "-d", "--name", "other", "--network", "back", "busybox", "sleep", "300")
    d.docker("run", "-d", "--name", "inside", "--network", "sealed", "busybox", "sleep", "300")
    api_ip = d.docker("inspect", "-f", "{{.NetworkSettings.Networks.front.IPAddress}}", "api").stdout.strip()
    for name in ("api", "service"):
        res = d.docker("exec", "client", "ping", "-c", "1", "-W", "2", name, check=False)
        assert res.returncode == 0 and api_ip in res.stdout, res.stdout + res.stderr
    assert d.docker("exec", "other", "ping", "-c", "1", "-W", "1", api_ip, check=False).returncode != 0
    assert d.docker("exec", "other", "nslookup", "api", check=False).returncode != 0
    routes = d.docker("exec", "inside", "ip", "route").stdout
    assert "default" not in routes and routes.strip(), routes

    # a named volume keeps its data across containers; an image VOLUME becomes a prefilled anonymous volume
    d.docker("volume", "create", "keep")
    d.docker("run", "--rm", "-v", "keep:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert d.docker("run", "--rm", "-v", "keep:/data", "busybox", "cat", "/data/f").stdout == "kept\n"
    d.docker("run", "--name", "seed", "busybox", "sh", "-c", "mkdir /data && echo from-image > /data/seed")
    d.docker("commit", "-c", "VOLUME /data", "seed", "withvol:1")
    d.docker("rm", "seed")
    d.docker("run", "--name", "anon", "withvol:1", "sh", "-c", "cat /data/seed; echo more > /data/more")
    assert d.docker("logs", "anon").stdout == "from-image\n"
    mounts = json.loads(d.docker("inspect", "anon").stdout)[0]["Mounts"]
    assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/data")]
    volume = mounts[0]["Name"]
    assert volume in d.docker("volume", "ls", "-q").stdout.split()
    d.docker("rm", "-v", "anon")
    assert volume not in d.docker("volume", "ls", "-q").stdout.split()

    # SIGKILL of berthd: the published port keeps serving, and after the restart berth still knows it
    d.kill()
    assert _get(f"http://127.0.0.1:{port}/") == "hello from the host\n"
    d.start()
    assert d.docker("port", "web", "8080").stdout.strip() == f"127.0.0.1:{port}"
    assert _get(f"http://127.0.0.1:{port}/conf.txt") == "v2\n"

    # docker-py: a random host port
    client = d.client()
    try:
        ctr = client.containers.run("busybox", ["httpd", "-f", "-p", "8080", "-h", "/etc"], ports={"8080/tcp": None},
                                    detach=True, name="random")
        ctr.reload()
        host_port = int(ctr.ports["8080/tcp"][0]["HostPort"])
        assert until(lambda: "root:" in _get(f"http://127.0.0.1:{host_port}/passwd"), ignore=(OSError,))
    finally:
        client.close()

    # removing everything leaves nothing of the project behind (the default bridge may stay, as docker0 does)
    d.docker("rm", "-f", "web", "api", "client", "other", "inside", "random")
    d.docker("network", "rm", "front", "back", "sealed")
    d.docker("volume", "rm", "keep")
    until(lambda: not _leftovers(d)["links"])
    d.terminate()
    left = _leftovers(d)
    assert left == {"links": [], "tables": left["tables"], "mounts": []}, left
    # what may stay is the default bridge's own NAT (as docker0's MASQUERADE does): no port, no other network
    table = subprocess.run(["nft", "list", "table", "ip", d.network_prefix], capture_output=True, text=True,
                           check=False).stdout
    rules = [line.strip() for line in table.splitlines() if "masquerade" in line or "dnat to" in line or "drop" in line]
    assert rules and all(f'"{d.network_prefix}0"' in r and "dnat to" not in r for r in rules), table
