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


def _configure_create(p: CommandParser) -> None:
    p.add_argument("-d", "--driver", default="local", metavar="string", help="Specify volume driver name")
    p.add_argument("--label", action="append", default=[], metavar="list", help="Set metadata for a volume")
    p.add_argument("--name", default="", metavar="string", help="Specify volume name")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="map",
                   help="Set driver specific options (local: type, device, o; berth: uid, gid, mode)")


def _create(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.command import key_values

    if ns.name and ns.args:
        raise CliError(f"conflicting options: cannot specify a volume-name through both --name and as a positional "
                       f"arg ({ns.name} and {ns.args[0]})")
    body = {"Name": ns.name or (ns.args[0] if ns.args else ""), "Driver": ns.driver,
            "DriverOpts": key_values(ns.opt, "--opt"), "Labels": key_values(ns.label, "--label", bare_keys=True)}
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
    from berth.cli.objects import list_named, ls_source, render

    volumes = list_named(ctx, "/volumes", ns.filter, key="Volumes")
    render(ctx, ls_source(ns.format, ns.quiet, "{{.Name}}", LS_TABLE), volume_rows(volumes), HEADERS)
    return 0


def _configure_inspect(p: CommandParser) -> None:
    from berth.cli.objects import add_inspect_format

    add_inspect_format(p)


def _inspect(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.objects import inspect_each

    return inspect_each(ctx, ns.args, lambda name: ctx.client.get(_path(name)).json(), ns.format)


def _configure_rm(p: CommandParser) -> None:
    p.add_bool("-f", "--force", help="Force the removal of one or more volumes")


def _rm(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.objects import remove_each

    params = {"force": True if ns.force else None}
    return remove_each(ctx, ns.args, lambda name: ctx.client.delete(_path(name), params), ignore_missing=False)


def _configure_prune(p: CommandParser) -> None:
    from berth.cli.objects import add_prune_flags

    add_prune_flags(p, all_help="Remove all unused volumes, not just anonymous ones")


def _prune(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.command import filters_from
    from berth.cli.objects import prune, show_deleted, show_reclaimed

    filters = filters_from(ns.filter)
    if ns.all:
        filters.setdefault("all", []).append("true")
    report = prune(ctx, "volumes", filters, PRUNE_ALL_WARNING if ns.all else PRUNE_WARNING, ns.force)
    if report is not None:
        show_deleted(ctx, "Deleted Volumes:", report.get("VolumesDeleted") or [])
        show_reclaimed(ctx, report)
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
