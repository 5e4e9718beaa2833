"""The shape of a CLI command: what each command module (images.py, system.py, ...) declares and main.py runs.

A module exports ``COMMANDS`` (top-level shortcuts such as ``images``) and ``GROUPS`` (management commands
such as ``image ls``). Keep this module and the command modules cheap to import: ``berth --help`` imports
them all, so HTTP, JSON and rendering are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

if TYPE_CHECKING:
    from berth.client.http import Client


class CliError(Exception):
    """An error the CLI reports itself (not an answer from the daemon): printed as is, then exit ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class HelpShown(Exception):
    """argparse printed help (or a version) and wants to stop with this status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class Arity:
    """How many positional arguments a command takes (``most`` None: no limit)."""

    least: int = 0
    most: int | None = 0

    def problem(self, count: int) -> str | None:
        """docker's wording when ``count`` arguments do not fit, else None."""
        if self.least <= count and (self.most is None or count <= self.most):
            return None
        if self.most == 0:
            return "accepts no arguments"
        if self.least == self.most:
            return f"requires {self.least} {_plural(self.least)}"
        if self.most is None:
            return f"requires at least {self.least} {_plural(self.least)}"
        if self.least == 0:
            return f"accepts at most {self.most} {_plural(self.most)}"
        return f"requires at least {self.least} and at most {self.most} {_plural(self.most)}"


def _plural(n: int) -> str:
    return "argument" if n == 1 else "arguments"


@dataclass(frozen=True)
class Command:
    """One verb. ``usage`` is what follows the command path, e.g. ``[OPTIONS] IMAGE [IMAGE...]``."""

    name: str
    summary: str
    usage: str
    run: Callable[[Context, argparse.Namespace], int]
    configure: Callable[[CommandParser], None] | None = None
    arity: Arity = Arity()
    aliases: tuple[str, ...] = ()
    metavar: str = "ARG"

    def renamed(self, name: str, aliases: tuple[str, ...] = ()) -> Command:
        """The same command under another name (``images`` is ``image ls``)."""
        return replace(self, name=name, aliases=aliases)


@dataclass(frozen=True)
class Group:
    """A management command (``image``, ``system``) holding sub-commands."""

    name: str
    summary: str
    commands: tuple[Command, ...] = field(default=())

    def find(self, name: str) -> Command | None:
        for cmd in self.commands:
            if name == cmd.name or name in cmd.aliases:
                return cmd
        return None


class CommandParser(argparse.ArgumentParser):
    """argparse with docker's behaviour: no abbreviations, errors raised not exited, ``--flag=false``."""

    def __init__(self, path: str, command: Command, out: TextIO | None = None) -> None:
        super().__init__(
            prog=path,
            usage=f"{path} {command.usage}",
            description=command.summary,
            allow_abbrev=False,
            add_help=True,
        )
        self.path = path
        self.command = command
        self.bool_flags: set[str] = set()
        self.out = out

    def print_help(self, file: Any = None) -> None:
        super().print_help(file if file is not None else self.out)

    def add_bool(self, *names: str, help: str, default: bool = False) -> None:
        """A boolean flag that also takes cobra's ``--flag=true|false`` form."""
        action = self.add_argument(*names, action="store_true", default=default, help=help)
        if default:
            action.help = f"{help} (default true)"
        self.bool_flags.update(names)

    def error(self, message: str) -> NoReturn:
        # docker prints flag errors bare (only argument-count errors carry the program's name)
        raise CliError(f"{message}\n\nUsage:  {self.path} {self.command.usage}\n\n"
                       f"Run '{self.path} --help' for more information", 125)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise HelpShown(status)

    def parse(self, argv: list[str]) -> argparse.Namespace:
        """Parse flags, rewrite cobra-style booleans, and check the positional count."""
        self.add_argument("args", nargs="*", metavar=self.command.metavar, help=argparse.SUPPRESS)
        flipped: list[tuple[str, bool]] = []
        rewritten: list[str] = []
        for token in argv:
            name, eq, value = token.partition("=")
            if eq and name in self.bool_flags:
                truth = value.lower() in ("1", "t", "true")
                if not truth and value.lower() not in ("0", "f", "false"):
                    self.error(f'invalid argument "{value}" for "{name}" flag: strconv.ParseBool: parsing '
                               f'"{value}": invalid syntax')
                flipped.append((name, truth))
                continue
            rewritten.append(token)
        ns, extras = self.parse_known_intermixed_args(rewritten)
        for extra in extras:
            if extra.startswith("--"):
                self.error(f"unknown flag: {extra.split('=', 1)[0]}")
            if extra.startswith("-") and extra != "-":
                self.error(f"unknown shorthand flag: '{extra[1:2]}' in {extra}")
        args: list[str] = [*ns.args, *extras]
        ns.args = args
        for name, truth in flipped:
            for action in self._actions:
                if name in action.option_strings:
                    setattr(ns, action.dest, truth)
        problem = self.command.arity.problem(len(args))
        if problem:
            # docker's RequiresMinArgs says "See", its other arity checks say "Run"
            verb = "See" if self.command.arity.most is None else "Run"
            raise CliError(
                f"berth: '{self.path}' {problem}\n\nUsage:  {self.path} {self.command.usage}\n\n"
                f"{verb} '{self.path} --help' for more information"
            )
        return ns


class Context:
    """What a running command may touch: the standard streams and a lazily made daemon client."""

    def __init__(
        self,
        host: str | None = None,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.host = host
        self.stdin = stdin if stdin is not None else sys.stdin
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            from berth.client.http import Client
            from berth.errors import BerthError

            try:
                self._client = Client(self.host)
            except BerthError as err:
                # a bad -H/BERTH_HOST is the CLI's own failure, not an answer from the daemon (docker's wording)
                raise CliError(f"Failed to initialize: unable to resolve berth endpoint: {err}") from None
        return self._client

    def out(self, text: str) -> None:
        self.stdout.write(text)

    def err(self, text: str) -> None:
        self.stderr.write(text)

    def stdout_is_tty(self) -> bool:
        return _isatty(self.stdout)

    def stdin_is_tty(self) -> bool:
        return _isatty(self.stdin)

    def binary_stdout(self) -> Any:
        self.stdout.flush()
        return getattr(self.stdout, "buffer", self.stdout)

    def binary_stdin(self) -> Any:
        return getattr(self.stdin, "buffer", self.stdin)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def add_format(parser: CommandParser, what: str = "") -> None:
    """docker's ``--format`` flag."""
    parser.add_argument(
        "--format", default="",
        help="Format output using a custom template: 'table', 'table TEMPLATE', 'json', or a Go template"
        + (f" ({what})" if what else ""),
    )


def add_filter(parser: CommandParser, short: bool = True) -> None:
    """docker's repeatable ``-f/--filter key=value`` (prune commands have no ``-f``: it means force there)."""
    names = ("-f", "--filter") if short else ("--filter",)
    parser.add_argument(*names, action="append", default=[], metavar="filter",
                        help="Filter output based on conditions provided")


def filters_from(values: list[str]) -> dict[str, list[str]]:
    """``["dangling=true", "label=a=b"]`` → ``{"dangling": ["true"], "label": ["a=b"]}``."""
    out: dict[str, list[str]] = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq:
            raise CliError(f"invalid argument \"{item}\" for \"-f, --filter\" flag: bad format of filter "
                           "(expected name=value)", 125)
        out.setdefault(key.strip().lower(), []).append(value)
    return out


def key_values(items: list[str], flag: str, bare_keys: bool = False) -> dict[str, str]:
    """``["a=b", "c"]`` from ``--opt``/``--label`` → ``{"a": "b", "c": ""}``; a bare key only when ``bare_keys``."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key or (not bare_keys and not eq):
            raise CliError(f'invalid argument "{item}" for "{flag}" flag: {item} is not a key=value pair', 125)
        out[key] = value
    return out
