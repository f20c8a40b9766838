"""The scripts under benchmarks/ stay in step with the package: each imports (a renamed or moved
function of zscir fails here, not when someone next runs the script), and a script meant to be
run has a `main` behind `if __name__ == "__main__"`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCH.glob("*.py"))
HELPERS = {"serve_client.py", "cotenant.py"}  # imported by serve_latency.py, not run alone


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import each other as run from there
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # the script's own body runs only under __main__
    if script.name not in HELPERS:
        assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
        assert 'if __name__ == "__main__":' in script.read_text()
