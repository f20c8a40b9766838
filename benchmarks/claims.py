"""The lab's tables: every method and the paper's five claims on the shapes world, over seeds,
through the `zscir` commands, on the val split (to choose settings) or the test split (once).

For each seed S it runs `zscir demo --seed S --split SPLIT` in its own cache (world, base CLIP,
stage1, pic2word, triplets from captions and from scene graphs, tscir on each), then the extra
runs each claim needs, every one on the demo's settings and the same seed, and evaluates each
run alone on SPLIT:

1. VSI and STA each matter: stage1 vs `map-train --no-vsi` vs `--no-sta` vs pic2word;
2. Stage II beats mapping only: tscir vs stage1;
3. low- and high-quality triplets both work: caption triplets whose targets need only show the
   new word (`synth --match words`), the default's (`--match content`), scene-graph triplets;
4. the number of triplets: 1k / 5k / every triplet the captions yield (default recipe);
5. hard negatives: on (K = 8) vs `--no-hard-negatives`;
then the paper's Stage II (`zscir demo --recipe paper`: `--match words` triplets, no adapter on
the token embeddings), the default without that adapter, and any `--ablation NAME="FLAGS"`
(compose-train flags; `@words`, `@scene` or `@all` among them train on those triplets).

With the test split it also asks the default tscir's test queries in the training phrasings and
in the val phrasings (`zscir eval --wording`): a model that understands edits should not care
which words ask for them. Prints Markdown tables (mean ± sd over the seeds; R@1 by edit type and
by held-out colour-shape pair; the claims with verdicts; the wording check), each number as the
commands printed it, and writes every number to --json. Runs already in a cache are reused, so
a rerun only evaluates.

    python benchmarks/claims.py --split val --seeds 0 1 --cache-root DIR        # choosing settings
    python benchmarks/claims.py --split test --seeds 16 17 18 --cache-root DIR   # the reported tables
    python benchmarks/claims.py --split test --from-json s10.json s11.json ...   # seeds run apart

A cold seed takes about 40 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from zscir_cli.data.synth import SYNTH_VERSION

MODEL = ["--model", "zscir-shapes-rn", "--pretrained", "latest"]
STAGE1 = ["--epochs", "10", "--batch-size", "256", "--lr", "1e-3"]  # the demo's (DEMO_STAGE1)
STAGE2 = ["--epochs", "10", "--batch-size", "128", "--lr", "1e-3"]  # the demo's (DEMO_STAGE2)
METRICS = ("R@1", "R@10", "R@50", "mAP@10")
DEFAULT = "tscir"  # the demo's default row
SCENE = "tscir (scene triplets, lab reference)"  # the demo's lab reference row


def zscir(*args: str) -> dict:
    """Run a zscir command with --json; its object (stderr passes through as progress)."""
    out = subprocess.run(["zscir", *args, "--json"], stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"zscir {' '.join(args)} failed with exit code {out.returncode}")
    return json.loads(out.stdout)


def evaluate(cache: str, split: str, method: str, run: str, *flags: str) -> dict:
    ev = zscir("eval", "shapes", "--split", split, *MODEL, "--cache-dir", cache, "--method", method, "--run", run,
               "--no-target-caption", *flags)
    return {**ev["results"][method], **{g: ev[g][method] for g in ("by_pair_R@1",) if g in ev}}


def synth(cache: str, data: str, seed: int, mode: str, n: int, match: str | None) -> str:
    """A triplet file: the demo's own (a cache artifact) where it wrote this one, else `zscir synth`'s."""
    for manifest in Path(cache).glob("triplets/*/manifest.json"):
        c = json.loads(manifest.read_text())["config"]
        if (c["data"], c["mode"], c["max_triplets"], c["seed"], c.get("match")) == (data, mode, n, seed, match) \
                and c.get("version") == SYNTH_VERSION:
            return str(manifest.parent / "triplets.jsonl")
    # named by synth version too: a cache root reused after a version change writes them again
    out = Path(cache) / f"claims-{mode}-{match or 'exact'}-{n}-seed{seed}-v{SYNTH_VERSION}.jsonl"
    if not out.is_file():
        zscir("synth", "--data", data, "--mode", mode, "--max-triplets", str(n), "--seed", str(seed),
              "--out", str(out), *MODEL, "--cache-dir", cache, *(["--match", match] if match else []))
    return str(out)


def one_seed(seed: int, cache: str, split: str, ablations: dict[str, list[str]]) -> dict[str, dict]:
    demo = zscir("demo", "--seed", str(seed), "--split", split, "--cache-dir", cache)
    ev = demo["evaluation"]
    pairs = ev.get("by_pair_R@1", {})
    rows = {m: {**r, **({"by_pair_R@1": pairs[m]} if m in pairs else {})} for m, r in ev["results"].items()}
    rows["target caption"] = ev["target_caption"]
    s1, data = ev["runs"]["stage1"], ev["dataset_key"]
    common = ["--seed", str(seed), "--cache-dir", cache, *MODEL]
    for name, flag in (("stage1 --no-vsi", "--no-vsi"), ("stage1 --no-sta", "--no-sta")):
        run = zscir("map-train", "--data", data, *STAGE1, flag, *common)["run"]
        rows[name] = evaluate(cache, split, "stage1", run)
    files = {"@default": synth(cache, data, seed, "template", 5000, "content"),
             "@words": synth(cache, data, seed, "template", 5000, "words"),
             "@scene": synth(cache, data, seed, "scene", 5000, None),
             "@1k": synth(cache, data, seed, "template", 1000, "content"),
             "@all": synth(cache, data, seed, "template", 10**6, "content")}

    def tscir(name: str, *flags: str) -> None:
        chosen = [f for f in flags if f in files]
        triplets = files[chosen[-1] if chosen else "@default"]
        run = zscir("compose-train", "--triplets", triplets, "--stage1", s1, *STAGE2,
                    *[f for f in flags if f not in files], *common)["run"]
        rows[name] = evaluate(cache, split, "tscir", run)
        rows[name]["run"] = run

    tscir("tscir --match words", "@words")
    tscir("tscir 1k triplets", "@1k")
    tscir("tscir all triplets", "@all")
    tscir("tscir --no-hard-negatives", "--no-hard-negatives")
    tscir("tscir --no-embedding-adapter", "--no-embedding-adapter")
    tscir("paper's Stage II (demo --recipe paper)", "@words", "--no-embedding-adapter")
    for name, flags in ablations.items():
        tscir(name, *flags)
    if split == "test":  # the same test queries, asked in the other families' words
        for family in ("train", "val"):
            rows[f"tscir, test queries in {family} wording"] = evaluate(
                cache, split, "tscir", ev["runs"][DEFAULT], "--wording", family)
    return rows


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _value(row: dict, key: str, group: str | None) -> float | None:
    return row.get(key) if group is None else row.get(group, {}).get(key)


def table(per_seed: dict[int, dict[str, dict]], columns: list[str], group: str | None = None,
          title: str = "") -> list[str]:
    """A Markdown table: one row per run, `columns` of the results (or of breakdown `group`)."""
    names = list(next(iter(per_seed.values())))
    lines = [title, ""] if title else []
    lines += ["| run | recipe | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for n in names:
        first = per_seed[next(iter(per_seed))][n]
        if group is not None and group not in first:
            continue
        cells = []
        for c in columns:
            vals = [_value(s[n], c, group) for s in per_seed.values()]
            cells.append(mean_sd([v for v in vals if v is not None]) if all(v is not None for v in vals) else "-")
        lines.append(f"| {n} | {first.get('recipe', '')} | " + " | ".join(cells) + " |")
    return lines


CLAIMS = (  # (claim, better run, worse run)
    ("1. VSI helps Stage I", "stage1", "stage1 --no-vsi"),
    ("1. STA helps Stage I", "stage1", "stage1 --no-sta"),
    ("2. Stage II beats mapping only", DEFAULT, "stage1"),
    ("3. low-quality triplets work (words-matched vs Stage I)", "tscir --match words", "stage1"),
    ("3. high-quality triplets work (scene vs Stage I)", SCENE, "stage1"),
    ("4. more triplets help (5k vs 1k)", DEFAULT, "tscir 1k triplets"),
    ("4. more triplets help (all vs 5k)", "tscir all triplets", DEFAULT),
    ("5. hard negatives help", DEFAULT, "tscir --no-hard-negatives"),
)


def verdict(diffs: list[float]) -> str:
    """supported: better on every seed, by a point on average; not supported: no better on
    average; mixed otherwise."""
    mean = statistics.mean(diffs)
    if all(d > 0 for d in diffs) and mean >= 1.0:
        return "supported"
    return "not supported" if mean <= 0 else "mixed"


def claims_table(per_seed: dict[int, dict[str, dict]]) -> list[str]:
    lines = ["| claim | runs compared (R@1) | difference | per seed | verdict |", "|---|---|---|---|---|"]
    for claim, a, b in CLAIMS:
        if any(a not in s or b not in s for s in per_seed.values()):
            continue
        diffs = [s[a]["R@1"] - s[b]["R@1"] for s in per_seed.values()]
        lines.append(f"| {claim} | {a} vs {b} | {mean_sd(diffs)} | "
                     f"{', '.join(f'{d:+.1f}' for d in diffs)} | {verdict(diffs)} |")
    return lines


def wording_table(per_seed: dict[int, dict[str, dict]]) -> list[str]:
    lines = ["| the default tscir's test queries asked in | R@1 | R@10 | relative to test wording (R@1) |",
             "|---|---|---|---|"]
    for family, name in (("test (their own)", DEFAULT), ("train", f"{DEFAULT}, test queries in train wording"),
                         ("val", f"{DEFAULT}, test queries in val wording")):
        if any(name not in s for s in per_seed.values()):
            return []
        r1 = [s[name]["R@1"] for s in per_seed.values()]
        rel = [s[name]["R@1"] / max(1e-9, s[DEFAULT]["R@1"]) - 1 for s in per_seed.values()]
        lines.append(f"| {family} | {mean_sd(r1)} | {mean_sd([s[name]['R@10'] for s in per_seed.values()])} | "
                     f"{statistics.mean(rel):+.1%} |")
    return lines


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() \
        else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def report(per_seed: dict[int, dict[str, dict]], split: str, argv: list[str]) -> str:
    edits = sorted(next(iter(per_seed.values()))[DEFAULT]["by_edit_R@1"])
    pairs = sorted(next(iter(per_seed.values()))[DEFAULT].get("by_pair_R@1", {}))
    lines = [f"Shapes lab, {split} split, seeds {', '.join(map(str, per_seed))} (mean ± sd); measured on {machine()}.",
             f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(argv)}`", ""]
    lines += table(per_seed, list(METRICS), title="### Every run") + [""]
    lines += table(per_seed, edits, "by_edit_R@1", title="### R@1 by edit type") + [""]
    if pairs:
        lines += table(per_seed, pairs, "by_pair_R@1",
                       title="### R@1 by whether the target holds a held-out colour-shape pair") + [""]
    lines += ["### The paper's claims", ""] + claims_table(per_seed) + [""]
    wording = wording_table(per_seed)
    if wording:
        lines += ["### Wording", ""] + wording + [""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=("val", "test"), required=True,
                    help="val to choose settings, test once for the reported tables")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--cache-root", help="one cache per seed: ROOT/seed-S")
    ap.add_argument("--ablation", action="append", default=[], metavar='NAME="FLAGS"',
                    help="an extra Stage II run with these compose-train flags (@words, @scene or @all among "
                         "them: on those triplets)")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--from-json", type=Path, nargs="+", metavar="FILE",
                    help="instead of running: the tables of seeds run apart (each FILE written by --json)")
    args = ap.parse_args()
    if args.from_json:
        per_seed = {}
        for f in args.from_json:
            per_seed.update(json.loads(f.read_text()))
        print(report(per_seed, args.split, sys.argv[1:]))
        return
    if not args.seeds or not args.cache_root:
        ap.error("--seeds and --cache-root are required (or --from-json)")
    ablations = {}
    for a in args.ablation:
        name, _, flags = a.partition("=")
        ablations[name] = shlex.split(flags)
    per_seed = {s: one_seed(s, str(Path(args.cache_root) / f"seed-{s}"), args.split, ablations) for s in args.seeds}
    if args.json:
        args.json.write_text(json.dumps(per_seed, indent=1) + "\n")
    print(report(per_seed, args.split, sys.argv[1:]))


if __name__ == "__main__":
    main()
