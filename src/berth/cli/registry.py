"""Registry commands: ``berth registry serve`` and ``berth registry gc`` — berth's own registry, no berthd needed.

The CLI talks to berthd over HTTP only, so it does not import the registry server: it hands the process over
(``exec``) to ``python -m berth.registry.server``, which keeps the PID, the terminal and the signals.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from berth.cli.command import Command, CommandParser, Context, Group

if TYPE_CHECKING:
    import argparse

SERVER_MODULE = "berth.registry.server"


def _configure_serve(p: CommandParser) -> None:
    p.add_argument("--addr", default="127.0.0.1:5000", metavar="string", help="Address to listen on (HOST:PORT)")
    p.add_argument("--root", default="", metavar="string", help="Storage directory (filesystem driver)")
    p.add_argument("--from-store", default="", metavar="string",
                   help="Serve the image store of this berthd data root, read-only")
    p.add_argument("--htpasswd", default="", metavar="string", help="htpasswd file (bcrypt entries) of users")
    p.add_bool("--token", help="Require bearer tokens from the built-in token server")
    p.add_argument("--token-realm", default="", metavar="string",
                   help="Token realm URL sent in challenges (implies --token; default: this server's /token)")
    p.add_argument("--token-service", default="berth-registry", metavar="string", help="Token service name")
    p.add_bool("--anonymous-pull", help="Let the token server grant pull without credentials")
    p.add_argument("--upload-ttl", default="", metavar="seconds", help="Seconds an idle upload session lives")


def _configure_gc(p: CommandParser) -> None:
    p.add_argument("--root", default="", metavar="string", help="Storage directory")
    p.add_bool("--dry-run", help="Only print what would be deleted")
    p.add_bool("--delete-untagged", help="Also delete manifests that no tag reaches")
    p.add_argument("--grace", default="", metavar="seconds", help="Keep blobs touched in the last SECONDS")


def server_argv(verb: str, ns: argparse.Namespace) -> list[str]:
    """The ``berth.registry.server`` command line for a parsed ``berth registry`` command."""
    out = [verb]
    for flag in ("addr", "root", "from_store", "htpasswd", "token_realm", "token_service", "upload_ttl", "grace"):
        value = getattr(ns, flag, "")
        if value:
            out += ["--" + flag.replace("_", "-"), str(value)]
    for flag in ("token", "anonymous_pull", "dry_run", "delete_untagged"):
        if getattr(ns, flag, False):
            out.append("--" + flag.replace("_", "-"))
    return out


def _exec(verb: str, ns: argparse.Namespace) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", SERVER_MODULE, *server_argv(verb, ns)])


def _serve(ctx: Context, ns: argparse.Namespace) -> int:
    return _exec("serve", ns)


def _gc(ctx: Context, ns: argparse.Namespace) -> int:
    return _exec("gc", ns)


SERVE = Command("serve", "Run a registry (OCI distribution API) on this machine", "[OPTIONS]", _serve,
                _configure_serve)
GC = Command("gc", "Delete blobs that no manifest in the registry references", "[OPTIONS]", _gc, _configure_gc)

COMMANDS: tuple[Command, ...] = ()
GROUPS = (Group("registry", "Run berth's own registry", (SERVE, GC)),)
