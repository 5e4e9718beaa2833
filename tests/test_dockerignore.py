"""berth.dockerignore against moby's patternmatcher/ignorefile tests and Go's filepath.Match tests."""

from __future__ import annotations

import pytest

from berth.dockerignore import BadPattern, Matcher, fnmatch, has_wildcards, parse

# (pattern, path, excluded): patternmatcher_test.go TestMatches
SINGLE = [
    ("**", "file", True), ("**", "file/", True), ("**/", "file", True), ("**/", "file/", True),
    ("**", "/", True), ("**/", "/", True), ("**", "dir/file", True), ("**/", "dir/file", True),
    ("**", "dir/file/", True), ("**/", "dir/file/", True), ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True), ("dir/**", "dir/file", True), ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True), ("dir/**", "dir/dir2/file/", True), ("**/dir", "dir", True),
    ("**/dir", "dir/file", True), ("**/dir2/*", "dir/dir2/file", True), ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True), ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True), ("**file", "dir/file", True), ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True), ("**/file", "dir/dir/file", True), ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True), ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True), ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True), ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True), ("**/**/*.txt", "file.txt", True), ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True), ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False), ("a/*.txt", "a/file.txt", True), ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False), ("a[b-d]e", "ace", True), ("a[b-d]e", "aae", False), ("a[^b-d]e", "aze", True),
    (".*", ".foo", True), (".*", "foo", False), ("abc.def", "abcdef", False), ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False), ("abc?def", "abcZdef", True), ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True), ("**/foo/bar", "foo/bar", True), ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True), ("abc/**", "abc", False), ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True), ("**/.foo", ".foo", True), ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True), ("a(b)c/def", "a(b)c/xyz", False), ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
    # the package-level tests (Matches) that MatchesOrParentMatches also satisfies
    ("*", "fileutils.go", True), ("*.go", "fileutils.go", True), ("*.go", ".", False),
]

MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["docs"], "docs/sub/deep/file", True),
    ([], "/any/path/there", False),
]


@pytest.mark.parametrize(("pattern", "path", "want"), SINGLE)
def test_single_pattern(pattern: str, path: str, want: bool) -> None:
    assert Matcher([pattern]).excluded(path) is want


@pytest.mark.parametrize(("patterns", "path", "want"), MULTI)
def test_multi_pattern(patterns: list[str], path: str, want: bool) -> None:
    assert Matcher(patterns).excluded(path) is want


def test_parent_excluded_shortcut_agrees() -> None:
    m = Matcher(["build"])
    assert m.excluded("build/x", parent_excluded=True)
    assert m.excluded("build/x") is True
    with_exc = Matcher(["build", "!build/keep"])
    assert with_exc.excluded("build/keep", parent_excluded=True) is False
    assert with_exc.has_exceptions() and not m.has_exceptions()


@pytest.mark.parametrize("patterns", [["!"], ["["], ["a["], ["\\"], ["[Local-Only]/"]])
def test_bad_patterns(patterns: list[str]) -> None:
    with pytest.raises(BadPattern):
        Matcher(patterns)


def test_exception_flag_and_whitespace() -> None:
    assert Matcher(["docs", "  !docs/README.md"]).has_exceptions()
    assert Matcher(["docs", "!docs/README.md  "]).has_exceptions()
    assert not Matcher(["docs", "config", ""]).has_exceptions()


# Go's filepath.Match tests (patternmatcher_test.go matchTests); None = ErrBadPattern
GO_MATCH = [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True), ("a*", "abc", True),
    ("a*", "ab/c", False), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False), ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True), ("a*b?c*x", "abxbbxdbxebxczzy", False), ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True), ("ab[e-g]", "abc", False), ("ab[^c]", "abc", False), ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True), ("a\\*b", "a*b", True), ("a\\*b", "ab", False), ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True), ("a???b", "a☺b", False), ("a[^a][^a][^a]b", "a☺b", False), ("[a-ζ]*", "\u03b1", True),
    ("*[a-ζ]", "A", False), ("a?b", "a/b", False), ("a*b", "a/b", False), ("[\\]a]", "]", True),
    ("[\\-]", "-", True), ("[x\\-]", "x", True), ("[x\\-]", "-", True), ("[x\\-]", "z", False),
    ("[\\-x]", "x", True), ("[\\-x]", "-", True), ("[\\-x]", "a", False), ("[]a]", "]", None), ("[-]", "-", None),
    ("[x-]", "x", None), ("[x-]", "-", None), ("[x-]", "z", None), ("[-x]", "x", None), ("[-x]", "-", None),
    ("[-x]", "a", None), ("\\", "a", None), ("[a-b-c]", "a", None), ("[", "a", None), ("[^", "a", None),
    ("[^bc", "a", None), ("a[", "a", None), ("a[", "ab", None), ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "name", "want"), GO_MATCH)
def test_go_filepath_match(pattern: str, name: str, want: bool | None) -> None:
    if want is None:
        with pytest.raises(BadPattern):
            fnmatch(pattern, name)
    else:
        assert fnmatch(pattern, name) is want


@pytest.mark.parametrize(("pattern", "name", "want"), [(p, n, w) for p, n, w in GO_MATCH if p != "a*"])
def test_matcher_agrees_with_go_match(pattern: str, name: str, want: bool | None) -> None:
    # patternmatcher's TestMatch: the package-level Matches gives filepath.Match's answers ("a*" vs "ab/c" aside:
    # there the parent "ab" matches)
    if want is None:
        with pytest.raises(BadPattern):
            Matcher([pattern]).excluded(name)
    else:
        assert Matcher([pattern]).excluded(name) is want


def test_parse_ignorefile() -> None:
    data = b"\xef\xbb\xbf# comment\n  /abs/path  \r\n\n!  /keep/../keep2\n#x\n  # not a comment\n./a/b/\n!\n/\n"
    assert parse(data) == ["abs/path", "!keep2", "# not a comment", "a/b", "!", "/"]
    assert parse("") == []


def test_has_wildcards() -> None:
    assert has_wildcards("*.txt") and has_wildcards("a?") and has_wildcards("[ab]")
    assert not has_wildcards("plain/file") and not has_wildcards("a\\*b")
