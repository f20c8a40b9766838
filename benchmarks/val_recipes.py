"""Stage II recipes compared on the val split, in the val wording and in the training wording,
over the seed caches that `benchmarks/claims.py --split val` made: how defaults are chosen.

Each recipe is `NAME="SYNTH FLAGS | COMPOSE-TRAIN FLAGS"`; NAME=@run:S=RUN,... evaluates runs
already trained (one per seed) instead. For every seed cache it writes the recipe's triplets with
`zscir synth --data shapes --mode template --match content --max-triplets 5000` and the synth
flags, trains `zscir compose-train` on the cache's default Stage I run (token learner + VSI + STA,
the demo's) with the demo's Stage II settings and the compose flags, and asks the val queries in
both wordings. Prints one Markdown table (per seed and mean R@1, mean R@10, R@1 by edit type, and
how much higher the training wording scores), every number as the commands printed it; runs
already in a cache are reused, so a rerun only evaluates.

    python benchmarks/val_recipes.py --cache 0=DIR/seed-0 --cache 1=DIR/seed-1 \\
        'default=|' 'four wordings=--wordings 4|'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

MODEL = ["--model", "zscir-shapes-rn", "--pretrained", "latest"]
STAGE2 = ["--epochs", "10", "--batch-size", "128", "--lr", "1e-3"]  # the demo's (DEMO_STAGE2)
EDITS = ("add", "background", "colour", "remove", "shape", "size")


def zscir(*args: str) -> dict:
    out = subprocess.run(["zscir", *args, "--json"], stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"zscir {' '.join(args)} failed with exit code {out.returncode}")
    return json.loads(out.stdout)


def default_stage1(cache: Path) -> str:
    """The cache's Stage I run with the demo's settings (VSI and STA on, 10 epochs): the one its
    tscir rows are trained on, never an ablation's."""
    found = []
    for manifest in sorted(cache.glob("stage1/*/manifest.json")):
        m = json.loads(manifest.read_text())
        c = m["config"]
        if m.get("method") == "stage1" and c.get("sta") and c.get("vsi_layers") and c.get("epochs") == 10:
            found.append(m["key"])
    if len(found) != 1:
        sys.exit(f"{cache}: expected one default Stage I run, found {len(found)}: make it with benchmarks/claims.py")
    return found[0]


def seed_of(cache: Path) -> tuple[int, str]:
    m = json.loads(next(cache.glob("dataset/*/manifest.json")).read_text())
    return m["config"]["seed"], m["key"]


def run_recipe(cache: Path, spec: str) -> str:
    seed, data = seed_of(cache)
    sflags, _, cflags = spec.partition("|")
    out = cache / f"val-recipe-{hashlib.sha256(sflags.strip().encode()).hexdigest()[:12]}.jsonl"
    if not out.is_file():
        zscir("synth", "--data", data, "--mode", "template", "--match", "content", "--max-triplets", "5000",
              "--seed", str(seed), "--out", str(out), *MODEL, "--cache-dir", str(cache), *shlex.split(sflags))
    return zscir("compose-train", "--triplets", str(out), "--stage1", default_stage1(cache), *STAGE2,
                 "--seed", str(seed), *MODEL, "--cache-dir", str(cache), *shlex.split(cflags))["run"]


def evaluate(cache: Path, run: str, wording: str) -> dict:
    ev = zscir("eval", "shapes", "--split", "val", "--method", "tscir", "--run", run, "--no-target-caption",
               "--wording", wording, *MODEL, "--cache-dir", str(cache))
    return ev["results"]["tscir"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", action="append", required=True, metavar="SEED=DIR",
                    help="a seed's cache made by benchmarks/claims.py --split val (repeat per seed)")
    ap.add_argument("recipes", nargs="+", metavar='NAME="SYNTH FLAGS|COMPOSE FLAGS"')
    args = ap.parse_args()
    caches = {int(s): Path(d) for s, _, d in (c.partition("=") for c in args.cache)}
    rows = []
    for spec in args.recipes:
        name, _, flags = spec.partition("=")
        per_seed = {}
        for seed, cache in caches.items():
            if flags.startswith("@run:"):
                run = dict(p.split("=") for p in flags[5:].split(","))[str(seed)]
            else:
                run = run_recipe(cache, flags)
            per_seed[seed] = {w: evaluate(cache, run, w) for w in ("val", "train")}
            print(f"{name} seed {seed}: run {run}", file=sys.stderr)
        rows.append((name, flags, per_seed))
    seeds = list(caches)
    print(f"Shapes lab, val split, seeds {', '.join(map(str, seeds))}: tscir R@1 in the val wording, unless "
          "the column says otherwise (means over the seeds).\n")
    print("| recipe | synth flags / compose-train flags | R@1 per seed | R@1 | R@10 | "
          + " | ".join(EDITS) + " | R@1 in the training wording | training wording's excess |")
    print("|---|---|---|---|---|" + "---|" * len(EDITS) + "---|---|")
    for name, flags, per_seed in rows:
        def mean(wording: str, key: str, group: str | None = None) -> float:
            return statistics.mean((r[wording][group][key] if group else r[wording][key]) for r in per_seed.values())
        val, train = mean("val", "R@1"), mean("train", "R@1")
        shown = "runs given" if flags.startswith("@run:") else f"`{flags.strip()}`"
        print(f"| {name} | {shown} | " + " / ".join(f"{per_seed[s]['val']['R@1']:.1f}" for s in seeds)
              + f" | {val:.1f} | {mean('val', 'R@10'):.1f} | "
              + " | ".join(f"{mean('val', e, 'by_edit_R@1'):.1f}" for e in EDITS)
              + f" | {train:.1f} | {100 * (train / val - 1):+.1f}% |")


if __name__ == "__main__":
    main()
