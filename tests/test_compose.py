"""Classic docker-compose (Debian's 1.29, Python + docker-py) drives berthd unchanged: a project network with
service names and aliases resolved by the embedded DNS, a named volume, a port published on 127.0.0.1,
`ps`/`logs`, and `down -v` removing what `up` made."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.testing.daemon import BerthDaemon, running
from berth.testing.rootfs import FIXTURES
from berth.testing.waiting import free_port, until

COMPOSE = shutil.which("docker-compose")
pytestmark = [pytest.mark.root, pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed "
                                                   "(apt-get install docker-compose; scripts/setup does)")]

PROJECT = """\
version: "3.8"
services:
  web:
    image: busybox:latest
    command: sh -c "mkdir -p /srv && cat /data/greeting > /srv/index.html && exec httpd -f -p 8080 -h /srv"
    ports: ["127.0.0.1:{port}:8080"]
    volumes: ["data:/data"]
    networks:
      back:
        aliases: [frontdoor]
    depends_on: [seed]
  seed:
    image: busybox:latest
    command: sh -c "echo hello from a volume > /data/greeting"
    volumes: ["data:/data"]
  client:
    image: busybox:latest
    command: sh -c "until wget -qO- http://web:8080/ && wget -qO- http://frontdoor:8080/; do sleep 0.2; done; sleep 300"
    networks: [back]
    depends_on: [web]
volumes:
  data:
networks:
  back:
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[BerthDaemon]:
    with running(BerthDaemon(), FIXTURES / "busybox-docker-save.tar") as d:
        yield d


def _compose(d: BerthDaemon, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    env = {**os.environ, "DOCKER_HOST": d.host, "COMPOSE_INTERACTIVE_NO_CLI": "1"}
    return subprocess.run([COMPOSE, "-p", "bcmp", *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def _get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=3) as r:
        return str(r.read().decode())


def test_compose_up_ps_logs_down(daemon: BerthDaemon, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "docker-compose.yml").write_text(PROJECT.format(port=port))
    up = _compose(daemon, tmp_path, "up", "-d")
    try:
        assert up.returncode == 0, up.stderr
        assert until(lambda: _get(f"http://127.0.0.1:{port}/"), ignore=(OSError,)) == "hello from a volume\n"
        logs = until(lambda: (out := _compose(daemon, tmp_path, "logs", "client").stdout).count("hello") >= 2
                     and out)
        assert "hello from a volume" in logs
        ps = _compose(daemon, tmp_path, "ps").stdout
        assert f"127.0.0.1:{port}->8080/tcp" in ps and "bcmp_client_1" in ps
    finally:
        down = _compose(daemon, tmp_path, "down", "-v")
    assert down.returncode == 0, down.stderr
    assert "bcmp" not in daemon.docker("ps", "-a", "--format", "{{.Names}}").stdout
    assert "bcmp_back" not in daemon.docker("network", "ls", "--format", "{{.Name}}").stdout
    assert "bcmp_data" not in daemon.docker("volume", "ls", "--format", "{{.Name}}").stdout
