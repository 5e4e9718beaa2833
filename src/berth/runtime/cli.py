"""``berth-runtime``: the OCI runtime command line, a runc-compatible subset (create/start/state/kill/delete/run/spec).

Global flags come before the command, like runc: ``berth-runtime --root DIR --log FILE --log-format json
create --bundle B ID``. Errors go to stderr (and to ``--log`` in runc's JSON/text log format) with exit
status 1; ``run`` in the foreground exits with the container's status (128+n when killed by signal n).
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from berth.errors import BerthError, InvalidArgument
from berth.runtime import linux
from berth.runtime.spec import default_spec
from berth.runtime.state import DEFAULT_ROOT


def parse_signal(text: str) -> int:
    """``TERM``, ``SIGTERM``, ``sigterm`` or ``15``."""
    if text.isdigit():
        n = int(text)
        if not 0 < n < signal.NSIG:
            raise InvalidArgument(f"invalid signal: {text}")
        return n
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    sig = getattr(signal.Signals, name, None)
    if sig is None:
        raise InvalidArgument(f"invalid signal: {text}")
    return int(sig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="berth-runtime", description="berth's OCI runtime (runc-compatible subset)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="state directory (default %(default)s)")
    p.add_argument("--log", default="", help="write errors to this file as well")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--debug", action="store_true", help="accepted for runc compatibility")
    p.add_argument("--systemd-cgroup", action="store_true", help="accepted for runc compatibility; ignored")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("create", help="create a container")
    c.add_argument("--bundle", "-b", default=".")
    c.add_argument("--console-socket", default=None)
    c.add_argument("--pid-file", default=None)
    c.add_argument("--no-pivot", action="store_true", help="accepted for runc compatibility; ignored")
    c.add_argument("id")

    s = sub.add_parser("start", help="execute the process of a created container")
    s.add_argument("id")

    st = sub.add_parser("state", help="print the state of a container as JSON")
    st.add_argument("id")

    k = sub.add_parser("kill", help="send a signal to the container's init")
    k.add_argument("--all", "-a", action="store_true", help="accepted for runc compatibility")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="SIGTERM")

    d = sub.add_parser("delete", help="delete a container")
    d.add_argument("--force", "-f", action="store_true")
    d.add_argument("id")

    r = sub.add_parser("run", help="create and start a container, wait for it unless --detach")
    r.add_argument("--bundle", "-b", default=".")
    r.add_argument("--detach", "-d", action="store_true")
    r.add_argument("--console-socket", default=None)
    r.add_argument("--pid-file", default=None)
    r.add_argument("id")

    sp = sub.add_parser("spec", help="write a default config.json")
    sp.add_argument("--bundle", "-b", default=".")
    sp.add_argument("--rootless", action="store_true", help="accepted for runc compatibility; ignored")
    return p


def _log_error(args: argparse.Namespace, message: str) -> None:
    sys.stderr.write(f"berth-runtime: {message}\n")
    if not args.log:
        return
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if args.log_format == "json":
        line = json.dumps({"level": "error", "msg": message, "time": now})
    else:
        line = f'time="{now}" level=error msg={json.dumps(message)}'
    try:
        with open(args.log, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def _spec(bundle: str) -> None:
    path = Path(bundle) / "config.json"
    if path.exists():
        raise InvalidArgument("File config.json exists. Remove it first")
    spec = default_spec(["sh"], terminal=True, hostname="berth")
    path.write_text(spec.to_json() + "\n")


def _dispatch(args: argparse.Namespace) -> int:
    root = args.root
    if args.command == "create":
        linux.create(args.id, args.bundle, root, console_socket=args.console_socket, pid_file=args.pid_file)
    elif args.command == "start":
        linux.start(args.id, root)
    elif args.command == "state":
        sys.stdout.write(json.dumps(linux.state(args.id, root).oci(), indent=2) + "\n")
    elif args.command == "kill":
        linux.kill(args.id, parse_signal(args.signal), root)
    elif args.command == "delete":
        linux.delete(args.id, root, force=args.force)
    elif args.command == "run":
        return linux.run(args.id, args.bundle, root, detach=args.detach, console_socket=args.console_socket,
                         pid_file=args.pid_file)
    elif args.command == "spec":
        _spec(args.bundle)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BerthError as e:
        _log_error(args, str(e))
        return 1
    except OSError as e:
        _log_error(args, f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
        return 1


if __name__ == "__main__":
    sys.exit(main())
