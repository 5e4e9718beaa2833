"""The Dockerfile parser and variable expansion of the classic builder (``POST /build``, builder v1).

``parse`` turns Dockerfile bytes into stages of ``Instruction`` values and validates them the way dockerd does
before the first step runs; the error messages are Docker's (moby vendors buildkit's
``frontend/dockerfile/parser`` and ``frontend/dockerfile/instructions``, and the classic builder wraps parser errors
as ``failed to parse Dockerfile: ...``). ``expand``/``expand_words`` mirror buildkit's shell lexer
(``shell.Lex.ProcessWord``/``ProcessWords``); the other functions decode one instruction for the executor
(``berth.engine.build``), which decides when to expand what. Heredocs (``RUN <<EOF``, ``COPY <<EOF``; BuildKit's
syntax, which dockerd's classic builder reads but does not run) are read as buildkit's parser does and carried on
the instruction; ``command`` and ``copy_sources`` give them dockerfile2llb's meaning.

Pure: imports only the standard library, ``berth.errors`` and ``berth.units``.
"""

from __future__ import annotations

import json
import posixpath
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from berth.errors import InvalidArgument
from berth.units import parse_go_duration

KEYWORDS = frozenset({
    "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck", "label", "maintainer",
    "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir",
})

# Flags each instruction accepts (buildkit instructions/parse.go and the RUN pre-hooks); "strings" may repeat.
_FLAG_SPECS: dict[str, dict[str, str]] = {
    "from": {"platform": "string"},
    "add": {"chown": "string", "chmod": "string", "link": "bool", "keep-git-dir": "bool", "checksum": "string",
            "unpack": "bool", "exclude": "strings"},
    "copy": {"chown": "string", "from": "string", "chmod": "string", "link": "bool", "exclude": "strings",
             "parents": "bool"},
    "run": {"mount": "strings", "network": "string", "security": "string", "device": "strings"},
    "healthcheck": {"interval": "string", "timeout": "string", "start-period": "string", "start-interval": "string",
                    "retries": "string"},
}
# Instructions whose flags buildkit never parses (so any flag is silently ignored).
_FLAGS_IGNORED = frozenset({"arg", "stopsignal"})

_WS_RE = re.compile(r"[\t\v\f\r ]+")  # parser.reWhitespace
_DIRECTIVE_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_ONBUILD_PREFIX_RE = re.compile(r"^\s*ONBUILD\s*", re.IGNORECASE)
_STAGE_NAME_RE = re.compile(r"[a-z][a-z0-9\-_.]*")
_VALID_DIRECTIVES = ("syntax", "escape", "check")
_EMPTY_CONTINUATION_WARNING = "[WARNING]: Empty continuation lines will become errors in a future release."


@dataclass(frozen=True)
class Instruction:
    """One parsed Dockerfile instruction (buildkit's parser.Node plus what instructions.Parse checks)."""

    keyword: str  # lower-case: "from", "run", "copy", ...
    flags: tuple[tuple[str, str], ...]  # ("from", "builder"), ("link", "true"); repeatable flags appear repeatedly
    rest: str  # the text after the keyword and flags (for ONBUILD: the trigger instruction's text)
    json_args: tuple[str, ...] | None  # the list when written in JSON (exec) form, else None
    original: str  # what dockerd prints in "Step N/M : <original>"
    line: int  # 1-based line where it starts
    args: tuple[str, ...] = ()  # buildkit's node arguments: the words dispatch expands one by one
    heredocs: tuple[Heredoc, ...] = ()  # RUN/COPY/ADD ``<<EOF`` documents, in the order of their markers

    def flag(self, name: str, default: str | None = None) -> str | None:
        """The value of ``--name`` (the last one when repeated), or ``default`` when not given."""
        for key, value in reversed(self.flags):
            if key == name:
                return value
        return default

    def flag_values(self, name: str) -> tuple[str, ...]:
        """Every value of a repeatable flag (``--mount``, ``--exclude``), in order."""
        return tuple(value for key, value in self.flags if key == name)


@dataclass(frozen=True)
class Stage:
    """A build stage: its FROM and the instructions after it."""

    index: int
    name: str | None  # lower-cased "AS name"
    from_: Instruction
    instructions: tuple[Instruction, ...]

    @property
    def base(self) -> str:
        """The FROM image word, not yet expanded."""
        return self.from_.args[0]


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile."""

    escape: str  # "\\" or "`"
    global_args: tuple[Instruction, ...]  # ARG instructions before the first FROM
    stages: tuple[Stage, ...]
    warnings: tuple[str, ...] = ()  # lines dockerd prints to the build output before the first step

    def stage_index(self, target: str) -> int:
        """The index of stage ``AS target`` (case-insensitive, like instructions.HasStage)."""
        for stage in self.stages:
            if stage.name is not None and stage.name == target.lower():
                return stage.index
        # moby daemon/builder/dockerfile/builder.go (since 2023; older dockerd said "failed to reach build target")
        raise InvalidArgument(f'target stage "{target}" could not be found')

    def steps(self, last_stage: int) -> int:
        """Docker's "Step N/M" total when building up to ``last_stage`` (dispatchDockerfileWithCancellation)."""
        return len(self.global_args) + sum(1 + len(s.instructions) for s in self.stages[: last_stage + 1])


class _ParserError(Exception):
    """An error of buildkit's line parser (dockerd prefixes "failed to parse <name>: ")."""


class _InstructionError(Exception):
    """An error of buildkit's instructions.Parse (prefixed "dockerfile parse error on line N: ")."""


# --- characters as Go sees them ---------------------------------------------------------------------------------

def _is_space(ch: str) -> bool:
    """Go's unicode.IsSpace."""
    return ch in "\t\n\v\f\r \x85\xa0" or unicodedata.category(ch).startswith("Z")


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_digit(ch: str) -> bool:
    return unicodedata.category(ch) == "Nd"


def _trim_left(s: str) -> str:
    i = 0
    while i < len(s) and _is_space(s[i]):
        i += 1
    return s[i:]


def _trim_space(s: str) -> str:
    """Go's strings.TrimSpace."""
    s = _trim_left(s)
    j = len(s)
    while j > 0 and _is_space(s[j - 1]):
        j -= 1
    return s[:j]


def _go_quote(s: str) -> str:
    """Go's %q / strconv.Quote, close enough for error messages."""
    return json.dumps(s, ensure_ascii=False)


# --- the shell lexer (buildkit frontend/dockerfile/shell/lex.go) --------------------------------------------------

class _Words:
    """lex.go wordsStruct: splits expansion results on unquoted whitespace."""

    def __init__(self) -> None:
        self.buf = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if _is_space(ch) and self.in_word:
            if self.buf:
                self.words.append(self.buf)
                self.buf = ""
                self.in_word = False
        elif not _is_space(ch):
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.buf += ch
        self.in_word = True

    def add_string(self, s: str) -> None:
        for ch in s:
            self.add_char(ch)

    def add_raw_string(self, s: str) -> None:
        self.buf += s
        self.in_word = True

    def get_words(self) -> list[str]:
        if self.buf:
            self.words.append(self.buf)
            self.buf = ""
            self.in_word = False
        return self.words


class _LexError(Exception):
    pass


class _Lexer:
    """One ProcessWord/ProcessWords run over ``text`` (lex.go shellWord); the flags are lex.go's Lex options
    (RawQuotes, SkipUnsetEnv, SkipProcessQuotes) that the heredoc parsing and heredoc bodies use."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str, *, raw_quotes: bool = False,
                 skip_unset: bool = False, skip_quotes: bool = False) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape
        self.raw_escapes = False
        self.raw_quotes = raw_quotes
        self.skip_unset = skip_unset
        self.special = "$<" if skip_quotes else "$<'\""

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        if self.pos >= len(self.text):
            return ""
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def process_stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """processStopOn: ``stop`` "" means end of input."""
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            return self._process_stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _process_stop_on(self, stop: str) -> tuple[str, list[str]]:
        result: list[str] = []
        # lex.go shares one words buffer between nested calls, which drops text before ${X:-y} in ProcessWords;
        # berth keeps a buffer per call (the evident intent).
        words = _Words()
        while self.peek() != "":
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(result), words.get_words()
            if ch in self.special:
                if ch == "$":
                    tmp = self.process_dollar()
                elif ch == "<":
                    tmp = self.process_possible_heredoc()
                elif ch == "'":
                    tmp = self.process_single_quote()
                else:
                    tmp = self.process_double_quote()
                result.append(tmp)
                if ch == "$":
                    words.add_string(tmp)
                else:
                    words.add_raw_string(tmp)
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    words.add_raw_char(ch)
                    result.append(ch)
                ch = self.next()
                if ch == "":
                    break
                words.add_raw_char(ch)
            else:
                words.add_char(ch)
            result.append(ch)
        if stop:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.get_words()

    def process_single_quote(self) -> str:
        opening = self.next()
        result: list[str] = [opening] if self.raw_quotes else []
        while True:
            ch = self.next()
            if ch == "":
                raise _LexError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.raw_quotes:
                    result.append(ch)
                return "".join(result)
            result.append(ch)

    def process_double_quote(self) -> str:
        opening = self.next()
        result: list[str] = [opening] if self.raw_quotes else []
        while True:
            nxt = self.peek()
            if nxt == "":
                raise _LexError("unexpected end of statement while looking for matching double-quote")
            if nxt == '"':
                self.next()
                if self.raw_quotes:
                    result.append(nxt)
                return "".join(result)
            if nxt == "$":
                result.append(self.process_dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    result.append(ch)
                following = self.peek()
                if following == "":
                    continue  # a lone escape at the end of the word is dropped
                if following in ('"', "$", self.escape):
                    ch = self.next()
            result.append(ch)

    def process_dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.process_name()
            if not name:
                return "$"
            if self.skip_unset and name not in self.env:
                return "$" + name
            return self.env.get(name, "")
        self.next()
        if self.peek() == "":
            raise _LexError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self.process_name()
        ch = self.next()
        chs = ch or "\ufffd"  # Go prints string(scanner.EOF) as U+FFFD
        null_is_unset = False
        if ch == "}":
            if self.skip_unset and name not in self.env:
                return "${" + name + "}"
            return self.env.get(name, "")
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            chs += ch or "\ufffd"
        if ch == "/" and not null_is_unset:
            return self._process_replace(name)
        if null_is_unset or (ch != "" and ch in "+-?#%"):
            raw_escapes = ch in ("#", "%")
            if null_is_unset and raw_escapes:
                raise _LexError(f"unsupported modifier ({chs}) in substitution")
            try:
                word, _ = self.process_stop_on("}", raw_escapes)
            except _LexError:
                if self.peek() == "":
                    raise _LexError("syntax error: missing '}'") from None
                raise
            is_set = name in self.env
            value = self.env.get(name, "")
            if self.skip_unset and not is_set:
                return "${" + name + chs + word + "}"
            if ch == "-":
                return word if not is_set or (null_is_unset and value == "") else value
            if ch == "+":
                return "" if not is_set or (null_is_unset and value == "") else word
            if ch == "?":
                if not is_set:
                    raise _LexError(f"{name}: {word or 'is not allowed to be unset'}")
                if null_is_unset and value == "":
                    raise _LexError(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            if ch in ("%", "#"):
                greedy = word.startswith(ch)
                if greedy:
                    word = word[1:]
                return _trim_suffix(word, value, greedy) if ch == "%" else _trim_prefix(word, value, greedy)
        raise _LexError(f"unsupported modifier ({chs}) in substitution")

    def _process_replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.process_stop_on("/", True)
        except _LexError:
            if self.peek() == "":
                raise _LexError("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = self.process_stop_on("}", True)
        except _LexError:
            if self.peek() == "":
                raise _LexError("syntax error: missing '}'") from None
            raise
        if self.skip_unset and name not in self.env:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        value = self.env.get(name, "")
        try:
            regex = _shell_pattern_regex(pattern, greedy=True, anchored=False)
        except _LexError as err:
            raise _LexError(f"invalid pattern ({pattern}) in substitution: {err}") from None
        if replace_all:
            return regex.sub(lambda _m: replacement, value)
        return regex.sub(lambda _m: replacement, value, count=1)

    def process_name(self) -> str:
        name: list[str] = []
        while self.peek() != "":
            ch = self.peek()
            if not name and _is_digit(ch):
                while self.peek() != "" and _is_digit(self.peek()):
                    name.append(self.next())
                return "".join(name)
            if not name and ch in "@*#?-$!0":
                return self.next()
            if not _is_letter(ch) and not _is_digit(ch) and ch != "_":
                break
            name.append(self.next())
        return "".join(name)

    def process_possible_heredoc(self) -> str:
        self.next()
        if self.peek() != "<":
            return "<"
        self.next()
        space: list[str] = []
        while self.peek() in ("\t", "\r", " ") and self.peek() != "":
            space.append(self.next())
        return "<<" + "".join(space)


def _shell_pattern_regex(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """lex.go convertShellPatternToRegex: ``*`` and ``?`` wildcards, ``\\`` escapes, no brackets."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 0
    while i < len(pattern):
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(star)
        elif tok == "?":
            out.append(".")
        elif tok == "\\":
            nxt = pattern[i] if i < len(pattern) else ""
            if nxt in ("}", "/") and nxt:
                continue
            i += 1
            if nxt not in ("*", "?", "\\") or not nxt:
                raise _LexError(f"invalid escape '\\{nxt}'")
            out.append(re.escape(nxt))
        else:
            out.append(re.escape(tok))
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    try:
        regex = _shell_pattern_regex(pattern, greedy, anchored=True)
    except _LexError as err:
        raise _LexError(f"invalid pattern ({pattern}) in substitution: {err}") from None
    match = regex.search(value)
    return value[match.end():] if match else value


def _reverse_pattern(pattern: str) -> str:
    """lex.go reversePattern: reverse, keeping each ``\\x`` escape in order."""
    out = [""] * len(pattern)
    last = len(pattern) - 1
    i = 0
    while i <= last:
        tok = pattern[i]
        if tok == "\\" and i != last:
            out[last - i - 1] = tok
            out[last - i] = pattern[i + 1]
            i += 2
        else:
            out[last - i] = tok
            i += 1
    return "".join(out)


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _process(text: str, env: Mapping[str, str], escape: str) -> tuple[str, list[str]]:
    try:
        return _Lexer(text, env, escape).process_stop_on("", False)
    except _LexError as err:
        raise InvalidArgument(f"failed to process {_go_quote(text)}: {err}") from None


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """buildkit's ProcessWord: expand ``$VAR``/``${VAR...}`` and remove quotes and escapes; unset vars are ""."""
    return _process(word, env, escape)[0]


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """buildkit's ProcessWords: like ``expand``, then split on whitespace that was not quoted or escaped."""
    return _process(text, env, escape)[1]


# --- heredocs (buildkit parser.go Heredoc, BuildKit's Dockerfile syntax 1.4+) -------------------------------------

_HEREDOC_RE = re.compile(r"^([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")  # parser.reHeredoc (Go's \d, \s, $)
_LEADING_TABS_RE = re.compile(r"^\t+", re.MULTILINE)
_HEREDOC_KEYWORDS = frozenset({"add", "copy", "run"})
# where RUN's "#!" heredoc script is mounted (dockerfile2llb dispatchRun)
HEREDOC_SCRIPT_DIR = "/dev/pipes"


@dataclass(frozen=True)
class Heredoc:
    """One ``<<NAME`` document of an instruction (parser.Heredoc)."""

    name: str
    content: str  # the lines between the marker's line and the terminator, newlines kept, tabs not chomped
    expand: bool = True  # False when the marker was quoted (``<<'EOF'``, ``<<"EOF"``, ``<<E"O"F``)
    chomp: bool = False  # ``<<-``: leading tabs are stripped from the body (and the terminator)
    fd: int = 0  # ``3<<EOF``

    @property
    def body(self) -> str:
        """The content with leading tabs stripped under ``<<-`` (ChompHeredocContent)."""
        return _LEADING_TABS_RE.sub("", self.content) if self.chomp else self.content


@dataclass(frozen=True)
class InlineFile:
    """A file a step makes from a heredoc: COPY/ADD ``<<NAME`` sources, RUN's ``#!`` script."""

    name: str
    data: str


def parse_heredoc(word: str) -> Heredoc | None:
    """parser.ParseHeredoc (MustParseHeredoc: errors give None): the heredoc marker ``word`` is, if any."""
    try:
        return _heredoc_from_word(word)
    except _LexError:
        return None


def _heredoc_from_word(word: str) -> Heredoc | None:
    """parser.go heredocFromMatch: the name as the shell would see it; quoted anywhere means no expansion."""
    match = _HEREDOC_RE.match(word)
    if match is None or not match.group(3):
        return None
    rest = match.group(3)
    try:
        words = _Lexer(rest, {}, "\\", skip_unset=True).process_stop_on("", False)[1]
        if len(words) != 1:
            return None
        raw = _Lexer(rest, {}, "\\", skip_unset=True, raw_quotes=True).process_stop_on("", False)[1]
    except _LexError as err:
        raise _LexError(f"failed to process {_go_quote(rest)}: {err}") from None
    if len(raw) != len(words):
        raise _LexError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    quotes = words[0].count("'") + words[0].count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return Heredoc(name=words[0], content="", expand=quotes == raw_quotes, chomp=match.group(2) == "-",
                   fd=int(match.group(1) or 0))


def _heredocs_from_line(line: str) -> list[Heredoc]:
    """parser.go heredocsFromLine: every heredoc marker among the line's shell words (quoted ones are not)."""
    try:
        words = _Lexer(line, {}, "\\", raw_quotes=True, skip_unset=True).process_stop_on("", True)[1]
    except _LexError:
        return []  # buildkit ignores the lexer's error here: no heredocs
    docs = []
    for word in words:
        try:
            doc = _heredoc_from_word(word)
        except _LexError as err:
            raise _ParserError(str(err)) from None
        if doc is not None:
            docs.append(doc)
    return docs


def expand_heredoc(text: str, env: Mapping[str, str]) -> str:
    """A heredoc body with ``$VAR`` expanded as dockerfile2llb's ExpandRaw: quotes stay, ``\\`` escapes apply."""
    try:
        return _Lexer(text, env, "\\", skip_quotes=True).process_stop_on("", False)[0]
    except _LexError as err:
        raise InvalidArgument(f"failed to process {_go_quote(text)}: {err}") from None


def copy_sources(instr: Instruction, env: Mapping[str, str],
                 escape: str = "\\") -> tuple[list[str], list[InlineFile], str]:
    """COPY/ADD's sources and dest (instructions.SourcesAndDest): the path sources and the dest expanded, and
    the heredoc sources as files named after their marker, chomped, expanded unless the marker was quoted."""
    if len(instr.args) < 2:
        kw = instr.keyword.upper()
        raise InvalidArgument(f"{kw} requires at least two arguments, but only one was provided. "
                              "Destination could not be determined.")
    docs = {doc.name: doc for doc in instr.heredocs}
    paths: list[str] = []
    files: list[InlineFile] = []
    for word in instr.args[:-1]:
        marker = parse_heredoc(word)
        if marker is None:
            paths.append(expand(word, env, escape))
            continue
        found = docs.get(marker.name)
        data = found.content if found is not None else ""  # buildkit: a marker with no document is empty
        if marker.chomp:
            data = _LEADING_TABS_RE.sub("", data)
        files.append(InlineFile(marker.name, expand_heredoc(data, env) if marker.expand else data))
    return paths, files, expand(instr.args[-1], env, escape)


def run_script(instr: Instruction) -> InlineFile | None:
    """The file a ``RUN <<EOF`` whose body starts with ``#!`` runs (mounted at ``HEREDOC_SCRIPT_DIR``, 0755)."""
    if instr.keyword != "run" or not instr.heredocs or instr.json_args is not None:
        return None
    if parse_heredoc(instr.rest) is None:
        return None
    doc = instr.heredocs[0]
    if not doc.body.startswith("#!"):
        return None
    if "/" in doc.name or doc.name in (".", ".."):  # the script is mounted by this name: never outside the dir
        raise InvalidArgument(f"RUN <<{doc.name}: a heredoc script's name must be a file name")
    return InlineFile(doc.name, doc.body)


# --- the line parser (buildkit frontend/dockerfile/parser) -------------------------------------------------------

@dataclass
class _Node:
    """parser.Node, flattened: the keyword as written, raw flags, the argument words."""

    cmd: str
    flags: list[str]
    rest: str
    args: list[str]
    is_json: bool
    original: str
    start_line: int = 0
    end_line: int = 0
    child: _Node | None = None  # ONBUILD's trigger
    heredocs: list[Heredoc] = field(default_factory=list)

    def can_contain_heredoc(self) -> bool:
        """parser.go Node.canContainHeredoc: RUN, COPY, ADD (also as ONBUILD's trigger), not in JSON form."""
        node = self.child if self.cmd.lower() == "onbuild" and self.child is not None else self
        return node.cmd.lower() in _HEREDOC_KEYWORDS and not node.is_json


def _parse_words(rest: str, escape: str) -> list[str]:
    """line_parsers.go parseWords: split on spaces outside quotes, keeping quotes and escapes."""
    words: list[str] = []
    in_spaces, in_word, in_quote = 0, 1, 2
    phase = in_spaces
    quote = ""
    blank_ok = False
    buf: list[str] = []
    pos = 0
    n = len(rest)
    while pos <= n:
        ch = rest[pos] if pos < n else ""
        if phase == in_spaces:
            if pos == n:
                break
            if _is_space(ch):
                pos += 1
                continue
            phase = in_word
        if phase in (in_word, in_quote) and pos == n:
            if blank_ok or buf:
                words.append("".join(buf))
            break
        if phase == in_word:
            if _is_space(ch):
                phase = in_spaces
                if blank_ok or buf:
                    words.append("".join(buf))
                buf = []
                blank_ok = False
                pos += 1
                continue
            if ch in ("'", '"'):
                quote = ch
                blank_ok = True
                phase = in_quote
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue  # an escape at the end of the line is dropped
                buf.append(ch)
                pos += 1
                ch = rest[pos]
            buf.append(ch)
            pos += 1
            continue
        if phase == in_quote:
            if ch == quote:
                phase = in_word
            if ch == escape and quote != "'":
                if pos + 1 == n:
                    phase = in_word
                    pos += 1
                    continue
                pos += 1
                buf.append(ch)
                ch = rest[pos]
            buf.append(ch)
        pos += 1
    return words


def _extract_builder_flags(line: str, escape: str) -> tuple[str, list[str]]:
    """split_command.go extractBuilderFlags: leading ``--flag[=value]`` words, quotes removed."""
    words: list[str] = []
    in_spaces, in_word, in_quote = 0, 1, 2
    phase = in_spaces
    buf: list[str] = []
    quote = ""
    blank_ok = False
    pos = 0
    n = len(line)
    while pos <= n:
        ch = line[pos] if pos < n else ""
        if phase == in_spaces:
            if pos == n:
                break
            if _is_space(ch):
                pos += 1
                continue
            if ch != "-" or pos + 1 == n or line[pos + 1] != "-":
                return line[pos:], words
            phase = in_word
        if phase in (in_word, in_quote) and pos == n:
            word = "".join(buf)
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if phase == in_word:
            if _is_space(ch):
                word = "".join(buf)
                phase = in_spaces
                if word == "--":
                    return line[pos:], words
                if blank_ok or word:
                    words.append(word)
                buf = []
                blank_ok = False
                pos += 1
                continue
            if ch in ("'", '"'):
                quote = ch
                blank_ok = True
                phase = in_quote
                pos += 1
                continue
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = line[pos]
            buf.append(ch)
            pos += 1
            continue
        if phase == in_quote:
            if ch == quote:
                phase = in_word
                pos += 1
                continue
            if ch == escape:
                if pos + 1 == n:
                    phase = in_word
                    pos += 1
                    continue
                pos += 1
                ch = line[pos]
            buf.append(ch)
        pos += 1
    return "", words


def _parse_json(rest: str) -> list[str] | None:
    """line_parsers.go parseJSON: the list, or None when ``rest`` is not a JSON array (then it is shell form)."""
    rest = _trim_left(rest)
    if not rest.startswith("["):
        return None

    def reject(name: str) -> Any:
        raise ValueError(name)  # Go's encoding/json has no NaN/Infinity

    try:
        value = json.loads(rest, parse_constant=reject)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise _ParserError("when using JSON array syntax, arrays must be comprised of strings only")
    return value


def _split_ws(rest: str) -> list[str]:
    """parseStringsWhitespaceDelimited."""
    return [] if rest == "" else _WS_RE.split(rest)


def _name_val_triples(rest: str, key: str, escape: str) -> list[tuple[str, str, str]]:
    """line_parsers.go parseNameVal for ENV and LABEL: (name, value, "=" or "" for the legacy form)."""
    words = _parse_words(rest, escape)
    if not words:
        return []
    if "=" not in words[0]:
        parts = _WS_RE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _ParserError(f"{key} must have two arguments")
        return [(parts[0], parts[1], "")]
    triples = []
    for word in words:
        if "=" not in word:
            raise _ParserError(f"Syntax error - can't find = in {_go_quote(word)}. Must be of the form: name=value")
        name, _, value = word.partition("=")
        triples.append((name, value, "="))
    return triples


def _node_from_line(line: str, escape: str) -> _Node:
    """parser.go newNodeFromLine: split off keyword and flags, then the keyword's line parser."""
    parts = _WS_RE.split(_trim_space(line), maxsplit=1)
    cmd = parts[0]
    flags: list[str] = []
    rest = ""
    if len(parts) == 2:
        rest, flags = _extract_builder_flags(parts[1], escape)
    rest = _trim_space(rest)
    node = _Node(cmd=cmd, flags=flags, rest=rest, args=[], is_json=False, original=line)
    keyword = cmd.lower()
    if keyword in ("add", "copy", "volume"):
        parsed = _parse_json(rest)
        node.args, node.is_json = (parsed, True) if parsed is not None else (_split_ws(rest), False)
    elif keyword in ("cmd", "entrypoint", "run", "shell"):
        if rest:
            parsed = _parse_json(rest)
            node.args, node.is_json = (parsed, True) if parsed is not None else ([rest], False)
    elif keyword in ("env", "label"):
        node.args = [w for triple in _name_val_triples(rest, "ENV" if keyword == "env" else "LABEL", escape)
                     for w in triple]
    elif keyword == "arg":
        node.args = _parse_words(rest, escape)
    elif keyword in ("expose", "from"):
        node.args = _split_ws(rest)
    elif keyword in ("maintainer", "stopsignal", "user", "workdir"):
        node.args = [rest] if rest else []
    elif keyword == "healthcheck":
        sep = 0
        while sep < len(rest) and not _is_space(rest[sep]):
            sep += 1
        if sep:
            cmd_rest = _trim_left(rest[sep:])
            node.args = [rest[:sep]]
            if cmd_rest:
                parsed = _parse_json(cmd_rest)
                if parsed is not None:
                    node.args += parsed
                    node.is_json = True
                else:
                    node.args.append(cmd_rest)
    elif keyword == "onbuild" and rest:
        node.child = _node_from_line(rest, escape)
        node.args = [node.child.cmd, *node.child.args]
    return node


class _Directives:
    """parser.go directives + directives.go DirectiveParser: ``# escape=`` and friends at the top."""

    def __init__(self) -> None:
        self.done = False
        self.seen: set[str] = set()
        self.escape = "\\"
        self.continuation = self._continuation_re("\\")

    @staticmethod
    def _continuation_re(token: str) -> re.Pattern[str]:
        # the escape char ends the line unless escaped itself; or it is alone on the line
        t = re.escape(token)
        return re.compile(rf"([^{t}]){t}[ \t]*\Z|^{t}[ \t]*\Z")

    def possible_directive(self, line: str) -> bool:
        if self.done:
            return False
        if not line.startswith("#"):
            self.done = True
            return False
        match = _DIRECTIVE_RE.match(_trim_left(line[1:]))
        if not match or match.group(1).lower() not in _VALID_DIRECTIVES:
            self.done = True
            return False
        name, value = match.group(1).lower(), match.group(2)
        if name in self.seen:
            raise _ParserError(f"only one {name} parser directive can be used")
        self.seen.add(name)
        if name == "escape":
            if value not in ("`", "\\"):
                raise _ParserError(f"invalid escape token '{value}' does not match ` or \\")
            self.escape = value
            self.continuation = self._continuation_re(value)
        return True

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        match = self.continuation.search(line)
        if match:
            return line[: match.start()] + (match.group(1) or ""), False
        return line, True


def _is_comment(line: str) -> bool:
    return _trim_left(line).startswith("#")


def _process_line(d: _Directives, token: str, strip_left: bool) -> str:
    token = token.rstrip("\r\n")
    if strip_left:
        token = _trim_left(token)
    d.possible_directive(token)
    return "" if _is_comment(token) else token


def _scan_lines(text: str) -> list[str]:
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def _parse_nodes(text: str) -> tuple[list[_Node], str, list[str]]:
    """parser.go Parse: logical lines (continuations joined, comments dropped) → nodes."""
    d = _Directives()
    lines = _scan_lines(text)
    nodes: list[_Node] = []
    warnings: list[str] = []
    current = 0
    i = 0
    while i < len(lines):
        raw = lines[i]
        i += 1
        if current == 0:
            raw = raw.removeprefix("\ufeff")
        token = _process_line(d, raw, True)
        current += 1
        start = current
        token, at_end = d.trim_continuation(token)
        if at_end and not token:
            continue
        buf = [token]
        empty_continuation = False
        while not at_end and i < len(lines):
            raw = lines[i]
            i += 1
            token = _process_line(d, raw, False)
            current += 1
            if _is_comment(raw):
                continue
            if not _trim_left(token.rstrip("\r\n")):
                empty_continuation = True
                continue
            token, at_end = d.trim_continuation(token)
            buf.append(token)
        line = "".join(buf)
        if empty_continuation:
            warnings.append(f"[WARNING]: Empty continuation line found in: {line}")
        node = _node_from_line(line, d.escape)
        if node.can_contain_heredoc() and "<<" in line:
            for doc in _heredocs_from_line(line):
                body: list[str] = []
                terminated = False
                while i < len(lines):
                    raw = lines[i]
                    i += 1
                    current += 1
                    candidate = raw.rstrip("\r\n")
                    if doc.chomp:
                        candidate = candidate.lstrip("\t")
                    if candidate == doc.name:
                        terminated = True
                        break
                    body.append(raw)
                if not terminated:
                    raise _ParserError("unterminated heredoc")
                node.heredocs.append(Heredoc(doc.name, "".join(body), doc.expand, doc.chomp, doc.fd))
        node.start_line, node.end_line = start, current
        nodes.append(node)
    if not nodes:
        raise _ParserError("file with no instructions")
    if warnings:
        warnings.append(_EMPTY_CONTINUATION_WARNING)
    return nodes, d.escape, warnings


# --- instruction checks (buildkit frontend/dockerfile/instructions/parse.go) --------------------------------------

def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _suggest(value: str, options: Sequence[str], case_sensitive: bool) -> str:
    """util/suggest.Search: the closest option within distance 2, matching the case of ``value``."""
    val = value if case_sensitive else value.lower()
    match, best = "", 3
    for option in options:
        opt = option if case_sensitive else option.lower()
        if val == opt:
            return ""
        dist = _levenshtein(val, opt)
        if dist < best:
            best = dist
            if case_sensitive:
                match = opt
            elif value == value.lower():
                match = opt.lower()
            elif value == value.upper():
                match = opt.upper()
            else:
                match = opt
    return f" (did you mean {match}?)" if match else ""


def _parse_flags(raw: Sequence[str], spec: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """bflag.go BFlags.Parse."""
    used: set[str] = set()
    out: list[tuple[str, str]] = []
    for arg in raw:
        if arg == "--":
            break
        if not arg.startswith("--"):
            raise _InstructionError(f"arg should start with -- : {arg}")
        flag_name, has_value, value = arg.partition("=")
        name = flag_name[2:]
        kind = spec.get(name)
        if kind is None:
            raise _InstructionError(f"unknown flag: {flag_name}{_suggest(name, sorted(spec), True)}")
        if name in used and kind != "strings":
            raise _InstructionError(f"duplicate flag specified: {flag_name}")
        used.add(name)
        if kind == "bool":
            if has_value and value == "":
                raise _InstructionError(f"missing a value on flag: {flag_name}")
            if value.lower() in ("true", ""):
                value = "true"
            elif value.lower() == "false":
                value = "false"
            else:
                raise _InstructionError(f"expecting boolean value for flag {flag_name}, not: {value}")
        elif not has_value:
            raise _InstructionError(f"missing a value on flag: {flag_name}")
        out.append((name, value))
    return tuple(out)


def _duration_ns(name: str, text: str) -> int:
    """parse.go parseOptInterval: Go duration, 0 when empty, else at least 1ms."""
    if text == "":
        return 0
    ns = parse_go_duration(text)
    if ns is None:
        if re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", text):
            raise _InstructionError(f"time: missing unit in duration {_go_quote(text)}")
        raise _InstructionError(f"time: invalid duration {_go_quote(text)}")
    if ns != 0 and ns < 1_000_000:
        raise _InstructionError(f'Interval "{name}" cannot be less than 1ms')
    return ns


def _health_config(node: _Node, flags: Mapping[str, str]) -> dict[str, Any]:
    """parse.go parseHealthcheck → Docker's image config "Healthcheck" (zero values omitted, like omitempty)."""
    if not node.args:
        raise _InstructionError("HEALTHCHECK requires at least one argument")
    typ = node.args[0].upper()
    args = node.args[1:]
    if typ == "NONE":
        if args:
            raise _InstructionError("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if typ != "CMD":
        raise _InstructionError(f"Unknown type {_go_quote(typ)} in HEALTHCHECK (try CMD)")
    cmd = list(args) if node.is_json else ([" ".join(args)] if args else [])
    if not cmd:
        raise _InstructionError("Missing command after HEALTHCHECK CMD")
    config: dict[str, Any] = {"Test": ["CMD" if node.is_json else "CMD-SHELL", *cmd]}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                      ("start-interval", "StartInterval")):
        ns = _duration_ns(flag, flags.get(flag, ""))
        if ns:
            config[key] = ns
    retries_text = flags.get("retries", "")
    if retries_text:
        if not re.fullmatch(r"[+-]?\d+", retries_text):
            raise _InstructionError(f'strconv.ParseInt: parsing {_go_quote(retries_text)}: invalid syntax')
        retries = int(retries_text)
        if not -(2**31) <= retries < 2**31:
            raise _InstructionError(f'strconv.ParseInt: parsing {_go_quote(retries_text)}: value out of range')
        if retries < 0:
            raise _InstructionError(f"--retries cannot be negative ({retries})")
        if retries:
            config["Retries"] = retries
    return config


def _check(node: _Node) -> tuple[tuple[str, str], ...]:
    """parse.go ParseInstruction's checks for one node; returns the parsed flags."""
    keyword = node.cmd.lower()
    args = node.args

    def flags() -> tuple[tuple[str, str], ...]:
        return _parse_flags(node.flags, _FLAG_SPECS.get(keyword, {}))

    def exactly_one() -> None:
        if len(args) != 1:
            raise _InstructionError(f"{keyword.upper()} requires exactly one argument")

    def at_least_one() -> None:
        if not args:
            raise _InstructionError(f"{keyword.upper()} requires at least one argument")

    if keyword not in KEYWORDS:
        suggestion = _suggest(node.cmd, sorted(k.upper() for k in KEYWORDS), False)
        raise _InstructionError(f"unknown instruction: {node.cmd}{suggestion}")
    if keyword in ("env", "label"):
        parsed = flags()
        at_least_one()
        if any(args[j] == "" for j in range(0, len(args), 3)):
            raise _InstructionError(f"{keyword.upper()} names can not be blank")
        return parsed
    if keyword in ("maintainer", "workdir", "user"):
        exactly_one()
        return flags()
    if keyword in ("add", "copy"):
        if len(args) < 2:
            raise _InstructionError(f"{keyword.upper()} requires at least two arguments, but only one was provided. "
                                    "Destination could not be determined")
        parsed = flags()
        if parse_heredoc(args[-1]) is not None:  # parseSourcesAndDest
            raise _InstructionError(f"{keyword.upper()} cannot accept a heredoc as a destination")
        return parsed
    if keyword == "from":
        if len(args) == 3 and args[1].lower() == "as":
            if not _STAGE_NAME_RE.fullmatch(args[2].lower()):
                raise _InstructionError(f"invalid name for build stage: {_go_quote(args[2])}, "
                                        "name can't start with a number or contain symbols")
        elif len(args) != 1:
            raise _InstructionError("FROM requires either one or three arguments")
        return flags()
    if keyword == "onbuild":
        at_least_one()
        parsed = flags()
        trigger = _trim_space(args[0]).upper()
        if trigger == "ONBUILD":
            raise _InstructionError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if trigger in ("MAINTAINER", "FROM"):
            raise _InstructionError(f"{trigger} isn't allowed as an ONBUILD trigger")
        return parsed
    if keyword == "run":
        parsed = flags()
        network = dict(parsed).get("network", "default")
        if network not in ("default", "none", "host"):
            raise _InstructionError(f"invalid network mode {_go_quote(network)}")
        security = dict(parsed).get("security", "sandbox")
        if security not in ("sandbox", "insecure"):
            raise _InstructionError(f"security {_go_quote(security)} is not valid")
        return parsed
    if keyword in ("cmd", "entrypoint"):
        return flags()
    if keyword == "healthcheck":
        if args and args[0].upper() == "NONE":
            _health_config(node, {})
            return ()  # buildkit never parses flags of HEALTHCHECK NONE
        at_least_one()
        parsed = flags()
        _health_config(node, dict(parsed))
        return parsed
    if keyword == "expose":
        at_least_one()
        return flags()
    if keyword == "volume":
        at_least_one()
        parsed = flags()
        if any(_trim_space(v) == "" for v in args):
            raise _InstructionError("VOLUME specified can not be an empty string")
        return parsed
    if keyword == "stopsignal":
        exactly_one()
        return ()
    if keyword == "arg":
        at_least_one()
        if any(a.startswith("=") for a in args):
            raise _InstructionError("ARG names can not be blank")
        return ()
    # shell
    parsed = flags()
    if not args:
        raise _InstructionError("SHELL requires at least one argument")
    if not node.is_json:
        raise _InstructionError("SHELL requires the arguments to be in JSON form")
    return parsed


def _instruction(node: _Node, flags: tuple[tuple[str, str], ...]) -> Instruction:
    keyword = node.cmd.lower()
    rest = node.rest
    # the instruction as written, heredocs included (parseOnBuild's Expression spells them this way)
    documents = "".join(f"\n{doc.content}{doc.name}" for doc in node.heredocs)
    if keyword == "onbuild":
        rest = _ONBUILD_PREFIX_RE.sub("", node.original, count=1) + documents
    json_args: tuple[str, ...] | None = None
    if node.is_json:
        json_args = tuple(node.args[1:]) if keyword == "healthcheck" else tuple(node.args)
    return Instruction(keyword=keyword, flags=flags, rest=rest, json_args=json_args,
                       original=_trim_space(node.original) + documents, line=node.start_line,
                       args=tuple(node.args), heredocs=tuple(node.heredocs))


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def parse(data: bytes, name: str = "Dockerfile") -> Dockerfile:
    """Parse and check a Dockerfile like dockerd does before the first step (errors in Docker's words)."""
    if not data:
        raise InvalidArgument(f"the Dockerfile ({name}) cannot be empty")
    try:
        nodes, escape, warnings = _parse_nodes(_decode(data))
    except _ParserError as err:
        raise InvalidArgument(f"failed to parse {name}: {err}") from None
    global_args: list[Instruction] = []
    stages: list[tuple[Instruction, list[Instruction]]] = []
    for node in nodes:
        try:
            flags = _check(node)
        except _InstructionError as err:
            raise InvalidArgument(f"dockerfile parse error on line {node.start_line}: {err}") from None
        instr = _instruction(node, flags)
        if instr.keyword == "from":
            stages.append((instr, []))
        elif not stages and instr.keyword == "arg":
            global_args.append(instr)
        elif not stages:
            raise InvalidArgument("no build stage in current context")
        else:
            stages[-1][1].append(instr)
    if not stages:
        # dockerd runs no stage and then reports builder.go's "empty" error
        raise InvalidArgument("No image was generated. Is your Dockerfile empty?")
    built: list[Stage] = []
    seen: set[str] = set()
    for index, (from_, instructions) in enumerate(stages):
        stage_name = from_.args[2].lower() if len(from_.args) == 3 else None
        if stage_name is not None:
            if stage_name in seen:
                # moby checkStageNameAvailable (dockerd reports it when it reaches the stage)
                raise InvalidArgument(f"{stage_name} stage name already used")
            seen.add(stage_name)
        built.append(Stage(index=index, name=stage_name, from_=from_, instructions=tuple(instructions)))
    return Dockerfile(escape=escape, global_args=tuple(global_args), stages=tuple(built),
                      warnings=tuple(warnings))


def parse_trigger(text: str) -> Instruction:
    """One ONBUILD trigger, as stored in an image, parsed and checked like dispatchTriggeredOnBuild does."""
    try:
        nodes, _, _ = _parse_nodes(text)
    except _ParserError as err:
        raise InvalidArgument(str(err)) from None
    if len(nodes) != 1:
        raise InvalidArgument("onbuild trigger should be a single expression")
    try:
        flags = _check(nodes[0])
    except _InstructionError as err:
        raise InvalidArgument(str(err)) from None
    if nodes[0].cmd.lower() == "from":
        raise InvalidArgument("*instructions.Stage is not a command type")
    return _instruction(nodes[0], flags)


# --- decoding one instruction for the executor -------------------------------------------------------------------

def key_values(instr: Instruction, env: Mapping[str, str], escape: str = "\\") -> list[tuple[str, str]]:
    """ENV and LABEL pairs, each name and value expanded (EnvCommand/LabelCommand.Expand)."""
    label = instr.keyword.upper()
    try:
        triples = _name_val_triples(instr.rest, label, escape)
    except _ParserError as err:
        raise InvalidArgument(str(err)) from None
    if not triples:
        raise InvalidArgument(f"{label} requires at least one argument")
    pairs = []
    for key, value, _ in triples:
        if key == "":
            raise InvalidArgument(f"{label} names can not be blank")
        pairs.append((expand(key, env, escape), expand(value, env, escape)))
    return pairs


def arg_decls(instr: Instruction, env: Mapping[str, str], escape: str = "\\") -> list[tuple[str, str | None]]:
    """Every ``name[=default]`` of an ARG, expanded (ArgCommand.Expand); a default of None means none given."""
    out: list[tuple[str, str | None]] = []
    for word in instr.args:
        key, has_value, value = word.partition("=")
        if not key:
            raise InvalidArgument("ARG names can not be blank")
        out.append((expand(key, env, escape), expand(value, env, escape) if has_value else None))
    return out


def arg_decl(instr: Instruction, env: Mapping[str, str], escape: str = "\\") -> tuple[str, str | None]:
    """The first ``name[=default]`` of an ARG (``arg_decls`` has them all: ``ARG a=1 b`` declares two)."""
    decls = arg_decls(instr, env, escape)
    if not decls:
        raise InvalidArgument("ARG requires at least one argument")
    return decls[0]


def expand_args(instr: Instruction, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """The instruction's words expanded as dockerd's dispatch does: one ProcessWord per word, and for EXPOSE
    ProcessWords per word (``EXPOSE $PORTS`` with PORTS="80 443" gives two). For COPY/ADD: sources then dest."""
    if instr.keyword == "expose":
        return [w for arg in instr.args for w in expand_words(arg, env, escape)]
    return [expand(arg, env, escape) for arg in instr.args]


def healthcheck(instr: Instruction) -> dict[str, Any] | None:
    """Docker's image config "Healthcheck" for a HEALTHCHECK instruction; None for any other instruction."""
    if instr.keyword != "healthcheck":
        return None
    node = _Node(cmd=instr.keyword, flags=[], rest=instr.rest, args=list(instr.args),
                 is_json=instr.json_args is not None, original=instr.original)
    try:
        return _health_config(node, dict(instr.flags))
    except _InstructionError as err:
        raise InvalidArgument(str(err)) from None


def command(instr: Instruction, shell: Sequence[str]) -> list[str]:
    """RUN/CMD/ENTRYPOINT argv: the JSON list as is, else ``[*shell, rest]`` (resolveCmdLine).

    A RUN with heredocs as dockerfile2llb's dispatchRun: ``RUN <<EOF`` alone runs the body as the shell's
    command, or, when it starts with ``#!``, the script ``run_script`` gives, mounted at ``HEREDOC_SCRIPT_DIR``;
    any other command line goes to the shell with its documents and terminators, for the shell to read."""
    if instr.json_args is not None:
        return list(instr.json_args)
    if instr.keyword == "run" and instr.heredocs:
        if parse_heredoc(instr.rest) is None:
            return [*shell, instr.rest + "".join(f"\n{doc.content}{doc.name}" for doc in instr.heredocs)]
        script = run_script(instr)
        if script is not None:
            return [*shell, posixpath.join(HEREDOC_SCRIPT_DIR, script.name)]
        return [*shell, instr.heredocs[0].body]
    return [*shell, instr.rest] if instr.rest else list(shell)
