"""Layering: lower layers never import higher ones (checked on the source with ast, TYPE_CHECKING imports included)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "berth"

# bottom to top; the same level may import each other
LAYERS: dict[str, int] = {
    "errors": 0, "oci": 0, "units": 0, "dockerignore": 0,
    "kernel": 1, "httpserver": 1,
    "content": 2, "snapshots": 2, "layers": 2, "metadata": 2,
    "runtime": 2, "network": 2, "volumes": 2,
    "images": 3,
    "build": 4, "registry": 4,
    "engine": 5,
    "api": 6,
    "daemon": 7,
}
# talk to the daemon over HTTP only; may import each other and the value types
CLIENT_SIDE = {"cli", "client", "compose", "dashboard"}
CLIENT_ALLOWED = CLIENT_SIDE | {"oci", "errors", "units", "dockerignore"}
ANYTHING = {"testing"}
ROOT = "__root__"  # berth/__init__.py (version string): importable by all


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "berth":
        return None
    return parts[1] if len(parts) > 1 else ROOT


def _imports(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``, relative ones resolved."""
    package = list(path.relative_to(src.parent).parts[:-1])
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from berth import images` imports the subpackage
            if module == "berth":
                found += [(node.lineno, f"berth.{alias.name}") for alias in node.names
                          if (src / alias.name).is_dir() or (src / f"{alias.name}.py").exists()]
    return found


def _sources(src: Path = SRC) -> list[Path]:
    return sorted(p for p in src.rglob("*.py") if "__pycache__" not in p.parts)


def _source_package(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else ROOT


def test_every_package_has_a_layer() -> None:
    unknown = set()
    for path in _sources():
        pkg = _source_package(path)
        if pkg not in LAYERS and pkg not in CLIENT_SIDE and pkg not in ANYTHING and pkg != ROOT:
            unknown.add(pkg)
    assert not unknown, f"give these packages a place in LAYERS or CLIENT_SIDE: {sorted(unknown)}"


def violations(src: Path = SRC) -> list[str]:
    """Every import in the tree at ``src`` (a ``berth`` package directory) that breaks the layering."""
    problems: list[str] = []
    for path in _sources(src):
        src_pkg = _source_package(path, src)
        if src_pkg in ANYTHING:
            continue
        for line, module in _imports(path, src):
            target = _package_of(module)
            where = f"{path.relative_to(src.parent)}:{line} imports {module}"
            if target is None:
                if LAYERS.get(src_pkg) == 0 and module.split(".")[0] not in sys.stdlib_module_names:
                    problems.append(f"{where}: errors/oci may import only the standard library")
                continue
            if target in (ROOT, src_pkg):
                continue
            if target == "daemon":
                problems.append(f"{where}: only testing may import the daemon")
            elif target in ANYTHING:
                problems.append(f"{where}: nothing in the product imports testing")
            elif src_pkg == ROOT:
                problems.append(f"{where}: berth/__init__ stays import-free")
            elif src_pkg in CLIENT_SIDE:
                if target not in CLIENT_ALLOWED:
                    problems.append(f"{where}: client-side code talks HTTP only")
            elif target in CLIENT_SIDE:
                problems.append(f"{where}: the server side never imports client-side code")
            elif target in LAYERS and src_pkg in LAYERS and LAYERS[target] > LAYERS[src_pkg]:
                problems.append(f"{where}: {src_pkg} (layer {LAYERS[src_pkg]}) is below {target} "
                                f"(layer {LAYERS[target]})")
    return problems


def test_no_upward_imports() -> None:
    problems = violations()
    assert not problems, "\n".join(problems)


def test_httpserver_needs_only_h11() -> None:
    """The shared HTTP core sits beside kernel but needs neither it nor anything above: stdlib, h11, errors."""
    allowed = {"h11", "berth.errors"}
    extra = [f"{path.name}:{line} imports {module}" for path in _sources(SRC / "httpserver")
             for line, module in _imports(path)
             if module.split(".")[0] not in sys.stdlib_module_names and module not in allowed
             and not module.startswith("berth.httpserver")]
    assert not extra, extra


def test_checker_sees_violations(tmp_path: Path) -> None:
    root = tmp_path / "berth"
    files = {
        "__init__.py": "",
        "oci/__init__.py": "import h11\nimport json\n",
        "oci/x.py": "from ..engine import events\n",
        "kernel/m.py": "from berth.images import store\n",
        "images/ok.py": "from berth.kernel import mount\nfrom . import other\nfrom berth import __version__\n",
        "engine/y.py": "from berth import api\n",
        "api/z.py": "import berth.daemon.main\n",
        "cli/c.py": "from berth.engine import images\nfrom berth.client import http\n",
        "daemon/main.py": "from berth.api import server\nfrom berth.testing import daemon\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = "\n".join(violations(root))
    for expected in ("berth/oci/__init__.py:1 imports h11", "berth/oci/x.py:1 imports berth.engine",
                     "berth/kernel/m.py:1 imports berth.images", "berth/engine/y.py:1 imports berth.api",
                     "berth/api/z.py:1 imports berth.daemon.main", "berth/cli/c.py:1 imports berth.engine",
                     "berth/daemon/main.py:2 imports berth.testing"):
        assert expected in found, found
    assert "images/ok.py" not in found and "c.py:2" not in found and "json" not in found
