"""Helpers for tests that train: one process against two under torchrun, and run metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def one_and_two_processes(args: list[str], single_cache: Path, ddp_cache: Path, port: int) -> tuple[dict, dict]:
    """Run `zscir ARGS --json` in one process and under torchrun with two (gloo, one thread each);
    returns both JSON results (only rank 0 prints)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "zscir_cli", *args, "--cache-dir", str(single_cache)],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(port), "-m", "zscir_cli", *args, "--cache-dir", str(ddp_cache)],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    return json.loads(one.stdout), json.loads(two.stdout)


def losses(run_dir: Path) -> list[float]:
    """The per-epoch loss curve of a finished run."""
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
