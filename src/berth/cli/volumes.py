"""Volume commands: ``berth volume create|ls|inspect|rm|prune`` (docker CLI 28's wire calls and output)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berth.cli.command import Arity, CliError, Command, CommandParser, Context, Group, add_filter, add_format

if TYPE_CHECKING:
    import argparse

LS_TABLE = "table {{.Driver}}\t{{.Name}}"
HEADERS = {"Driver": "DRIVER", "Name": "VOLUME NAME", "Scope": "SCOPE", "Mountpoint": "MOUNTPOINT",
           "Labels": "LABELS", "CreatedAt": "CREATED AT", "Size": "SIZE", "Links": "LINKS"}
PRUNE_WARNING = "WARNING! This will remove anonymous local volumes not used by at least one container."
PRUNE_ALL_WARNING = "WARNING! This will remove all local volumes not used by at least one container."


def _path(name: str) -> str:
    from berth.client.http import quote_name

    return "/volumes/" + quote_name(name)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key or (flag == "--opt" and not eq):
            raise CliError(f'invalid argument "{item}" for "{flag}" flag: {item} is not a key=value pair', 125)
        out[key] = value
    return out


def _configure_create(p: CommandParser) -> None:
    p.add_argument("-d", "--driver", default="local", metavar="string", help="Specify volume driver name")
    p.add_argument("--label", action="append", default=[], metavar="list", help="Set metadata for a volume")
    p.add_argument("--name", default="", metavar="string", help="Specify volume name")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="map",
                   help="Set driver specific options (local: type, device, o; berth: uid, gid, mode)")


def _create(ctx: Context, ns: argparse.Namespace) -> int:
    if ns.name and ns.args:
        raise CliError(f"conflicting options: cannot specify a volume-name through both --name and as a positional "
                       f"arg ({ns.name} and {ns.args[0]})")
    body = {"Name": ns.name or (ns.args[0] if ns.args else ""), "Driver": ns.driver,
            "DriverOpts": _pairs(ns.opt, "--opt"), "Labels": _pairs(ns.label, "--label")}
    vol = ctx.client.post("/volumes/create", json=body).json() or {}
    ctx.out(f"{vol.get('Name', '')}\n")
    return 0


def volume_rows(volumes: list[dict[str, Any]]) -> list[dict[str, str]]:
    """docker's volumeContext fields."""
    from berth.cli.render import human_size

    rows = []
    for v in volumes:
        usage = v.get("UsageData") or {}
        size = int(usage.get("Size", -1)) if usage else -1
        rows.append({
            "Driver": str(v.get("Driver", "")), "Name": str(v.get("Name", "")), "Scope": str(v.get("Scope", "")),
            "Mountpoint": str(v.get("Mountpoint", "")), "CreatedAt": str(v.get("CreatedAt", "")),
            "Labels": ",".join(f"{k}={val}" for k, val in sorted((v.get("Labels") or {}).items())),
            "Size": human_size(size) if size >= 0 else "N/A",
            "Links": str(usage.get("RefCount", "N/A")) if usage else "N/A",
        })
    return rows


def _configure_ls(p: CommandParser) -> None:
    add_filter(p)
    add_format(p)
    p.add_bool("-q", "--quiet", help="Only display volume names")


def _ls(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.command import filters_from
    from berth.cli.images import render
    from berth.client.http import encode_filters

    filters = filters_from(ns.filter)
    params: dict[str, Any] = {"filters": encode_filters(filters) if filters else None}
    volumes = (ctx.client.get("/volumes", params).json() or {}).get("Volumes") or []
    volumes.sort(key=lambda v: str(v.get("Name", "")))
    source = ns.format
    if source in ("", "table"):
        source = "{{.Name}}" if ns.quiet else LS_TABLE
    render(ctx, source, volume_rows(volumes), HEADERS)
    return 0


def _configure_inspect(p: CommandParser) -> None:
    p.add_argument("-f", "--format", default="", metavar="string",
                   help="Format output using a custom template: 'json' or a Go template")


def _inspect(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.render import indent_json
    from berth.errors import NotFound

    found: list[Any] = []
    errors: list[str] = []
    for name in ns.args:
        try:
            found.append(ctx.client.get(_path(name)).json())
        except NotFound as err:
            errors.append(f"Error response from daemon: {err}")
    if ns.format in ("", "json"):
        ctx.out(indent_json(found) + "\n")
    else:
        from berth.cli.template import Template, TemplateError

        try:
            template = Template(ns.format.replace("\\t", "\t").replace("\\n", "\n"))
            for item in found:
                ctx.out(template.execute(item) + "\n")
        except TemplateError as err:
            raise CliError(str(err)) from None
    if errors:
        raise CliError("\n".join(errors))
    return 0


def _configure_rm(p: CommandParser) -> None:
    p.add_bool("-f", "--force", help="Force the removal of one or more volumes")


def _rm(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.client.http import DaemonUnreachable
    from berth.errors import BerthError

    errors: list[str] = []
    for name in ns.args:
        try:
            ctx.client.delete(_path(name), {"force": True if ns.force else None})
        except DaemonUnreachable:
            raise
        except BerthError as err:
            errors.append(f"Error response from daemon: {err}")
            continue
        ctx.out(f"{name}\n")
    if errors:
        raise CliError("\n".join(errors))
    return 0


def _configure_prune(p: CommandParser) -> None:
    p.add_bool("-a", "--all", help="Remove all unused volumes, not just anonymous ones")
    add_filter(p, short=False)
    p.add_bool("-f", "--force", help="Do not prompt for confirmation")


def _prune(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.command import filters_from
    from berth.cli.images import confirm
    from berth.cli.render import human_size
    from berth.client.http import encode_filters

    filters = filters_from(ns.filter)
    if ns.all:
        filters.setdefault("all", []).append("true")
    if not ns.force and not confirm(ctx, PRUNE_ALL_WARNING if ns.all else PRUNE_WARNING):
        return 0
    report = ctx.client.post("/volumes/prune", {"filters": encode_filters(filters) if filters else None}).json()
    report = report or {}
    deleted = report.get("VolumesDeleted") or []
    if deleted:
        ctx.out("Deleted Volumes:\n" + "".join(f"{name}\n" for name in deleted) + "\n")
    ctx.out(f"Total reclaimed space: {human_size(int(report.get('SpaceReclaimed') or 0))}\n")
    return 0


CREATE = Command("create", "Create a volume", "[OPTIONS] [VOLUME]", _create, _configure_create, Arity(0, 1),
                 metavar="VOLUME")
LS = Command("ls", "List volumes", "[OPTIONS]", _ls, _configure_ls, aliases=("list",))
INSPECT = Command("inspect", "Display detailed information on one or more volumes", "[OPTIONS] VOLUME [VOLUME...]",
                  _inspect, _configure_inspect, Arity(1, None), metavar="VOLUME")
RM = Command("rm", "Remove one or more volumes", "[OPTIONS] VOLUME [VOLUME...]", _rm, _configure_rm,
             Arity(1, None), aliases=("remove",), metavar="VOLUME")
PRUNE = Command("prune", "Remove unused local volumes", "[OPTIONS]", _prune, _configure_prune)

COMMANDS: tuple[Command, ...] = ()
GROUPS = (Group("volume", "Manage volumes", (CREATE, INSPECT, LS, PRUNE, RM)),)
