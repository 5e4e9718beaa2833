"""System commands: ``berth version``, ``berth info`` (also ``system info``) and ``berth system df``,
printed with docker's layouts (cli/command/system/{version,info}.go, formatter/disk_usage.go)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berth.cli.command import CliError, Command, CommandParser, Context, Group, add_format

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence

DF_TABLE = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}"
DF_HEADERS = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE",
              "Reclaimable": "RECLAIMABLE"}



def _render(ctx: Context, source: str, rows: Sequence[Any], headers: Mapping[str, str] | None = None) -> None:
    from berth.cli.template import Format, TemplateError

    try:
        ctx.out(Format(source).render(rows, headers))
    except TemplateError as err:
        raise CliError(str(err)) from None


# ---- version ------------------------------------------------------------------------------------------

def client_version(context: str = "default") -> dict[str, Any]:
    """The Client half of ``berth version``."""
    import platform

    from berth import __version__
    from berth.client.http import API_VERSION
    from berth.units import go_arch

    return {
        "Platform": {"Name": ""},
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "DefaultAPIVersion": API_VERSION,
        "PythonVersion": platform.python_version(),
        "Os": "linux",
        "Arch": go_arch(),
        "Context": context,
    }


def engine_component(server: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The server's components; an old-style answer without them yields one "Engine" made of its fields."""
    components = server.get("Components")
    if components:
        return list(components)
    details = {key: str(server.get(key, "")) for key in
               ("ApiVersion", "MinAPIVersion", "GitCommit", "GoVersion", "Os", "Arch", "BuildTime", "KernelVersion")}
    details["Experimental"] = "true" if server.get("Experimental") else "false"
    return [{"Name": "Engine", "Version": server.get("Version", ""), "Details": details}]


def version_text(client: Mapping[str, Any], server: Mapping[str, Any] | None) -> str:
    """docker's defaultVersionTemplate, tab-aligned at column 20."""
    from berth.cli.render import go_print, reformat_date, tabwrite

    lines = [
        "Client:" + (f" {client['Platform']['Name']}" if client["Platform"]["Name"] else ""),
        f" Version:\t{client['Version']}",
        f" API version:\t{client['ApiVersion']}",
        f" Python version:\t{client['PythonVersion']}",
        f" OS/Arch:\t{client['Os']}/{client['Arch']}",
        f" Context:\t{client['Context']}",
    ]
    if server is not None:
        name = (server.get("Platform") or {}).get("Name") or ""
        lines += ["", "Server:" + (f" {name}" if name else "")]
        for comp in engine_component(server):
            details = comp.get("Details") or {}
            lines.append(f" {comp.get('Name', '')}:")
            if comp.get("Name") == "Engine":
                lines += [
                    f"  Version:\t{comp.get('Version', '')}",
                    f"  API version:\t{details.get('ApiVersion', '')} (minimum version "
                    f"{details.get('MinAPIVersion', '')})",
                    f"  Go version:\t{details.get('GoVersion', '')}",
                    f"  Git commit:\t{details.get('GitCommit', '')}",
                    f"  Built:\t{reformat_date(str(details.get('BuildTime', '')))}",
                    f"  OS/Arch:\t{details.get('Os', '')}/{details.get('Arch', '')}",
                    f"  Experimental:\t{go_print(details.get('Experimental', 'false'))}",
                ]
            else:
                lines.append(f"  Version:\t{comp.get('Version', '')}")
                lines += [f"  {key}:\t{go_print(value)}" for key, value in sorted(details.items())]
    return tabwrite("\n".join(lines) + "\n", minwidth=20, padding=1)


def _configure_version(p: CommandParser) -> None:
    p.add_argument("-f", "--format", default="", metavar="string", help="Format output using a custom template")


def _version(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.errors import BerthError

    client = client_version()
    server: Any = None
    failure: BerthError | None = None
    try:
        server = ctx.client.get("/version").json() or {}
    except BerthError as err:
        failure = err
    if ns.format:
        _render(ctx, ns.format, [{"Client": client, "Server": server}])
    else:
        ctx.out(version_text(client, server))
    if failure is not None:
        raise failure
    return 0


# ---- info ---------------------------------------------------------------------------------------------

def _println(*parts: Any) -> str:
    from berth.cli.render import go_print

    return " ".join(go_print(p) for p in parts) + "\n"


def server_info_text(info: Mapping[str, Any]) -> str:
    """prettyPrintServerInfo: the "Server:" body of ``docker info``."""
    from berth.cli.render import bytes_size

    out: list[str] = []

    def line(*parts: Any) -> None:
        out.append(_println(*parts))

    def nonempty(label: str, value: Any) -> None:
        if value not in (None, ""):
            line(label, value)

    line(" Containers:", info.get("Containers", 0))
    line("  Running:", info.get("ContainersRunning", 0))
    line("  Paused:", info.get("ContainersPaused", 0))
    line("  Stopped:", info.get("ContainersStopped", 0))
    line(" Images:", info.get("Images", 0))
    nonempty(" Server Version:", info.get("ServerVersion"))
    nonempty(" Storage Driver:", info.get("Driver"))
    for pair in info.get("DriverStatus") or []:
        if len(pair) == 2:
            out.append(f"  {pair[0]}: {pair[1]}\n")
    nonempty(" Logging Driver:", info.get("LoggingDriver"))
    nonempty(" Cgroup Driver:", info.get("CgroupDriver"))
    nonempty(" Cgroup Version:", info.get("CgroupVersion"))
    plugins = info.get("Plugins") or {}
    line(" Plugins:")
    line("  Volume:", " ".join(plugins.get("Volume") or []))
    line("  Network:", " ".join(plugins.get("Network") or []))
    if plugins.get("Authorization"):
        line("  Authorization:", " ".join(plugins["Authorization"]))
    line("  Log:", " ".join(plugins.get("Log") or []))
    line(" Swarm:", (info.get("Swarm") or {}).get("LocalNodeState", ""))
    runtimes = info.get("Runtimes") or {}
    if runtimes:
        line(" Runtimes:", " ".join(sorted(runtimes)))
        line(" Default Runtime:", info.get("DefaultRuntime", ""))
    if info.get("OSType") == "linux":
        line(" Init Binary:", info.get("InitBinary", ""))
        for name, key in (("containerd", "ContainerdCommit"), ("runc", "RuncCommit"), ("init", "InitCommit")):
            out.append(f" {name} version: {(info.get(key) or {}).get('ID', '')}\n")
        options = info.get("SecurityOptions") or []
        if options:
            line(" Security Options:")
            for option in options:
                fields = dict(part.split("=", 1) for part in option.split(",") if "=" in part)
                line("  " + fields.get("name", option))
                if "profile" in fields:
                    line("   Profile:", fields["profile"])
    nonempty(" Kernel Version:", info.get("KernelVersion"))
    nonempty(" Operating System:", info.get("OperatingSystem"))
    nonempty(" OSType:", info.get("OSType"))
    nonempty(" Architecture:", info.get("Architecture"))
    line(" CPUs:", info.get("NCPU", 0))
    line(" Total Memory:", bytes_size(int(info.get("MemTotal") or 0)))
    nonempty(" Name:", info.get("Name"))
    nonempty(" ID:", info.get("ID"))
    line(" Docker Root Dir:", info.get("DockerRootDir", ""))
    line(" Debug Mode:", bool(info.get("Debug")))
    nonempty(" HTTP Proxy:", info.get("HttpProxy"))
    nonempty(" HTTPS Proxy:", info.get("HttpsProxy"))
    nonempty(" No Proxy:", info.get("NoProxy"))
    labels = info.get("Labels") or []
    if labels:
        line(" Labels:")
        out.extend(f"  {label}\n" for label in labels)
    line(" Experimental:", bool(info.get("ExperimentalBuild")))
    registry = info.get("RegistryConfig") or {}
    index_configs = registry.get("IndexConfigs") or {}
    cidrs = registry.get("InsecureRegistryCIDRs") or []
    if index_configs or cidrs:
        line(" Insecure Registries:")
        out.extend(f"  {conf.get('Name', name)}\n" for name, conf in index_configs.items()
                   if not conf.get("Secure"))
        out.extend(f"  {cidr}\n" for cidr in cidrs)
    if registry.get("Mirrors"):
        line(" Registry Mirrors:")
        out.extend(f"  {mirror}\n" for mirror in registry["Mirrors"])
    line(" Live Restore Enabled:", bool(info.get("LiveRestoreEnabled")))
    out.append("\n")
    return "".join(out)


def _configure_info(p: CommandParser) -> None:
    add_format(p)


def _info(ctx: Context, ns: argparse.Namespace) -> int:
    from berth import __version__
    from berth.errors import BerthError

    if ns.format:
        info = ctx.client.get("/info").json() or {}
        info = {**info, "ClientInfo": {"Version": __version__, "Context": "default", "Debug": False}}
        _render(ctx, ns.format, [info])
        return 0
    ctx.out("Client:\n")
    ctx.out(f" Version:    {__version__}\n Context:    default\n Debug Mode: false\n\nServer:\n")
    try:
        info = ctx.client.get("/info").json() or {}
    except BerthError as err:
        from berth.client.http import DaemonUnreachable

        shown = str(err) if isinstance(err, DaemonUnreachable) else f"Error response from daemon: {err}"
        ctx.out(f"ERROR: {shown}\n")
        raise CliError("errors pretty printing info") from None
    ctx.out(server_info_text(info))
    warnings = info.get("Warnings") or []
    if warnings:
        ctx.err("\n".join(warnings) + "\n")
    return 0


# ---- system df ----------------------------------------------------------------------------------------

def _with_percent(reclaimable: int, total: int, percent: bool = True) -> str:
    from berth.cli.render import human_size

    if percent and total > 0:
        return f"{human_size(reclaimable)} ({reclaimable * 100 // total}%)"
    return human_size(reclaimable)


def df_rows(usage: Mapping[str, Any]) -> list[dict[str, str]]:
    """The four summary rows of ``docker system df`` (formatter/disk_usage.go)."""
    from berth.cli.render import human_size

    images = usage.get("Images") or []
    layers = int(usage.get("LayersSize") or 0)
    used = sum(int(i.get("Size", 0)) - int(i.get("SharedSize", 0)) for i in images
               if i.get("Containers") not in (0, None) and i.get("Size", -1) != -1 and i.get("SharedSize", -1) != -1)
    containers = usage.get("Containers") or []

    def active(c: Mapping[str, Any]) -> bool:
        state = str(c.get("State", ""))
        return any(word in state for word in ("running", "paused", "restarting"))

    c_size = sum(int(c.get("SizeRw") or 0) for c in containers)
    c_reclaim = sum(int(c.get("SizeRw") or 0) for c in containers if not active(c))
    volumes = usage.get("Volumes") or []

    def vol_usage(v: Mapping[str, Any]) -> Mapping[str, Any]:
        return v.get("UsageData") or {"Size": -1, "RefCount": -1}

    v_size = sum(int(vol_usage(v).get("Size", -1)) for v in volumes if vol_usage(v).get("Size", -1) != -1)
    v_reclaim = sum(int(vol_usage(v).get("Size", -1)) for v in volumes
                    if vol_usage(v).get("Size", -1) != -1 and vol_usage(v).get("RefCount", 0) < 1)
    cache = usage.get("BuildCache") or []
    b_size = sum(int(b.get("Size") or 0) for b in cache if not b.get("Shared"))
    b_reclaim = sum(int(b.get("Size") or 0) for b in cache if not b.get("Shared") and not b.get("InUse"))
    return [
        {"Type": "Images", "TotalCount": str(len(images)),
         "Active": str(sum(1 for i in images if (i.get("Containers") or 0) > 0)),
         "Size": human_size(layers), "Reclaimable": _with_percent(layers - used, layers)},
        {"Type": "Containers", "TotalCount": str(len(containers)),
         "Active": str(sum(1 for c in containers if active(c))),
         "Size": human_size(c_size), "Reclaimable": _with_percent(c_reclaim, c_size)},
        {"Type": "Local Volumes", "TotalCount": str(len(volumes)),
         "Active": str(sum(1 for v in volumes if vol_usage(v).get("RefCount", 0) > 0)),
         "Size": human_size(v_size), "Reclaimable": _with_percent(v_reclaim, v_size)},
        {"Type": "Build Cache", "TotalCount": str(len(cache)),
         "Active": str(sum(1 for b in cache if b.get("InUse"))),
         "Size": human_size(b_size), "Reclaimable": _with_percent(b_reclaim, b_size, percent=False)},
    ]


def _configure_df(p: CommandParser) -> None:
    add_format(p)
    p.add_bool("-v", "--verbose", help="Show detailed information on space usage")


def _df(ctx: Context, ns: argparse.Namespace) -> int:
    usage = ctx.client.get("/system/df").json() or {}
    if ns.verbose:
        raise CliError("berth: 'system df --verbose' is not implemented yet")
    _render(ctx, ns.format if ns.format not in ("", "table") else DF_TABLE, df_rows(usage), DF_HEADERS)
    return 0


VERSION = Command("version", "Show the berth version information", "[OPTIONS]", _version, _configure_version)
INFO = Command("info", "Display system-wide information", "[OPTIONS]", _info, _configure_info)
DF = Command("df", "Show berth disk usage", "[OPTIONS]", _df, _configure_df)

COMMANDS = (VERSION, INFO)
GROUPS = (Group("system", "Manage berth", (DF, INFO)),)
