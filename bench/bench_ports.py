"""Benchmark: published ports, berthd against dockerd, each container on its engine's default bridge.

berth publishes a port with kernel NAT (nftables DNAT, also for connections from 127.0.0.1); Docker, by default,
with its userland proxy (docker-proxy, one process per published port, copying bytes in user space) plus
iptables DNAT for traffic from outside. Measured through the same docker CLI, from 127.0.0.1 on the host:

* **stream**: one TCP connection sends ``--stream-mb`` (default 1024) MB through a published port to busybox
  ``nc -l`` in the container (which writes it to /dev/null); seconds from connect to the container's close,
  one fresh container per repetition.
* **requests**: small HTTP requests per second to busybox ``httpd`` through a published port, one connection per
  request (keep-alive off), sequential, for ``--http-s`` seconds.
* **run cost of -p**: ``docker run -d -p 8080 busybox sleep`` against ``docker run -d busybox sleep``.

Every host object a run creates is named from a per-run prefix and removed at the end, even on failure: berthd
runs with the harness's ``--network-prefix bp<hex>`` (its bridge, veths and nftables table go when it stops); dockerd
gets a bridge the bench creates (``--bridge bd<hex>``, an unused 10.x/24) with ``--iptables=true`` and the
default userland proxy, and the iptables rules and chains it adds (compared with ``iptables-save`` taken before
it started) are deleted after it stops, with the bridge.

    .venv/bin/python bench/bench_ports.py --with-docker
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import Daemon, Harness, HarnessError, add_daemon_args, alternate, median, run_main, write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from berth.network.listeners import listeners  # noqa: E402
from berth.testing.rootfs import FIXTURES  # noqa: E402

IMAGE = "busybox:latest"
PORT = 8080
CHUNK = 1 << 20


# --- measurements -------------------------------------------------------------------------------------------------


def docker_ok(d: Daemon, *args: str) -> str:
    done = d.docker(*args, check=False, timeout=120)
    if done.returncode != 0:
        raise HarnessError(f"{d.name}: docker {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def host_port(d: Daemon, cid: str) -> int:
    doc = json.loads(docker_ok(d, "inspect", cid))[0]
    return int(doc["NetworkSettings"]["Ports"][f"{PORT}/tcp"][0]["HostPort"])


def wait_listening(d: Daemon, cid: str, timeout: float = 10) -> None:
    """Until the container's app listens (read from its namespace: no probe connection that would use it up)."""
    pid = int(json.loads(docker_ok(d, "inspect", cid))[0]["State"]["Pid"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(li.port == PORT and li.proto == "tcp" for li in listeners(pid)):
            return
        time.sleep(0.02)
    raise HarnessError(f"{d.name}: nothing listens on {PORT} in {cid[:12]}")


@contextlib.contextmanager
def container(d: Daemon, *args: str) -> Iterator[str]:
    cid = docker_ok(d, "run", "-d", *args)
    try:
        yield cid
    finally:
        d.docker("rm", "-f", cid, check=False)


def stream_once(d: Daemon, megabytes: int) -> float:
    with container(d, "-p", f"127.0.0.1::{PORT}", IMAGE, "sh", "-c", f"nc -l -p {PORT} >/dev/null") as cid:
        wait_listening(d, cid)
        port = host_port(d, cid)
        block = b"\0" * CHUNK
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            for _ in range(megabytes):
                s.sendall(block)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):  # the container's nc exits at our EOF: its close is the end
                pass
        return time.perf_counter() - start


def requests_per_s(d: Daemon, seconds: float) -> float:
    script = f"mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p {PORT} -h /www"
    with container(d, "-p", f"127.0.0.1::{PORT}", IMAGE, "sh", "-c", script) as cid:
        wait_listening(d, cid)
        port = host_port(d, cid)
        n = 0
        for _ in range(20):  # warm-up
            _get(port)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            _get(port)
            n += 1
        return n / (time.perf_counter() - start)


def _get(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/index.html", headers={"Connection": "close"})
        resp = conn.getresponse()
        if resp.status != 200 or resp.read() != b"hello\n":
            raise HarnessError(f"bad answer {resp.status} from port {port}")
    finally:
        conn.close()


def run_cost(d: Daemon, publish: bool, created: list[str]) -> float:
    args = ["run", "-d", *(["-p", str(PORT)] if publish else []), IMAGE, "sleep", "600"]
    start = time.perf_counter()
    cid = docker_ok(d, *args)
    took = time.perf_counter() - start
    created.append(cid)
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_daemon_args(ap, no_berth=False)
    ap.add_argument("--stream-mb", type=int, default=1024)
    ap.add_argument("--stream-reps", type=int, default=3)
    ap.add_argument("--http-s", type=float, default=5.0, help="seconds of HTTP requests per repetition")
    ap.add_argument("--http-reps", type=int, default=3)
    ap.add_argument("--run-reps", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("needs root (daemons, bridges, firewall rules)")
    if args.with_docker and not shutil.which("iptables-save"):
        ap.error("dockerd with --iptables=true needs iptables")
    archive = Path(FIXTURES) / "busybox-docker-save.tar"
    results: dict[str, Any] = {}
    with Harness(keep=args.keep, tmp=args.tmp) as h:
        daemons = [h.berthd()]
        if args.with_docker:
            daemons.append(h.dockerd(bridged=True))
        for d in daemons:
            docker_ok(d, "load", "-i", str(archive))
        created: dict[str, list[str]] = {d.name: [] for d in daemons}
        try:
            results["stream_s"] = alternate(daemons, args.stream_reps,
                                            lambda d: stream_once(d, args.stream_mb), "stream")
            results["http_rps"] = alternate(daemons, args.http_reps,
                                            lambda d: requests_per_s(d, args.http_s), "http")
            results["run_plain_s"] = alternate(daemons, args.run_reps,
                                               lambda d: run_cost(d, False, created[d.name]), "run")
            results["run_publish_s"] = alternate(daemons, args.run_reps,
                                                 lambda d: run_cost(d, True, created[d.name]), "run -p")
        finally:
            for d in daemons:
                if created[d.name]:
                    d.docker("rm", "-f", *created[d.name], check=False, timeout=300)

    names = list(results["stream_s"])
    print(f"\npublished ports from 127.0.0.1 (medians; {'berthd vs dockerd' if len(names) > 1 else 'berthd'})")
    rows = [
        ("stream", "MB/s", {n: args.stream_mb / median(v) for n, v in results["stream_s"].items()}, True),
        ("http", "req/s", {n: median(v) for n, v in results["http_rps"].items()}, True),
        ("run -d", "s", {n: median(v) for n, v in results["run_plain_s"].items()}, False),
        ("run -d -p", "s", {n: median(v) for n, v in results["run_publish_s"].items()}, False),
    ]
    print(f"{'measure':10s} {'unit':6s} " + " ".join(f"{n:>10s}" for n in names) + "  ratio")
    for label, unit, values, higher_better in rows:
        line = f"{label:10s} {unit:6s} " + " ".join(f"{values[n]:10.3f}" for n in names)
        if "berthd" in values and "dockerd" in values:
            ratio = values["berthd"] / values["dockerd"] if higher_better else values["dockerd"] / values["berthd"]
            line += f"  {ratio:.2f}x (above 1: berth is better)"
        print(line)
    for n in names:
        extra = median(results["run_publish_s"][n]) - median(results["run_plain_s"][n])
        print(f"cost of -p on {n}: {extra * 1000:+.0f} ms per run")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    run_main(main, "bench_ports")
