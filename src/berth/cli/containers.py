"""Container commands: ``berth run|create|start|stop|kill|restart|rm|ps|logs|wait|inspect|attach|exec|pause|
unpause|rename`` and ``berth container ...`` (with ``prune``). Wire calls follow docker CLI 28 (engine-api.md §4,
§7); output and exit statuses follow docker's (125 for daemon errors in run/create, 126/127 for a command that
cannot be executed, the container's own status otherwise)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berth.cli.command import Arity, CliError, Command, CommandParser, Context, Group, add_filter, add_format
from berth.cli.containers_more import MORE_COMMANDS
from berth.units import SECOND_NS, parse_go_duration

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence

    from berth.client.http import Client, Hijacked, Response

PS_TABLE = "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}"
PS_HEADERS = {
    "ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT", "RunningFor": "CREATED",
    "Ports": "PORTS", "State": "STATE", "Status": "STATUS", "Size": "SIZE", "Names": "NAMES", "Labels": "LABELS",
    "Mounts": "MOUNTS", "LocalVolumes": "LOCAL VOLUMES", "Networks": "NETWORKS", "Platform": "PLATFORM",
}
PRUNE_WARNING = "WARNING! This will remove all stopped containers."


# ---- shared pieces ------------------------------------------------------------------------------------

def _path(name: str, suffix: str = "") -> str:
    from berth.client.http import quote_name

    return f"/containers/{quote_name(name)}{suffix}"


def _leading_flags(parser: CommandParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` where docker stops parsing flags (the first positional): ``run IMAGE sh -c x``."""
    actions = parser._option_string_actions
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv[:i], argv[i + 1:]
        if not token.startswith("-") or token == "-":
            return argv[:i], argv[i:]
        if token.startswith("--"):
            action = actions.get(token.partition("=")[0])
            if action is not None and action.nargs != 0 and "=" not in token:
                i += 1
        else:
            for j, char in enumerate(token[1:], start=1):
                action = actions.get("-" + char)
                if action is not None and action.nargs != 0:
                    if j == len(token) - 1:
                        i += 1
                    break
        i += 1
    return argv, []


def _stop_at_first_arg(parser: CommandParser) -> None:
    """Make ``parser`` leave everything after the first positional alone (pflag's SetInterspersed(false))."""
    parse_all = parser.parse

    def parse(argv: list[str]) -> argparse.Namespace:
        flags, rest = _leading_flags(parser, argv)
        # placeholders: the positionals only count for the arity check, and may look like flags
        ns = parse_all([*flags, *(["ARG"] * len(rest))])
        ns.args = rest
        return ns

    parser.parse = parse  # type: ignore[method-assign]


def _each(ctx: Context, names: Sequence[str], act: Callable[[str], str | None], failure: str | None = None) -> int:
    """Run ``act`` per name, print what it returns, collect daemon errors and report them at the end."""
    from berth.client.http import DaemonUnreachable
    from berth.errors import BerthError

    errors: list[str] = []
    for name in names:
        try:
            shown = act(name)
        except DaemonUnreachable:
            raise
        except BerthError as err:
            errors.append(f"Error response from daemon: {err}")
            continue
        if shown is not None:
            ctx.out(shown + "\n")
    if errors:
        if failure is not None:
            errors.append(failure)
        raise CliError("\n".join(errors))
    return 0


def _inspect_container(ctx: Context, name: str) -> dict[str, Any]:
    doc = ctx.client.get(_path(name, "/json")).json()
    return doc if isinstance(doc, dict) else {}


def _go_quote(text: str) -> str:
    """strconv.Quote for the COMMAND column."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def ram_in_bytes(text: str) -> int:
    """docker/go-units RAMInBytes: ``512m``, ``1g``, ``1.5GiB``, ``1024`` (binary multipliers)."""
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?", text)
    if m is None:
        raise ValueError(f"invalid size: '{text}'")
    power = " kmgtp".index((m.group(2) or " ").lower())
    return int(float(m.group(1)) * (1024 ** power))


# ---- run / create -------------------------------------------------------------------------------------

def _configure_create(p: CommandParser, run: bool = False) -> None:
    if run:
        p.add_bool("-d", "--detach", help="Run container in background and print container ID")
        p.add_bool("--rm", help="Automatically remove the container and its associated anonymous volumes when it exits")
        p.add_bool("--sig-proxy", default=True, help="Proxy received signals to the process")
        p.add_argument("--detach-keys", default=None, metavar="string",
                       help="Override the key sequence for detaching a container")
    else:
        p.add_bool("--rm", help="Automatically remove the container and its associated anonymous volumes when it exits")
    _many(p, "-a", "--attach", help="Attach to STDIN, STDOUT or STDERR")
    p.add_bool("-i", "--interactive", help="Keep STDIN open even if not attached")
    p.add_bool("-t", "--tty", help="Allocate a pseudo-TTY")
    p.add_argument("--name", default="", metavar="string", help="Assign a name to the container")
    _many(p, "-e", "--env", help="Set environment variables")
    _many(p, "--env-file", help="Read in a file of environment variables")
    p.add_argument("-w", "--workdir", default="", metavar="string", help="Working directory inside the container")
    p.add_argument("-u", "--user", default="", metavar="string",
                   help="Username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument("--entrypoint", default=None, metavar="string", help="Overwrite the default ENTRYPOINT of the image")
    _free_short_help(p)
    p.add_argument("-h", "--hostname", default="", metavar="string", help="Container host name")
    p.add_argument("--domainname", default="", metavar="string", help="Container NIS domain name")
    p.add_bool("--init", help="Run an init inside the container that forwards signals and reaps processes")
    p.add_argument("--restart", default="no", metavar="string", help="Restart policy to apply when a container exits")
    p.add_argument("-m", "--memory", default="", metavar="bytes", help="Memory limit")
    p.add_argument("--memory-swap", default="", metavar="bytes", help="Swap limit equal to memory plus swap")
    p.add_argument("--cpus", default="", metavar="decimal", help="Number of CPUs")
    p.add_argument("-c", "--cpu-shares", default="0", metavar="int", help="CPU shares (relative weight)")
    p.add_argument("--cpuset-cpus", default="", metavar="string", help="CPUs in which to allow execution (0-3, 0,1)")
    p.add_argument("--pids-limit", default=None, metavar="int", help="Tune container pids limit (set -1 for unlimited)")
    p.add_argument("--shm-size", default="", metavar="bytes", help="Size of /dev/shm")
    p.add_bool("--read-only", help="Mount the container's root filesystem as read only")
    _many(p, "--cap-add", help="Add Linux capabilities")
    _many(p, "--cap-drop", help="Drop Linux capabilities")
    p.add_bool("--privileged", help="Give extended privileges to this container")
    _many(p, "--security-opt", help="Security Options")
    _many(p, "--ulimit", help="Ulimit options", metavar="ulimit")
    _many(p, "--sysctl", help="Sysctl options", metavar="map")
    _many(p, "--group-add", help="Add additional groups to join")
    p.add_argument("--stop-signal", default="", metavar="string", help="Signal to stop the container")
    p.add_argument("--stop-timeout", default=None, metavar="int", help="Timeout (in seconds) to stop a container")
    p.add_argument("--health-cmd", default="", metavar="string", help="Command to run to check health")
    for flag, what in (("interval", "Time between running the check (ms|s|m|h) (default 0s)"),
                       ("timeout", "Maximum time to allow one check to run (ms|s|m|h) (default 0s)"),
                       ("start-period", "Start period for the container to initialize before starting health-retries "
                                        "countdown (ms|s|m|h) (default 0s)"),
                       ("start-interval", "Time between running the check during the start period (ms|s|m|h) "
                                          "(default 0s)")):
        p.add_argument(f"--health-{flag}", default="", metavar="duration", help=what)
    p.add_argument("--health-retries", default="0", metavar="int", help="Consecutive failures needed to report "
                   "unhealthy")
    p.add_bool("--no-healthcheck", help="Disable any container-specified HEALTHCHECK")
    p.add_argument("--health-on-failure", default="", metavar="string",
                   help="What to do when the container turns unhealthy: none, kill, restart or stop (berth)")
    _many(p, "-l", "--label", help="Set meta data on a container")
    p.add_argument("--log-driver", default="", metavar="string", help="Logging driver for the container")
    _many(p, "--log-opt", help="Log driver options")
    p.add_argument("--network", "--net", default="", metavar="network", help="Connect a container to a network")
    _many(p, "--network-alias", help="Add network-scoped alias for the container")
    _many(p, "-v", "--volume", help="Bind mount a volume")
    _many(p, "--mount", help="Attach a filesystem mount to the container", metavar="mount")
    _many(p, "--tmpfs", help="Mount a tmpfs directory")
    _many(p, "-p", "--publish", help="Publish a container's port(s) to the host")
    p.add_bool("-P", "--publish-all", help="Publish all exposed ports to random ports")
    _many(p, "--expose", help="Expose a port or a range of ports")
    _many(p, "--add-host", help="Add a custom host-to-IP mapping (host:ip)")
    _many(p, "--dns", help="Set custom DNS servers")
    _many(p, "--dns-search", help="Set custom DNS search domains")
    _many(p, "--dns-option", help="Set DNS options")
    _many(p, "--volumes-from", help="Mount volumes from the specified container(s)")
    p.add_argument("--ip", default="", metavar="string", help="IPv4 address (e.g., 172.30.100.104)")
    p.add_argument("--cidfile", default="", metavar="string", help="Write the container ID to the file")
    p.add_argument("--platform", default="", metavar="string", help="Set platform if server is multi-platform capable")
    p.add_argument("--pull", default="missing", metavar="string",
                   help='Pull image before running ("always", "missing", "never")')
    p.add_bool("-q", "--quiet", help="Suppress the pull output")
    _stop_at_first_arg(p)


def _free_short_help(p: CommandParser) -> None:
    """In docker's run/create ``-h`` is --hostname; help is ``--help`` only."""
    action = p._option_string_actions.pop("-h", None)
    if action is not None:
        action.option_strings = [s for s in action.option_strings if s != "-h"]


def _many(p: CommandParser, *names: str, help: str, metavar: str = "list") -> None:
    p.add_argument(*names, action="append", default=[], metavar=metavar, help=help)


def _configure_run(p: CommandParser) -> None:
    _configure_create(p, run=True)


def _bad_flag(ctx: Context, flag: str, value: str, why: str) -> CliError:
    return CliError(f'invalid argument "{value}" for "{flag}" flag: {why}', 125)


def _key_values(items: Sequence[str], from_env: bool) -> list[str]:
    """``-e K=V`` stays; ``-e K`` takes K from the environment (or is dropped when unset), like docker."""
    import os

    out: list[str] = []
    for item in items:
        if "=" in item or not from_env:
            out.append(item)
        elif item in os.environ:
            out.append(f"{item}={os.environ[item]}")
    return out


def _env_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as err:
        raise CliError(f"open {path}: {(err.strerror or str(err)).lower()}", 125) from None
    items = [line.lstrip() for line in lines]
    return _key_values([i for i in items if i and not i.startswith("#")], from_env=True)


def _labels(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _capabilities(items: Sequence[str]) -> list[str] | None:
    caps = []
    for item in items:
        for cap in item.split(","):
            cap = cap.strip().upper()
            if cap and cap != "ALL" and not cap.startswith("CAP_"):
                cap = "CAP_" + cap
            if cap:
                caps.append(cap)
    return caps or None


def parse_ulimits(items: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        name, eq, limits = item.partition("=")
        soft, _, hard = limits.partition(":")
        try:
            soft_n = int(soft)
            hard_n = int(hard) if hard else soft_n
        except ValueError:
            raise CliError(f'invalid argument "{item}" for "--ulimit" flag: invalid ulimit argument: {item}',
                           125) from None
        if not eq or not name:
            raise CliError(f'invalid argument "{item}" for "--ulimit" flag: invalid ulimit argument: {item}', 125)
        out.append({"Name": name, "Hard": hard_n, "Soft": soft_n})
    return out


def _restart_policy(text: str) -> dict[str, Any]:
    name, _, count = text.partition(":")
    if name not in ("", "no", "always", "unless-stopped", "on-failure"):
        raise CliError(f'invalid argument "{text}" for "--restart" flag: invalid restart policy format: '
                       f"unknown policy '{name}'", 125)
    try:
        retries = int(count) if count else 0
    except ValueError:
        raise CliError(f'invalid argument "{text}" for "--restart" flag: invalid restart policy format: '
                       f"maximum retry count must be an integer", 125) from None
    return {"Name": name or "no", "MaximumRetryCount": retries}


def _security_opts(items: Sequence[str]) -> list[str] | None:
    """docker reads a ``seccomp=<file>`` profile on the client and sends its compacted JSON."""
    import json

    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            key, sep, value = item.partition(":")
        if key == "seccomp" and value not in ("", "unconfined", "builtin"):
            try:
                with open(value, encoding="utf-8") as fh:
                    profile = json.load(fh)
            except (OSError, ValueError) as err:
                raise CliError(f"opening seccomp profile ({value}) failed: {err}", 125) from None
            item = "seccomp=" + json.dumps(profile, separators=(",", ":"))
        out.append(item)
    return out or None


def _volumes(items: Sequence[str]) -> tuple[list[str] | None, dict[str, Any]]:
    """``-v``: a lone container path is an anonymous volume; anything else is a bind (relative host paths made
    absolute, like docker CLI ≥ 23)."""
    import os

    binds: list[str] = []
    anonymous: dict[str, Any] = {}
    for item in items:
        parts = item.split(":")
        if len(parts) == 1:
            anonymous[item] = {}
            continue
        source = parts[0]
        if source.startswith("."):
            parts[0] = os.path.abspath(source)
        binds.append(":".join(parts))
    return binds or None, anonymous


def _mounts(items: Sequence[str]) -> list[dict[str, Any]]:
    import csv

    out = []
    for item in items:
        mount: dict[str, Any] = {"Type": "volume"}
        for field in next(csv.reader([item])):
            key, eq, value = field.partition("=")
            key = key.strip().lower()
            if key == "type":
                mount["Type"] = value
            elif key in ("source", "src"):
                mount["Source"] = value
            elif key in ("target", "destination", "dst"):
                mount["Target"] = value
            elif key in ("readonly", "ro"):
                mount["ReadOnly"] = not eq or value.lower() in ("1", "true")
            elif key == "bind-propagation":
                mount.setdefault("BindOptions", {})["Propagation"] = value
            elif key == "tmpfs-size":
                mount.setdefault("TmpfsOptions", {})["SizeBytes"] = ram_in_bytes(value)
            elif key == "tmpfs-mode":
                mount.setdefault("TmpfsOptions", {})["Mode"] = int(value, 8)
            elif key == "volume-nocopy":
                mount.setdefault("VolumeOptions", {})["NoCopy"] = not eq or value.lower() in ("1", "true")
            else:
                raise CliError(f'invalid argument "{item}" for "--mount" flag: unexpected key \'{key}\' in '
                               f"'{field}'", 125)
        if "Target" not in mount:
            raise CliError(f'invalid argument "{item}" for "--mount" flag: target is required', 125)
        out.append(mount)
    return out


def _ports(publish: Sequence[str], expose: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``-p [ip:][hostPort:]containerPort[/proto]`` and ``--expose`` → (ExposedPorts, PortBindings)."""
    exposed: dict[str, Any] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for spec in expose:
        port, _, proto = spec.partition("/")
        exposed[f"{port}/{proto or 'tcp'}"] = {}
    for spec in publish:
        rest, _, proto = spec.partition("/")
        parts = rest.rsplit(":", 2)
        host_ip, host_port, container = "", "", parts[-1]
        if len(parts) == 2:
            host_port = parts[0]
        elif len(parts) == 3:
            host_ip, host_port = parts[0].strip("[]"), parts[1]
        if not container.isdigit():
            raise CliError(f'invalid argument "{spec}" for "-p, --publish" flag: invalid containerPort: {container}',
                           125)
        key = f"{container}/{proto or 'tcp'}"
        exposed[key] = {}
        bindings.setdefault(key, []).append({"HostIp": host_ip, "HostPort": host_port})
    return exposed, bindings


def create_body(ctx: Context, ns: argparse.Namespace, run: bool) -> dict[str, Any]:
    """The ``POST /containers/create`` body docker CLI 28 sends for these flags (engine-api.md §5)."""
    import os

    detach = run and ns.detach
    streams = {s.lower() for s in ns.attach}
    bad = streams - {"stdin", "stdout", "stderr"}
    if bad:
        raise CliError(f'invalid argument "{sorted(bad)[0]}" for "-a, --attach" flag: valid streams are STDIN, '
                       "STDOUT and STDERR", 125)
    attach_stdin = "stdin" in streams or ns.interactive
    attach_stdout = "stdout" in streams or not streams
    attach_stderr = "stderr" in streams or not streams
    if detach:
        if ns.attach:
            raise CliError("Conflicting options: -a and -d", 125)
        attach_stdin = attach_stdout = attach_stderr = False
    env = [item for path in ns.env_file for item in _env_file(path)] + _key_values(ns.env, from_env=True)
    binds, anonymous = _volumes(ns.volume)
    exposed, port_bindings = _ports(ns.publish, ns.expose)
    entrypoint: list[str] | None = None
    if ns.entrypoint is not None:
        entrypoint = [ns.entrypoint] if ns.entrypoint else [""]
    try:
        memory = ram_in_bytes(ns.memory) if ns.memory else 0
    except ValueError as err:
        raise _bad_flag(ctx, "-m, --memory", ns.memory, str(err)) from None
    try:
        swap = -1 if ns.memory_swap == "-1" else (ram_in_bytes(ns.memory_swap) if ns.memory_swap else 0)
        shm = ram_in_bytes(ns.shm_size) if ns.shm_size else 0
    except ValueError as err:
        raise _bad_flag(ctx, "--memory-swap", ns.memory_swap, str(err)) from None
    try:
        nano_cpus = round(float(ns.cpus) * 1e9) if ns.cpus else 0
    except ValueError:
        raise _bad_flag(ctx, "--cpus", ns.cpus, f'failed to parse {ns.cpus} as a rational number') from None
    try:
        cpu_shares = int(ns.cpu_shares)
        pids = int(ns.pids_limit) if ns.pids_limit is not None else None
        stop_timeout = int(ns.stop_timeout) if ns.stop_timeout is not None else None
    except ValueError as err:
        raise CliError(f"invalid argument: {err}", 125) from None
    if ns.tty and attach_stdin and not run:
        pass  # create does not check the local terminal
    network = ns.network or "default"
    tmpfs = {}
    for item in ns.tmpfs:
        target, _, options = item.partition(":")
        tmpfs[target] = options
    host_config: dict[str, Any] = {
        "Binds": binds,
        "ContainerIDFile": ns.cidfile,
        "LogConfig": {"Type": ns.log_driver, "Config": _labels(ns.log_opt)},
        "NetworkMode": network,
        "PortBindings": port_bindings,
        "RestartPolicy": _restart_policy(ns.restart),
        "AutoRemove": bool(ns.rm),
        "ConsoleSize": [0, 0],
        "CapAdd": _capabilities(ns.cap_add),
        "CapDrop": _capabilities(ns.cap_drop),
        "Dns": list(ns.dns),
        "DnsSearch": list(ns.dns_search),
        "DnsOptions": list(ns.dns_option),
        "VolumesFrom": list(ns.volumes_from) or None,
        "ExtraHosts": list(ns.add_host) or None,
        "GroupAdd": list(ns.group_add) or None,
        "Privileged": bool(ns.privileged),
        "PublishAllPorts": bool(ns.publish_all),
        "ReadonlyRootfs": bool(ns.read_only),
        "SecurityOpt": _security_opts(ns.security_opt),
        "ShmSize": shm,
        "CpuShares": cpu_shares,
        "Memory": memory,
        "MemorySwap": swap,
        "MemorySwappiness": -1,
        "NanoCpus": nano_cpus,
        "CpusetCpus": ns.cpuset_cpus,
        "Ulimits": parse_ulimits(ns.ulimit),
        "Sysctls": _labels(ns.sysctl) or None,
    }
    if tmpfs:
        host_config["Tmpfs"] = tmpfs
    if ns.mount:
        host_config["Mounts"] = _mounts(ns.mount)
    if pids is not None:
        host_config["PidsLimit"] = pids
    if ns.health_on_failure:
        host_config["HealthOnFailure"] = ns.health_on_failure
    if ns.init:
        host_config["Init"] = True
    if ns.tty and run and not detach:
        from berth.cli.tty import size

        dims = size(ctx.stdout)
        if dims is not None:
            host_config["ConsoleSize"] = list(dims)
    body: dict[str, Any] = {
        "Hostname": ns.hostname,
        "Domainname": ns.domainname,
        "User": ns.user,
        "AttachStdin": attach_stdin,
        "AttachStdout": attach_stdout,
        "AttachStderr": attach_stderr,
        "ExposedPorts": exposed or None,
        "Tty": bool(ns.tty),
        "OpenStdin": bool(ns.interactive),
        "StdinOnce": bool(attach_stdin and not detach),
        "Env": env or None,
        "Cmd": list(ns.args[1:]) or None,
        "Image": ns.args[0],
        "Volumes": anonymous,
        "WorkingDir": ns.workdir,
        "Entrypoint": entrypoint,
        "Labels": _labels(ns.label),
        "HostConfig": host_config,
        "NetworkingConfig": {"EndpointsConfig": {network: _endpoint_config(ns)}},
    }
    healthcheck = _healthcheck(ns)
    if healthcheck is not None:
        body["Healthcheck"] = healthcheck
    if ns.stop_signal:
        body["StopSignal"] = ns.stop_signal
    if stop_timeout is not None:
        body["StopTimeout"] = stop_timeout
    if ns.cidfile and os.path.exists(ns.cidfile):
        raise CliError(f"container ID file found, make sure the other container isn't running or delete "
                       f"{ns.cidfile}", 125)
    return body


def _endpoint_config(ns: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {"Aliases": list(ns.network_alias) or None}
    if ns.ip:
        config["IPAMConfig"] = {"IPv4Address": ns.ip}
    return config


def _healthcheck(ns: argparse.Namespace) -> dict[str, Any] | None:
    """docker's healthcheck flags: ``--no-healthcheck`` is ``["NONE"]``; otherwise only what was given."""
    durations: dict[str, int] = {}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod"),
                      ("start_interval", "StartInterval")):
        text = getattr(ns, f"health_{flag}")
        if not text:
            continue
        value = parse_go_duration(text)
        name = "--health-" + flag.replace("_", "-")
        if value is None:
            raise CliError(f'invalid argument "{text}" for "{name}" flag: time: invalid duration "{text}"', 125)
        if value < 0:
            raise CliError(f"{name} cannot be negative", 125)
        durations[key] = value
    try:
        retries = int(ns.health_retries)
    except ValueError:
        raise CliError(f'invalid argument "{ns.health_retries}" for "--health-retries" flag: strconv.ParseInt: '
                       f'parsing "{ns.health_retries}": invalid syntax', 125) from None
    if retries < 0:
        raise CliError("--health-retries cannot be negative", 125)
    given = bool(ns.health_cmd or durations or retries)
    if ns.no_healthcheck:
        if given:
            raise CliError("--no-healthcheck conflicts with --health-* options", 125)
        return {"Test": ["NONE"]}
    if not given:
        return None
    return {"Test": ["CMD-SHELL", ns.health_cmd] if ns.health_cmd else None, **durations, "Retries": retries}


def _pull(ctx: Context, image: str, quiet: bool) -> None:
    """``POST /images/create?fromImage=`` with its progress on stderr, like docker run's implicit pull."""
    from berth.cli.images import _parse_ref
    from berth.cli.progress import display

    ref = _parse_ref(image).with_default_tag()
    params: dict[str, Any] = {"fromImage": ref.name, "tag": ref.tag or (str(ref.digest) if ref.digest else None)}
    with ctx.client.post("/images/create", params, headers={"X-Registry-Auth": "e30="}, stream=True) as resp:
        if quiet:
            for message in resp.iter_json():
                if isinstance(message, dict) and message.get("error"):
                    raise CliError(str(message["error"]), 125)
        else:
            display(resp.iter_json(), ctx.stderr, False)


def _create(ctx: Context, body: dict[str, Any], ns: argparse.Namespace) -> str:
    """Create (pulling on a 404 unless ``--pull never``); prints warnings; returns the container ID."""
    from berth.errors import NotFound

    params: dict[str, Any] = {"name": ns.name or None, "platform": ns.platform or None}
    image = body["Image"]
    if ns.pull == "always":
        _pull(ctx, image, ns.quiet)
    try:
        created = ctx.client.post("/containers/create", params, json=body).json() or {}
    except NotFound:
        if ns.pull == "never":
            raise
        ref = _display_ref(image)
        ctx.err(f"Unable to find image '{ref}' locally\n")
        _pull(ctx, image, ns.quiet)
        created = ctx.client.post("/containers/create", params, json=body).json() or {}
    for warning in created.get("Warnings") or []:
        ctx.err(f"WARNING: {warning}\n")
    cid = str(created.get("Id", ""))
    if ns.cidfile:
        with open(ns.cidfile, "w", encoding="utf-8") as fh:
            fh.write(cid)
    return cid


def _display_ref(image: str) -> str:
    from berth.errors import BerthError
    from berth.oci.reference import parse

    try:
        ref = parse(image).with_default_tag()
    except BerthError:
        return image
    return f"{ref.familiar_name}:{ref.tag}" if ref.tag else image


def _daemon_error(command: str, err: Exception) -> CliError:
    """docker run/create's report: ``docker: Error response from daemon: ...`` and status 125."""
    from berth.client.http import DaemonUnreachable

    text = str(err) if isinstance(err, DaemonUnreachable) else f"Error response from daemon: {err}"
    return CliError(f"berth: {text}\n\nRun 'berth {command} --help' for more information", 125)


def _create_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.errors import BerthError

    body = create_body(ctx, ns, run=False)
    try:
        cid = _create(ctx, body, ns)
    except BerthError as err:
        raise _daemon_error("create", err) from None
    ctx.out(cid + "\n")
    return 0


def _start_error_status(message: str) -> int:
    """docker's runStartContainerErr: 127 for a missing executable, 126 when it cannot be executed."""
    if any(s in message for s in ("executable file not found", "no such file or directory",
                                  "system cannot find the file specified")):
        return 127
    if "permission denied" in message or "is a directory" in message:
        return 126
    return 125


def _run(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.errors import BerthError

    body = create_body(ctx, ns, run=True)
    if not ns.detach and body["AttachStdin"] and body["Tty"] and not ctx.stdin_is_tty():
        raise CliError("the input device is not a TTY")
    try:
        cid = _create(ctx, body, ns)
    except BerthError as err:
        raise _daemon_error("run", err) from None
    session = None
    try:
        if not ns.detach:
            session = _Session(ctx, cid, tty=body["Tty"], stdin=body["AttachStdin"],
                               stdout=body["AttachStdout"], stderr=body["AttachStderr"],
                               detach_keys=ns.detach_keys, proxy_signals=ns.sig_proxy and not body["Tty"])
            session.attach()
        condition = "removed" if ns.rm and not ns.detach else "next-exit"
        waiter = ctx.client.post(_path(cid, "/wait"), {"condition": condition}, stream=True)
    except BerthError as err:
        if session is not None:
            session.close()
        raise _daemon_error("run", err) from None
    try:
        ctx.client.post(_path(cid, "/start"))
    except BerthError as err:
        waiter.close()
        if session is not None:
            session.close()
        message = f"berth: Error response from daemon: {err}\n\nRun 'berth run --help' for more information"
        raise CliError(message, _start_error_status(str(err))) from None
    if session is None:
        waiter.close()
        ctx.out(cid + "\n")
        return 0
    with waiter:
        detached = session.stream()
        if detached:
            return 0
        return _wait_status(waiter)


def _wait_status(waiter: Response) -> int:
    result = waiter.json() or {}
    error = result.get("Error") or {}
    if isinstance(error, dict) and error.get("Message"):
        raise CliError(f"berth: Error response from daemon: {error['Message']}", 125)
    return int(result.get("StatusCode", 0))


class _Session:
    """One attached container: the hijacked stream, local terminal set-up, signal proxying, resize."""

    def __init__(self, ctx: Context, cid: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool,
                 detach_keys: str | None, proxy_signals: bool, resize_path: str | None = None) -> None:
        self.ctx = ctx
        self.cid = cid
        self.tty = tty
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.detach_keys = detach_keys
        self.proxy_signals = proxy_signals
        self.resize_path = resize_path or _path(cid, "/resize")
        self.conn: Hijacked | None = None

    def attach(self) -> None:
        params: dict[str, Any] = {"detachKeys": self.detach_keys or None, "stderr": self.stderr or None,
                                  "stdin": self.stdin or None, "stdout": self.stdout or None, "stream": True}
        self.conn = self.ctx.client.hijack(_path(self.cid, "/attach"), params)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def resize(self) -> None:
        from berth.cli.tty import size

        dims = size(self.ctx.stdout)
        if dims is not None and dims != (0, 0):
            self.ctx.client.post(self.resize_path, {"h": dims[0], "w": dims[1]})

    def _resize_with_retries(self) -> None:
        import threading
        import time

        def attempt() -> None:
            # docker retries: the process may not be ready for a resize yet
            for n in range(10):
                try:
                    self.resize()
                    return
                except Exception:
                    time.sleep(0.01 * (n + 1))

        threading.Thread(target=attempt, daemon=True).start()

    def stream(self) -> bool:
        """Pump until the daemon closes the output (or the user detaches); True when detached."""
        import contextlib

        from berth.cli import tty as term
        from berth.cli.streams import DEFAULT_DETACH_KEYS, StdinPump, copy_output, parse_detach_keys

        conn = self.conn
        assert conn is not None
        ctx = self.ctx
        local_tty = self.tty and term.is_terminal(ctx.stdin)
        out = ctx.binary_stdout()
        err_stream = ctx.stderr
        err_stream.flush()
        err = getattr(err_stream, "buffer", out)
        pump = None
        with contextlib.ExitStack() as stack:
            if self.tty and term.is_terminal(ctx.stdout):
                self._resize_with_retries()
                stack.enter_context(term.on_resize(self._quiet_resize))
            if local_tty and self.stdin:
                stack.enter_context(term.raw_mode(ctx.stdin))
            if self.proxy_signals:
                stack.enter_context(self._signal_proxy())
            if self.stdin:
                keys = parse_detach_keys(self.detach_keys or DEFAULT_DETACH_KEYS) if self.tty else None
                pump = StdinPump(ctx.binary_stdin(), conn.send, conn.close_write, keys, on_detach=conn.abort)
                pump.start()
            else:
                conn.close_write()
            try:
                copy_output(conn.read, out, err, self.tty)
            finally:
                conn.close()
        return pump is not None and pump.detached.is_set()

    def _quiet_resize(self) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            self.resize()

    def _signal_proxy(self) -> Any:
        import contextlib
        import signal
        import threading

        @contextlib.contextmanager
        def proxy() -> Any:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                         signal.SIGUSR2)

            def handler(signum: int, frame: Any) -> None:
                name = signal.Signals(signum).name.removeprefix("SIG")
                threading.Thread(target=self._kill_quietly, args=(name,), daemon=True).start()

            previous = {sig: signal.signal(sig, handler) for sig in forwarded}
            try:
                yield
            finally:
                for sig, old in previous.items():
                    signal.signal(sig, old)

        return proxy()

    def _kill_quietly(self, name: str) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            self.ctx.client.post(_path(self.cid, "/kill"), {"signal": name})


# ---- start / attach / exec ----------------------------------------------------------------------------

def _configure_start(p: CommandParser) -> None:
    p.add_bool("-a", "--attach", help="Attach STDOUT/STDERR and forward signals")
    p.add_bool("-i", "--interactive", help="Attach container's STDIN")
    p.add_argument("--detach-keys", default=None, metavar="string",
                   help="Override the key sequence for detaching a container")


def _start(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.errors import BerthError

    if ns.attach or ns.interactive:
        if len(ns.args) > 1:
            raise CliError("you cannot start and attach multiple containers at once")
        doc = _inspect_container(ctx, ns.args[0])
        cid = str(doc.get("Id", ns.args[0]))
        config = doc.get("Config") or {}
        tty = bool(config.get("Tty"))
        stdin = bool(ns.interactive and config.get("OpenStdin"))
        if stdin and tty and not ctx.stdin_is_tty():
            raise CliError("the input device is not a TTY")
        session = _Session(ctx, cid, tty=tty, stdin=stdin, stdout=True, stderr=True,
                           detach_keys=ns.detach_keys, proxy_signals=not tty)
        session.attach()
        try:
            waiter = ctx.client.post(_path(cid, "/wait"), {"condition": "next-exit"}, stream=True)
            ctx.client.post(_path(cid, "/start"))
        except BerthError:
            session.close()
            raise
        with waiter:
            if session.stream():
                return 0
            return _wait_status(waiter)

    def act(name: str) -> str:
        ctx.client.post(_path(name, "/start"))
        return name

    return _each(ctx, ns.args, act, f"Error: failed to start containers: {', '.join(ns.args)}")


def _configure_attach(p: CommandParser) -> None:
    p.add_argument("--detach-keys", default=None, metavar="string",
                   help="Override the key sequence for detaching a container")
    p.add_bool("--no-stdin", help="Do not attach STDIN")
    p.add_bool("--sig-proxy", default=True, help="Proxy all received signals to the process")


def _attach(ctx: Context, ns: argparse.Namespace) -> int:
    name = ns.args[0]
    waiter = ctx.client.post(_path(name, "/wait"), stream=True)
    with waiter:
        doc = _inspect_container(ctx, name)
        state = doc.get("State") or {}
        if not state.get("Running"):
            raise CliError("You cannot attach to a stopped container, start it first")
        if state.get("Paused"):
            raise CliError("You cannot attach to a paused container, unpause it first")
        if state.get("Restarting"):
            raise CliError("You cannot attach to a restarting container, wait until it is running")
        config = doc.get("Config") or {}
        tty = bool(config.get("Tty"))
        stdin = bool(not ns.no_stdin and config.get("OpenStdin"))
        if stdin and tty and not ctx.stdin_is_tty():
            raise CliError("the input device is not a TTY")
        session = _Session(ctx, str(doc.get("Id", name)), tty=tty, stdin=stdin, stdout=True, stderr=True,
                           detach_keys=ns.detach_keys, proxy_signals=ns.sig_proxy and not tty)
        session.attach()
        if session.stream():
            return 0
        return _wait_status(waiter)


def _configure_exec(p: CommandParser) -> None:
    p.add_bool("-d", "--detach", help="Detached mode: run command in the background")
    p.add_argument("--detach-keys", default=None, metavar="string",
                   help="Override the key sequence for detaching a container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="list", help="Set environment variables")
    p.add_argument("--env-file", action="append", default=[], metavar="list",
                   help="Read in a file of environment variables")
    p.add_bool("-i", "--interactive", help="Keep STDIN open even if not attached")
    p.add_bool("--privileged", help="Give extended privileges to the command")
    p.add_bool("-t", "--tty", help="Allocate a pseudo-TTY")
    p.add_argument("-u", "--user", default="", metavar="string",
                   help="Username or UID (format: \"<name|uid>[:<group|gid>]\")")
    p.add_argument("-w", "--workdir", default="", metavar="string", help="Working directory inside the container")
    _stop_at_first_arg(p)


def _exec(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.tty import size

    name, cmd = ns.args[0], ns.args[1:]
    if ns.tty and ns.interactive and not ns.detach and not ctx.stdin_is_tty():
        raise CliError("the input device is not a TTY")
    _inspect_container(ctx, name)
    env = [item for path in ns.env_file for item in _env_file(path)] + _key_values(ns.env, from_env=True)
    console = size(ctx.stdout) if ns.tty else None
    body: dict[str, Any] = {
        "User": ns.user, "Privileged": bool(ns.privileged), "Tty": bool(ns.tty),
        "AttachStdin": bool(ns.interactive and not ns.detach), "AttachStderr": not ns.detach,
        "AttachStdout": not ns.detach, "Detach": bool(ns.detach), "DetachKeys": ns.detach_keys or "",
        "Env": env or None, "WorkingDir": ns.workdir, "Cmd": cmd,
    }
    if console is not None:
        body["ConsoleSize"] = list(console)
    created = ctx.client.post(_path(name, "/exec"), json=body).json() or {}
    eid = str(created.get("Id", ""))
    start: dict[str, Any] = {"Detach": bool(ns.detach), "Tty": bool(ns.tty)}
    if console is not None:
        start["ConsoleSize"] = list(console)
    if ns.detach:
        ctx.client.post(f"/exec/{eid}/start", json=start)
        return 0
    conn = ctx.client.hijack(f"/exec/{eid}/start", json=start)
    session = _Session(ctx, name, tty=bool(ns.tty), stdin=bool(ns.interactive), stdout=True, stderr=True,
                       detach_keys=ns.detach_keys, proxy_signals=False, resize_path=f"/exec/{eid}/resize")
    session.conn = conn
    if session.stream():
        return 0
    result = ctx.client.get(f"/exec/{eid}/json").json() or {}
    return int(result.get("ExitCode") or 0)


# ---- stop / kill / restart / pause / unpause / rm / wait / rename -------------------------------------

def _configure_stop(p: CommandParser) -> None:
    p.add_argument("-s", "--signal", default="", metavar="string", help="Signal to send to the container")
    p.add_argument("-t", "--time", default=None, metavar="int", help="Seconds to wait before killing the container")


def _timeout_params(ns: argparse.Namespace) -> dict[str, Any]:
    if ns.time is not None:
        try:
            int(ns.time)
        except ValueError:
            raise CliError(f'invalid argument "{ns.time}" for "-t, --time" flag: strconv.ParseInt: parsing '
                           f'"{ns.time}": invalid syntax', 125) from None
    return {"signal": ns.signal or None, "t": ns.time}


def _stop(ctx: Context, ns: argparse.Namespace) -> int:
    params = _timeout_params(ns)
    return _each(ctx, ns.args, lambda name: (ctx.client.post(_path(name, "/stop"), params), name)[1])


def _restart(ctx: Context, ns: argparse.Namespace) -> int:
    params = _timeout_params(ns)
    return _each(ctx, ns.args, lambda name: (ctx.client.post(_path(name, "/restart"), params), name)[1])


def _configure_kill(p: CommandParser) -> None:
    p.add_argument("-s", "--signal", default="", metavar="string", help="Signal to send to the container")


def _kill(ctx: Context, ns: argparse.Namespace) -> int:
    params = {"signal": ns.signal or None}
    return _each(ctx, ns.args, lambda name: (ctx.client.post(_path(name, "/kill"), params), name)[1])


def _pause(ctx: Context, ns: argparse.Namespace) -> int:
    return _each(ctx, ns.args, lambda name: (ctx.client.post(_path(name, "/pause")), name)[1])


def _unpause(ctx: Context, ns: argparse.Namespace) -> int:
    return _each(ctx, ns.args, lambda name: (ctx.client.post(_path(name, "/unpause")), name)[1])


def _configure_rm(p: CommandParser) -> None:
    p.add_bool("-f", "--force", help="Force the removal of a running container (uses SIGKILL)")
    p.add_bool("-l", "--link", help="Remove the specified link")
    p.add_bool("-v", "--volumes", help="Remove anonymous volumes associated with the container")


def _rm(ctx: Context, ns: argparse.Namespace) -> int:
    params = {"force": ns.force or None, "link": ns.link or None, "v": ns.volumes or None}

    from berth.errors import NotFound

    def act(name: str) -> str | None:
        try:
            ctx.client.delete(_path(name.strip("/")), params)
        except NotFound as err:
            if not ns.force:
                raise
            ctx.err(f"Error response from daemon: {err}\n")  # docker rm -f reports a missing one but succeeds
            return None
        return name

    return _each(ctx, ns.args, act)


def _wait(ctx: Context, ns: argparse.Namespace) -> int:
    def act(name: str) -> str:
        result = ctx.client.post(_path(name, "/wait")).json() or {}
        return str(result.get("StatusCode", 0))

    return _each(ctx, ns.args, act)


def _rename(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.errors import BerthError

    old, new = (a.strip() for a in ns.args)
    if not old or not new:
        raise CliError("Error: Neither old nor new names may be empty")
    try:
        ctx.client.post(_path(old, "/rename"), {"name": new})
    except BerthError as err:
        raise CliError(f"Error response from daemon: {err}\nError: failed to rename container named {old}") from None
    return 0


# ---- ps -----------------------------------------------------------------------------------------------

def _display_image(image: str, image_id: str, trunc: bool) -> str:
    from berth.cli.render import short_id
    from berth.errors import BerthError
    from berth.oci.reference import parse

    if not image:
        return "<no image>"
    if not trunc:
        return image
    if short_id(image_id) == short_id(image):
        return short_id(image)
    try:
        ref = parse(image)
    except BerthError:
        return image
    return f"{ref.familiar_name}:{ref.tag}" if ref.tag else ref.familiar_name


def display_ports(ports: Sequence[Mapping[str, Any]]) -> str:
    """docker's DisplayablePorts: ranges folded, host mappings last."""
    def order(p: Mapping[str, Any]) -> tuple[int, str, int, str]:
        return (int(p.get("PrivatePort") or 0), str(p.get("IP") or ""), int(p.get("PublicPort") or 0),
                str(p.get("Type") or ""))

    groups: dict[str, list[int]] = {}
    result: list[str] = []
    mappings: list[str] = []

    def host_port(ip: str, port: str) -> str:
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

    def form(key: str, first: int, last: int) -> str:
        ip, _, kind = key.rpartition("/")
        group = str(first) if first == last else f"{first}-{last}"
        if ip:
            group = f"{host_port(ip, group)}->{group}"
        return f"{group}/{kind}"

    for port in sorted(ports, key=order):
        private, public = int(port.get("PrivatePort") or 0), int(port.get("PublicPort") or 0)
        kind, ip = str(port.get("Type") or ""), str(port.get("IP") or "")
        key = kind
        if ip:
            if public != private:
                mappings.append(f"{host_port(ip, str(public))}->{private}/{kind}")
                continue
            key = f"{ip}/{kind}"
        group = groups.get(key)
        if group is None:
            groups[key] = [private, private]
            continue
        if private == group[1] + 1:
            group[1] = private
            continue
        result.append(form(key, group[0], group[1]))
        groups[key] = [private, private]
    result.extend(form(key, g[0], g[1]) for key, g in groups.items())
    return ", ".join(result + mappings)


def container_rows(items: Sequence[Mapping[str, Any]], trunc: bool, now: float) -> list[dict[str, Any]]:
    """docker's ContainerContext fields for each ``GET /containers/json`` item."""
    from berth.cli.render import ellipsis, go_time_string, human_size, short_id, since

    rows = []
    for item in items:
        names = [n[1:] if n.startswith("/") else n for n in item.get("Names") or []]
        if trunc:
            names = next(([n] for n in names if "/" not in n), names)
        command = str(item.get("Command") or "")
        labels = item.get("Labels") or {}
        mounts = []
        for m in item.get("Mounts") or []:
            label = str(m.get("Name") or m.get("Source") or "")
            mounts.append(ellipsis(label, 15) if trunc else label)
        size_rw, size_root = int(item.get("SizeRw") or 0), int(item.get("SizeRootFs") or 0)
        size = human_size(size_rw, 3)
        if size_root > 0:
            size = f"{size} (virtual {human_size(size_root, 3)})"
        networks = sorted(((item.get("NetworkSettings") or {}).get("Networks") or {}).keys())
        created = int(item.get("Created") or 0)
        ident = str(item.get("Id", ""))
        rows.append({
            "ID": short_id(ident) if trunc else ident,
            "Image": _display_image(str(item.get("Image") or ""), str(item.get("ImageID") or ""), trunc),
            "Command": _go_quote(ellipsis(command, 20) if trunc else command),
            "CreatedAt": go_time_string(created),
            "RunningFor": since(created, now),
            "Ports": display_ports(item.get("Ports") or []),
            "State": str(item.get("State") or ""),
            "Status": str(item.get("Status") or ""),
            "Size": size,
            "Names": ",".join(names),
            "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            "Mounts": ",".join(mounts),
            "LocalVolumes": str(sum(1 for m in item.get("Mounts") or [] if m.get("Driver") == "local")),
            "Networks": ",".join(networks),
            "Platform": None,
        })
    return rows


def _configure_ps(p: CommandParser) -> None:
    p.add_bool("-a", "--all", help="Show all containers (default shows just running)")
    add_filter(p)
    add_format(p)
    p.add_argument("-n", "--last", default="-1", metavar="int", help="Show n last created containers (includes all "
                   "states)")
    p.add_bool("-l", "--latest", help="Show the latest created container (includes all states)")
    p.add_bool("--no-trunc", help="Don't truncate output")
    p.add_bool("-q", "--quiet", help="Only display container IDs")
    p.add_bool("-s", "--size", help="Display total file sizes")


def _ps(ctx: Context, ns: argparse.Namespace) -> int:
    import time

    from berth.cli.command import filters_from
    from berth.cli.objects import render
    from berth.client.http import encode_filters

    try:
        last = int(ns.last)
    except ValueError:
        raise CliError(f'invalid argument "{ns.last}" for "-n, --last" flag: strconv.ParseInt: parsing '
                       f'"{ns.last}": invalid syntax', 125) from None
    if ns.latest and last == -1:
        last = 1
    source = ns.format
    size = ns.size or (not ns.quiet and ".Size" in source)
    filters = filters_from(ns.filter)
    params: dict[str, Any] = {"all": ns.all or None, "limit": last if last > 0 else None, "size": size or None,
                              "filters": encode_filters(filters) if filters else None}
    items = ctx.client.get("/containers/json", params).json() or []
    if ns.quiet and source in ("", "table"):
        source = "{{.ID}}"
    elif source in ("", "table"):
        source = PS_TABLE + ("\t{{.Size}}" if ns.size else "")
    render(ctx, source, container_rows(items, not ns.no_trunc, time.time()), PS_HEADERS)
    return 0


# ---- logs ---------------------------------------------------------------------------------------------

def timestamp_param(value: str, now: float) -> str:
    """docker's GetTimestamp: a duration ago, an RFC 3339 time or date, or unix seconds as given."""
    import re
    from datetime import datetime

    duration = parse_go_duration(value) if value != "0" else None
    if duration is not None:
        return str(int(now - duration / SECOND_NS))
    if re.fullmatch(r"\d+(\.\d{1,9})?", value):
        return value
    text = value.replace("z", "Z").replace("Z", "+00:00")
    text = re.sub(r"\.(\d{6})\d+", r".\1", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f'failed to parse value as time or duration: "{value}"') from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    stamp = moment.timestamp()
    seconds = int(stamp // 1)
    return f"{seconds}.{round((stamp - seconds) * 1e9):09d}"


def _configure_logs(p: CommandParser) -> None:
    p.add_bool("--details", help="Show extra details provided to logs")
    p.add_bool("-f", "--follow", help="Follow log output")
    p.add_argument("--since", default="", metavar="string",
                   help='Show logs since timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m" for 42 '
                        "minutes)")
    p.add_argument("-n", "--tail", default="all", metavar="string",
                   help='Number of lines to show from the end of the logs (default "all")')
    p.add_bool("-t", "--timestamps", help="Show timestamps")
    p.add_argument("--until", default="", metavar="string",
                   help='Show logs before a timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m" for 42 '
                        "minutes)")


def _logs(ctx: Context, ns: argparse.Namespace) -> int:
    import time

    from berth.cli.streams import copy_output

    doc = _inspect_container(ctx, ns.args[0])
    tty = bool((doc.get("Config") or {}).get("Tty"))
    now = time.time()
    params: dict[str, Any] = {
        "details": ns.details or None, "follow": ns.follow or None,
        "since": timestamp_param(ns.since, now) if ns.since else None, "stderr": True, "stdout": True,
        "tail": ns.tail, "timestamps": ns.timestamps or None,
        "until": timestamp_param(ns.until, now) if ns.until else None,
    }
    with ctx.client.get(_path(str(doc.get("Id", ns.args[0])), "/logs"), params, stream=True) as resp:
        out = ctx.binary_stdout()
        ctx.stderr.flush()
        chunks = resp.iter_chunks()
        copy_output(lambda: next(chunks, b""), out, getattr(ctx.stderr, "buffer", out), tty)
    return 0


# ---- inspect / prune ----------------------------------------------------------------------------------

def _configure_inspect(p: CommandParser, typed: bool = True) -> None:
    p.add_argument("-f", "--format", default="", metavar="string",
                   help="Format output using a custom template: 'json' or a Go template")
    p.add_bool("-s", "--size", help="Display total file sizes if the type is container")
    if typed:
        p.add_argument("--type", default="", metavar="string", help="Only inspect objects of the given type")


def _configure_container_inspect(p: CommandParser) -> None:
    _configure_inspect(p, typed=False)


_KINDS: dict[str, Callable[[str], str]] = {
    "container": lambda name: _path(name, "/json"),
    "image": lambda name: f"/images/{_quoted(name)}/json",
    "network": lambda name: f"/networks/{_quoted(name)}",
    "volume": lambda name: f"/volumes/{_quoted(name)}",
}


def _quoted(name: str) -> str:
    from berth.client.http import quote_name

    return quote_name(name)


def _lookup(client: Client, kinds: Sequence[str], name: str, size: bool) -> Any:
    """The first object type that knows ``name`` (docker's type-agnostic inspect); None when none does."""
    from berth.errors import InvalidArgument, NotFound

    for kind in kinds:
        params = {"size": True} if size and kind == "container" else None
        try:
            return client.get(_KINDS[kind](name), params).json()
        except (NotFound, InvalidArgument):
            continue
    return None


def _inspect(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.errors import NotFound

    if ns.type and ns.type not in _KINDS:
        known = ", ".join(f'"{k}"' for k in ("config", "container", "image", "network", "node", "plugin", "secret",
                                              "service", "task", "volume"))
        raise CliError(f'unknown type: "{ns.type}": must be one of {known}')
    found: list[Any] = []
    errors: list[str] = []
    for name in ns.args:
        if ns.type:
            # one type: the daemon's own answer is the error, like docker's typed inspect
            params = {"size": True} if ns.size and ns.type == "container" else None
            try:
                found.append(ctx.client.get(_KINDS[ns.type](name), params).json())
            except NotFound as err:
                errors.append(f"Error response from daemon: {err}")
            continue
        item = _lookup(ctx.client, list(_KINDS), name, ns.size)
        if item is None:
            errors.append(f"Error: No such object: {name}")
        else:
            found.append(item)
    from berth.cli.objects import show_inspected

    if not found and ns.format not in ("", "json"):
        ctx.out("\n")  # docker's template writer still ends its (empty) output with a newline
    else:
        show_inspected(ctx, found, ns.format)
    if errors:
        raise CliError("\n".join(errors))
    return 0


def _container_inspect(ctx: Context, ns: argparse.Namespace) -> int:
    ns.type = "container"
    return _inspect(ctx, ns)


def _configure_prune(p: CommandParser) -> None:
    from berth.cli.objects import add_prune_flags

    add_prune_flags(p)


def _prune(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.command import filters_from
    from berth.cli.objects import prune, show_deleted, show_reclaimed

    report = prune(ctx, "containers", filters_from(ns.filter), PRUNE_WARNING, ns.force)
    if report is not None:
        show_deleted(ctx, "Deleted Containers:", report.get("ContainersDeleted") or [])
        show_reclaimed(ctx, report)
    return 0


# ---- registration -------------------------------------------------------------------------------------

def _cmd(name: str, summary: str, usage: str, run: Callable[[Context, argparse.Namespace], int],
         configure: Callable[[CommandParser], None] | None, arity: Arity, metavar: str = "CONTAINER",
         aliases: tuple[str, ...] = ()) -> Command:
    return Command(name, summary, usage, run, configure, arity, aliases=aliases, metavar=metavar)


MANY = Arity(1, None)
RUN = _cmd("run", "Create and run a new container from an image", "[OPTIONS] IMAGE [COMMAND] [ARG...]", _run,
           _configure_run, MANY, "IMAGE")
CREATE = _cmd("create", "Create a new container", "[OPTIONS] IMAGE [COMMAND] [ARG...]", _create_cmd,
              _configure_create, MANY, "IMAGE")
START = _cmd("start", "Start one or more stopped containers", "[OPTIONS] CONTAINER [CONTAINER...]", _start,
             _configure_start, MANY)
STOP = _cmd("stop", "Stop one or more running containers", "[OPTIONS] CONTAINER [CONTAINER...]", _stop,
            _configure_stop, MANY)
RESTART = _cmd("restart", "Restart one or more containers", "[OPTIONS] CONTAINER [CONTAINER...]", _restart,
               _configure_stop, MANY)
KILL = _cmd("kill", "Kill one or more running containers", "[OPTIONS] CONTAINER [CONTAINER...]", _kill,
            _configure_kill, MANY)
PAUSE = _cmd("pause", "Pause all processes within one or more containers", "CONTAINER [CONTAINER...]", _pause,
             None, MANY)
UNPAUSE = _cmd("unpause", "Unpause all processes within one or more containers", "CONTAINER [CONTAINER...]",
               _unpause, None, MANY)
RM = _cmd("rm", "Remove one or more containers", "[OPTIONS] CONTAINER [CONTAINER...]", _rm, _configure_rm, MANY,
          aliases=("remove",))
WAIT = _cmd("wait", "Block until one or more containers stop, then print their exit codes",
            "CONTAINER [CONTAINER...]", _wait, None, MANY)
RENAME = _cmd("rename", "Rename a container", "CONTAINER NEW_NAME", _rename, None, Arity(2, 2))
PS = _cmd("ls", "List containers", "[OPTIONS]", _ps, _configure_ps, Arity(0, 0), aliases=("ps", "list"))
LOGS = _cmd("logs", "Fetch the logs of a container", "[OPTIONS] CONTAINER", _logs, _configure_logs, Arity(1, 1))
ATTACH = _cmd("attach", "Attach local standard input, output, and error streams to a running container",
              "[OPTIONS] CONTAINER", _attach, _configure_attach, Arity(1, 1))
EXEC = _cmd("exec", "Execute a command in a running container", "[OPTIONS] CONTAINER COMMAND [ARG...]", _exec,
            _configure_exec, Arity(2, None))
INSPECT = _cmd("inspect", "Return low-level information on Docker objects", "[OPTIONS] NAME|ID [NAME|ID...]",
               _inspect, _configure_inspect, MANY, "NAME|ID")
CONTAINER_INSPECT = _cmd("inspect", "Display detailed information on one or more containers",
                         "[OPTIONS] CONTAINER [CONTAINER...]", _container_inspect, _configure_container_inspect, MANY)
PRUNE = _cmd("prune", "Remove all stopped containers", "[OPTIONS]", _prune, _configure_prune, Arity(0, 0))

COMMANDS = (RUN, CREATE, START, STOP, RESTART, KILL, PAUSE, UNPAUSE, RM, WAIT, RENAME, PS.renamed("ps"), LOGS,
            ATTACH, EXEC, INSPECT, *MORE_COMMANDS)
GROUPS = (
    Group("container", "Manage containers", tuple(sorted(
        (ATTACH, CREATE, EXEC, CONTAINER_INSPECT, KILL, LOGS, PS, PAUSE, PRUNE, RENAME, RESTART, RM, RUN, START, STOP,
         UNPAUSE, WAIT, *MORE_COMMANDS), key=lambda c: c.name))),
)
