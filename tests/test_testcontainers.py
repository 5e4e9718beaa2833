"""testcontainers-python drives berthd unchanged: a container with an exposed port mapped to a random host port,
a log-based wait, the mapped port reachable on localhost, and the container removed at the end.

Ryuk (testcontainers' reaper, an image from Docker Hub) is switched off: this machine has no Docker Hub."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from berth.testing.daemon import BerthDaemon, running
from berth.testing.rootfs import FIXTURES
from berth.testing.waiting import until

testcontainers = pytest.importorskip("testcontainers.core.container")

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def daemon() -> Iterator[BerthDaemon]:
    with running(BerthDaemon(), FIXTURES / "busybox-docker-save.tar") as d:
        yield d


def _get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=3) as r:
        return str(r.read().decode())


def test_testcontainers_generic_container(daemon: BerthDaemon, monkeypatch: Any) -> None:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    monkeypatch.setenv("DOCKER_HOST", daemon.host)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    monkeypatch.delenv("TESTCONTAINERS_HOST_OVERRIDE", raising=False)
    command = "sh -c 'echo hello > /tmp/index.html && echo ready && exec httpd -f -p 8080 -h /tmp'"
    container = (DockerContainer("busybox:latest").with_command(command).with_exposed_ports(8080)
                 .waiting_for(LogMessageWaitStrategy("ready")))
    with container:
        # testcontainers answers localhost, or the bridge's gateway when it thinks it runs in a container (this
        # VM looks like one to it): both are host addresses the published port answers on
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(8080))
        assert until(lambda: _get(f"http://{host}:{port}/"), ignore=(OSError,)) == "hello\n"
        assert _get(f"http://127.0.0.1:{port}/") == "hello\n"
        cid = container.get_wrapped_container().id
    assert daemon.docker("ps", "-a", "-q", "--no-trunc", "--filter", f"id={cid}").stdout.strip() == ""
    assert os.environ.get("DOCKER_HOST") == daemon.host


def test_testcontainers_builds_an_image_and_runs_it(daemon: BerthDaemon, monkeypatch: Any, tmp_path: Any) -> None:
    """testcontainers' DockerImage (docker-py's images.build) then a container of it; the image and its build's
    intermediate images are gone when the block ends (rmi without noprune)."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.image import DockerImage
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    monkeypatch.setenv("DOCKER_HOST", daemon.host)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    monkeypatch.delenv("TESTCONTAINERS_HOST_OVERRIDE", raising=False)
    (tmp_path / "index.html").write_text("built\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\nCOPY index.html /www/\nEXPOSE 8080\n"
        "CMD [\"sh\", \"-c\", \"echo ready && exec httpd -f -p 8080 -h /www\"]\n")
    before = set(daemon.docker("images", "-a", "-q", "--no-trunc").stdout.split())
    with DockerImage(path=str(tmp_path), tag="tc-built:1") as image:
        assert any("Successfully built" in (line.get("stream") or "") for line in image.get_logs())
        container = DockerContainer(str(image)).with_exposed_ports(8080).waiting_for(LogMessageWaitStrategy("ready"))
        with container:
            port = int(container.get_exposed_port(8080))
            assert until(lambda: _get(f"http://127.0.0.1:{port}/"), ignore=(OSError,)) == "built\n"
    assert set(daemon.docker("images", "-a", "-q", "--no-trunc").stdout.split()) == before
