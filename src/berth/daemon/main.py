"""``berthd``: take the data-root lock, build the engine, serve the API on the socket, shut down cleanly.

Start-up order matters for the ready time: only argparse is imported before the lock is taken;
asyncio, h11 and the engine load after it, and the socket is bound last, so a client that can connect
finds a daemon that is fully up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from berth.daemon.config import DaemonConfig, parse_args
from berth.errors import BerthError

if TYPE_CHECKING:
    pass

log = logging.getLogger("berth.daemon")

DATA_ROOT_MODE = 0o710
EXEC_ROOT_MODE = 0o700
WORKER_THREADS = 8
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR,
           "fatal": logging.CRITICAL}
_EXIT_GRACE_S = 5.0


class AlreadyRunning(Exception):
    """Another berthd holds the data-root lock."""


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])


def _make_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def lock_data_root(data_root: Path) -> IO[str]:
    """Take ``<data-root>/berthd.lock`` for the life of the process; it records the holder's pid."""
    f = open(data_root / "berthd.lock", "a+")  # noqa: SIM115 - held open until exit
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            f.close()
            raise
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise AlreadyRunning(
            f"another berthd (pid {holder}) is already running with data root {data_root} "
            f"(lock {data_root / 'berthd.lock'} is held)"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _write_pidfile(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def serve(config: DaemonConfig, started: float) -> None:
    """Build everything, listen, and wait for SIGTERM/SIGINT."""
    import asyncio

    from berth.api.router import build_router
    from berth.api.server import ApiServer
    from berth.daemon.wiring import build_engine, close_engine, start_engine

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = build_engine(config)
    try:
        await asyncio.to_thread(start_engine, engine)
        await engine.runner.startup()
        server = ApiServer(build_router(), engine)
        await server.listen(config.socket)
        log.info("API listening on %s (ready in %.0f ms)", config.host, (time.monotonic() - started) * 1000)
        await stop.wait()
        log.info("shutting down")
        await server.close()
    finally:
        await engine.runner.shutdown()
        close_engine(engine)


def _run(config: DaemonConfig, started: float) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="berth-worker")
    loop.set_default_executor(executor)
    try:
        loop.run_until_complete(serve(config, started))
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        loop.close()


def _workers_done(deadline: float) -> bool:
    while time.monotonic() < deadline:
        busy = [t for t in threading.enumerate() if t.name.startswith("berth-worker") and t.is_alive()]
        if not busy:
            return True
        busy[0].join(0.05)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    config, version_only = parse_args(argv)
    if version_only:
        import berth

        print(f"berthd version {berth.__version__}")
        return 0
    _setup_logging(config.log_level)
    lock: IO[str] | None = None
    try:
        _make_dir(config.data_root, DATA_ROOT_MODE)
        _make_dir(config.exec_root, EXEC_ROOT_MODE)
        lock = lock_data_root(config.data_root)
        _write_pidfile(config.pidfile)
        _run(config, started)
    except AlreadyRunning as err:
        log.error("%s", err)
        return 1
    except (BerthError, OSError) as err:
        log.error("failed to start: %s", err)
        return 1
    finally:
        if lock is not None:
            _remove(config.pidfile)
            _remove(config.socket)
            lock.close()
    if not _workers_done(time.monotonic() + _EXIT_GRACE_S):
        # a worker stuck in a blocking call would hold interpreter exit forever
        log.warning("worker threads still busy after %.0f s; exiting anyway", _EXIT_GRACE_S)
        logging.shutdown()
        os._exit(0)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
