"""Dockerfile-style config changes (``docker import -c``, ``docker commit -c``) applied to an image config.

Returns a new config dict; the instruction grammar follows Docker's for the instructions import allows.
"""

from __future__ import annotations

import copy
import json
import shlex
from collections.abc import Iterable
from typing import Any

from berth.errors import InvalidArgument

ALLOWED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL", "ONBUILD", "STOPSIGNAL", "USER",
           "VOLUME", "WORKDIR")


def apply_changes(config: dict[str, Any], changes: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for change in changes:
        change = change.strip()
        if not change:
            continue
        word, _, rest = change.partition(" ")
        word = word.upper()
        rest = rest.strip()
        if word not in ALLOWED:
            raise InvalidArgument(f"{word} is not a valid change command")
        _APPLY[word](out, rest)
    return out


def _exec_form(rest: str) -> list[str]:
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return value
    return ["/bin/sh", "-c", rest]


def _pairs(rest: str, what: str) -> list[tuple[str, str]]:
    words = shlex.split(rest)
    if not words:
        raise InvalidArgument(f"{what} requires at least one argument")
    if "=" not in words[0]:
        key, _, value = rest.partition(" ")
        return [(key, value.strip())]
    out = []
    for w in words:
        if "=" not in w:
            raise InvalidArgument(f"{what} names can not be blank: {w}")
        k, _, v = w.partition("=")
        if not k:
            raise InvalidArgument(f"{what} names can not be blank")
        out.append((k, v))
    return out


def _cmd(cfg: dict[str, Any], rest: str) -> None:
    cfg["Cmd"] = _exec_form(rest)


def _entrypoint(cfg: dict[str, Any], rest: str) -> None:
    cfg["Entrypoint"] = _exec_form(rest)


def _env(cfg: dict[str, Any], rest: str) -> None:
    env: list[str] = list(cfg.get("Env") or [])
    for k, v in _pairs(rest, "ENV"):
        env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
    cfg["Env"] = env


def _label(cfg: dict[str, Any], rest: str) -> None:
    labels = dict(cfg.get("Labels") or {})
    labels.update(_pairs(rest, "LABEL"))
    cfg["Labels"] = labels


def _expose(cfg: dict[str, Any], rest: str) -> None:
    ports = dict(cfg.get("ExposedPorts") or {})
    for p in rest.split():
        port, _, proto = p.partition("/")
        if not port.isdigit() and not ("-" in port and all(x.isdigit() for x in port.split("-", 1))):
            raise InvalidArgument(f"invalid containerPort: {port}")
        ports[f"{port}/{(proto or 'tcp').lower()}"] = {}
    cfg["ExposedPorts"] = ports


def _volume(cfg: dict[str, Any], rest: str) -> None:
    vols = dict(cfg.get("Volumes") or {})
    paths = _exec_form(rest) if rest.startswith("[") else rest.split()
    if paths[:2] == ["/bin/sh", "-c"]:
        paths = rest.split()
    for p in paths:
        vols[p] = {}
    cfg["Volumes"] = vols


def _set(key: str) -> Any:
    def apply(cfg: dict[str, Any], rest: str) -> None:
        cfg[key] = rest
    return apply


def _onbuild(cfg: dict[str, Any], rest: str) -> None:
    cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), rest]


def _healthcheck(cfg: dict[str, Any], rest: str) -> None:
    if rest.upper() == "NONE":
        cfg["Healthcheck"] = {"Test": ["NONE"]}
        return
    word, _, cmd = rest.partition(" ")
    if word.upper() != "CMD":
        raise InvalidArgument("HEALTHCHECK requires CMD or NONE")
    form = _exec_form(cmd.strip())
    cfg["Healthcheck"] = {"Test": ["CMD-SHELL", cmd.strip()] if form[:2] == ["/bin/sh", "-c"] else ["CMD", *form]}


_APPLY = {
    "CMD": _cmd, "ENTRYPOINT": _entrypoint, "ENV": _env, "LABEL": _label, "EXPOSE": _expose,
    "VOLUME": _volume, "USER": _set("User"), "WORKDIR": _set("WorkingDir"), "STOPSIGNAL": _set("StopSignal"),
    "ONBUILD": _onbuild, "HEALTHCHECK": _healthcheck,
}
