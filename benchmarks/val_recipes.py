"""Stage II recipes compared on the val split, in the val wording and in the training wording,
over the seed caches that `benchmarks/claims.py --split val` made: how defaults are chosen.

A seed cache is one that `benchmarks/claims.py` made (either split: only the val split is asked
here). Each recipe is `NAME="SYNTH FLAGS | COMPOSE-TRAIN FLAGS"`; NAME=@run:S=RUN,... evaluates
runs already trained (one per seed, each checked to sit on the seed's default Stage I run)
instead. For every seed cache it writes the recipe's triplets with `zscir synth --data shapes
--mode template --match content --max-triplets 5000` and the synth flags, trains `zscir
compose-train` on the cache's default Stage I run (token learner + VSI + STA, the demo's) with
the demo's Stage II settings and the compose flags, and asks the val queries in the val wording
and in the training wording (the package's: a run trained on another synth version's wording is
asked in this one's). Prints one Markdown table: R@1 per seed as `zscir eval` printed it, and the
means over seeds of R@1, R@10 and R@1 by edit type, and how much higher the mean R@1 in the
training wording is (a ratio of means). Runs already in a cache are reused, so a rerun only
evaluates.

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

from zscir_cli.data.synth import SYNTH_VERSION

MODEL = ["--model", "zscir-shapes-rn", "--pretrained", "latest"]
STAGE2 = ["--epochs", "10", "--batch-size", "128", "--lr", "1e-3"]  # the demo's (DEMO_STAGE2)
EDITS = ("add", "background", "colour", "remove", "shape", "size")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def zscir(*args: str) -> dict:
    out = subprocess.run(["zscir", *args, "--json"], stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        fail(f"zscir {' '.join(args)} failed with exit code {out.returncode}")
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
        fail(f"{cache}: expected one default Stage I run, found {len(found)}; make the cache with "
             "benchmarks/claims.py")
    return found[0]


def seed_of(cache: Path) -> tuple[int, str]:
    found = sorted(cache.glob("dataset/*/manifest.json"))
    if len(found) != 1:
        fail(f"{cache}: expected one prepared shapes world, found {len(found)}; make the cache with "
             "benchmarks/claims.py")
    m = json.loads(found[0].read_text())
    return m["config"]["seed"], m["key"]


def check_run(cache: Path, run: str) -> str:
    """A run given with @run: a Stage II run of this cache, on its default Stage I run."""
    manifest = cache / "stage2" / run / "manifest.json"
    if not manifest.is_file():
        fail(f"{cache}: no Stage II run {run}")
    if json.loads(manifest.read_text()).get("stage1_run") != default_stage1(cache):
        fail(f"{cache}: run {run} is not trained on the cache's default Stage I run")
    return run


def run_recipe(cache: Path, spec: str) -> str:
    seed, data = seed_of(cache)
    sflags, _, cflags = spec.partition("|")
    name = hashlib.sha256(f"{SYNTH_VERSION} {sflags.strip()}".encode()).hexdigest()[:12]
    out = cache / f"val-recipe-{name}.jsonl"  # a later synth version writes another file
    if not out.is_file():
        zscir("synth", "--data", data, "--mode", "template", "--match", "content", "--max-triplets", "5000",
              "--seed", str(seed), "--out", str(out), *MODEL, "--cache-dir", str(cache), *shlex.split(sflags))
    return zscir("compose-train", "--triplets", str(out), "--stage1", default_stage1(cache), *STAGE2,
                 "--seed", str(seed), *MODEL, "--cache-dir", str(cache), *shlex.split(cflags))["run"]


def evaluate(cache: Path, run: str, wording: str) -> dict:
    ev = zscir("eval", "shapes", "--split", "val", "--method", "tscir", "--run", run, "--no-target-caption",
               "--wording", wording, *MODEL, "--cache-dir", str(cache))
    return ev["results"]["tscir"]


def parse_caches(values: list[str]) -> dict[int, Path]:
    """`--cache SEED=DIR` options as {seed: folder}; exits with 2 on one that is not that."""
    caches = {}
    for c in values:
        seed, sep, folder = c.partition("=")
        if not sep or not seed.isdigit() or not Path(folder).is_dir():
            fail(f"--cache {c}: expected SEED=DIR with an existing folder, e.g. --cache 0=claims/seed-0")
        if int(seed) in caches:
            fail(f"--cache {c}: seed {seed} is given twice; give one cache per seed")
        caches[int(seed)] = Path(folder)
    return caches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", action="append", required=True, metavar="SEED=DIR",
                    help="a seed's cache made by benchmarks/claims.py --split val (repeat per seed)")
    ap.add_argument("recipes", nargs="+", metavar='NAME="SYNTH FLAGS|COMPOSE FLAGS"')
    args = ap.parse_args()
    caches = parse_caches(args.cache)
    for spec in args.recipes:
        if "=" not in spec or (not spec.partition("=")[2].startswith("@run:") and "|" not in spec):
            fail(f"recipe {spec!r}: expected NAME=\"SYNTH FLAGS|COMPOSE FLAGS\" or NAME=@run:SEED=RUN,...")
    rows = []
    for spec in args.recipes:
        name, _, flags = spec.partition("=")
        given = dict(p.partition("=")[::2] for p in flags[5:].split(",")) if flags.startswith("@run:") else None
        if given is not None and set(given) != {str(s) for s in caches}:
            fail(f"recipe {name!r}: give one run for each seed ({', '.join(map(str, caches))})")
        per_seed = {}
        for seed, cache in caches.items():
            run = check_run(cache, given[str(seed)]) if given is not None else run_recipe(cache, flags)
            per_seed[seed] = {w: evaluate(cache, run, w) for w in ("val", "train")}
            print(f"{name} seed {seed}: run {run}", file=sys.stderr)
        rows.append((name, flags, per_seed))
    seeds = list(caches)
    print(f"Shapes lab, val split, seeds {', '.join(map(str, seeds))}: tscir R@1 in the val wording, unless "
          "the column says otherwise (means over the seeds).\n")
    print("| recipe | flags beyond the default's | R@1 per seed | R@1 | R@10 | "
          + " | ".join(EDITS) + " | R@1 in the training wording | training wording's excess |")
    print("|---|---|---|---|---|" + "---|" * len(EDITS) + "---|---|")
    for name, flags, per_seed in rows:
        def mean(wording: str, key: str, group: str | None = None) -> float:
            return statistics.mean((r[wording][group][key] if group else r[wording][key]) for r in per_seed.values())
        val, train = mean("val", "R@1"), mean("train", "R@1")
        sflags, _, cflags = (f.strip() for f in flags.partition("|"))
        shown = "the runs given" if flags.startswith("@run:") else \
            f"synth: {f'`{sflags}`' if sflags else 'none'}; compose-train: {f'`{cflags}`' if cflags else 'none'}"
        print(f"| {name} | {shown} | " + " / ".join(f"{per_seed[s]['val']['R@1']:.1f}" for s in seeds)
              + f" | {val:.1f} | {mean('val', 'R@10'):.1f} | "
              + " | ".join(f"{mean('val', e, 'by_edit_R@1'):.1f}" for e in EDITS)
              + f" | {train:.1f} | {100 * (train / val - 1):+.1f}% |")


if __name__ == "__main__":
    main()
