"""Does the shapes lab's val split predict its test split? The same trained runs, asked on both.

Defaults are chosen on val; that is worth only as much as val ranks what test would rank. This
takes the per-seed JSON that `benchmarks/claims.py --split test --json` wrote (the test numbers
as reported, and which run made each row), asks the same run of one row (the default tscir,
unless `--row` says otherwise) the val split's queries in the val wording, and prints, per seed,
both splits side by side, then the means over the seeds and, across seeds, how val and test move
together (Pearson's r of the per-seed R@1, overall and by edit type). Nothing is trained; test is
not asked again.

    python benchmarks/val_predicts_test.py --cache 16=DIR/seed-16 --cache 17=DIR/seed-17 \\
        s16.json s17.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from val_recipes import EDITS, MODEL, fail, parse_caches, zscir


def pearson(xs: list[float], ys: list[float]) -> float:
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # fewer than two seeds, or one split constant
        return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", action="append", required=True, metavar="SEED=DIR",
                    help="the cache claims.py trained the seed in (repeat per seed)")
    ap.add_argument("--row", default="tscir", help="the claims row whose run is asked [default: tscir]")
    ap.add_argument("json", nargs="+", help="claims.py --split test --json output, one or more seeds each")
    args = ap.parse_args()
    caches = {str(seed): folder for seed, folder in parse_caches(args.cache).items()}
    test: dict[str, dict] = {}
    for f in args.json:
        try:
            for seed, rows in json.loads(Path(f).read_text()).items():
                test[seed] = rows[args.row]
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
            fail(f"{f}: expected claims.py --json output with a {args.row!r} row per seed ({e})")
    if set(test) != set(caches):
        fail(f"seeds in the JSON ({', '.join(sorted(test, key=int))}) and --cache "
             f"({', '.join(sorted(caches, key=int))}) differ: give one cache per seed")
    seeds = sorted(test, key=int)
    val = {}
    for seed in seeds:
        run = test[seed]["run"]
        if not run:
            fail(f"seed {seed}: the {args.row!r} row names no trained run")
        ev = zscir("eval", "shapes", "--split", "val", "--method", "tscir", "--run", run, "--no-target-caption",
                   *MODEL, "--cache-dir", str(caches[seed]))
        val[seed] = ev["results"]["tscir"]
        print(f"seed {seed}: run {run} asked on val", file=sys.stderr)

    def cells(r: dict) -> str:
        return (f"{r['R@1']:.1f} | {r['R@10']:.1f} | "
                + " | ".join(f"{r['by_edit_R@1'][e]:.1f}" for e in EDITS))

    print(f"Shapes lab: the {args.row} row's runs of seeds {', '.join(seeds)}, each asked the val split "
          "(val wording) and the test split (test wording, as claims.py reported it).\n")
    print("| seed | run | split | R@1 | R@10 | " + " | ".join(EDITS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(EDITS))
    for seed in seeds:
        print(f"| {seed} | {test[seed]['run']} | val | {cells(val[seed])} |")
        print(f"| {seed} | {test[seed]['run']} | test | {cells(test[seed])} |")
    keys = [("R@1", None), ("R@10", None)] + [(e, "by_edit_R@1") for e in EDITS]

    def series(per: dict, key: str, group: str | None) -> list[float]:
        return [per[s][group][key] if group else per[s][key] for s in seeds]

    for name, per in (("val", val), ("test", test)):
        print(f"| mean | | {name} | " + " | ".join(f"{statistics.mean(series(per, k, g)):.1f}" for k, g in keys)
              + " |")
    print("| Pearson's r across seeds, val vs test | | | "
          + " | ".join(f"{pearson(series(val, k, g), series(test, k, g)):+.2f}" for k, g in keys) + " |")


if __name__ == "__main__":
    main()
