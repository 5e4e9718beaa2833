"""Healthchecks run by berthd, through the real docker CLI: statuses, the log, ps filter and status text, events,
--no-healthcheck, probe timeouts, create-time validation, and berth's --health-on-failure (as a label)."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from berth.engine.health import Healthcheck
from berth.testing.rootfs import FIXTURES
from berth.testing.waiting import until
from berth.units import go_duration, parse_go_duration

BUSYBOX = FIXTURES / "busybox-docker-save.tar"
FAST = ["--health-interval", "200ms", "--health-retries", "2"]


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


def _inspect(daemon: Any, name: str) -> dict[str, Any]:
    return json.loads(daemon.docker("inspect", name).stdout)[0]  # type: ignore[no-any-return]


def _health(daemon: Any, name: str) -> dict[str, Any]:
    return _inspect(daemon, name)["State"].get("Health") or {}


# --- pure parts -------------------------------------------------------------------------------------------

def test_healthcheck_defaults_and_forms() -> None:
    assert Healthcheck.of({}) is None
    assert Healthcheck.of({"Healthcheck": {"Test": ["NONE"]}}) is None
    hc = Healthcheck.of({"Healthcheck": {"Test": ["CMD-SHELL", "test -f /x"]}})
    assert hc is not None
    assert hc.test == ("/bin/sh", "-c", "test -f /x")
    assert (hc.interval, hc.timeout, hc.start_period, hc.start_interval, hc.retries) == (30, 30, 0, 5, 3)
    hc = Healthcheck.of({"Healthcheck": {"Test": ["CMD", "true"], "Interval": 200_000_000, "Retries": 2}})
    assert hc is not None and hc.test == ("true",) and hc.interval == 0.2 and hc.retries == 2


def test_go_duration() -> None:
    assert go_duration(200_000_000) == "200ms"
    assert go_duration(30_000_000_000) == "30s"
    assert go_duration(1_500_000_000) == "1.5s"
    assert go_duration(90_000_000_000) == "1m30s"
    assert go_duration(0) == "0s" and go_duration(3_723_000_000_000) == "1h2m3s"
    for text in ("200ms", "30s", "1.5s", "1m30s", "1h2m3s"):
        value = parse_go_duration(text)
        assert value is not None and go_duration(value) == text
    assert parse_go_duration("-1s") == -1_000_000_000 and parse_go_duration("0") == 0
    assert parse_go_duration("soon") is None and parse_go_duration("1") is None


# --- through the daemon -----------------------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.docker_cli
def test_starting_unhealthy_then_healthy(daemon: Any) -> None:
    events = subprocess.Popen(["docker", "events", "--filter", "container=hc1", "--format", "{{.Action}}"],
                              stdout=subprocess.PIPE, text=True, env=daemon.docker_env())
    try:
        daemon.docker("run", "-d", "--name", "hc1", "--health-cmd", "test -f /tmp/ok", *FAST,
                      "busybox", "sleep", "300")
        assert _health(daemon, "hc1")["Status"] == "starting"
        assert "(health: starting)" in daemon.docker("ps", "--filter", "name=hc1", "--format", "{{.Status}}").stdout
        until(lambda: _health(daemon, "hc1")["Status"] == "unhealthy")
        h = _health(daemon, "hc1")
        assert h["FailingStreak"] >= 2 and h["Log"][-1]["ExitCode"] == 1
        assert "(unhealthy)" in daemon.docker("ps", "--filter", "name=hc1", "--format", "{{.Status}}").stdout
        assert daemon.docker("ps", "-q", "--filter", "health=unhealthy", "--filter", "name=hc1").stdout.strip()
        daemon.docker("exec", "hc1", "touch", "/tmp/ok")
        until(lambda: _health(daemon, "hc1")["Status"] == "healthy")
        h = _health(daemon, "hc1")
        assert h["FailingStreak"] == 0 and h["Log"][-1]["ExitCode"] == 0
        assert len(h["Log"]) <= 5 and h["Log"][-1]["Start"] <= h["Log"][-1]["End"]
        ids = daemon.docker("ps", "-q", "--filter", "health=healthy").stdout.split()
        assert _inspect(daemon, "hc1")["Id"][:12] in ids
        assert "(healthy)" in daemon.docker("ps", "--filter", "name=hc1", "--format", "{{.Status}}").stdout
        assert not _inspect(daemon, "hc1")["ExecIDs"]  # probes are not API-visible execs
        daemon.docker("rm", "-f", "hc1")
    finally:
        time.sleep(0.3)
        events.terminate()
        out, _ = events.communicate(timeout=5)
    actions = out.split()
    assert "health_status:" in actions  # the Action is "health_status: <status>", split on the space
    text = out.replace("health_status: ", "health_status:")
    assert "health_status:unhealthy" in text and "health_status:healthy" in text


@pytest.mark.root
@pytest.mark.docker_cli
def test_output_is_logged(daemon: Any) -> None:
    daemon.docker("run", "-d", "--name", "hc2", "--health-cmd", "echo out; echo err >&2; exit 0",
                  "--health-interval", "100ms", "busybox", "sleep", "300")
    try:
        until(lambda: _health(daemon, "hc2").get("Status") == "healthy")
        assert _health(daemon, "hc2")["Log"][-1]["Output"] == "out\nerr\n"
    finally:
        daemon.docker("rm", "-f", "hc2")


@pytest.mark.root
@pytest.mark.docker_cli
def test_no_healthcheck(daemon: Any) -> None:
    daemon.docker("create", "--name", "hc3", "--health-cmd", "true", "--no-healthcheck", "busybox", "true",
                  check=False)
    # the CLI refuses the two together; --no-healthcheck alone gives Test ["NONE"] and no Health
    daemon.docker("rm", "-f", "hc3", check=False)
    daemon.docker("run", "-d", "--name", "hc3", "--no-healthcheck", "busybox", "sleep", "300")
    try:
        info = _inspect(daemon, "hc3")
        assert info["Config"]["Healthcheck"]["Test"] == ["NONE"]
        time.sleep(0.3)
        assert "Health" not in _inspect(daemon, "hc3")["State"] or not _inspect(daemon, "hc3")["State"]["Health"]
        assert "health" not in daemon.docker("ps", "--filter", "name=hc3", "--format", "{{.Status}}").stdout
    finally:
        daemon.docker("rm", "-f", "hc3")


@pytest.mark.root
@pytest.mark.docker_cli
def test_probe_timeout(daemon: Any) -> None:
    # the probe's shell starts a child: a timeout kills the whole probe tree, not just the shell
    daemon.docker("run", "-d", "--name", "hc4", "--health-cmd", "sleep 31 & sleep 32", "--health-timeout", "200ms",
                  "--health-interval", "300ms", "--health-retries", "1", "busybox", "sleep", "300")
    try:
        until(lambda: _health(daemon, "hc4").get("Status") == "unhealthy")
        entry = _health(daemon, "hc4")["Log"][-1]
        assert entry["ExitCode"] == -1
        assert entry["Output"] == "Health check exceeded timeout (200ms)"
        time.sleep(1.5)  # a few more probes time out
        ps = daemon.docker("exec", "hc4", "ps", "-o", "args").stdout
        assert ps.count("sleep 31") <= 1 and ps.count("sleep 32") <= 1, ps  # at most the probe now running
    finally:
        daemon.docker("rm", "-f", "hc4")


@pytest.mark.root
@pytest.mark.docker_cli
def test_validation(daemon: Any) -> None:
    client = daemon.client()
    for key, message in (("Interval", "Interval in Healthcheck cannot be less than 1ms"),
                         ("Timeout", "Timeout in Healthcheck cannot be less than 1ms"),
                         ("StartPeriod", "StartPeriod in Healthcheck cannot be less than 1ms")):
        res = client.api.post(client.api._url("/containers/create"),
                              json={"Image": "busybox", "Cmd": ["true"],
                                    "Healthcheck": {"Test": ["CMD", "true"], key: 1000}})
        assert res.status_code == 400 and message in res.json()["message"]
    res = client.api.post(client.api._url("/containers/create"),
                          json={"Image": "busybox", "Cmd": ["true"], "Healthcheck": {"Test": ["CMD", "true"],
                                                                                     "Retries": -1}})
    assert res.status_code == 400 and "Retries in Healthcheck cannot be negative" in res.json()["message"]
    res = daemon.docker("create", "--label", "berth.health-on-failure=explode", "busybox", "true", check=False)
    assert res.returncode != 0 and "invalid health-on-failure action" in res.stderr


@pytest.mark.root
@pytest.mark.docker_cli
def test_on_failure_restart(daemon: Any) -> None:
    daemon.docker("run", "-d", "--name", "hc5", "--label", "berth.health-on-failure=restart",
                  "--health-cmd", "false", "--health-interval", "100ms", "--health-retries", "1", "--stop-timeout", "1",
                  "busybox", "sleep", "300")
    try:
        first = _inspect(daemon, "hc5")["State"]["StartedAt"]
        info = until(lambda: (i := _inspect(daemon, "hc5"))["RestartCount"] >= 1 and i, timeout=20)
        until(lambda: _inspect(daemon, "hc5")["State"]["Running"], timeout=10)
        assert _inspect(daemon, "hc5")["State"]["StartedAt"] != first
        assert info["RestartCount"] >= 1
    finally:
        daemon.docker("rm", "-f", "hc5")


@pytest.mark.root
@pytest.mark.docker_cli
def test_on_failure_kill_via_host_config(daemon: Any) -> None:
    client = daemon.client()
    res = client.api.post(client.api._url("/containers/create"), params={"name": "hc6"},
                          json={"Image": "busybox", "Cmd": ["sleep", "300"],
                                "Healthcheck": {"Test": ["CMD", "false"], "Interval": 100_000_000, "Retries": 1},
                                "HostConfig": {"HealthOnFailure": "kill"}})
    assert res.status_code == 201, res.text
    try:
        daemon.docker("start", "hc6")
        until(lambda: _inspect(daemon, "hc6")["State"]["Status"] == "exited")
        state = _inspect(daemon, "hc6")["State"]
        assert state["ExitCode"] == 137 and state["Health"]["Status"] == "unhealthy"
    finally:
        daemon.docker("rm", "-f", "hc6")


@pytest.mark.root
@pytest.mark.docker_cli
def test_checker_resumes_after_daemon_restart(berthd: Any) -> None:
    berthd.docker("load", "-i", str(BUSYBOX))
    berthd.docker("run", "-d", "--name", "hc7", "--health-cmd", "test -f /tmp/ok", *FAST, "busybox", "sleep", "300")
    until(lambda: _health(berthd, "hc7").get("Status") == "unhealthy")
    berthd.kill()
    berthd.restart()
    assert _health(berthd, "hc7")["Status"] == "unhealthy"  # the last known status survives
    berthd.docker("exec", "hc7", "touch", "/tmp/ok")
    until(lambda: _health(berthd, "hc7")["Status"] == "healthy")
    berthd.docker("rm", "-f", "hc7")
