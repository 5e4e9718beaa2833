"""berthd as a process: start-up time, the data-root lock, clean shutdown, crash recovery of the socket."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from berth.daemon.config import parse_args, socket_path
from berth.errors import InvalidArgument
from berth.testing.daemon import BerthDaemon


def test_startup_time(berthd: BerthDaemon) -> None:
    assert berthd.ready_s is not None
    print(f"\nberthd: exec to /_ping answered in {berthd.ready_s * 1000:.0f} ms")
    assert berthd.ready_s < 5


def test_layout_and_modes(berthd: BerthDaemon) -> None:
    assert stat.S_IMODE(berthd.data_root.stat().st_mode) == 0o710
    assert stat.S_ISSOCK(berthd.socket.stat().st_mode)
    assert stat.S_IMODE(berthd.socket.stat().st_mode) == 0o660
    assert berthd.pidfile.read_text().strip() == str(berthd.pid)
    assert (berthd.data_root / "berthd.lock").read_text().strip() == str(berthd.pid)


def test_second_daemon_on_the_same_data_root_is_refused(berthd: BerthDaemon) -> None:
    other = BerthDaemon()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "berth.daemon.main", "-H", other.host, "--data-root", str(berthd.data_root),
             "--exec-root", str(other.exec_root)],
            capture_output=True, text=True, timeout=30,
        )
    finally:
        other.stop()
    assert proc.returncode == 1
    assert f"another berthd (pid {berthd.pid}) is already running with data root {berthd.data_root}" in proc.stderr
    # the first daemon is unharmed
    assert berthd.docker("version", "--format", "{{.Server.Version}}").stdout.strip() == "0.1.0"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(berthd_factory: Callable[..., BerthDaemon], sig: signal.Signals) -> None:
    daemon = berthd_factory()
    # an open events stream must not hold the shutdown up
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.connect(str(daemon.socket))
    stream.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    stream.settimeout(5)
    assert stream.recv(4096).startswith(b"HTTP/1.1 200 OK")
    proc = daemon.proc
    assert proc is not None
    started = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(10) == 0
    assert time.monotonic() - started < 5
    assert stream.recv(4096) == b""  # the server ended the stream
    stream.close()
    assert not daemon.socket.exists()
    assert not daemon.pidfile.exists()
    assert "shutting down" in daemon.log()


def test_stale_socket_after_a_crash_is_replaced(berthd: BerthDaemon) -> None:
    berthd.kill()
    assert berthd.socket.exists()  # a crashed daemon leaves its socket behind
    berthd.start()
    assert berthd.client().ping() is True


def test_restart_keeps_the_engine_id(berthd: BerthDaemon) -> None:
    before = berthd.client().info()["ID"]
    berthd.restart()
    assert berthd.client().info()["ID"] == before


def test_flags() -> None:
    config, version_only = parse_args(["-H", "unix:///tmp/x.sock", "--data-root", "/tmp/d", "--log-level", "warn"])
    assert not version_only
    assert str(config.socket) == "/tmp/x.sock"
    assert str(config.pidfile) == "/run/berth/berthd.pid"
    assert config.log_level == "warn" and config.storage_driver == "auto"
    config, _ = parse_args(["--exec-root", "/tmp/e"])
    assert str(config.pidfile) == "/tmp/e/berthd.pid" and str(config.socket) == "/run/berth/berth.sock"
    with pytest.raises(InvalidArgument):
        socket_path("tcp://0.0.0.0:2375")
    with pytest.raises(InvalidArgument):
        socket_path("unix:///" + "x" * 200)
    with pytest.raises(SystemExit):
        parse_args(["--storage-driver", "zfs"])


def test_version_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "berth.daemon.main", "--version"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("berthd version ")
