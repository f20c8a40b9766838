"""What tests that run zscir in processes share: a prepared world, a folder of renders, one
process against two under torchrun, and run metrics."""

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


def torchrun(args: list[str], cache: Path, env: dict[str, str] | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """`zscir ARGS --cache-dir CACHE` under torchrun with two processes (gloo, one thread each)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), "-m", "zscir_cli", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          timeout=timeout, check=False)


def prepared_world(root: Path, **world) -> Path:
    """A cache at `root` holding a small prepared shapes world (WorldConfig fields in `world`)."""
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.shapes import WorldConfig
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.datasets.shapes import prepare_shapes

    prepare_shapes(Context(store=ArtifactStore(root)), WorldConfig(**world))
    return root


def rendered_gallery(root: Path, n: int, name: str = "img{i}.png") -> Path:
    """A folder of `n` shapes renders (32 px, seed 5) named by `name`."""
    from zscir_cli.data import shapes

    root.mkdir(parents=True, exist_ok=True)
    cfg = shapes.WorldConfig(seed=5, image_size=32)
    for i in range(n):
        shapes.render_record(cfg, shapes.pair_record(cfg, "train", i)).save(root / name.format(i=i))
    return root


def one_and_two_processes(args: list[str], single_cache: Path, ddp_cache: Path) -> tuple[dict, dict]:
    """Run `zscir ARGS --json` in one process and under torchrun with two (gloo, one thread each);
    returns both JSON results (only rank 0 prints)."""
    one = zscir(args, single_cache)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(args, ddp_cache)
    assert two.returncode == 0, two.stderr[-3000:]
    return json.loads(one.stdout), json.loads(two.stdout)


def losses(run_dir: Path) -> list[float]:
    """The per-epoch loss curve of a finished run."""
    from zscir_cli.jobs.training.loop import read_metrics

    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]
