"""The layers import in one direction: cli -> web -> jobs -> {model, data, index, eval} -> core, the
jobs by package without a circle, and no import inside a function but a heavy library's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from runs import model_layer_modules

PKG = Path(__file__).resolve().parents[1] / "zscir_cli"
ALLOWED = {
    "core": {"core"},
    "model": {"core", "model"},
    "data": {"core", "data"},
    "index": {"core", "index"},
    "eval": {"core", "eval"},
    "jobs": {"core", "model", "data", "index", "eval", "jobs"},
    "web": {"core", "model", "data", "index", "eval", "jobs", "web"},
    "cli": {"core", "model", "data", "index", "eval", "jobs", "web", "cli"},
}


def _imports(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "zscir_cli" and len(parts) > 1:
                layers.add(parts[1])
    return layers


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_below_itself(layer):
    for path in (PKG / layer).rglob("*.py"):
        bad = _imports(path) - ALLOWED[layer] - {"__init__"}
        assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_model_layer_loads_neither_typer_nor_rich(tmp_path):
    # imported first by the tests' forkserver, a fresh interpreter (tests/fresh_imports.py)
    mods = model_layer_modules(tmp_path)
    assert {"torch", "open_clip", "zscir_cli.model.backbone", "zscir_cli.jobs.demo.run"} <= mods
    assert not {"typer", "rich"} & mods


def test_cli_app_starts_without_torch():  # so that --help answers at once
    mods = _modules_after("import zscir_cli.cli.app")
    assert not {"torch", "open_clip", "faiss", "datasets"} & mods


def test_functions_and_modules_stay_small():
    """A reader can hold a function in their head: at most 80 lines a function, 400 a module."""
    too_long = []
    for path in PKG.rglob("*.py"):
        source = path.read_text()
        if len(source.splitlines()) > 400:
            too_long.append(f"{path.relative_to(PKG)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_long.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long


def _module_imports() -> dict[str, set[str]]:
    """module -> the zscir modules it imports at module level."""
    mods = {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.parse(path.read_text()).body:
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zscir_cli"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges[name] |= {t for t in targets if t in mods and t != name}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for u in sorted(edges):
        if u not in state:
            visit(u)
    return found


def test_no_import_circle_between_modules_nor_between_jobs():
    edges = _module_imports()
    assert _cycles(edges) == []

    def job(m: str) -> str:  # zscir_cli.jobs.training.stage1 -> zscir_cli.jobs.training
        parts = m.split(".")
        return ".".join(parts[:3]) if len(parts) > 3 and parts[1] == "jobs" else ".".join(parts[:2])

    packages: dict[str, set[str]] = {}
    for u, vs in edges.items():
        packages.setdefault(job(u), set()).update(job(v) for v in vs if job(v) != job(u))
    assert _cycles(packages) == []
    assert {"zscir_cli.jobs.training", "zscir_cli.jobs.retrieval", "zscir_cli.jobs.protocols",
            "zscir_cli.jobs.datasets", "zscir_cli.jobs.service", "zscir_cli.jobs.demo"} <= set(packages)


def test_no_zscir_import_inside_a_function_but_in_the_commands():
    """Commands import their jobs lazily, so that --help answers at once; below them every zscir
    import is at the top of its module, where a circle would show."""
    inside = []
    for path in PKG.rglob("*.py"):
        if path.relative_to(PKG).parts[0] == "cli":
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zscir_cli") and \
                            not _says_why(path, node.lineno):
                        inside.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert inside == []


def _says_why(path: Path, line: int) -> bool:
    """A lazy import of a module that loads a heavy library says so in a comment on its line."""
    return "heavy" in path.read_text().splitlines()[line - 1] or "torch" in path.read_text().splitlines()[line - 1]


def test_every_data_file_of_the_package_ships():
    """A non-editable `pip install .` carries the page's static files and the model configs: every
    file of the package that is not Python is named by the package data of pyproject.toml."""
    import fnmatch

    import tomllib

    data = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [p for p in PKG.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert files
    for path in files:
        rel = path.relative_to(PKG.parent)
        owners = [pkg for pkg in data if rel.as_posix().startswith(pkg.replace(".", "/") + "/")]
        assert any(fnmatch.fnmatch(rel.relative_to(pkg.replace(".", "/")).as_posix(), pattern)
                   for pkg in owners for pattern in data[pkg]), rel
