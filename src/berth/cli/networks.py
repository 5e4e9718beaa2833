"""Network commands: ``berth network create|ls|inspect|rm|prune|connect|disconnect`` (docker CLI 28's wire calls
and output)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berth.cli.command import Arity, CliError, Command, CommandParser, Context, Group, add_filter, add_format

if TYPE_CHECKING:
    import argparse

LS_TABLE = "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"
HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE", "IPv6": "IPV6",
           "Internal": "INTERNAL", "Labels": "LABELS", "CreatedAt": "CREATED AT"}
PRUNE_WARNING = "WARNING! This will remove all custom networks not used by at least one container."


def _path(name: str) -> str:
    from berth.client.http import quote_name

    return "/networks/" + quote_name(name)


def _configure_create(p: CommandParser) -> None:
    p.add_argument("-d", "--driver", default="bridge", metavar="string", help="Driver to manage the Network")
    p.add_argument("--subnet", action="append", default=[], metavar="strings",
                   help="Subnet in CIDR format that represents a network segment")
    p.add_argument("--gateway", action="append", default=[], metavar="strings",
                   help="IPv4 or IPv6 Gateway for the master subnet")
    p.add_argument("--ip-range", action="append", default=[], metavar="strings",
                   help="Allocate container ip from a sub-range")
    p.add_bool("--internal", help="Restrict external access to the network")
    p.add_bool("--attachable", help="Enable manual container attachment")
    p.add_argument("--label", action="append", default=[], metavar="list", help="Set metadata on a network")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="map", help="Set driver specific options")


def _create(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.command import key_values

    if len(ns.gateway) > len(ns.subnet) or len(ns.ip_range) > len(ns.subnet):
        raise CliError("every ip-range or gateway must have a corresponding subnet")
    config = []
    for i, subnet in enumerate(ns.subnet):
        entry = {"Subnet": subnet}
        if i < len(ns.gateway):
            entry["Gateway"] = ns.gateway[i]
        if i < len(ns.ip_range):
            entry["IPRange"] = ns.ip_range[i]
        config.append(entry)
    body = {"Name": ns.args[0], "Driver": ns.driver, "Internal": ns.internal, "Attachable": ns.attachable,
            "IPAM": {"Driver": "default", "Options": {}, "Config": config},
            "Options": key_values(ns.opt, "--opt"), "Labels": key_values(ns.label, "--label", bare_keys=True)}
    net = ctx.client.post("/networks/create", json=body).json() or {}
    ctx.out(f"{net.get('Id', '')}\n")
    return 0


def network_rows(networks: list[dict[str, Any]], no_trunc: bool = False) -> list[dict[str, str]]:
    """docker's networkContext fields."""
    return [{
        "ID": str(n.get("Id", "")) if no_trunc else str(n.get("Id", ""))[:12], "Name": str(n.get("Name", "")),
        "Driver": str(n.get("Driver", "")), "Scope": str(n.get("Scope", "")),
        "IPv6": str(bool(n.get("EnableIPv6"))).lower(), "Internal": str(bool(n.get("Internal"))).lower(),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted((n.get("Labels") or {}).items())),
        "CreatedAt": str(n.get("Created", "")),
    } for n in networks]


def _configure_ls(p: CommandParser) -> None:
    add_filter(p)
    add_format(p)
    p.add_bool("--no-trunc", help="Do not truncate the output")
    p.add_bool("-q", "--quiet", help="Only display network IDs")


def _ls(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.objects import list_named, ls_source, render

    networks = list_named(ctx, "/networks", ns.filter)
    render(ctx, ls_source(ns.format, ns.quiet, "{{.ID}}", LS_TABLE), network_rows(networks, ns.no_trunc), HEADERS)
    return 0


def _configure_inspect(p: CommandParser) -> None:
    from berth.cli.objects import add_inspect_format

    add_inspect_format(p)


def _inspect(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.objects import inspect_each

    return inspect_each(ctx, ns.args, lambda name: ctx.client.get(_path(name)).json(), ns.format)


def _configure_rm(p: CommandParser) -> None:
    p.add_bool("-f", "--force", help="Do not error if the network does not exist")


def _rm(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.objects import remove_each

    return remove_each(ctx, ns.args, lambda name: ctx.client.delete(_path(name)), ignore_missing=ns.force)


def _configure_prune(p: CommandParser) -> None:
    from berth.cli.objects import add_prune_flags

    add_prune_flags(p)


def _prune(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.command import filters_from
    from berth.cli.objects import prune, show_deleted

    report = prune(ctx, "networks", filters_from(ns.filter), PRUNE_WARNING, ns.force)
    if report is not None:
        show_deleted(ctx, "Deleted Networks:", report.get("NetworksDeleted") or [], blank_after=False)
    return 0


def _configure_connect(p: CommandParser) -> None:
    p.add_argument("--alias", action="append", default=[], metavar="strings",
                   help="Add network-scoped alias for the container")
    p.add_argument("--ip", default="", metavar="string", help="IPv4 address (e.g., \"172.30.100.104\")")


def _connect(ctx: Context, ns: argparse.Namespace) -> int:
    network, container = ns.args
    endpoint: dict[str, Any] = {"Aliases": ns.alias or None}
    if ns.ip:
        endpoint["IPAMConfig"] = {"IPv4Address": ns.ip}
    ctx.client.post(_path(network) + "/connect", json={"Container": container, "EndpointConfig": endpoint})
    return 0


def _configure_disconnect(p: CommandParser) -> None:
    p.add_bool("-f", "--force", help="Force the container to disconnect from a network")


def _disconnect(ctx: Context, ns: argparse.Namespace) -> int:
    network, container = ns.args
    ctx.client.post(_path(network) + "/disconnect", json={"Container": container, "Force": ns.force})
    return 0


CREATE = Command("create", "Create a network", "[OPTIONS] NETWORK", _create, _configure_create, Arity(1, 1),
                 metavar="NETWORK")
LS = Command("ls", "List networks", "[OPTIONS]", _ls, _configure_ls, aliases=("list",))
INSPECT = Command("inspect", "Display detailed information on one or more networks",
                  "[OPTIONS] NETWORK [NETWORK...]", _inspect, _configure_inspect, Arity(1, None), metavar="NETWORK")
RM = Command("rm", "Remove one or more networks", "NETWORK [NETWORK...]", _rm, _configure_rm, Arity(1, None),
             aliases=("remove",), metavar="NETWORK")
PRUNE = Command("prune", "Remove all unused networks", "[OPTIONS]", _prune, _configure_prune)
CONNECT = Command("connect", "Connect a container to a network", "[OPTIONS] NETWORK CONTAINER", _connect,
                  _configure_connect, Arity(2, 2), metavar="NETWORK CONTAINER")
DISCONNECT = Command("disconnect", "Disconnect a container from a network", "[OPTIONS] NETWORK CONTAINER",
                     _disconnect, _configure_disconnect, Arity(2, 2), metavar="NETWORK CONTAINER")

COMMANDS: tuple[Command, ...] = ()
GROUPS = (Group("network", "Manage networks", (CONNECT, CREATE, DISCONNECT, INSPECT, LS, PRUNE, RM)),)
