"""More container commands: ``berth port|top|stats|cp|diff|commit|export|update`` (top level and under
``berth container``). Wire calls and output follow docker CLI 28.2 (cli/command/container/*.go): the same
requests, the same tables, the same error wording and exit statuses. ``berth.cli.containers`` registers them;
this module imports nothing from it at import time, so the two stay cheap to load."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berth.cli.command import Arity, CliError, Command, CommandParser, Context, add_format

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence

    from berth.client.http import Client

STATS_TABLE = "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}"
STATS_HEADERS = {
    "Container": "CONTAINER", "Name": "NAME", "ID": "CONTAINER ID", "CPUPerc": "CPU %",
    "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O", "BlockIO": "BLOCK I/O", "PIDs": "PIDS",
}
DIFF_KINDS = {0: "C", 1: "A", 2: "D"}
STAT_HEADER = "X-Docker-Container-Path-Stat"
GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
GO_MODE_DEVICE = 1 << 26
GO_MODE_IRREGULAR = 1 << 19


def _path(name: str, suffix: str = "") -> str:
    from berth.client.http import quote_name

    return f"/containers/{quote_name(name)}{suffix}"


def _remember_path(p: CommandParser) -> None:
    """Keep the command path on the namespace: flag-value errors quote it (``Run 'berth update --help'``)."""
    p.set_defaults(command_path=p.path, command_usage=p.command.usage)


def _flag_error(ns: argparse.Namespace, message: str) -> CliError:
    """pflag's error for a bad flag value, the way docker 28 prints it (status 125)."""
    path = getattr(ns, "command_path", "berth")
    usage = getattr(ns, "command_usage", "")
    return CliError(f"{message}\n\nUsage:  {path} {usage}\n\nRun '{path} --help' for more information", 125)


def _stop_at_first_arg(p: CommandParser) -> None:
    from berth.cli.containers import _stop_at_first_arg as stop

    stop(p)


# ---- port ---------------------------------------------------------------------------------------------

def join_host_port(host: str, port: str) -> str:
    """Go's ``net.JoinHostPort``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def natural_key(text: str) -> list[tuple[int, int, str]]:
    """``sortorder.NaturalLess`` as a key: digit runs compare by value, everything else by character."""
    import re

    key: list[tuple[int, int, str]] = []
    for digits, other in re.findall(r"(\d+)|(\D)", text):
        key.append((0, int(digits), digits) if digits else (1, ord(other), other))
    return key


def port_lines(ports: Mapping[str, Any] | None, wanted: str, name: str) -> list[str]:
    """docker port's lines for ``NetworkSettings.Ports``: ``HOST:PORT`` per binding of one port, or
    ``8080/tcp -> 127.0.0.1:8080`` for all; naturally sorted."""
    ports = ports or {}
    out: list[str] = []
    if wanted:
        port, _, proto = wanted.partition("/")
        problem = go_parse_uint(port, 16)
        if problem:
            raise CliError(f"Error: invalid port ({port}): {problem}")
        frontends = ports.get(f"{port}/{proto or 'tcp'}") or []
        if not frontends:
            raise CliError(f"Error: No public port '{wanted}' published for {name}")
        out = [join_host_port(str(f.get("HostIp") or ""), str(f.get("HostPort") or "")) for f in frontends]
    else:
        for private, frontends in ports.items():
            for f in frontends or []:
                out.append(f"{private} -> {join_host_port(str(f.get('HostIp') or ''), str(f.get('HostPort') or ''))}")
    return sorted(out, key=natural_key)


def go_parse_uint(text: str, bits: int) -> str | None:
    """``strconv.ParseUint(text, 10, bits)``'s error text, or None when ``text`` fits."""
    if not text.isascii() or not text.isdigit():
        return f'strconv.ParseUint: parsing "{text}": invalid syntax'
    if int(text) >= 1 << bits:
        return f'strconv.ParseUint: parsing "{text}": value out of range'
    return None


def _port(ctx: Context, ns: argparse.Namespace) -> int:
    name = ns.args[0]
    doc = ctx.client.get(_path(name, "/json")).json() or {}
    wanted = ns.args[1] if len(ns.args) > 1 else ""
    lines = port_lines((doc.get("NetworkSettings") or {}).get("Ports"), wanted, name)
    if lines:
        ctx.out("\n".join(lines) + "\n")
    return 0


# ---- top / diff ---------------------------------------------------------------------------------------

def top_text(titles: Sequence[str], processes: Sequence[Sequence[str]]) -> str:
    """docker top's table: tabwriter with a minimum cell width of 20 and padding 3."""
    from berth.cli.render import tabwrite

    lines = ["\t".join(titles)] + ["\t".join(proc) for proc in processes]
    return tabwrite("".join(line + "\n" for line in lines), minwidth=20, padding=3)


def _top(ctx: Context, ns: argparse.Namespace) -> int:
    name, ps_args = ns.args[0], ns.args[1:]
    params = {"ps_args": " ".join(ps_args)} if ps_args else None
    result = ctx.client.get(_path(name, "/top"), params).json() or {}
    ctx.out(top_text(result.get("Titles") or [], result.get("Processes") or []))
    return 0


def diff_lines(changes: Sequence[Mapping[str, Any]] | None) -> str:
    """``{{.Type}} {{.Path}}`` per change (C, A, D)."""
    return "".join(f"{DIFF_KINDS.get(int(c.get('Kind') or 0), '?')} {c.get('Path', '')}\n" for c in changes or [])


def _diff(ctx: Context, ns: argparse.Namespace) -> int:
    if not ns.args[0]:
        raise CliError("Container name cannot be empty")
    ctx.out(diff_lines(ctx.client.get(_path(ns.args[0], "/changes")).json()))
    return 0


# ---- commit / export ----------------------------------------------------------------------------------

def _configure_commit(p: CommandParser) -> None:
    p.add_argument("-a", "--author", default="", metavar="string",
                   help='Author (e.g., "John Hannibal Smith <hannibal@a-team.com>")')
    p.add_argument("-c", "--change", action="append", default=[], metavar="list",
                   help="Apply Dockerfile instruction to the created image")
    p.add_argument("-m", "--message", default="", metavar="string", help="Commit message")
    p.add_bool("-p", "--pause", default=True, help="Pause container during commit")
    _stop_at_first_arg(p)


def commit_params(container: str, reference: str, ns: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /commit`` query docker's client builds (the repository by its full name)."""
    from berth.errors import BerthError
    from berth.oci.reference import parse

    repo = tag = ""
    if reference:
        try:
            ref = parse(reference)
        except BerthError as err:
            raise CliError(str(err)) from None
        if ref.digest is not None:
            raise CliError("refusing to create a tag with a digest reference")
        ref = ref.with_default_tag()
        repo, tag = ref.name, ref.tag or ""
    return {"container": container, "repo": repo, "tag": tag, "comment": ns.message, "author": ns.author,
            "changes": list(ns.change) or None, "pause": None if ns.pause else False}


def _commit(ctx: Context, ns: argparse.Namespace) -> int:
    params = commit_params(ns.args[0], ns.args[1] if len(ns.args) > 1 else "", ns)
    result = ctx.client.post("/commit", params).json() or {}
    ctx.out(f"{result.get('Id', '')}\n")
    return 0


def _configure_export(p: CommandParser) -> None:
    p.add_argument("-o", "--output", default="", metavar="string", help="Write to a file, instead of STDOUT")


def output_problem(path: str) -> str | None:
    """moby/sys/atomicwriter's ``validateDestination`` wording, or None when ``path`` can be written."""
    import os
    import stat

    folder = os.path.dirname(path)
    if folder not in ("", ".", ".."):
        try:
            st = os.stat(folder)
        except OSError as err:
            return f"invalid output path: stat {folder}: {os.strerror(err.errno or 0).lower()}"
        if not stat.S_ISDIR(st.st_mode):
            return f"invalid output path: stat {folder}: not a directory"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"failed to stat output path: lstat {path}: {os.strerror(err.errno or 0).lower()}"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link directly"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return f"cannot write to {what}"
    return "unsupported file type"


def _export(ctx: Context, ns: argparse.Namespace) -> int:
    import os
    import tempfile

    if not ns.output:
        if ctx.stdout_is_tty():
            raise CliError("cowardly refusing to save to a terminal. Use the -o flag or redirect")
        with ctx.client.get(_path(ns.args[0], "/export"), stream=True) as resp:
            sink = ctx.binary_stdout()
            for chunk in resp.iter_chunks(1 << 20):
                sink.write(chunk)
            sink.flush()
        return 0
    problem = output_problem(ns.output)
    if problem:
        raise CliError(f"failed to export container: {problem}")
    target = os.path.abspath(ns.output)
    with ctx.client.get(_path(ns.args[0], "/export"), stream=True) as resp:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(target), dir=os.path.dirname(target))
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in resp.iter_chunks(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    return 0


# ---- update -------------------------------------------------------------------------------------------

_UPDATE_INTS = (("cpu_period", "--cpu-period", "CpuPeriod"), ("cpu_quota", "--cpu-quota", "CpuQuota"),
                ("cpu_rt_period", "--cpu-rt-period", "CpuRealtimePeriod"),
                ("cpu_rt_runtime", "--cpu-rt-runtime", "CpuRealtimeRuntime"),
                ("cpu_shares", "-c, --cpu-shares", "CpuShares"))
_UPDATE_SIZES = (("memory", "-m, --memory", "Memory"), ("memory_reservation", "--memory-reservation",
                 "MemoryReservation"), ("memory_swap", "--memory-swap", "MemorySwap"),
                 ("kernel_memory", "--kernel-memory", "KernelMemory"))


def _configure_update(p: CommandParser) -> None:
    import argparse

    def flag(*names: str, metavar: str, help: str) -> None:
        p.add_argument(*names, default=None, metavar=metavar, help=help)

    flag("--blkio-weight", metavar="uint16",
         help="Block IO (relative weight), between 10 and 1000, or 0 to disable (default 0)")
    flag("--cpu-period", metavar="int", help="Limit CPU CFS (Completely Fair Scheduler) period")
    flag("--cpu-quota", metavar="int", help="Limit CPU CFS (Completely Fair Scheduler) quota")
    flag("--cpu-rt-period", metavar="int", help="Limit the CPU real-time period in microseconds")
    flag("--cpu-rt-runtime", metavar="int", help="Limit the CPU real-time runtime in microseconds")
    flag("-c", "--cpu-shares", metavar="int", help="CPU shares (relative weight)")
    flag("--cpus", metavar="decimal", help="Number of CPUs")
    flag("--cpuset-cpus", metavar="string", help="CPUs in which to allow execution (0-3, 0,1)")
    flag("--cpuset-mems", metavar="string", help="MEMs in which to allow execution (0-3, 0,1)")
    flag("-m", "--memory", metavar="bytes", help="Memory limit")
    flag("--memory-reservation", metavar="bytes", help="Memory soft limit")
    flag("--memory-swap", metavar="bytes", help="Swap limit equal to memory plus swap: -1 to enable unlimited swap")
    p.add_argument("--kernel-memory", default=None, help=argparse.SUPPRESS)
    flag("--pids-limit", metavar="int", help="Tune container pids limit (set -1 for unlimited)")
    flag("--restart", metavar="string", help="Restart policy to apply when a container exits")
    _remember_path(p)


def go_parse_int(text: str, bits: int = 64, signed: bool = True) -> int | str:
    """pflag's ``strconv.ParseInt(text, 0, bits)`` (or ParseUint): the value, or Go's error text."""
    import re

    func = "ParseInt" if signed else "ParseUint"
    body = text[1:] if signed and text[:1] in "+-" else text
    value: int | None = None
    if re.fullmatch(r"0[0-7]+", body):
        value = int(body, 8)
    elif re.fullmatch(r"0[xX][0-9a-fA-F](_?[0-9a-fA-F])*|0[oO][0-7](_?[0-7])*|0[bB][01](_?[01])*|\d+", body):
        value = int(body, 0)
    if value is None:
        return f'strconv.{func}: parsing "{text}": invalid syntax'
    if signed and text.startswith("-"):
        value = -value
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not low <= value <= high:
        return f'strconv.{func}: parsing "{text}": value out of range'
    return value


def parse_cpus(text: str) -> int | str:
    """``opts.ParseCPUs``: a rational number of CPUs as nano-CPUs, or docker's error text."""
    from fractions import Fraction

    try:
        nano = Fraction(text) * 1_000_000_000
    except (ValueError, ZeroDivisionError):
        return f"failed to parse {text} as a rational number"
    if nano.denominator != 1:
        return "value is too precise"
    return int(nano)


def restart_policy(text: str) -> dict[str, Any]:
    """``opts.ParseRestartPolicy``: unknown names are the daemon's to refuse."""
    if not text:
        return {"Name": "", "MaximumRetryCount": 0}
    name, colon, count = text.partition(":")
    if colon and not name:
        raise CliError("invalid restart policy format: no policy provided before colon")
    retries = 0
    if count:
        parsed = go_parse_int(count)
        if isinstance(parsed, str):
            raise CliError("invalid restart policy format: maximum retry count must be an integer")
        retries = parsed
    return {"Name": name, "MaximumRetryCount": retries}


def update_body(ns: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /containers/{id}/update`` body docker CLI 28 sends (zero means "leave as is")."""
    from berth.cli.containers import ram_in_bytes

    given = [k for k in ("blkio_weight", "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares",
                         "cpus", "cpuset_cpus", "cpuset_mems", "memory", "memory_reservation", "memory_swap",
                         "kernel_memory", "pids_limit", "restart") if getattr(ns, k) is not None]
    body: dict[str, Any] = {"BlkioWeight": 0, "CpusetCpus": ns.cpuset_cpus or "", "CpusetMems": ns.cpuset_mems or ""}
    if ns.blkio_weight is not None:
        weight = go_parse_int(ns.blkio_weight, 16, signed=False)
        if isinstance(weight, str):
            raise _flag_error(ns, f'invalid argument "{ns.blkio_weight}" for "--blkio-weight" flag: {weight}')
        body["BlkioWeight"] = weight
    for attr, flag, key in _UPDATE_INTS:
        text = getattr(ns, attr)
        value = go_parse_int(text) if text is not None else 0
        if isinstance(value, str):
            raise _flag_error(ns, f'invalid argument "{text}" for "{flag}" flag: {value}')
        body[key] = value
    for attr, flag, key in _UPDATE_SIZES:
        text = getattr(ns, attr)
        size = 0
        if text is not None and not (attr == "memory_swap" and text == "-1"):
            try:
                size = ram_in_bytes(text)
            except ValueError as err:
                raise _flag_error(ns, f'invalid argument "{text}" for "{flag}" flag: {err}') from None
        elif text == "-1":
            size = -1
        body[key] = size
    nano = parse_cpus(ns.cpus) if ns.cpus is not None else 0
    if isinstance(nano, str):
        raise _flag_error(ns, f'invalid argument "{ns.cpus}" for "--cpus" flag: {nano}')
    body["NanoCpus"] = nano
    pids = go_parse_int(ns.pids_limit) if ns.pids_limit is not None else 0
    if isinstance(pids, str):
        raise _flag_error(ns, f'invalid argument "{ns.pids_limit}" for "--pids-limit" flag: {pids}')
    body["PidsLimit"] = pids or None
    if not given:
        raise CliError("you must provide one or more flags when using this command")
    body["RestartPolicy"] = restart_policy(ns.restart or "")
    return body


def _update(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.client.http import DaemonUnreachable
    from berth.errors import BerthError

    body = update_body(ns)
    warnings: list[str] = []
    errors: list[str] = []
    for name in ns.args:
        try:
            result = ctx.client.post(_path(name, "/update"), json=body).json() or {}
        except DaemonUnreachable:
            raise
        except BerthError as err:
            errors.append(f"Error response from daemon: {err}")
            continue
        ctx.out(name + "\n")
        warnings += result.get("Warnings") or []
    if warnings:
        ctx.out("\n".join(warnings) + "\n")
    if errors:
        raise CliError("\n".join(errors))
    return 0


# ---- stats --------------------------------------------------------------------------------------------

def _configure_stats(p: CommandParser) -> None:
    p.add_bool("-a", "--all", help="Show all containers (default shows just running)")
    add_format(p)
    p.add_bool("--no-stream", help="Disable streaming stats and only pull the first result")
    p.add_bool("--no-trunc", help="Do not truncate output")


class StatsEntry:
    """One container's line in docker stats (its ``Stats`` struct): the figures from the latest reading."""

    def __init__(self, container: str) -> None:
        import threading

        self.container = container
        self.name = ""
        self.ident = ""
        self.cpu = self.memory = self.memory_limit = self.memory_percent = 0.0
        self.net_rx = self.net_tx = self.block_read = self.block_write = 0.0
        self.pids = 0
        self.invalid = False
        self.updated = 0.0
        self.error: Exception | None = None
        self.first = threading.Event()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def set_reading(self, doc: Mapping[str, Any]) -> None:
        """docker's collect(): CPU % from this reading and its ``precpu_stats``, memory without the page cache."""
        import time

        cpu = doc.get("cpu_stats") or {}
        pre = doc.get("precpu_stats") or {}
        usage = cpu.get("cpu_usage") or {}
        cpu_delta = float(usage.get("total_usage") or 0) - float((pre.get("cpu_usage") or {}).get("total_usage") or 0)
        system_delta = float(cpu.get("system_cpu_usage") or 0) - float(pre.get("system_cpu_usage") or 0)
        online = float(cpu.get("online_cpus") or 0) or float(len(usage.get("percpu_usage") or []))
        memory = doc.get("memory_stats") or {}
        used = float(memory.get("usage") or 0)
        extra = memory.get("stats") or {}
        if "total_inactive_file" in extra and extra["total_inactive_file"] < used:
            used -= extra["total_inactive_file"]
        elif (extra.get("inactive_file") or 0) < used:
            used -= extra.get("inactive_file") or 0
        limit = float(memory.get("limit") or 0)
        read = write = 0.0
        for entry in (doc.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
            op = str(entry.get("op") or "")[:1].lower()
            if op == "r":
                read += entry.get("value") or 0
            elif op == "w":
                write += entry.get("value") or 0
        networks = (doc.get("networks") or {}).values()
        with self.lock:
            self.name = str(doc.get("name") or "")
            self.ident = str(doc.get("id") or "")
            self.cpu = cpu_delta / system_delta * online * 100.0 if system_delta > 0 and cpu_delta > 0 else 0.0
            self.memory, self.memory_limit = used, limit
            self.memory_percent = used / limit * 100.0 if limit else 0.0
            self.net_rx = float(sum(n.get("rx_bytes") or 0 for n in networks))
            self.net_tx = float(sum(n.get("tx_bytes") or 0 for n in networks))
            self.block_read, self.block_write = read, write
            self.pids = int((doc.get("pids_stats") or {}).get("current") or 0)
            self.invalid = False
            self.error = None
            self.updated = time.monotonic()
        self.first.set()

    def set_error(self, err: Exception, reset: bool = False) -> None:
        with self.lock:
            self.error = err
            self.invalid = True
            if reset:
                self.cpu = self.memory = self.memory_limit = self.memory_percent = 0.0
                self.net_rx = self.net_tx = self.block_read = self.block_write = 0.0
                self.pids = 0
        self.first.set()

    def row(self, trunc: bool) -> dict[str, str]:
        """docker's statsContext fields."""
        from berth.cli.render import bytes_size, human_size, short_id

        def percent(value: float) -> str:
            return f"{value:.2f}%"

        with self.lock:
            bad = self.invalid
            return {
                "Container": self.container,
                "Name": self.name[1:] if len(self.name) > 1 else "--",
                "ID": short_id(self.ident) if trunc else self.ident,
                "CPUPerc": "--" if bad else percent(self.cpu),
                "MemUsage": "-- / --" if bad else f"{bytes_size(self.memory)} / {bytes_size(self.memory_limit)}",
                "MemPerc": "--" if bad else percent(self.memory_percent),
                "NetIO": "--" if bad else f"{human_size(self.net_rx, 3)} / {human_size(self.net_tx, 3)}",
                "BlockIO": "--" if bad else f"{human_size(self.block_read, 3)} / {human_size(self.block_write, 3)}",
                "PIDs": "--" if bad else str(self.pids),
            }


def _collect(client: Client, entry: StatsEntry, stream: bool) -> None:
    """Read one container's stats (one reading, or a stream until told to stop) into ``entry``."""
    from berth.errors import BerthError

    try:
        resp = client.get(_path(entry.container, "/stats"), {"stream": stream}, stream=True)
    except BerthError as err:
        entry.set_error(err)
        return
    with resp:
        try:
            for doc in resp.iter_json():
                if isinstance(doc, dict):
                    entry.set_reading(doc)
                if not stream or entry.stop.is_set():
                    return
        except (BerthError, OSError) as err:
            entry.set_error(err if isinstance(err, BerthError) else BerthError(str(err)))
            return
    if stream:
        entry.set_error(BerthError("EOF"))


class _StatsTable:
    """The containers being watched, in the order docker shows them."""

    def __init__(self, client: Client, stream: bool) -> None:
        import threading

        self.client = client
        self.stream = stream
        self.entries: list[StatsEntry] = []
        self.lock = threading.Lock()

    def add(self, container: str) -> StatsEntry | None:
        import threading

        with self.lock:
            if any(e.container == container for e in self.entries):
                return None
            entry = StatsEntry(container)
            self.entries.append(entry)
        threading.Thread(target=_collect, args=(self.client, entry, self.stream), daemon=True).start()
        return entry

    def remove(self, container: str) -> None:
        with self.lock:
            for entry in self.entries:
                if entry.container == container:
                    entry.stop.set()
            self.entries = [e for e in self.entries if e.container != container]

    def snapshot(self) -> list[StatsEntry]:
        with self.lock:
            return list(self.entries)

    def wait_first(self, entries: Sequence[StatsEntry]) -> None:
        """Like docker's waitFirst: each container's first reading, or "timeout waiting for stats" after 2 s."""
        import time

        from berth.errors import BerthError

        deadline = time.monotonic() + 2.0
        for entry in entries:
            if not entry.first.wait(max(0.0, deadline - time.monotonic())):
                entry.set_error(BerthError("timeout waiting for stats"), reset=True)


def _watch_events(ctx: Context, table: _StatsTable, show_all: bool) -> None:
    """docker stats without names follows the daemon's container events: start (and create with ``-a``)
    adds a line, die removes it (without ``-a``)."""
    import contextlib
    import json
    import threading

    from berth.client.http import Client

    client = Client(ctx.client.host)

    def run() -> None:
        with contextlib.suppress(Exception):
            filters = json.dumps({"type": ["container"]})
            with client.get("/events", {"filters": filters}, stream=True) as resp:
                for event in resp.iter_json():
                    if not isinstance(event, dict):
                        continue
                    action = str(event.get("Action") or event.get("status") or "")
                    ident = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")[:12]
                    if action == "start" or (action == "create" and show_all):
                        table.add(ident)
                    elif action == "die" and not show_all:
                        table.remove(ident)

    threading.Thread(target=run, daemon=True).start()


def stats_frame(text: str) -> str:
    """One refresh of the streaming display, byte for byte as docker 28 writes it (cursor home, the table,
    then again line by line with erase-to-end-of-line, then erase below)."""
    buffered = "\033[H" + text
    return buffered + "".join(line + " \033[K\n" for line in buffered.split("\n")) + "\033[J"


def _stats(ctx: Context, ns: argparse.Namespace) -> int:
    import time

    from berth.cli.template import Format, TemplateError
    from berth.errors import BerthError

    stream = not ns.no_stream
    table = _StatsTable(ctx.client, stream)
    show_all = not ns.args
    if show_all:
        if stream:
            _watch_events(ctx, table, ns.all)
        listed = ctx.client.get("/containers/json", {"all": ns.all or None}).json() or []
        for item in listed:
            table.add(str(item.get("Id", ""))[:12])
        table.wait_first(table.snapshot())
    else:
        for name in ns.args:
            table.add(name)
        entries = table.snapshot()
        table.wait_first(entries)
        errors = [e.error for e in entries if e.error is not None]
        if errors:
            raise CliError("\n".join(_stats_error(err) for err in errors))
    source = ns.format or "table"
    try:
        fmt = Format(STATS_TABLE if source == "table" else source)
    except TemplateError as err:
        raise CliError(str(err)) from None
    trunc = not ns.no_trunc
    while True:
        entries = table.snapshot()
        try:
            text = fmt.render([e.row(trunc) for e in entries], STATS_HEADERS)
        except TemplateError as err:
            raise CliError(str(err)) from None
        ctx.out(stats_frame(text) if stream else text)
        ctx.stdout.flush()
        if not stream or (not entries and not show_all):
            return 0
        time.sleep(0.5)
        for entry in table.snapshot():
            if entry.first.is_set() and time.monotonic() - entry.updated > 2.0:
                entry.set_error(BerthError("timeout waiting for stats"), reset=True)


def _stats_error(err: Exception) -> str:
    from berth.client.http import DaemonUnreachable

    return str(err) if isinstance(err, DaemonUnreachable) else f"Error response from daemon: {err}"


# ---- cp -----------------------------------------------------------------------------------------------

def _configure_cp(p: CommandParser) -> None:
    p.add_bool("-a", "--archive", help="Archive mode (copy all uid/gid information)")
    p.add_bool("-L", "--follow-link", help="Always follow symbol link in SRC_PATH")
    p.add_argument("-q", "--quiet", action="store_true", default=None,
                   help="Suppress progress output during copy. Progress output is automatically suppressed if no "
                        "terminal is attached")
    p.bool_flags.update(("-q", "--quiet"))


def split_cp_arg(arg: str) -> tuple[str, str]:
    """``CONTAINER:PATH`` or a local path; a local path with a colon starts with ``/`` or ``.``."""
    if arg.startswith("/"):
        return "", arg
    container, colon, path = arg.partition(":")
    if not colon or container.startswith("."):
        return "", arg
    return container, path


def _stat_path(client: Client, container: str, path: str) -> dict[str, Any] | None:
    """``HEAD /containers/{id}/archive``: the path-stat header decoded, or None when it cannot be had."""
    import base64
    import json

    from berth.errors import BerthError

    try:
        resp = client.head(_path(container, "/archive"), {"path": path})
    except BerthError:
        return None
    value = resp.headers.get(STAT_HEADER)
    if not value:
        return None
    try:
        doc = json.loads(base64.b64decode(value))
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class _Counter:
    """Counts the bytes read through it (for "Successfully copied 2.05kB to ...")."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.source.read(size)
        self.total += len(data)
        return data


class _ChunkReader:
    """A file-like view of a response body's chunks (tarfile wants ``read``)."""

    def __init__(self, chunks: Any) -> None:
        self.chunks = chunks
        self.buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            chunk = next(self.chunks, b"")
            if not chunk:
                break
            self.buffer += chunk
        if size < 0:
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def _cp(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.archive import CopyError

    source, dest = ns.args
    if not source:
        raise CliError("source can not be empty")
    if not dest:
        raise CliError("destination can not be empty")
    quiet = ns.quiet if ns.quiet is not None else not ctx.stdout_is_tty()
    src_container, src_path = split_cp_arg(source)
    dst_container, dst_path = split_cp_arg(dest)
    try:
        if src_container and dst_container:
            raise CliError("copying between containers is not supported")
        if src_container:
            return _copy_from(ctx, src_container, src_path, dst_path, ns.follow_link, quiet)
        if dst_container:
            return _copy_to(ctx, dst_container, src_path, dst_path, ns.follow_link, ns.archive, quiet)
    except CopyError as err:
        raise CliError(str(err)) from None
    raise CliError("must specify at least one container source")


def validate_output_path(path: str) -> None:
    """docker's ``ValidateOutputPath`` for a copy destination on the host."""
    import os
    import stat

    from berth.cli.archive import clean

    folder = os.path.dirname(clean(path))
    if folder not in ("", ".") and not os.path.exists(folder):
        raise CliError(f'invalid output path: directory "{folder}" does not exist')
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise CliError(f"stat {path}: {os.strerror(err.errno or 0).lower()}") from None
    if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
        raise CliError(f'invalid output path: "{path}" must be a directory or a regular file: got a device')
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise CliError(f'invalid output path: "{path}" must be a directory or a regular file: got an irregular file')


def _copy_from(ctx: Context, container: str, src_path: str, dst_path: str, follow: bool, quiet: bool) -> int:
    import posixpath

    from berth.cli import archive
    from berth.cli.render import human_size

    if dst_path != "-":
        dst_path = archive.local_path(dst_path)
    validate_output_path(dst_path)
    rebase = ""
    if follow:
        st = _stat_path(ctx.client, container, src_path)
        if st is not None and int(st.get("mode") or 0) & GO_MODE_SYMLINK:
            target = str(st.get("linkTarget") or "")
            if not target.startswith("/"):
                target = posixpath.join(archive.split_path_dir_entry(src_path)[0], target)
            src_path, rebase = archive.rebase_name(src_path, archive.clean(target))
    with ctx.client.get(_path(container, "/archive"), {"path": src_path}, stream=True) as resp:
        if dst_path == "-":
            sink = ctx.binary_stdout()
            for chunk in resp.iter_chunks(1 << 20):
                sink.write(chunk)
            sink.flush()
            return 0
        st = _decode_stat(resp.headers.get(STAT_HEADER) or "")
        info = archive.CopyInfo(src_path, True, bool(int(st.get("mode") or 0) & GO_MODE_DIR), rebase)
        counted = _Counter(_ChunkReader(resp.iter_chunks()))
        content: Any = counted
        if rebase:
            _, src_base = archive.split_path_dir_entry(info.path)
            content = archive.rebase_archive_entries(counted, src_base, rebase)
        archive.copy_to(content, info, dst_path)
        if isinstance(content, archive.Piped):
            content.check()
    if not quiet:
        ctx.err(f"Successfully copied {human_size(counted.total, 3)} to {dst_path}\n")
    return 0


def _decode_stat(value: str) -> dict[str, Any]:
    import base64
    import json

    try:
        doc = json.loads(base64.b64decode(value)) if value else {}
    except ValueError:
        doc = {}
    return doc if isinstance(doc, dict) else {}


def _copy_to(ctx: Context, container: str, src_path: str, dst_path: str, follow: bool, copy_uid_gid: bool,
             quiet: bool) -> int:
    import posixpath

    from berth.cli import archive
    from berth.cli.render import human_size

    if src_path != "-":
        src_path = archive.local_path(src_path)
    dst_info = archive.CopyInfo(dst_path)
    st = _stat_path(ctx.client, container, dst_path)
    if st is not None and int(st.get("mode") or 0) & GO_MODE_SYMLINK:
        target = str(st.get("linkTarget") or "")
        if not target.startswith("/"):
            target = posixpath.join(archive.split_path_dir_entry(dst_path)[0], target)
        dst_info = archive.CopyInfo(archive.clean(target))
        st = _stat_path(ctx.client, container, dst_info.path)
    mode = int(st.get("mode") or 0) if st is not None else 0
    if mode & GO_MODE_DEVICE or mode & GO_MODE_IRREGULAR:
        what = "got a device" if mode & GO_MODE_DEVICE else "got an irregular file"
        raise CliError(f'destination "{container}:{dst_path}" must be a directory or a regular file: {what}')
    if st is not None:
        dst_info = archive.CopyInfo(dst_info.path, True, bool(mode & GO_MODE_DIR))
    params: dict[str, Any] = {"noOverwriteDirNonDir": "true", "copyUIDGID": "true" if copy_uid_gid else None}
    headers = {"Content-Type": "application/x-tar"}
    if src_path == "-":
        if not dst_info.is_dir:
            raise CliError(f'destination "{container}:{dst_path}" must be a directory')
        params["path"] = dst_info.path
        ctx.client.put(_path(container, "/archive"), params, body=ctx.binary_stdin(), headers=headers)
        return 0
    src_info = archive.copy_info_source_path(src_path, follow)
    tarred = archive.tar_resource(src_info)
    try:
        dst_dir, prepared = archive.prepare_archive_copy(tarred, src_info, dst_info)
        counted = _Counter(prepared)
        params["path"] = dst_dir
        ctx.client.put(_path(container, "/archive"), params, body=counted, headers=headers)
    finally:
        tarred.close()
    tarred.check()
    if isinstance(prepared, archive.Piped):
        prepared.check()
    if not quiet:
        ctx.err(f"Successfully copied {human_size(counted.total, 3)} to {container}:{dst_info.path}\n")
    return 0


# ---- registration -------------------------------------------------------------------------------------

def _cmd(name: str, summary: str, usage: str, run: Callable[[Context, argparse.Namespace], int],
         configure: Callable[[CommandParser], None] | None, arity: Arity) -> Command:
    return Command(name, summary, usage, run, configure, arity, metavar="CONTAINER")


PORT = _cmd("port", "List port mappings or a specific mapping for the container", "CONTAINER [PRIVATE_PORT[/PROTO]]",
            _port, None, Arity(1, 2))
TOP = _cmd("top", "Display the running processes of a container", "CONTAINER [ps OPTIONS]", _top,
           _stop_at_first_arg, Arity(1, None))
STATS = _cmd("stats", "Display a live stream of container(s) resource usage statistics", "[OPTIONS] [CONTAINER...]",
             _stats, _configure_stats, Arity(0, None))
CP = _cmd("cp", "Copy files/folders between a container and the local filesystem",
          "[OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-\n\tberth cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH", _cp,
          _configure_cp, Arity(2, 2))
DIFF = _cmd("diff", "Inspect changes to files or directories on a container's filesystem", "CONTAINER", _diff, None,
            Arity(1, 1))
COMMIT = _cmd("commit", "Create a new image from a container's changes", "[OPTIONS] CONTAINER [REPOSITORY[:TAG]]",
              _commit, _configure_commit, Arity(1, 2))
EXPORT = _cmd("export", "Export a container's filesystem as a tar archive", "[OPTIONS] CONTAINER", _export,
              _configure_export, Arity(1, 1))
UPDATE = _cmd("update", "Update configuration of one or more containers", "[OPTIONS] CONTAINER [CONTAINER...]",
              _update, _configure_update, Arity(1, None))

# the same commands serve ``berth X`` and ``berth container X``
MORE_COMMANDS = (PORT, TOP, STATS, CP, DIFF, COMMIT, EXPORT, UPDATE)
