"""Servers the tests and benchmarks start on a loopback port: Debian's ``docker-registry`` and ``berth registry
serve``. Each is started, waited for until it accepts connections (its log shown if it dies first), and stopped
by its own PID (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from berth.testing.waiting import free_port

DISTRIBUTION = os.environ.get("BERTH_TEST_REGISTRY", "/usr/bin/docker-registry")


class ServerProcess:
    """One server process listening on ``127.0.0.1:port``, its output in ``log``."""

    def __init__(self, argv: Sequence[str], port: int, log: Path, *, what: str = "server",
                 timeout: float = 20.0) -> None:
        self.port = port
        self.addr = f"127.0.0.1:{port}"
        self.url = f"http://{self.addr}"
        self.log_path = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{what} did not start:\n" + log.read_text(errors="replace")[-4000:]) \
                        from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def distribution(base: Path, *, htpasswd: Path | None = None, log_level: str = "warn",
                 binary: str = DISTRIBUTION) -> ServerProcess:
    """Debian's ``docker-registry`` (distribution 2.8) with its storage and config under ``base``, deletes on."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = (f"auth:\n  htpasswd:\n    realm: berth-test\n    path: {htpasswd}\n" if htpasswd is not None else "")
    config = base / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: {log_level}\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth)
    return ServerProcess([binary, "serve", str(config)], port, base / "registry.log", what="docker-registry")


def berth_registry(berth: Path, base: Path, *flags: str) -> ServerProcess:
    """``berth registry serve`` with a filesystem root under ``base`` (``flags``: --htpasswd, --token ...)."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [str(berth), "registry", "serve", "--addr", f"127.0.0.1:{port}", "--root", str(base / "root"), *flags]
    return ServerProcess(argv, port, base / "registry.log", what="berth registry")
