"""The subset of Go's text/template that ``--format`` needs, with docker's template functions.

Supported: ``{{.Field.Sub}}``, ``{{.}}``, pipelines (``{{.Name | upper}}``), string and number literals,
``{{- trim -}}`` markers, ``if``/``else``/``end``, ``range``/``end``, ``with``/``end``, and the functions
``json join split lower upper title index len println print pad truncate``. ``Format`` also understands
docker's ``table`` prefix and the ``json`` shorthand. Values are plain dicts, lists, strings and numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from berth.cli.render import go_json, go_print, tabwrite

TABLE_KEY = "table"


class TemplateError(Exception):
    """The format string does not parse or does not apply; the message is docker's wording."""


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*") |
        (?P<raw>`[^`]*`) |
        (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.) |
        (?P<num>-?\d+(?:\.\d+)?) |
        (?P<ident>[A-Za-z_][A-Za-z0-9_]*) |
        (?P<pipe>\|)
    )""",
    re.X,
)


Funcs = Mapping[str, Callable[..., Any]]


class _Node:
    def render(self, dot: Any, out: list[str], funcs: Funcs) -> None:
        raise NotImplementedError


class _Text(_Node):
    def __init__(self, text: str) -> None:
        self.text = text

    def render(self, dot: Any, out: list[str], funcs: Funcs) -> None:
        out.append(self.text)


class _Pipeline:
    """``cmd | cmd ...``; each command is a function call or a single operand."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.commands: list[list[tuple[str, Any]]] = [[]]
        pos = 0
        source = source.strip()
        while pos < len(source):
            m = _TOKEN.match(source, pos)
            if m is None or m.end() == pos:
                raise TemplateError(f"template parsing error: unexpected {source[pos:]!r} in command")
            pos = m.end()
            kind = m.lastgroup
            assert kind is not None
            value = m.group(kind)
            if kind == "pipe":
                self.commands.append([])
            elif kind == "str":
                self.commands[-1].append(("lit", _unquote(value)))
            elif kind == "raw":
                self.commands[-1].append(("lit", value[1:-1]))
            elif kind == "num":
                self.commands[-1].append(("lit", float(value) if "." in value else int(value)))
            elif kind == "field":
                self.commands[-1].append(("field", value))
            elif value in ("true", "false"):
                self.commands[-1].append(("lit", value == "true"))
            elif value == "nil":
                self.commands[-1].append(("lit", None))
            else:
                if value not in FUNCS:
                    raise TemplateError(f'template parsing error: function "{value}" not defined')
                self.commands[-1].append(("func", value))
        if any(not cmd for cmd in self.commands):
            raise TemplateError("template parsing error: missing value for command")

    def evaluate(self, dot: Any, funcs: Mapping[str, Callable[..., Any]]) -> Any:
        result: Any = None
        for index, cmd in enumerate(self.commands):
            args = [_operand(kind, value, dot) for kind, value in cmd[1:]]
            if index:
                args.append(result)
            head_kind, head = cmd[0]
            if head_kind == "func":
                try:
                    result = funcs[head](*args)
                except TypeError as exc:
                    raise TemplateError(f"template: error calling {head}: {exc}") from None
            elif args:
                raise TemplateError(f"template: can't give argument to non-function {head}")
            else:
                result = _operand(head_kind, head, dot)
        return result


def _unquote(text: str) -> str:
    import json

    return str(json.loads(text))


def _operand(kind: str, value: Any, dot: Any) -> Any:
    if kind == "lit":
        return value
    if kind == "field":
        return lookup(dot, value)
    raise TemplateError(f"template: {value} is a function, not a value")


def lookup(dot: Any, path: str) -> Any:
    """``.A.B`` on nested dicts; a missing key is nil, like a Go map."""
    value = dot
    for name in path.split(".")[1:] if path != "." else []:
        if isinstance(value, Mapping):
            value = value.get(name)
        elif value is None:
            return None
        else:
            raise TemplateError(f"template: can't evaluate field {name} in type {type(value).__name__}")
    return value


class _Action(_Node):
    def __init__(self, pipe: _Pipeline) -> None:
        self.pipe = pipe

    def render(self, dot: Any, out: list[str], funcs: Funcs) -> None:
        out.append(go_print(self.pipe.evaluate(dot, funcs)))


class _Block(_Node):
    """``if``, ``with`` and ``range``: a pipeline, a body, an optional else."""

    def __init__(self, keyword: str, pipe: _Pipeline) -> None:
        self.keyword = keyword
        self.pipe = pipe
        self.body: list[_Node] = []
        self.orelse: list[_Node] = []

    def render(self, dot: Any, out: list[str], funcs: Funcs) -> None:
        value = self.pipe.evaluate(dot, funcs)
        if self.keyword == "range":
            items = list(value.values()) if isinstance(value, Mapping) else list(value or [])
            for item in items:
                _render_all(self.body, item, out, funcs)
            if not items:
                _render_all(self.orelse, dot, out, funcs)
        elif truthy(value):
            _render_all(self.body, value if self.keyword == "with" else dot, out, funcs)
        else:
            _render_all(self.orelse, dot, out, funcs)


def _render_all(nodes: Sequence[_Node], dot: Any, out: list[str], funcs: Funcs) -> None:
    for node in nodes:
        node.render(dot, out, funcs)


def truthy(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty things are false."""
    return bool(value)


class Template:
    """A parsed template; ``execute`` renders it against a value."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = _parse(source)

    def execute(self, dot: Any, funcs: Funcs | None = None) -> str:
        out: list[str] = []
        _render_all(self.nodes, dot, out, FUNCS if funcs is None else funcs)
        return "".join(out)


def _parse(source: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Block, list[_Node]]] = []
    current = root
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(source):
        text = source[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            current.append(_Text(text))
        trim_next = bool(m.group(3))
        pos = m.end()
        body = m.group(2).strip()
        word = body.split(None, 1)[0] if body else ""
        rest = body[len(word):]
        if word in ("if", "with", "range"):
            block = _Block(word, _Pipeline(rest))
            current.append(block)
            stack.append((block, current))
            current = block.body
        elif word == "else":
            if not stack:
                raise TemplateError("template parsing error: unexpected {{else}}")
            current = stack[-1][0].orelse
        elif word == "end":
            if not stack:
                raise TemplateError("template parsing error: unexpected {{end}}")
            _, current = stack.pop()
        elif body.startswith("/*"):
            continue
        else:
            current.append(_Action(_Pipeline(body)))
    if stack:
        raise TemplateError("template parsing error: unexpected EOF")
    text = source[pos:]
    if trim_next:
        text = text.lstrip()
    if text:
        current.append(_Text(text))
    return root


def _join(items: Any, sep: str) -> str:
    return sep.join(go_print(item) for item in items or [])


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if value is None:
            return None
        value = value.get(key) if isinstance(value, Mapping) else value[key]
    return value


def _pad(text: Any, before: int, after: int) -> str:
    return " " * before + go_print(text) + " " * after


def _truncate(text: Any, length: int) -> str:
    return go_print(text)[:length]


def _println(*args: Any) -> str:
    return " ".join(go_print(a) for a in args) + "\n"


def _print(*args: Any) -> str:
    return "".join(go_print(a) for a in args)


FUNCS: dict[str, Callable[..., Any]] = {
    "json": lambda value: go_json(value),
    "join": _join,
    "split": lambda text, sep: str(text).split(sep),
    "lower": lambda text: go_print(text).lower(),
    "upper": lambda text: go_print(text).upper(),
    "title": lambda text: go_print(text).title(),
    "index": _index,
    "len": lambda value: len(value or []),
    "println": _println,
    "print": _print,
    "pad": _pad,
    "truncate": _truncate,
}

# docker renders a table's header with functions that leave the column titles alone.
HEADER_FUNCS: dict[str, Callable[..., Any]] = {
    **{name: (lambda *args: args[0] if args else "") for name in FUNCS},
    "json": lambda value: "",
    "println": _println,
    "print": _print,
}


class Format:
    """A docker ``--format`` value: ``table ...`` (header row + tab-aligned), ``json``, or a plain template."""

    def __init__(self, source: str) -> None:
        self.is_table = source.startswith(TABLE_KEY)
        body = source[len(TABLE_KEY):] if self.is_table else source
        if body.strip() == "json" and not self.is_table:
            body = "{{json .}}"
        body = body.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
        self.template = Template(body)

    def render(self, rows: Sequence[Any], headers: Mapping[str, str] | None = None) -> str:
        """Every row followed by a newline; tables get the header (fields named by ``headers``) and alignment."""
        lines: list[str] = []
        if self.is_table:
            header = _HeaderRow(headers or {})
            lines.append(self.template.execute(header, HEADER_FUNCS) + "\n")
        lines.extend(self.template.execute(row) + "\n" for row in rows)
        text = "".join(lines)
        return tabwrite(text) if self.is_table else text


class _HeaderRow(dict[str, str]):
    """The table header: every field renders as its column title; unknown fields are blank."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key, "")
