""".dockerignore files: parse them and match context paths against their patterns, as Docker does.

A port of moby's ``patternmatcher`` (``MatchesOrParentMatches``) and ``patternmatcher/ignorefile`` (``ReadAll``),
plus Go's ``path/filepath.Match``, which the builder also uses for COPY/ADD wildcards. Imports only the standard
library: the CLI (which filters the context it sends) and the daemon (which filters what it receives) both use it.
Paths are "/"-separated and relative to the context root.
"""

from __future__ import annotations

import posixpath
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

_UTF8_BOM = "\ufeff"
_REGEX_ESCAPE = frozenset(".+()|{}$")  # regexp specials that mean nothing to filepath.Match


class BadPattern(ValueError):
    """A pattern that Go's ``filepath.Match`` or moby's pattern compiler refuses (``filepath.ErrBadPattern``)."""

    def __init__(self, message: str = "syntax error in pattern") -> None:
        super().__init__(message)


def clean(path: str) -> str:
    """Go's ``filepath.Clean`` on Linux: like ``posixpath.normpath`` but ``//x`` becomes ``/x`` and "" becomes "."."""
    out = posixpath.normpath(path) if path else "."
    return out[1:] if out.startswith("//") else out


def parse(data: bytes | str) -> list[str]:
    """The patterns of a .dockerignore file (mirrors ``ignorefile.ReadAll``).

    A UTF-8 BOM is dropped, lines starting with "#" are comments, the rest are trimmed and cleaned, a leading "/"
    is dropped (patterns are relative to the context root) and a leading "!" is kept.
    """
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    text = text.removeprefix(_UTF8_BOM)
    out: list[str] = []
    for line in text.split("\n"):
        line = line.removesuffix("\r")  # bufio.ScanLines drops one trailing CR
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return out


# -- Go's path/filepath.Match ---------------------------------------------------------------------------------------


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern.startswith("*"):
        pattern, star = pattern[1:], True
    inrange = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            inrange = True
        elif c == "]":
            inrange = False
        elif c == "*" and not inrange:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _get_esc(chunk: str) -> tuple[str, str]:
    if not chunk or chunk[0] in "-]":
        raise BadPattern()
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise BadPattern()
    r, rest = chunk[0], chunk[1:]
    if not rest:
        raise BadPattern()
    return r, rest


def _match_chunk(chunk: str, s: str) -> str | None:
    """The rest of ``s`` after ``chunk`` matched its start, or None; a malformed chunk raises even after a miss."""
    failed = False
    while chunk:
        if not failed and not s:
            failed = True
        c = chunk[0]
        if c == "[":
            r = ""
            if not failed:
                r, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            matched = False
            nrange = 0
            while True:
                if chunk.startswith("]") and nrange > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk = _get_esc(chunk)
                hi = lo
                if chunk[0] == "-":
                    hi, chunk = _get_esc(chunk[1:])
                if not failed and lo <= r <= hi:
                    matched = True
                nrange += 1
            if matched == negated:
                failed = True
        elif c == "?":
            if not failed:
                if s[0] == "/":
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
        else:
            if c == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise BadPattern()
            if not failed:
                if chunk[0] != s[0]:
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
    return None if failed else s


def fnmatch(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match`` on Linux: ``*`` and ``?`` never match "/", ``[^a-z]`` classes, ``\\`` escapes.

    Raises ``BadPattern`` for a malformed pattern, even when the name does not match.
    """
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return "/" not in name  # a trailing * matches the rest of the name unless it has a /
        t = _match_chunk(chunk, name)
        if t is not None and (not t or pattern):
            name = t
            continue
        if star:
            found = False
            for i in range(len(name)):
                if name[i] == "/":
                    break
                t = _match_chunk(chunk, name[i + 1 :])
                if t is not None:
                    if not pattern and t:
                        continue  # the last chunk must consume the whole name
                    name, found = t, True
                    break
            if found:
                continue
        while pattern:  # a miss: the rest must still be well-formed
            _, chunk, pattern = _scan_chunk(pattern)
            _match_chunk(chunk, "")
        return False
    return not name


def has_wildcards(path: str) -> bool:
    """Whether a COPY/ADD source uses ``*``, ``?`` or ``[`` (moby's ``containsWildcards``; ``\\`` escapes)."""
    i = 0
    while i < len(path):
        if path[i] == "\\":
            i += 1
        elif path[i] in "*?[":
            return True
        i += 1
    return False


# -- moby's patternmatcher ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    text: str  # cleaned, without the "!"
    exclusion: bool
    kind: str  # "exact", "prefix", "suffix" or "regexp" (moby's matchType)
    regexp: re.Pattern[str] | None

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regexp is not None
        return self.regexp.match(path) is not None


def _compile(text: str, exclusion: bool) -> _Pattern:
    """Mirror of ``Pattern.compile``: pick a cheap match type, else translate to an anchored regexp."""
    reg = "^"
    kind = "exact"
    i, n = 0, len(text)
    first = True
    while i < n:
        ch = text[i]
        i += 1
        if ch == "*":
            if i < n and text[i] == "*":
                i += 1
                if i < n and text[i] == "/":
                    i += 1  # treat **/ as **
                if i >= n:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        reg += ".*"
                        kind = "regexp"
                else:
                    reg += "(.*/)?"  # any number of directories, even none
                    kind = "regexp"
                if first:
                    kind = "suffix"
            else:
                reg += "[^/]*"
                kind = "regexp"
        elif ch == "?":
            reg += "[^/]"
            kind = "regexp"
        elif ch in _REGEX_ESCAPE:
            reg += "\\" + ch
        elif ch == "\\":
            if i < n:
                reg += "\\" + text[i]
                i += 1
                kind = "regexp"
            else:
                reg += "\\"
        elif ch in "[]":
            reg += ch
            kind = "regexp"
        else:
            reg += ch
        first = False
    regexp = None
    if kind == "regexp":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Python warns about "[[" that Go's RE2 takes literally
                regexp = re.compile(reg + r"\Z")  # Go's $ never matches before a trailing newline
        except re.error as e:
            raise BadPattern() from e
    return _Pattern(text, exclusion, kind, regexp)


class Matcher:
    """The patterns of one .dockerignore; ``excluded`` says whether a context path is left out.

    Raises ``BadPattern`` for a lone "!" or a malformed pattern (moby's ``patternmatcher.New``).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns: list[_Pattern] = []
        for raw in patterns:
            p = raw.strip()
            if not p:
                continue
            p = clean(p)
            exclusion = p.startswith("!")
            if exclusion:
                if len(p) == 1:
                    raise BadPattern('illegal exclusion pattern: "!"')
                p = p[1:]
            fnmatch(p, ".")  # Go's syntax check for the pattern
            self._patterns.append(_compile(p, exclusion))
        self._exceptions = any(p.exclusion for p in self._patterns)

    def has_exceptions(self) -> bool:
        """Whether any pattern is a "!" exception: a walker then cannot drop an excluded directory wholesale."""
        return self._exceptions

    def excluded(self, path: str, parent_excluded: bool = False) -> bool:
        """Whether ``path`` is excluded (``MatchesOrParentMatches``: a pattern matching a parent matches too; the
        last matching pattern wins). ``parent_excluded`` is the walker's answer for the parent directory, used only
        as a shortcut when there are no exceptions (the answer is the same either way)."""
        if parent_excluded and not self._exceptions:
            return True
        path = clean(path)
        if path == ".":
            return False  # the context root is never excluded
        parent = posixpath.dirname(path)
        parent_dirs = parent.split("/") if parent else []
        matched = False
        for pattern in self._patterns:
            if pattern.exclusion != matched:
                continue  # only an exception can undo a match, only an inclusion can make one
            hit = pattern.match(path)
            if not hit:
                for i in range(len(parent_dirs)):
                    if pattern.match("/".join(parent_dirs[: i + 1])):
                        hit = True
                        break
            if hit:
                matched = not pattern.exclusion
        return matched
