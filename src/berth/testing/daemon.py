"""A real berthd for tests: started on a private data root, exec root and socket, torn down completely.

``BerthDaemon.start()`` execs ``python -m berth.daemon.main`` and waits until ``/_ping`` answers;
``stop()`` sends SIGTERM by PID (SIGKILL after a grace period), detaches every mount left under the
daemon's directories, deepest first, and removes them. ``docker()`` runs the real CLI against it with a
throw-away ``DOCKER_CONFIG``; ``client()`` returns a docker-py client; ``http()`` a raw http.client
connection over the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from berth.kernel.mount import unmount_under
from berth.runtime.monitor_client import stop_monitor

if TYPE_CHECKING:
    from berth.api.router import Router
    from berth.api.server import ApiServer
    from berth.engine.services import Engine

T = TypeVar("T")

DOCKER = "/usr/local/bin/docker"
_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 10.0


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (``Host: localhost``, like docker-py)."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = os.fspath(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _remove_empty_cgroup_parents() -> None:
    """The engine's cgroup parents (``berth``) in every hierarchy, when no container is left in them: rmdir
    refuses a cgroup that still has children or processes, so another daemon's containers are safe."""
    import glob
    for parent in glob.glob("/sys/fs/cgroup/*/berth") + glob.glob("/sys/fs/cgroup/berth"):
        with contextlib.suppress(OSError):
            os.rmdir(parent)


def remove_network_objects(prefix: str) -> None:
    """Every link and the nftables table a daemon with ``--network-prefix prefix`` made (bridges, veths)."""
    listing = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)
    subprocess.run(["nft", "delete", "table", "ip", prefix], capture_output=True, check=False)
    if shutil.which("iptables-save"):  # a daemon on the iptables backend: its chains and the jumps to them
        from berth.network.iptables import Iptables

        with contextlib.suppress(Exception):
            Iptables(prefix).remove()


def request(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: status, lower-cased headers, body; the connection is closed after."""
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def run_docker(env: dict[str, str], args: Sequence[str], input: bytes | str | None = None, check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run /usr/local/bin/docker with ``env``; stdout/stderr decoded, ``check`` raises with both streams."""
    data = input.encode() if isinstance(input, str) else input
    raw = subprocess.run([DOCKER, *args], input=data, capture_output=True, env=env, timeout=timeout, check=False)
    result = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(errors="replace"),
                                         raw.stderr.decode(errors="replace"))
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}"
        )
    return result


def docker_env(host: str, config_dir: Path) -> dict[str, str]:
    """The caller's environment without DOCKER_*, pointed at ``host`` with a private config dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = host
    env["DOCKER_CONFIG"] = str(config_dir)
    env["DOCKER_BUILDKIT"] = "0"  # the legacy builder, even if a buildx plugin gets installed (engine-api.md §11.1)
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies, so a killed pytest leaks no daemon."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _short_tmp() -> Path:
    # unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer
    return Path(tempfile.mkdtemp(prefix="b-", dir="/tmp"))


class BerthDaemon:
    """One berthd process and the directories it owns."""

    def __init__(self, base: Path | None = None, *, log_level: str = "debug",
                 storage_driver: str = "auto", extra_args: tuple[str, ...] = (),
                 dns: str | None = "127.0.0.1") -> None:
        self._own_base = base is None
        self.base = Path(base) if base is not None else _short_tmp()
        self.base.mkdir(parents=True, exist_ok=True)
        self.data_root = self.base / "data"
        self.exec_root = self.base / "exec"
        self.docker_config = self.base / "docker-config"
        self.log_path = self.base / "berthd.log"
        self._sock_dir = self.base if len(str(self.base)) < 80 else _short_tmp()
        self.socket = self._sock_dir / "berth.sock"
        self.pidfile = self.exec_root / "berthd.pid"
        self.host = f"unix://{self.socket}"
        self.log_level = log_level
        self.storage_driver = storage_driver
        self.extra_args = extra_args
        self.dns = dns
        # a unique name prefix for this daemon's bridges, veths and nftables table, all removed at stop
        self.network_prefix = "bt" + os.urandom(2).hex()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None
        self._clients: list[Any] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None, "berthd is not running"
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "berth.daemon.main",
            "-H", self.host,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--log-level", self.log_level,
            "--storage-driver", self.storage_driver,
            "--network-prefix", self.network_prefix,
            # name lookups that no container answers go to the host's loopback, where nothing listens: a test
            # never sends DNS off this machine (a test that wants forwarding passes its own --dns, or dns=None)
            *(() if "--dns" in self.extra_args or self.dns is None else ("--dns", self.dns)),
            *self.extra_args,
        ]

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start a berthd process with this daemon's flags without waiting for it (for failure tests)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps its own copy of the fd
        try:
            return subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        finally:
            log.close()

    def start(self) -> BerthDaemon:
        """Start berthd and wait until ``/_ping`` answers; records the exec-to-ready time in ``ready_s``."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("berthd is already running")
        self.docker_config.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.proc = self.spawn()
        deadline = started + _START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"berthd exited with {self.proc.returncode}:\n{self.log()}")
            if self._ping():
                self.ready_s = time.monotonic() - started
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"berthd did not answer /_ping within {_START_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(0.01)

    def _ping(self) -> bool:
        if not self.socket.exists():
            return False
        conn = UnixHTTPConnection(self.socket, timeout=2.0)
        try:
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def terminate(self, timeout: float = _STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit status (None if there was no process)."""
        proc, self.proc = self.proc, None
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the daemon (a crash); the socket file and pidfile stay behind."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(_STOP_TIMEOUT_S)

    def restart(self) -> BerthDaemon:
        self.terminate()
        return self.start()

    def stop(self) -> None:
        """Stop the daemon and remove everything it left: mounts, directories, the socket."""
        try:
            self.terminate()
        finally:
            # the container monitor outlives berthd by design (live restore): a test run ends it by hand
            stop_monitor(self.exec_root, kill_containers=True)
            _remove_empty_cgroup_parents()
            remove_network_objects(self.network_prefix)
            for root in (self.data_root, self.exec_root):
                unmount_under(root)
            if self._own_base:
                shutil.rmtree(self.base, ignore_errors=True)
            else:
                for d in (self.data_root, self.exec_root, self.docker_config):
                    shutil.rmtree(d, ignore_errors=True)
            if self._sock_dir != self.base:
                shutil.rmtree(self._sock_dir, ignore_errors=True)

    def docker_env(self) -> dict[str, str]:
        """The environment for running docker (or anything reading DOCKER_HOST) against this daemon."""
        return docker_env(self.host, self.docker_config)

    def docker(self, *args: str, input: bytes | str | None = None, check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the real docker CLI against this daemon; text output, ``check`` raises with both streams."""
        return run_docker(self.docker_env(), args, input=input, check=check, timeout=timeout)

    def client(self, **kwargs: Any) -> Any:
        """A docker-py ``DockerClient`` on this daemon (closed at stop)."""
        import docker  # type: ignore[import-untyped]

        client = docker.DockerClient(base_url=self.host, **kwargs)
        self._clients.append(client)
        return client

    def http(self, timeout: float = 30.0) -> UnixHTTPConnection:
        return UnixHTTPConnection(self.socket, timeout=timeout)

    def __enter__(self) -> BerthDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(daemon: BerthDaemon, *archives: Path) -> Iterator[BerthDaemon]:
    """``daemon`` started, with these ``docker save`` archives loaded; stopped and cleaned up on the way out,
    also when starting or loading fails (a module fixture's whole body)."""
    try:
        daemon.start()
        for archive in archives:
            daemon.docker("load", "-i", str(archive))
        yield daemon
    finally:
        daemon.stop()


class ServerThread:
    """The API server in-process, on its own event loop thread and socket, for tests that need custom
    routes or direct access to the engine (publish events, count connections)."""

    def __init__(self, router: Router, engine: Engine) -> None:
        self.router = router
        self.engine = engine
        self.base = _short_tmp()
        self.socket = self.base / "api.sock"
        self.host = f"unix://{self.socket}"
        self.docker_config = self.base / "docker-config"
        self.docker_config.mkdir()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: ApiServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ServerThread:
        from berth.api.server import ApiServer

        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            try:
                self.server = ApiServer(self.router, self.engine)
                loop.run_until_complete(self.server.listen(self.socket))
            except BaseException as err:
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="berth-test-api", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10) -> T:
        """Run a coroutine function on the server's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    def stop(self) -> None:
        try:
            if self.loop is not None and self.server is not None and self._thread is not None:
                server, loop = self.server, self.loop
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(loop.stop)
                self._thread.join(10)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def http(self, timeout: float = 30.0) -> UnixHTTPConnection:
        return UnixHTTPConnection(self.socket, timeout=timeout)

    def docker_env(self) -> dict[str, str]:
        return docker_env(self.host, self.docker_config)

    def docker(self, *args: str, input: bytes | str | None = None, check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_docker(self.docker_env(), args, input=input, check=check, timeout=timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
