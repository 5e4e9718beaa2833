"""Tests for berth.build.dockerfile: the Dockerfile parser and buildkit's shell lexer, in Docker's words.

The lexer tables are buildkit's frontend/dockerfile/shell/envVarTest and wordsTest (Unix rows); the parser cases
come from buildkit's parser testfiles, real-world Dockerfiles, and the error strings of moby/buildkit.
"""

from __future__ import annotations

from typing import Any

import pytest

from berth.build import dockerfile as df
from berth.build.dockerfile import (
    Dockerfile,
    Instruction,
    arg_decl,
    arg_decls,
    command,
    expand,
    expand_args,
    expand_words,
    healthcheck,
    key_values,
    parse,
    parse_trigger,
)
from berth.errors import InvalidArgument

# fmt: off
ENV_VAR_CASES = [
    ('hello', 'hello'),
    ("he'll'o", 'hello'),
    ("he'llo", None),
    ("he\\'llo", "he'llo"),
    ("he\\\\'llo", None),
    ('abc\\tdef', 'abctdef'),
    ('"abc\\tdef"', 'abc\\tdef'),
    ('"abc\\\\tdef"', 'abc\\tdef'),
    ("'abc\\tdef'", 'abc\\tdef'),
    ('hello\\', 'hello'),
    ('hello\\\\', 'hello\\'),
    ('"hello', None),
    ('"hello\\"', None),
    ('"hel\'lo"', "hel'lo"),
    ("'hello", None),
    ("'hello\\'", 'hello\\'),
    ("'hello\\there'", 'hello\\there'),
    ("'hello\\\\there'", 'hello\\\\there'),
    ('"\'\'"', "''"),
    ('$.', '$.'),
    ('he$1x', 'hex'),
    ('he$.x', 'he$.x'),
    ('he$pwd.', 'he.'),
    ('he$PWD', 'he/home'),
    ('he\\$PWD', 'he$PWD'),
    ('he\\\\$PWD', 'he\\/home'),
    ('"he\\$PWD"', 'he$PWD'),
    ('"he\\\\$PWD"', 'he\\/home'),
    ('\\${}', '${}'),
    ('\\${}aaa', '${}aaa'),
    ('he\\${}', 'he${}'),
    ('he\\${}xx', 'he${}xx'),
    ('${}', None),
    ('${}aaa', None),
    ('he${}', None),
    ('he${}xx', None),
    ('he${hi}', 'he'),
    ('he${hi}xx', 'hexx'),
    ('he${PWD}', 'he/home'),
    ('he${.}', None),
    ('he${XXX:-000}xx', 'he000xx'),
    ('he${PWD:-000}xx', 'he/homexx'),
    ('he${XXX:-$PWD}xx', 'he/homexx'),
    ('he${XXX:-${PWD:-yyy}}xx', 'he/homexx'),
    ('he${XXX:-${YYY:-yyy}}xx', 'heyyyxx'),
    ('he${XXX:YYY}', None),
    ('he${XXX?}', None),
    ('he${XXX:?}', None),
    ('he${PWD?}', 'he/home'),
    ('he${PWD:?}', 'he/home'),
    ('he${NULL?}', 'he'),
    ('he${NULL:?}', None),
    ('he${XXX:+${PWD}}xx', 'hexx'),
    ('he${PWD:+${XXX}}xx', 'hexx'),
    ('he${PWD:+${SHELL}}xx', 'hebashxx'),
    ('he${XXX:+000}xx', 'hexx'),
    ('he${PWD:+000}xx', 'he000xx'),
    ("'he${XX}'", 'he${XX}'),
    ('"he${PWD}"', 'he/home'),
    ('"he\'$PWD\'"', "he'/home'"),
    ('"$PWD"', '/home'),
    ("'$PWD'", '$PWD'),
    ("'\\$PWD'", '\\$PWD'),
    ('\'"hello"\'', '"hello"'),
    ('he\\$PWD', 'he$PWD'),
    ('"he\\$PWD"', 'he$PWD'),
    ("'he\\$PWD'", 'he\\$PWD'),
    ('he${PWD', None),
    ('he${PWD:=000}xx', None),
    ('he${PWD:+${PWD}:}xx', 'he/home:xx'),
    ('he${XXX:-\\$PWD:}xx', 'he$PWD:xx'),
    ('he${XXX:-\\${PWD}z}xx', 'he${PWDz}xx'),
    ('안녕하세요', '안녕하세요'),
    ("안'녕'하세요", '안녕하세요'),
    ("안'녕하세요", None),
    ("안녕\\'하세요", "안녕'하세요"),
    ("안\\\\'녕하세요", None),
    ('안녕\\t하세요', '안녕t하세요'),
    ('"안녕\\t하세요"', '안녕\\t하세요'),
    ("'안녕\\t하세요", None),
    ('안녕하세요\\', '안녕하세요'),
    ('안녕하세요\\\\', '안녕하세요\\'),
    ('"안녕하세요', None),
    ('"안녕하세요\\"', None),
    ('"안녕\'하세요"', "안녕'하세요"),
    ("'안녕하세요", None),
    ("'안녕하세요\\'", '안녕하세요\\'),
    ('안녕$1x', '안녕x'),
    ('안녕$.x', '안녕$.x'),
    ('안녕$pwd.', '안녕.'),
    ('안녕$PWD', '안녕/home'),
    ('안녕\\$PWD', '안녕$PWD'),
    ('안녕\\\\$PWD', '안녕\\/home'),
    ('안녕\\${}', '안녕${}'),
    ('안녕\\${}xx', '안녕${}xx'),
    ('안녕${}', None),
    ('안녕${}xx', None),
    ('안녕${hi}', '안녕'),
    ('안녕${hi}xx', '안녕xx'),
    ('안녕${PWD}', '안녕/home'),
    ('안녕${.}', None),
    ('안녕${XXX:-000}xx', '안녕000xx'),
    ('안녕${PWD:-000}xx', '안녕/homexx'),
    ('안녕${XXX:-$PWD}xx', '안녕/homexx'),
    ('안녕${XXX:-${PWD:-yyy}}xx', '안녕/homexx'),
    ('안녕${XXX:-${YYY:-yyy}}xx', '안녕yyyxx'),
    ('안녕${XXX:YYY}', None),
    ('안녕${XXX:+${PWD}}xx', '안녕xx'),
    ('안녕${PWD:+${XXX}}xx', '안녕xx'),
    ('안녕${PWD:+${SHELL}}xx', '안녕bashxx'),
    ('안녕${XXX:+000}xx', '안녕xx'),
    ('안녕${PWD:+000}xx', '안녕000xx'),
    ("'안녕${XX}'", '안녕${XX}'),
    ('"안녕${PWD}"', '안녕/home'),
    ('"안녕\'$PWD\'"', "안녕'/home'"),
    ('\'"안녕"\'', '"안녕"'),
    ('안녕\\$PWD', '안녕$PWD'),
    ('"안녕\\$PWD"', '안녕$PWD'),
    ("'안녕\\$PWD'", '안녕\\$PWD'),
    ('안녕${PWD', None),
    ('안녕${PWD:=000}xx', None),
    ('안녕${PWD:+${PWD}:}xx', '안녕/home:xx'),
    ('안녕${XXX:-\\$PWD:}xx', '안녕$PWD:xx'),
    ('안녕${XXX:-\\${PWD}z}xx', '안녕${PWDz}xx'),
    ('$KOREAN', '한국어'),
    ('안녕$KOREAN', '안녕한국어'),
    ('${{aaa}', None),
    ('${aaa}}', '}'),
    ('${aaa', None),
    ('${{aaa:-bbb}', None),
    ('${aaa:-bbb}}', 'bbb}'),
    ('${aaa:-bbb', None),
    ('${aaa:-bbb}', 'bbb'),
    ('${aaa:-${bbb:-ccc}}', 'ccc'),
    ('${aaa:-bbb ${foo}', None),
    ('${aaa:-bbb {foo}', 'bbb {foo'),
    ('${:}', None),
    ('${:-bbb}', None),
    ('${:+bbb}', None),
    ('$1', ''),
    ('${1}', ''),
    ('${1:+bbb}', ''),
    ('${1:-bbb}', 'bbb'),
    ('$2', ''),
    ('${2}', ''),
    ('${2:+bbb}', ''),
    ('${2:-bbb}', 'bbb'),
    ('$3', ''),
    ('${3}', ''),
    ('${3:+bbb}', ''),
    ('${3:-bbb}', 'bbb'),
    ('$4', ''),
    ('${4}', ''),
    ('${4:+bbb}', ''),
    ('${4:-bbb}', 'bbb'),
    ('$5', ''),
    ('${5}', ''),
    ('${5:+bbb}', ''),
    ('${5:-bbb}', 'bbb'),
    ('$6', ''),
    ('${6}', ''),
    ('${6:+bbb}', ''),
    ('${6:-bbb}', 'bbb'),
    ('$7', ''),
    ('${7}', ''),
    ('${7:+bbb}', ''),
    ('${7:-bbb}', 'bbb'),
    ('$8', ''),
    ('${8}', ''),
    ('${8:+bbb}', ''),
    ('${8:-bbb}', 'bbb'),
    ('$9', ''),
    ('${9}', ''),
    ('${9:+bbb}', ''),
    ('${9:-bbb}', 'bbb'),
    ('$999', ''),
    ('${999}', ''),
    ('${999:+bbb}', ''),
    ('${999:-bbb}', 'bbb'),
    ('$999aaa', 'aaa'),
    ('${999}aaa', 'aaa'),
    ('${999:+bbb}aaa', 'aaa'),
    ('${999:-bbb}aaa', 'bbbaaa'),
    ('$001', ''),
    ('${001}', ''),
    ('${001:+bbb}', ''),
    ('${001:-bbb}', 'bbb'),
    ('$001aaa', 'aaa'),
    ('${001}aaa', 'aaa'),
    ('${001:+bbb}aaa', 'aaa'),
    ('${001:-bbb}aaa', 'bbbaaa'),
    ('$@', ''),
    ('${@}', ''),
    ('${@:+bbb}', ''),
    ('${@:-bbb}', 'bbb'),
    ('$@@@', '@@'),
    ('$@aaa', 'aaa'),
    ('${@}aaa', 'aaa'),
    ('${@:+bbb}aaa', 'aaa'),
    ('${@:-bbb}aaa', 'bbbaaa'),
    ('$*', ''),
    ('${*}', ''),
    ('${*:+bbb}', ''),
    ('${*:-bbb}', 'bbb'),
    ('$#', ''),
    ('${#}', ''),
    ('${#:+bbb}', ''),
    ('${#:-bbb}', 'bbb'),
    ('$?', ''),
    ('${?}', ''),
    ('${?:+bbb}', ''),
    ('${?:-bbb}', 'bbb'),
    ('$-', ''),
    ('${-}', ''),
    ('${-:+bbb}', ''),
    ('${-:-bbb}', 'bbb'),
    ('$$', ''),
    ('${$}', ''),
    ('${$:+bbb}', ''),
    ('${$:-bbb}', 'bbb'),
    ('$!', ''),
    ('${!}', ''),
    ('${!:+bbb}', ''),
    ('${!:-bbb}', 'bbb'),
    ('$0', ''),
    ('${0}', ''),
    ('${0:+bbb}', ''),
    ('${0:-bbb}', 'bbb'),
]

WORDS_STEPS = [
    ('hello', ['hello']),
    ('hello${hi}bye', ['hellobye']),
    ('ENV', 'hi=hi'),
    ('hello${hi}bye', ['hellohibye']),
    ('ENV', 'space=abc  def'),
    ('hello${space}bye', ['helloabc', 'defbye']),
    ('hello"${space}"bye', ['helloabc  defbye']),
    ('hello "${space}"bye', ['hello', 'abc  defbye']),
    ('ENV', 'leading=  ab c'),
    ('hello${leading}def', ['hello', 'ab', 'cdef']),
    ('hello"${leading}" def', ['hello  ab c', 'def']),
    ('hello"${leading}"', ['hello  ab c']),
    ('hello${leading}', ['hello', 'ab', 'c']),
    ('ENV', 'trailing=ab c   '),
    ('hello${trailing}', ['helloab', 'c']),
    ('hello${trailing}d', ['helloab', 'c', 'd']),
    ('hello"${trailing}"d', ['helloab c   d']),
    ('hel"lo${trailing}"', ['helloab c   ']),
    ('hello" there  "', ['hello there  ']),
    ('hello there', ['hello', 'there']),
    ('hello\\ there', ['hello there']),
    ('hello" there', None),
    ('hello\\" there', ['hello"', 'there']),
    ('hello"\\\\there"', ['hello\\there']),
    ('hello"\\there"', ['hello\\there']),
    ("hello'\\\\there'", ['hello\\\\there']),
    ("hello'\\there'", ['hello\\there']),
    ("hello'$there'", ['hello$there']),
]
# fmt: on

LEX_ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


@pytest.mark.parametrize(("source", "expected"), ENV_VAR_CASES)
def test_envvartest(source: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(InvalidArgument, match=r"^failed to process "):
            expand(source, LEX_ENV)
    else:
        assert expand(source, LEX_ENV) == expected


def test_wordstest() -> None:
    env: dict[str, str] = {}
    for source, expected in WORDS_STEPS:
        if source == "ENV":
            assert isinstance(expected, str)
            key, _, value = expected.partition("=")
            env[key] = value
            continue
        if expected is None:
            with pytest.raises(InvalidArgument):
                expand_words(source, env)
        else:
            assert expand_words(source, env) == expected, source


@pytest.mark.parametrize(("source", "env", "expected"), [
    ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx  ccc"),
    ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx bbb ccc"),
    ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa bbb "),
    ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa  "),
    ("${BAR?bbb}", {"BAR": ""}, ""),
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x"),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx"),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y"),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy"),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy"),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y"),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy."),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a"),
    ("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"}, "/foo.*/*.txt - /foo..*.txt"),
    ("${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}", {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"}, "/tmp/bar.txt - /bar.txt"),
    ("${FOO/$NEEDLE/$REPLACEMENT}", {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
     "https://google.de"),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt"),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy"),
    ("something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz",
     {"VERSION": "v1.2.3", "TARGETOS": "linux", "TARGETARCH": "arm64", "TARGETVARIANT": ""},
     "something-v1.2.3.linux-arm64.tar.gz"),
])
def test_process_with_matches(source: str, env: dict[str, str], expected: str) -> None:
    assert expand(source, env) == expected


@pytest.mark.parametrize("source", ["${BAZ?ccc}", "${BAR:?bbb}", "${FOO=aaa}", "${FOO:#}", "${FOO:%%}", "${FOO//ww}",
                                    "${FOO//}"])
def test_process_errors(source: str) -> None:
    with pytest.raises(InvalidArgument):
        expand(source, {"FOO": "xxyy", "BAR": ""})


def test_mandatory_env_vars_messages() -> None:
    assert expand("${VAR:?message here$ARG}", {"VAR": "plain", "ARG": "x"}) == "plain"
    with pytest.raises(InvalidArgument) as err:
        expand("${VAR:?message here$ARG}", {"VAR": "", "ARG": "x"})
    assert str(err.value) == 'failed to process "${VAR:?message here$ARG}": VAR: message herex'
    assert expand("${VAR?message here$ARG}", {"VAR": "", "ARG": "x"}) == ""
    with pytest.raises(InvalidArgument, match=r"VAR: is not allowed to be unset$"):
        expand("${VAR?}", {})
    with pytest.raises(InvalidArgument, match="unsupported modifier \\(:=\\) in substitution"):
        expand("${X:=1}", {})


def test_backtick_escape_in_lexer() -> None:
    assert expand("C:\\path`$X", {"X": "1"}, escape="`") == "C:\\path$X"
    assert expand_words("a` b c", {}, escape="`") == ["a b", "c"]


# --- buildkit parser testfiles (parser/testfiles/*/result), dumped like parser.Node.Dump ---------------------------

def _go_quote(s: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}
    return '"' + "".join(escapes.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x20 else c) for c in s) + '"'


def _dump(text: str) -> list[str]:
    def one(n: Any) -> str:
        s: str = n.cmd.lower()
        if n.flags:
            s += " [" + " ".join(_go_quote(f) for f in n.flags) + "]"
        if n.child is not None:
            return s + " (" + one(n.child) + ")"
        return " ".join([s, *(_go_quote(a) for a in n.args)])

    nodes, _, _ = df._parse_nodes(text)
    return [f"({one(n)})" for n in nodes]


PARSER_FIXTURES = {
    "env": (
        "FROM ubuntu\nENV name value\nENV name=value\nENV name=value name2=value2\nENV name=\"value value1\"\n"
        "ENV name=value\\ value2\nENV name='a\\'b''\n"
        "ENV name=value \\\n    name1=value1 \\\n    name2=\"value2a \\\n           value2b\" \\\n",
        ['(from "ubuntu")', '(env "name" "value" "")', '(env "name" "value" "=")',
         '(env "name" "value" "=" "name2" "value2" "=")', '(env "name" "\\"value value1\\"" "=")',
         '(env "name" "value\\\\ value2" "=")', '(env "name" "\'a\\\\\'b\'\'" "=")',
         '(env "name" "value" "=" "name1" "value1" "=" "name2" "\\"value2a            value2b\\"" "=")'],
    ),
    "flags": (
        "FROM scratch\nCOPY --user=me --doit=true foo /tmp/\nCOPY --doit=true -- foo /tmp/\nCOPY -- foo /tmp/\n"
        'CMD --doit [ "a", "b" ]\nCMD --doit -- [ ]\n',
        ['(from "scratch")', '(copy ["--user=me" "--doit=true"] "foo" "/tmp/")', '(copy ["--doit=true"] "foo" "/tmp/")',
         '(copy "foo" "/tmp/")', '(cmd ["--doit"] "a" "b")', '(cmd ["--doit"])'],
    ),
    "continueIndent": (
        "FROM ubuntu:14.04\n\nRUN echo hello\\\n  world\\\n  goodnight  \\\n  moon\\\n  light\\\nning\n"
        "RUN echo hello  \\  \nworld\nRUN echo hi \\\n \\\n world \\\n\\\n good\\\n\\\nnight\n"
        "RUN echo hello \\\n# this is a comment\n\n# this is a comment with a blank line surrounding it\n\n"
        "this is some more useful stuff\n",
        ['(from "ubuntu:14.04")', '(run "echo hello  world  goodnight    moon  lightning")',
         '(run "echo hello  world")', '(run "echo hi   world  goodnight")',
         '(run "echo hello this is some more useful stuff")'],
    ),
    "escape": (
        "#escape = `\n\nFROM image\nLABEL maintainer foo@bar.com\nENV GOPATH `\n\\go",
        ['(from "image")', '(label "maintainer" "foo@bar.com" "")', '(env "GOPATH" "\\\\go" "")'],
    ),
    "escape-after-comment": (
        "# Comment here.\n# escape = `\n\nFROM image\nENV GOPATH \\\n\\go",
        ['(from "image")', '(env "GOPATH" "\\\\go" "")'],
    ),
    "health": (
        "FROM debian\nHEALTHCHECK\nHEALTHCHECK --interval=5s --timeout=3s --retries=3 \\\n  CMD /app/check.sh --quiet\n"
        'HEALTHCHECK CMD\nHEALTHCHECK   CMD   a b\nHEALTHCHECK --timeout=3s CMD ["foo"]\n'
        "HEALTHCHECK CONNECT TCP 7000\n",
        ['(from "debian")', "(healthcheck)",
         '(healthcheck ["--interval=5s" "--timeout=3s" "--retries=3"] "CMD" "/app/check.sh --quiet")',
         '(healthcheck "CMD")', '(healthcheck "CMD" "a b")', '(healthcheck ["--timeout=3s"] "CMD" "foo")',
         '(healthcheck "CONNECT" "TCP 7000")'],
    ),
    "json": (
        'CMD []\nCMD [""]\nCMD [ "a", "b" ]\nCMD\t[\t"a",\t"b"\t]\t\nCMD ["abc 123", "♥", "\\" \\\\ \\/ \\n \\t"]\n'
        "CMD ['echo','single quotes are invalid JSON']\nCMD [\"echo\", \"unterminated\nCMD \"[\\\"echo\\\"]\"\n",
        ["(cmd)", '(cmd "")', '(cmd "a" "b")', '(cmd "a" "b")', '(cmd "abc 123" "♥" "\\" \\\\ / \\n \\t")',
         "(cmd \"['echo','single quotes are invalid JSON']\")", '(cmd "[\\"echo\\", \\"unterminated")',
         '(cmd "\\"[\\\\\\"echo\\\\\\"]\\"")'],
    ),
    "onbuild": (
        "FROM x\nONBUILD RUN echo hi\nonbuild ADD [\"a\", \"b\"]\n",
        ['(from "x")', '(onbuild (run "echo hi"))', '(onbuild (add "a" "b"))'],
    ),
    "crlf-bom": (
        "\ufeffFROM busybox\r\nRUN echo a \\\r\n    b\r\n",
        ['(from "busybox")', '(run "echo a     b")'],
    ),
}


@pytest.mark.parametrize("name", sorted(PARSER_FIXTURES))
def test_parser_testfiles(name: str) -> None:
    text, expected = PARSER_FIXTURES[name]
    assert _dump(text) == expected


# --- real-world Dockerfiles -------------------------------------------------------------------------------------

PYTHON_APP = b"""\
# syntax=docker/dockerfile:1
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \\
 && rm -rf /root/.cache
COPY . .
EXPOSE 8000
USER 1000:1000
CMD ["gunicorn", "-b", "0.0.0.0:8000", "app:app"]
"""


def test_python_app() -> None:
    d = parse(PYTHON_APP)
    assert d.escape == "\\" and d.global_args == () and len(d.stages) == 1
    stage = d.stages[0]
    assert stage.name is None and stage.base == "python:3.11-slim" and stage.from_.line == 2
    kws = [i.keyword for i in stage.instructions]
    assert kws == ["env", "workdir", "copy", "run", "copy", "expose", "user", "cmd"]
    env, _, _, run, *_, cmd = stage.instructions
    assert env.original == "ENV PYTHONDONTWRITEBYTECODE=1     PYTHONUNBUFFERED=1"
    assert key_values(env, {}) == [("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1")]
    assert run.line == 7 and run.json_args is None
    assert run.rest == "pip install --no-cache-dir -r requirements.txt  && rm -rf /root/.cache"
    assert command(run, ["/bin/sh", "-c"]) == ["/bin/sh", "-c", run.rest]
    assert cmd.json_args == ("gunicorn", "-b", "0.0.0.0:8000", "app:app")
    assert command(cmd, ["/bin/sh", "-c"]) == ["gunicorn", "-b", "0.0.0.0:8000", "app:app"]
    assert d.steps(0) == 9


MULTI_STAGE = b"""\
ARG GO_VERSION=1.22
ARG BASE
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-alpine AS Builder
WORKDIR /src
COPY --chown=1:1 --link go.mod go.sum ./
RUN --mount=type=cache,target=/root/.cache --mount=type=bind,source=.,target=/src go build -o /out/app .

FROM ${BASE:-alpine:3.19} AS runtime
COPY --from=builder /out/app /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]

FROM runtime
LABEL org.opencontainers.image.title="my app" version=1.0 "quoted key"=v
"""


def test_multi_stage() -> None:
    d = parse(MULTI_STAGE)
    assert [a.rest for a in d.global_args] == ["GO_VERSION=1.22", "BASE"]
    assert [arg_decl(a, {}) for a in d.global_args] == [("GO_VERSION", "1.22"), ("BASE", None)]
    builder, runtime, last = d.stages
    assert (builder.name, runtime.name, last.name) == ("builder", "runtime", None)
    assert builder.from_.flag("platform") == "$BUILDPLATFORM"
    assert expand_args(builder.from_, {"GO_VERSION": "1.22"})[0] == "golang:1.22-alpine"
    assert expand(runtime.base, {}) == "alpine:3.19"
    copy = builder.instructions[1]
    assert copy.flags == (("chown", "1:1"), ("link", "true"))
    assert copy.flag("from") is None and copy.flag("from", "x") == "x"
    assert expand_args(copy, {}) == ["go.mod", "go.sum", "./"]
    run = builder.instructions[2]
    assert run.flag_values("mount") == ("type=cache,target=/root/.cache", "type=bind,source=.,target=/src")
    assert run.rest == "go build -o /out/app ."
    assert runtime.instructions[0].flag("from") == "builder"
    assert d.stage_index("BUILDER") == 0 and d.stage_index("runtime") == 1
    assert d.steps(0) == 2 + 4 and d.steps(1) == 2 + 4 + 3 and d.steps(2) == 2 + 4 + 3 + 2
    with pytest.raises(InvalidArgument, match=r'^target stage "nope" could not be found$'):
        d.stage_index("nope")
    label = last.instructions[0]
    assert key_values(label, {}) == [("org.opencontainers.image.title", "my app"), ("version", "1.0"),
                                     ("quoted key", "v")]


WINDOWS_ESCAPE = b"""\
# escape=`
FROM mcr.microsoft.com/windows/servercore:ltsc2022
COPY testfile.txt c:\\
RUN dir c:\\ `
    && echo done
ENV DIR=C:\\app `
    NAME="a`"b"
"""


def test_escape_backtick() -> None:
    d = parse(WINDOWS_ESCAPE)
    assert d.escape == "`"
    copy, run, env = d.stages[0].instructions
    assert copy.args == ("testfile.txt", "c:\\")
    assert expand_args(copy, {}, d.escape) == ["testfile.txt", "c:\\"]
    assert run.rest == "dir c:\\     && echo done"
    assert key_values(env, {}, d.escape) == [("DIR", "C:\\app"), ("NAME", 'a"b')]


def test_forms_and_fallbacks() -> None:
    d = parse(b"""FROM scratch
RUN ["echo", "exec form"]
RUN echo shell form
CMD ['single', 'quotes']
ENTRYPOINT [ "/bin/tini", "--" ]
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
VOLUME ["/data", "/logs"]
VOLUME /a /b
COPY ["with space.txt", "/dst dir/"]
ADD --chown=0:0 https://example.com/x.tgz /opt/
""")
    run_exec, run_shell, cmd, entry, shell, vol_json, vol, copy, add = d.stages[0].instructions
    assert run_exec.json_args == ("echo", "exec form")
    assert run_shell.json_args is None and command(run_shell, ["/bin/sh", "-c"])[-1] == "echo shell form"
    assert cmd.json_args is None and cmd.rest == "['single', 'quotes']"
    assert command(cmd, ["sh", "-c"]) == ["sh", "-c", "['single', 'quotes']"]
    assert entry.json_args == ("/bin/tini", "--")
    assert shell.json_args == ("/bin/bash", "-o", "pipefail", "-c")
    assert vol_json.json_args == ("/data", "/logs") and vol.args == ("/a", "/b")
    assert expand_args(copy, {}) == ["with space.txt", "/dst dir/"]
    assert add.flag("chown") == "0:0" and add.args == ("https://example.com/x.tgz", "/opt/")


def test_env_forms() -> None:
    d = parse(b"""FROM scratch
ENV A 1 2  3
ENV B=x C="y z" D=$B${B}
ENV E="${A:-none}" F='$A'
LABEL "com.example.vendor"="ACME Incorporated" multi.line="a \\
b"
""")
    legacy, new, refs, label = d.stages[0].instructions
    assert key_values(legacy, {}) == [("A", "1 2  3")]
    assert key_values(new, {}) == [("B", "x"), ("C", "y z"), ("D", "")]
    assert key_values(refs, {"A": "v"}) == [("E", "v"), ("F", "$A")]
    assert key_values(label, {}) == [("com.example.vendor", "ACME Incorporated"), ("multi.line", "a b")]


def test_expose_words() -> None:
    d = parse(b"FROM scratch\nEXPOSE $PORTS 9000/udp\n")
    assert expand_args(d.stages[0].instructions[0], {"PORTS": "80 443"}) == ["80", "443", "9000/udp"]


def test_arg_multi() -> None:
    d = parse(b'FROM scratch\nARG A=1 B C="x y"\n')
    instr = d.stages[0].instructions[0]
    assert arg_decls(instr, {}) == [("A", "1"), ("B", None), ("C", "x y")]


@pytest.mark.parametrize(("text", "expected"), [
    ("HEALTHCHECK NONE", {"Test": ["NONE"]}),
    ("HEALTHCHECK CMD curl -f http://localhost/ || exit 1",
     {"Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]}),
    ('HEALTHCHECK --interval=30s --timeout=1m30s --start-period=500ms --start-interval=2s --retries=3 '
     'CMD ["/bin/check", "-q"]',
     {"Test": ["CMD", "/bin/check", "-q"], "Interval": 30_000_000_000, "Timeout": 90_000_000_000,
      "StartPeriod": 500_000_000, "StartInterval": 2_000_000_000, "Retries": 3}),
    ("HEALTHCHECK --interval=0s --retries=0 cmd true", {"Test": ["CMD-SHELL", "true"]}),
])
def test_healthcheck(text: str, expected: dict[str, Any]) -> None:
    instr = parse(f"FROM scratch\n{text}\n".encode()).stages[0].instructions[0]
    assert healthcheck(instr) == expected


def test_healthcheck_none_for_other_instruction() -> None:
    assert healthcheck(parse(b"FROM scratch\nRUN true\n").stages[0].instructions[0]) is None


def test_onbuild_keeps_trigger_text() -> None:
    d = parse(b"FROM scratch\nONBUILD COPY --chown=1:1 . /app\nONBUILD   RUN make \\\n  install\n")
    copy, run = d.stages[0].instructions
    assert copy.keyword == "onbuild" and copy.rest == "COPY --chown=1:1 . /app"
    assert run.rest == "RUN make   install" and run.original == "ONBUILD   RUN make   install"
    trigger = parse_trigger(copy.rest)
    assert trigger.keyword == "copy" and trigger.flag("chown") == "1:1" and trigger.args == (".", "/app")


def test_lines_original_and_comments() -> None:
    d = parse(b"""# a comment

  FROM alpine   AS   base
    # indented comment
RUN echo 1 \\
# comment inside continuation
\\
    && echo 2
""")
    stage = d.stages[0]
    assert stage.from_.original == "FROM alpine   AS   base" and stage.from_.line == 3 and stage.name == "base"
    run = stage.instructions[0]
    assert run.line == 5 and run.original == "RUN echo 1     && echo 2"
    assert d.warnings == ()


def test_empty_continuation_warning() -> None:
    d = parse(b"FROM a\nRUN echo \\\n\n  hi\n")
    assert d.stages[0].instructions[0].rest == "echo   hi"
    assert d.warnings == ("[WARNING]: Empty continuation line found in: RUN echo   hi",
                          "[WARNING]: Empty continuation lines will become errors in a future release.")


def test_instruction_values() -> None:
    instr = Instruction(keyword="copy", flags=(("exclude", "a"), ("exclude", "b")), rest="x y", json_args=None,
                        original="COPY x y", line=1)
    assert instr.flag("exclude") == "b" and instr.flag_values("exclude") == ("a", "b") and instr.args == ()
    assert isinstance(parse(b"FROM a\n"), Dockerfile)


# --- errors, in Docker's words ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("FROM a\nFOOO bar\n", "dockerfile parse error on line 2: unknown instruction: FOOO (did you mean FROM?)"),
    ("FROM a\nXYZZY bar\n", "dockerfile parse error on line 2: unknown instruction: XYZZY"),
    ("FROM a\nRUNN x\n", "dockerfile parse error on line 2: unknown instruction: RUNN (did you mean RUN?)"),
    ("FROM a\ncopyy a b\n", "dockerfile parse error on line 2: unknown instruction: copyy (did you mean copy?)"),
    ("FROM a\nCOPY --form=x a b\n", "dockerfile parse error on line 2: unknown flag: --form (did you mean from?)"),
    ("FROM a\nCOPY --bogus a b\n", "dockerfile parse error on line 2: unknown flag: --bogus"),
    ("FROM a\nCOPY --from a b\n", "dockerfile parse error on line 2: missing a value on flag: --from"),
    ("FROM a\nCOPY --from=x --from=y a b\n", "dockerfile parse error on line 2: duplicate flag specified: --from"),
    ("FROM a\nCOPY --link=maybe a b\n",
     "dockerfile parse error on line 2: expecting boolean value for flag --link, not: maybe"),
    ("FROM a\nWORKDIR --x /a\n", "dockerfile parse error on line 2: unknown flag: --x"),
    ("FROM a\nCOPY onlyone\n", "dockerfile parse error on line 2: COPY requires at least two arguments, but only one "
                               "was provided. Destination could not be determined"),
    ("FROM a\nENV\n", "dockerfile parse error on line 2: ENV requires at least one argument"),
    ("FROM a\nENV =x\n", "dockerfile parse error on line 2: ENV names can not be blank"),
    ("FROM a\nLABEL\n", "dockerfile parse error on line 2: LABEL requires at least one argument"),
    ("FROM a\nARG =x\n", "dockerfile parse error on line 2: ARG names can not be blank"),
    ("FROM a\nARG\n", "dockerfile parse error on line 2: ARG requires at least one argument"),
    ("FROM a\nUSER\n", "dockerfile parse error on line 2: USER requires exactly one argument"),
    ("FROM a\nEXPOSE\n", "dockerfile parse error on line 2: EXPOSE requires at least one argument"),
    ("FROM a\nVOLUME [\"\"]\n", "dockerfile parse error on line 2: VOLUME specified can not be an empty string"),
    ("FROM a\nSHELL /bin/sh -c\n", "dockerfile parse error on line 2: SHELL requires the arguments to be in JSON form"),
    ("FROM a\nSHELL []\n", "dockerfile parse error on line 2: SHELL requires at least one argument"),
    ("FROM a b\n", "dockerfile parse error on line 1: FROM requires either one or three arguments"),
    ("FROM a AS 1x\n", 'dockerfile parse error on line 1: invalid name for build stage: "1x", name can\'t start with '
                       "a number or contain symbols"),
    ("FROM a\nONBUILD ONBUILD RUN x\n",
     "dockerfile parse error on line 2: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("FROM a\nONBUILD from b\n", "dockerfile parse error on line 2: FROM isn't allowed as an ONBUILD trigger"),
    ("FROM a\nONBUILD MAINTAINER me\n",
     "dockerfile parse error on line 2: MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("FROM a\nHEALTHCHECK NONE x\n", "dockerfile parse error on line 2: HEALTHCHECK NONE takes no arguments"),
    ("FROM a\nHEALTHCHECK CMD\n", "dockerfile parse error on line 2: Missing command after HEALTHCHECK CMD"),
    ("FROM a\nHEALTHCHECK\n", "dockerfile parse error on line 2: HEALTHCHECK requires at least one argument"),
    ("FROM a\nHEALTHCHECK foo bar\n",
     'dockerfile parse error on line 2: Unknown type "FOO" in HEALTHCHECK (try CMD)'),
    ("FROM a\nHEALTHCHECK --interval=1us CMD x\n",
     'dockerfile parse error on line 2: Interval "interval" cannot be less than 1ms'),
    ("FROM a\nHEALTHCHECK --timeout=5 CMD x\n",
     'dockerfile parse error on line 2: time: missing unit in duration "5"'),
    ("FROM a\nHEALTHCHECK --timeout=abc CMD x\n", 'dockerfile parse error on line 2: time: invalid duration "abc"'),
    ("FROM a\nHEALTHCHECK --retries=-1 CMD x\n", "dockerfile parse error on line 2: --retries cannot be negative (-1)"),
    ("FROM a\nRUN --network=bridge true\n", 'dockerfile parse error on line 2: invalid network mode "bridge"'),
    ("RUN x\nFROM a\n", "no build stage in current context"),
    ("ARG A\n", "No image was generated. Is your Dockerfile empty?"),
    ("FROM a AS x\nFROM b AS X\n", "x stage name already used"),
    ("# only a comment\n\n", "failed to parse Dockerfile: file with no instructions"),
    ("FROM a\nENV x\n", "failed to parse Dockerfile: ENV must have two arguments"),
    ("FROM a\nENV a=1 b\n",
     'failed to parse Dockerfile: Syntax error - can\'t find = in "b". Must be of the form: name=value'),
    ('FROM a\nCMD ["echo", 1]\n',
     "failed to parse Dockerfile: when using JSON array syntax, arrays must be comprised of strings only"),
    ("# escape=x\nFROM a\n", "failed to parse Dockerfile: invalid escape token 'x' does not match ` or \\"),
    ("# escape=`\n# escape=\\\nFROM a\n", "failed to parse Dockerfile: only one escape parser directive can be used"),
])
def test_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse(text.encode())
    assert str(err.value) == message


def test_empty_dockerfile_named() -> None:
    with pytest.raises(InvalidArgument, match=r"^the Dockerfile \(dev\.Dockerfile\) cannot be empty$"):
        parse(b"", name="dev.Dockerfile")
    with pytest.raises(InvalidArgument, match=r"^failed to parse dev\.Dockerfile: file with no instructions$"):
        parse(b"   \n", name="dev.Dockerfile")


def test_ignored_flags_like_buildkit() -> None:
    d = parse(b"FROM a\nSTOPSIGNAL --x SIGTERM\nHEALTHCHECK --bogus NONE\nARG --y Z\n")
    stop, health, arg = d.stages[0].instructions
    assert stop.flags == () and stop.args == ("SIGTERM",)
    assert health.flags == () and healthcheck(health) == {"Test": ["NONE"]}
    assert arg_decl(arg, {}) == ("Z", None)


def test_directives_only_at_top() -> None:
    d = parse(b"FROM a\n# escape=`\nRUN a \\\n  b\n")
    assert d.escape == "\\" and d.stages[0].instructions[0].rest == "a   b"
    assert parse(b"# syntax=docker/dockerfile:1.7\n#check=skip=all\n# escape=`\nFROM a\n").escape == "`"


# --- heredocs (buildkit parser_heredoc_test.go and dispatchRun/parseSourcesAndDest) ------------------------------

HEREDOC_DOCKERFILE = """
FROM alpine:3.6

ENV NAME=me

RUN ls

USER <<INVALID
INVALID

RUN <<EMPTY
EMPTY

RUN 3<<EMPTY2
EMPTY2

RUN "<<NOHEREDOC"

RUN <<INDENT
\tfoo
\tbar
INDENT

RUN <<-UNINDENT
\tbaz
\tquux
UNINDENT

RUN <<-UNINDENT2
\tbaz
\tquux
\tUNINDENT2

RUN <<-EXPAND
\texpand $NAME
EXPAND

RUN <<-'NOEXPAND'
\tdon't expand $NAME
NOEXPAND

RUN <<COPY
echo hello world
echo foo bar
COPY

RUN <<COMMENT
# internal comment
echo hello world
echo foo bar # trailing comment
COMMENT

RUN --mount=type=cache,target=/foo <<MOUNT
echo hello
MOUNT

COPY <<FILE1 <<FILE2 /dest
content 1
FILE1
content 2
FILE2

COPY <<EOF /quotes
"foo"
'bar'
EOF

COPY <<X <<Y /dest
Y
X
X
Y

RUN <<COMPLEX python3
print('hello world')
COMPLEX

COPY <<file.txt /dest
hello world
file.txt

RUN <<eo'f'
echo foo
eof

RUN <<eo\\'f
echo foo
eo'f

RUN <<'e'o\\'f
echo foo
eo'f

RUN <<'one two'
echo bar
one two

RUN <<$EOF
$EOF

RUN <<  EOF
EOF

RUN <<  EOF  > foo
EOF
\t"""

H = df.Heredoc
HEREDOC_EXPECTED: list[list[df.Heredoc]] = [
    [], [], [], [],  # ENV, RUN ls, USER <<INVALID, INVALID
    [H("EMPTY", "", True)],
    [H("EMPTY2", "", True, fd=3)],
    [],
    [H("INDENT", "\tfoo\n\tbar\n", True)],
    [H("UNINDENT", "\tbaz\n\tquux\n", True, chomp=True)],
    [H("UNINDENT2", "\tbaz\n\tquux\n", True, chomp=True)],
    [H("EXPAND", "\texpand $NAME\n", True, chomp=True)],
    [H("NOEXPAND", "\tdon't expand $NAME\n", False, chomp=True)],
    [H("COPY", "echo hello world\necho foo bar\n", True)],
    [H("COMMENT", "# internal comment\necho hello world\necho foo bar # trailing comment\n", True)],
    [H("MOUNT", "echo hello\n", True)],
    [H("FILE1", "content 1\n", True), H("FILE2", "content 2\n", True)],
    [H("EOF", "\"foo\"\n'bar'\n", True)],
    [H("X", "Y\n", True), H("Y", "X\n", True)],
    [H("COMPLEX", "print('hello world')\n", True)],
    [H("file.txt", "hello world\n", True)],
    [H("eof", "echo foo\n", False)],
    [H("eo'f", "echo foo\n", True)],
    [H("eo'f", "echo foo\n", False)],
    [H("one two", "echo bar\n", False)],
    [H("$EOF", "", True)],
    [H("EOF", "", True)],
    [H("EOF", "", True)],
]


def test_heredocs_parsed_like_buildkit() -> None:
    nodes, _, _ = df._parse_nodes(HEREDOC_DOCKERFILE)
    assert [n.heredocs for n in nodes[1:]] == HEREDOC_EXPECTED
    # the INVALID line after USER is an instruction of its own, as in buildkit
    assert [n.cmd for n in nodes[2:5]] == ["RUN", "USER", "INVALID"]


def test_json_form_has_no_heredocs() -> None:
    nodes, _, _ = df._parse_nodes('FROM a\nRUN ["whoami"]\nRUN ["<<EOF"]\nRUN ["<<\'EOF\'"]\n')
    assert all(n.heredocs == [] for n in nodes)


@pytest.mark.parametrize("src", ["<<EOF", "<<'EOF'", '<<"EOF"', "<<-EOF", "<<-'EOF'", '<<-"EOF"', '<<EO"F"',
                                 "<< EOF", "<<- EOF"])
def test_heredoc_markers(src: str) -> None:
    doc = df.parse_heredoc(src)
    assert doc is not None and doc.name == "EOF"
    assert doc.expand == ("'" not in src and '"' not in src) and doc.chomp == ("-" in src)


@pytest.mark.parametrize("src", ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh",
                                 "<<'EOF", '<<"EOF', "<<EOF'", '<<EOF"'])  # the last four: buildkit's errors
def test_not_heredoc_markers(src: str) -> None:
    assert df.parse_heredoc(src) is None


@pytest.mark.parametrize(("line", "names"), [
    ("RUN <<EOF", ["EOF"]), ("RUN <<-EOF", ["EOF"]), ("RUN <<- EOF", []), ("RUN << -EOF", ["-EOF"]),
    ("RUN <<'EOF'", ["EOF"]), ("RUN 4<<EOF", ["EOF"]), ("RUN <<EOF <<EOF2", ["EOF", "EOF2"]),
    ("RUN '<<EOF'", []), ('RUN "<<EOF"', []), ("RUN echo ${X:-a b} <<EOF", ["EOF"]),
])
def test_heredocs_from_line(line: str, names: list[str]) -> None:
    # "<<- EOF" lexes as the words "<<-" and "EOF": no heredoc (buildkit's test only checks the ones it finds)
    assert [d.name for d in df._heredocs_from_line(line)] == names


def test_heredoc_chomp() -> None:
    assert H("x", "\thello\n\tworld\n", chomp=True).body == "hello\nworld\n"
    assert H("x", "\thello\n", chomp=False).body == "\thello\n"


def _run(text: str) -> Instruction:
    return parse(f"FROM a\n{text}".encode()).stages[0].instructions[0]


def test_run_heredoc_commands() -> None:
    sh = ["/bin/sh", "-c"]
    simple = _run("RUN <<EOF\necho hi\necho there\nEOF\n")
    assert command(simple, sh) == [*sh, "echo hi\necho there\n"]
    assert simple.original == "RUN <<EOF\necho hi\necho there\nEOF" and simple.line == 2
    assert command(_run("RUN <<-EOF\n\techo hi\n\tEOF\n"), sh) == [*sh, "echo hi\n"]
    assert command(_run("RUN <<EOF\nEOF\n"), sh) == [*sh, ""]
    # a command line with heredocs goes to the shell whole; the shell chomps <<- itself
    complex_ = _run("RUN python3 <<-EOF\n\tprint(1)\n\tEOF\n")
    assert command(complex_, sh) == [*sh, "python3 <<-EOF\n\tprint(1)\nEOF"]
    two = _run("RUN cat <<A > /a && cat <<'B' > /b\none $X\nA\ntwo\nB\n")
    assert command(two, sh) == [*sh, "cat <<A > /a && cat <<'B' > /b\none $X\nA\ntwo\nB"]
    assert two.original == "RUN cat <<A > /a && cat <<'B' > /b\none $X\nA\ntwo\nB"
    # a "#!" script is a file of its own, run by path
    script = _run("RUN <<EOT\n#!/usr/bin/env python3\nprint('hi')\nEOT\n")
    assert df.run_script(script) == df.InlineFile("EOT", "#!/usr/bin/env python3\nprint('hi')\n")
    assert command(script, ["/bin/bash", "-c"]) == ["/bin/bash", "-c", "/dev/pipes/EOT"]
    assert df.run_script(simple) is None and df.run_script(complex_) is None
    # the heredoc's lines are not instructions; the next one is
    d = parse(b"FROM a\nRUN <<EOF\nFROM b\nEOF\nRUN true\n")
    assert len(d.stages) == 1 and [i.line for i in d.stages[0].instructions] == [2, 5]
    # no heredoc in JSON form, nor quoted
    assert command(_run('RUN ["sh", "-c", "<<EOF"]\n'), sh) == ["sh", "-c", "<<EOF"]
    assert command(_run("RUN echo '<<EOF'\n"), sh) == [*sh, "echo '<<EOF'"]


def test_copy_heredoc_sources() -> None:
    env = {"NAME": "me"}
    copy = _run("COPY --chmod=755 <<one a.txt <<'two' <<-three /dest/\n$NAME\none\n$NAME\ntwo\n\t\\$NAME \"$NAME\"\n"
                "three\n")
    paths, files, dest = df.copy_sources(copy, env)
    assert paths == ["a.txt"] and dest == "/dest/"
    assert files == [df.InlineFile("one", "me\n"), df.InlineFile("two", "$NAME\n"),
                     df.InlineFile("three", '$NAME "me"\n')]
    assert copy.flag("chmod") == "755"
    plain = _run("COPY a b $NAME/\n")
    assert df.copy_sources(plain, env) == (["a", "b"], [], "me/")


def test_onbuild_keeps_heredocs_in_trigger() -> None:
    onbuild = _run("ONBUILD RUN <<EOF\necho from trigger\nEOF\n")
    assert onbuild.rest == "RUN <<EOF\necho from trigger\nEOF"
    trigger = parse_trigger(onbuild.rest)
    assert command(trigger, ["/bin/sh", "-c"]) == ["/bin/sh", "-c", "echo from trigger\n"]


@pytest.mark.parametrize(("text", "message"), [
    ("FROM a\nRUN <<EOF\necho hi\n", "failed to parse Dockerfile: unterminated heredoc"),
    ("FROM a\nCOPY <<EOF <<DEST\nx\nEOF\ny\nDEST\n",
     "dockerfile parse error on line 2: COPY cannot accept a heredoc as a destination"),
    ("FROM a\nADD x <<EOF\nEOF\n", "dockerfile parse error on line 2: ADD cannot accept a heredoc as a destination"),
    ("FROM a\nCOPY <<EOF\nx\nEOF\n", "dockerfile parse error on line 2: COPY requires at least two arguments, but only "
                                     "one was provided. Destination could not be determined"),
])
def test_heredoc_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse(text.encode())
    assert str(err.value) == message
