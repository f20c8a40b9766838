"""Pretraining speed with the scenes rendered by a worker process against rendering them in the
training process, between steps.

`zscir pretrain` renders every step's batch from the shapes world (a batch is a function of the
step). With `--workers N` (on CUDA by default: one per spare core) DataLoader workers render the
next steps while the model trains on this one; the weights are the same either way
(tests/test_pretrain.py). On the CPU the default is none: measured here, on 2 cores, one worker
takes its core from the training's threads and gains nothing.
Both settings train the same model, from the same seed, for the same steps, in one run of this
script, alternating which goes first, each timed `--repeats` times; the fastest of each is
compared. Prints steps
per second and the ratio.

    python benchmarks/pretrain_workers.py [--steps 150] [--repeats 2] [--workers 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="render workers of the second setting")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = ap.parse_args()

    import torch

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.shapes.world import WorldConfig
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.datasets.shapes import prepare_shapes
    from zscir_cli.jobs.training.config import PretrainConfig
    from zscir_cli.jobs.training.pretrain import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        store = ArtifactStore(Path(tmp))
        data, _ = prepare_shapes(Context(store=store), WorldConfig(train_pairs=200, val_pairs=100, cir_queries=20))
        cfg = PretrainConfig(data=data.key, steps=args.steps, steps_per_epoch=args.steps)
        best: dict[int, float] = {}
        for r in range(args.repeats):
            order = (0, args.workers) if r % 2 == 0 else (args.workers, 0)  # neither always runs first
            for workers in order:  # the same run again (--force), rendered elsewhere
                art, _ = pretrain(Context(store=store, device=args.device, workers=workers), cfg, force=True)
                seconds = art.manifest["eval"]["train_seconds"]  # the training alone, not its evaluation
                best[workers] = min(best.get(workers, float("inf")), seconds)
        print(f"pretraining {args.steps} steps on {args.device}, batch {cfg.batch_size}, {cfg.model}, torch threads "
              f"{torch.get_num_threads()}, best of {args.repeats}:")
        for workers, seconds in best.items():
            print(f"  render workers {workers}: {seconds:.1f} s, {args.steps / seconds:.2f} steps/s")
        print(f"speed-up with {args.workers} worker(s): {best[0] / best[args.workers]:.2f}x")


if __name__ == "__main__":
    main()
