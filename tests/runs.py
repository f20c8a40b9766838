"""Helpers for tests that train: one process against two under torchrun, and run metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A port no one listens on now (the OS picks it), so parallel test runs never collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def zscir(args: list[str], cache: Path, env: dict[str, str] | None = None,
          timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m zscir_cli ARGS --cache-dir CACHE` in a subprocess, one thread."""
    return subprocess.run([sys.executable, "-m", "zscir_cli", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          timeout=timeout, check=False)


def one_and_two_processes(args: list[str], single_cache: Path, ddp_cache: Path,
                          port: int | None = None) -> tuple[dict, dict]:
    """Run `zscir ARGS --json` in one process and under torchrun with two (gloo, one thread each);
    returns both JSON results (only rank 0 prints). `port`: the rendezvous port (default: a free one)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = zscir(args, single_cache)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(port or free_port()), "-m", "zscir_cli", *args,
                          "--cache-dir", str(ddp_cache)],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    return json.loads(one.stdout), json.loads(two.stdout)


def losses(run_dir: Path) -> list[float]:
    """The per-epoch loss curve of a finished run."""
    from zscir_cli.pipeline.training import read_metrics

    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]
