"""What the commands that list, inspect, remove and prune a named kind of object (images, containers, networks,
volumes) share: the ``--filter`` query, the table-or-quiet choice, docker's per-name error collection, the prune
prompt and its report. Cheap to import, like every command module: HTTP, JSON and templates load inside."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berth.cli.command import CliError, Context, add_filter

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from berth.cli.command import CommandParser


def render(ctx: Context, source: str, rows: Sequence[Any], headers: Mapping[str, str]) -> None:
    """Write rows through a docker ``--format``; template errors become CLI errors."""
    from berth.cli.template import Format, TemplateError

    try:
        ctx.out(Format(source).render(rows, headers))
    except TemplateError as err:
        raise CliError(str(err)) from None


def filter_query(filters: Mapping[str, list[str]]) -> str | None:
    """The ``filters`` query parameter, left out (None) when there are none."""
    from berth.client.http import encode_filters

    return encode_filters(filters) if filters else None


def ls_source(fmt: str, quiet: bool, quiet_source: str, table: str) -> str:
    """The template ``ls`` renders: ``--format`` as given, else the quiet column or the default table."""
    if fmt in ("", "table"):
        return quiet_source if quiet else table
    return fmt


def list_named(ctx: Context, path: str, flags: list[str], key: str = "") -> list[dict[str, Any]]:
    """``GET path`` with ``--filter`` flags, sorted by Name like docker's ls; ``key`` picks a wrapped list."""
    from berth.cli.command import filters_from

    answer = ctx.client.get(path, {"filters": filter_query(filters_from(flags))}).json()
    items: list[dict[str, Any]] = ((answer or {}).get(key) if key else answer) or []
    items.sort(key=lambda item: str(item.get("Name", "")))
    return items


def show_inspected(ctx: Context, found: list[Any], fmt: str) -> None:
    """inspect's output: indented JSON, or each object through a Go template (``\\t``/``\\n`` unescaped)."""
    from berth.cli.render import indent_json

    if fmt in ("", "json"):
        ctx.out(indent_json(found) + "\n")
        return
    from berth.cli.template import Template, TemplateError

    try:
        template = Template(fmt.replace("\\t", "\t").replace("\\n", "\n"))
        for item in found:
            ctx.out(template.execute(item) + "\n")
    except TemplateError as err:
        raise CliError(str(err)) from None


def add_inspect_format(p: CommandParser) -> None:
    """``inspect``'s ``-f/--format`` (no table forms, unlike ``ls``)."""
    p.add_argument("-f", "--format", default="", metavar="string",
                   help="Format output using a custom template: 'json' or a Go template")


def inspect_each(ctx: Context, names: list[str], fetch: Callable[[str], Any], fmt: str) -> int:
    """Inspect every name; the missing ones are reported together after the found ones are shown."""
    from berth.errors import NotFound

    found: list[Any] = []
    errors: list[str] = []
    for name in names:
        try:
            found.append(fetch(name))
        except NotFound as err:
            errors.append(f"Error response from daemon: {err}")
    show_inspected(ctx, found, fmt)
    if errors:
        raise CliError("\n".join(errors))
    return 0


def remove_each(ctx: Context, names: list[str], delete: Callable[[str], object], ignore_missing: bool) -> int:
    """Remove every name, echoing each one removed; failures are reported together at the end."""
    from berth.client.http import DaemonUnreachable
    from berth.errors import BerthError, NotFound

    errors: list[str] = []
    for name in names:
        try:
            delete(name)
        except DaemonUnreachable:
            raise
        except BerthError as err:
            if not (ignore_missing and isinstance(err, NotFound)):
                errors.append(f"Error response from daemon: {err}")
            continue
        ctx.out(f"{name}\n")
    if errors:
        raise CliError("\n".join(errors))
    return 0


def confirm(ctx: Context, warning: str) -> bool:
    """docker's prompt: ``<warning>\\nAre you sure you want to continue? [y/N] ``, yes on ``y``/``yes``."""
    ctx.out(f"{warning}\nAre you sure you want to continue? [y/N] ")
    ctx.stdout.flush()
    answer = ctx.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def add_prune_flags(p: CommandParser, all_help: str = "") -> None:
    """``prune``'s flags: ``-a/--all`` when the kind has one, ``--filter`` (no ``-f``: that is force), ``-f``."""
    if all_help:
        p.add_bool("-a", "--all", help=all_help)
    add_filter(p, short=False)
    p.add_bool("-f", "--force", help="Do not prompt for confirmation")


def prune(ctx: Context, kind: str, filters: Mapping[str, list[str]], warning: str, force: bool
          ) -> dict[str, Any] | None:
    """Ask (unless forced), then ``POST /{kind}/prune``; the daemon's report, or None when the user said no."""
    if not force and not confirm(ctx, warning):
        return None
    report: dict[str, Any] = ctx.client.post(f"/{kind}/prune", {"filters": filter_query(filters)}).json() or {}
    return report


def show_deleted(ctx: Context, heading: str, lines: Sequence[str], blank_after: bool = True) -> None:
    """A prune report's ``Deleted Xs:`` list (nothing when nothing went)."""
    if lines:
        ctx.out(f"{heading}\n" + "".join(f"{line}\n" for line in lines) + ("\n" if blank_after else ""))


def show_reclaimed(ctx: Context, report: Mapping[str, Any]) -> None:
    """A prune report's last line."""
    from berth.cli.render import human_size

    ctx.out(f"Total reclaimed space: {human_size(int(report.get('SpaceReclaimed') or 0))}\n")
