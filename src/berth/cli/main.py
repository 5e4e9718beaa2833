"""``berth``: parse the global flags, find the command, run it, and turn failures into docker's messages.

Commands live one module per object type (``_MODULES``); each exports ``COMMANDS`` and ``GROUPS``
(see ``berth.cli.command``). Only argparse-level work happens at import time so ``berth --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import TYPE_CHECKING

from berth import __version__
from berth.cli.command import CliError, Command, CommandParser, Context, Group, HelpShown

if TYPE_CHECKING:
    from collections.abc import Sequence

PROG = "berth"
# One module per object type; a new one (containers, networks, ...) is added here.
_MODULES = ("berth.cli.system", "berth.cli.images", "berth.cli.containers", "berth.cli.volumes", "berth.cli.networks",
            "berth.cli.registry", "berth.cli.build")

_GLOBAL_VALUE_FLAGS = {"-H": "host", "--host": "host", "-l": "log_level", "--log-level": "log_level",
                       "--config": "config", "-c": "context", "--context": "context"}
_GLOBAL_BOOL_FLAGS = {"-D": "debug", "--debug": "debug", "-v": "version", "--version": "version",
                      "-h": "help", "--help": "help"}


class _Registry:
    """Every command and management command, gathered from the command modules."""

    def __init__(self) -> None:
        self.commands: dict[str, Command] = {}
        self.groups: dict[str, Group] = {}
        for name in _MODULES:
            module = importlib.import_module(name)
            for cmd in getattr(module, "COMMANDS", ()):
                self.commands[cmd.name] = cmd
            for group in getattr(module, "GROUPS", ()):
                known = self.groups.get(group.name)
                if known is not None:
                    group = Group(known.name, known.summary or group.summary, known.commands + group.commands)
                self.groups[group.name] = group

    def find(self, name: str) -> Command | None:
        cmd = self.commands.get(name)
        if cmd is not None:
            return cmd
        return next((c for c in self.commands.values() if name in c.aliases), None)


class _Globals:
    """The flags that come before the command."""

    def __init__(self) -> None:
        self.host: str | None = None
        self.log_level: str | None = None
        self.config: str | None = None
        self.context: str | None = None
        self.debug = False
        self.version = False
        self.help = False


def _parse_globals(argv: list[str]) -> tuple[_Globals, list[str]]:
    opts = _Globals()
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return opts, argv[i + 1:]
        if not token.startswith("-") or token == "-":
            break
        name, eq, value = token.partition("=")
        if name in _GLOBAL_VALUE_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise CliError(f"berth: flag needs an argument: {name}\n\nSee '{PROG} --help'.", 125)
                i += 1
                value = argv[i]
            setattr(opts, _GLOBAL_VALUE_FLAGS[name], value)
        elif name in _GLOBAL_BOOL_FLAGS:
            setattr(opts, _GLOBAL_BOOL_FLAGS[name], not eq or value.lower() in ("1", "t", "true"))
        elif len(name) > 2 and name[0] == "-" and name[1] != "-" and name[:2] in _GLOBAL_VALUE_FLAGS:
            setattr(opts, _GLOBAL_VALUE_FLAGS[name[:2]], token[2:])  # -Hunix:///x
        else:
            shown = f"unknown flag: {name}" if name.startswith("--") else f"unknown shorthand flag: " \
                f"'{name[1:2]}' in {token}"
            raise CliError(f"berth: {shown}\n\nSee '{PROG} --help'.", 125)
        i += 1
    return opts, argv[i:]


def _main_help(registry: _Registry) -> str:
    lines = [f"\nUsage:  {PROG} [OPTIONS] COMMAND\n", "A Docker-compatible container engine\n", "Commands:"]
    width = max(len(n) for n in [*registry.commands, *registry.groups]) + 2
    for name, cmd in sorted(registry.commands.items()):
        lines.append(f"  {name.ljust(width)}{cmd.summary}")
    lines += ["", "Management Commands:"]
    for name, group in sorted(registry.groups.items()):
        lines.append(f"  {name.ljust(width)}{group.summary}")
    lines += [
        "",
        "Global Options:",
        "  -D, --debug              Enable debug mode",
        "  -H, --host string        Daemon socket to connect to (default $BERTH_HOST or",
        "                           unix:///run/berth/berth.sock)",
        '  -l, --log-level string   Set the logging level ("debug", "info", "warn", "error", "fatal")',
        '                           (default "info")',
        "  -v, --version            Print version information and quit",
        "",
        f"Run '{PROG} COMMAND --help' for more information on a command.",
        "",
    ]
    return "\n".join(lines)


def _group_help(group: Group) -> str:
    width = max(len(c.name) for c in group.commands) + 2
    lines = [f"\nUsage:  {PROG} {group.name} COMMAND\n", f"{group.summary}\n", "Commands:"]
    for cmd in group.commands:
        lines.append(f"  {cmd.name.ljust(width)}{cmd.summary}")
    lines += ["", f"Run '{PROG} {group.name} COMMAND --help' for more information on a command.", ""]
    return "\n".join(lines)


def _unknown(path: str, name: str) -> CliError:
    return CliError(f"{PROG}: unknown command: {path} {name}\n\nRun '{path} --help' for more information")


def _resolve(registry: _Registry, rest: list[str]) -> tuple[str, Command | None, list[str], str | None]:
    """The command path, the command (None when only help is due), its arguments, and help text to show."""
    name, args = rest[0], rest[1:]
    if name == "help":
        if not args:
            return PROG, None, [], _main_help(registry)
        return _resolve(registry, [*args, "--help"])
    group = registry.groups.get(name)
    if group is not None:
        if not args or args[0] in ("-h", "--help"):
            return f"{PROG} {name}", None, [], _group_help(group)
        if args[0].startswith("-"):
            raise CliError(f"{PROG}: unknown flag: {args[0]}\n\nSee '{PROG} {name} --help'.", 125)
        cmd = group.find(args[0])
        if cmd is None:
            raise _unknown(f"{PROG} {name}", args[0])
        return f"{PROG} {name} {cmd.name}", cmd, args[1:], None
    cmd = registry.find(name)
    if cmd is None:
        raise _unknown(PROG, name)
    return f"{PROG} {cmd.name}", cmd, args, None


def run(argv: Sequence[str], ctx: Context | None = None) -> int:
    """Run one command line (without the program name); returns the exit status."""
    opts, rest = _parse_globals(list(argv))
    ctx = ctx if ctx is not None else Context()
    if opts.version:
        ctx.out(f"{PROG} version {__version__}\n")
        return 0
    registry = _Registry()
    if opts.help or not rest:
        ctx.out(_main_help(registry))
        return 0
    path, cmd, args, help_text = _resolve(registry, rest)
    if cmd is None:
        ctx.out(help_text or "")
        return 0
    ctx.host = opts.host
    parser = CommandParser(path, cmd, ctx.stdout)
    if cmd.configure is not None:
        cmd.configure(parser)
    try:
        ns = parser.parse(args)
    except HelpShown as shown:
        return shown.status
    return cmd.run(ctx, ns)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``berth`` entry point."""
    return execute(sys.argv[1:] if argv is None else argv, Context())


def execute(argv: Sequence[str], ctx: Context) -> int:
    """Run a command line and report failures on ``ctx.stderr`` the way docker does; returns the exit status."""
    from berth.errors import BerthError

    try:
        return run(argv, ctx)
    except CliError as err:
        _report(ctx, err.message)
        return err.status
    except BerthError as err:
        # BerthError kinds reaching here came from the daemon; local failures are CliError.
        from berth.client.http import DaemonUnreachable

        if isinstance(err, DaemonUnreachable):
            _report(ctx, str(err))
        else:
            _report(ctx, f"Error response from daemon: {err}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # a closed stdout (berth images | head) is not an error worth a traceback
        if ctx.stdout is sys.stdout:
            import os

            # point stdout at /dev/null so the interpreter's exit-time flush stays quiet too
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _report(ctx: Context, message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        ctx.stdout.flush()
    ctx.err(message.rstrip("\n") + "\n")
