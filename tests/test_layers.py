"""The layers import in one direction: cli -> pipeline -> {model, data, index, eval} -> core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "zscir_cli"
ALLOWED = {
    "core": {"core"},
    "model": {"core", "model"},
    "data": {"core", "data"},
    "index": {"core", "index"},
    "eval": {"core", "eval"},
    "pipeline": {"core", "model", "data", "index", "eval", "pipeline"},
    "cli": {"core", "model", "data", "index", "eval", "pipeline", "cli"},
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


def test_model_layer_loads_neither_typer_nor_rich():
    mods = _modules_after("import zscir_cli.model.backbone, zscir_cli.model.text, zscir_cli.jobs.demo.run")
    assert "torch" in mods and not {"typer", "rich"} & mods


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
