"""Does the shapes lab's val split predict its test split? The same trained runs, asked on both.

Defaults are chosen on val, which is worth what val says about test. This takes the per-seed
JSON that `benchmarks/claims.py --split test --json` wrote (the test numbers as reported, and
which run made each row), asks the same run of one row (the default tscir, unless `--row` says
otherwise) the val split's queries in the val wording, and prints, per seed, both splits side by
side, then the means over the seeds and how val and test move together across seeds (Pearson's r
of the per-seed figures, overall and by edit type): whether a run that does better on val does
better on test. It compares seeds (one run each), not recipes on the same seeds. Nothing is
trained; test is not asked again.

    python benchmarks/val_predicts_test.py --cache 16=DIR/seed-16 --cache 17=DIR/seed-17 \\
        s16.json s17.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from val_recipes import EDITS, MODEL, fail, parse_caches, seed_of, zscir

RUN_FOLDER = {"tscir": "stage2", "stage1": "stage1", "pic2word": "stage1"}  # where a row's run lies


def pearson(xs: list[float], ys: list[float]) -> float:
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # fewer than two seeds, or one split constant
        return float("nan")


def rounded(r: float) -> str:
    return "n/a" if r != r else f"{r:+.2f}"  # NaN: fewer than two seeds, or one split constant


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
            per_seed = json.loads(Path(f).read_text())
            for seed, rows in per_seed.items():
                if seed in test:
                    fail(f"{f}: seed {seed} is also in an earlier JSON file: give each seed once")
                test[seed] = rows[args.row]
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
            fail(f"{f}: expected claims.py --json output with a {args.row!r} row per seed ({e})")
    if set(test) != set(caches):
        fail(f"seeds in the JSON ({', '.join(sorted(test))}) and --cache ({', '.join(sorted(caches))}) differ: "
             "give one cache per seed")
    seeds = sorted(test, key=int)  # --cache seeds are digits, and the two sets are equal
    for seed in seeds:  # every input checked before the first evaluation
        row, cache = test[seed], caches[seed]
        method, run = row.get("method"), row.get("run")
        if method not in RUN_FOLDER or not run:
            fail(f"seed {seed}: the {args.row!r} row is no trained run of {', '.join(RUN_FOLDER)} "
                 f"(method {method!r}, run {run!r}); pick such a row with --row")
        missing = [k for k in ("R@1", "R@10", "by_edit_R@1") if k not in row]
        if missing or set(EDITS) - set(row.get("by_edit_R@1", {})):
            fail(f"seed {seed}: the {args.row!r} row lacks {', '.join(missing) or 'an edit type'}: "
                 "expected claims.py --split test --json output")
        if seed_of(cache)[0] != int(seed):
            fail(f"--cache {seed}={cache}: that cache holds the world of seed {seed_of(cache)[0]}")
        if not (cache / RUN_FOLDER[method] / run / "manifest.json").is_file():
            fail(f"--cache {seed}={cache}: no {method} run {run} there; give the cache claims.py trained it in")
    val = {}
    for seed in seeds:
        method, run = test[seed]["method"], test[seed]["run"]
        ev = zscir("eval", "shapes", "--split", "val", "--method", method, "--run", run, "--no-target-caption",
                   *MODEL, "--cache-dir", str(caches[seed]))
        val[seed] = ev["results"][method]
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
          + " | ".join(rounded(pearson(series(val, k, g), series(test, k, g))) for k, g in keys) + " |")


if __name__ == "__main__":
    main()
