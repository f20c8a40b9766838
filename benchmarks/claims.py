"""The paper's five claims on the shapes lab, on several seeds, through the `zscir` commands.

For each seed S it runs `zscir demo --seed S` in its own cache (world, base CLIP, stage1,
pic2word, both triplet recipes, tscir), then the extra runs each claim needs, every one on the
demo's settings and the same seed, and evaluates each run alone on the shapes test split:

1. VSI and STA each matter: stage1 vs `map-train --no-vsi` vs `--no-sta` vs pic2word;
2. Stage II beats mapping only: tscir vs stage1;
3. low- and high-quality triplets both work: template vs scene triplets (5k each), and template
   triplets whose targets must name the same content (`synth --match content`);
4. the number of triplets: scene 1k / 5k / all the corpus yields;
5. hard negatives: on (K = 8) vs `--no-hard-negatives`;
then the paper's adapters (`--no-embedding-adapter`) on scene and on template triplets (the
latter is `zscir demo --recipe paper`), and any `--ablation NAME="compose-train flags"`: Stage
II on the scene 5k triplets, or on the template or content-matched ones when the flags hold
`@template` or `@content`.

Prints a table of mean ± sd over the seeds (R@1, R@10, R@50, mAP@10), then R@1 by edit type,
and writes every number to --json. Runs already in a cache are reused, so a rerun only
evaluates.

    python benchmarks/claims.py --seeds 0 1 2 --cache-root DIR [--ablation NAME="FLAGS" ...]
        [--json FILE]

A cold seed takes about 17 minutes on 2 cores (the demo, two Stage I runs, seven Stage II runs).
"""

from __future__ import annotations

import argparse
import json
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


def zscir(*args: str) -> dict:
    """Run a zscir command with --json; its object (stderr passes through as progress)."""
    out = subprocess.run(["zscir", *args, "--json"], stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"zscir {' '.join(args)} failed with exit code {out.returncode}")
    return json.loads(out.stdout)


def evaluate(cache: str, method: str, run: str) -> dict:
    ev = zscir("eval", "shapes", "--split", "test", *MODEL, "--cache-dir", cache, "--method", method, "--run", run,
               "--no-oracle")
    return ev["results"][method]


def synth(cache: str, data: str, seed: int, mode: str, n: int, *flags: str) -> str:
    """A triplet file: the demo's own (a cache artifact) where it wrote this one, else `zscir synth`'s."""
    match = "content" if "content" in flags else ("words" if mode == "template" else None)
    for manifest in Path(cache).glob("triplets/*/manifest.json"):
        c = json.loads(manifest.read_text())["config"]
        if (c["data"], c["mode"], c["max_triplets"], c["seed"], c.get("match")) == (data, mode, n, seed, match) \
                and c.get("version") == SYNTH_VERSION:
            return str(manifest.parent / "triplets.jsonl")
    out = Path(cache) / f"claims-{mode}-{n}-seed{seed}{''.join(flags).replace('--', '-')}.jsonl"
    if not out.is_file():
        zscir("synth", "--data", data, "--mode", mode, "--max-triplets", str(n), "--seed", str(seed),
              "--out", str(out), *MODEL, "--cache-dir", cache, *flags)
    return str(out)


def one_seed(seed: int, cache: str, ablations: dict[str, list[str]]) -> dict[str, dict]:
    demo = zscir("demo", "--seed", str(seed), "--cache-dir", cache)
    ev = demo["evaluation"]
    rows = {m: ev["results"][m] for m in ("image", "text", "sum", "pic2word", "stage1", "tscir")}
    rows["oracle"] = ev["oracle"]
    s1, data = ev["runs"]["stage1"], ev["dataset_key"]
    common = ["--seed", str(seed), "--cache-dir", cache, *MODEL]
    for name, flag in (("stage1 --no-vsi", "--no-vsi"), ("stage1 --no-sta", "--no-sta")):
        run = zscir("map-train", "--data", data, *STAGE1, flag, *common)["run"]
        rows[name] = evaluate(cache, "stage1", run)
    scene = {n: synth(cache, data, seed, "scene", n) for n in (1000, 5000, 10**6)}
    template = synth(cache, data, seed, "template", 5000)
    content = synth(cache, data, seed, "template", 5000, "--match", "content")

    def tscir(name: str, triplets: str, *flags: str) -> None:
        run = zscir("compose-train", "--triplets", triplets, "--stage1", s1, *STAGE2, *flags, *common)["run"]
        rows[name] = evaluate(cache, "tscir", run)

    # the demo's recipe: scene triplets, adapters on the token embeddings and after every block
    tscir("tscir scene 5k", scene[5000])  # = the demo's run (same key), evaluated alone
    tscir("tscir template 5k", template)
    tscir("tscir template 5k --match content", content)
    tscir("tscir scene 1k", scene[1000])
    tscir("tscir scene all", scene[10**6])
    tscir("tscir --no-hard-negatives", scene[5000], "--no-hard-negatives")
    # the paper's adapters (none on the token embeddings), on each recipe; template = demo --recipe paper
    tscir("tscir scene 5k --no-embedding-adapter", scene[5000], "--no-embedding-adapter")
    tscir("tscir template 5k --no-embedding-adapter (paper)", template, "--no-embedding-adapter")
    files = {"@template": template, "@scene": scene[5000], "@content": content}
    for name, flags in ablations.items():
        chosen = [f for f in flags if f in files]
        tscir(name, files[chosen[-1]] if chosen else scene[5000], *[f for f in flags if f not in files])
    return rows


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(per_seed: dict[int, dict[str, dict]]) -> str:
    names = list(next(iter(per_seed.values())))
    lines = ["| run | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(mean_sd([s[n][m] for s in per_seed.values()]) for m in METRICS) + " |")
    edits = sorted(next(iter(per_seed.values()))["tscir"]["by_edit_R@1"])
    lines += ["", "R@1 by edit type:", "", "| run | " + " | ".join(edits) + " |", "|---|" + "---|" * len(edits)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(mean_sd([s[n]["by_edit_R@1"][e] for s in per_seed.values()])
                                              for e in edits) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache-root", required=True, help="one cache per seed: ROOT/seed-S")
    ap.add_argument("--ablation", action="append", default=[], metavar='NAME="FLAGS"',
                    help="an extra Stage II run with these compose-train flags, on the scene 5k triplets "
                         "(@template or @content among the flags: on those)")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args()
    ablations = {}
    for a in args.ablation:
        name, _, flags = a.partition("=")
        ablations[name] = shlex.split(flags)
    per_seed = {s: one_seed(s, str(Path(args.cache_root) / f"seed-{s}"), ablations) for s in args.seeds}
    if args.json:
        args.json.write_text(json.dumps(per_seed, indent=1) + "\n")
    print(f"shapes test split, seeds {', '.join(map(str, args.seeds))} (mean ± sd):\n")
    print(table(per_seed))


if __name__ == "__main__":
    main()
