"""How many caption-template triplets are wrong, with the shapes world's scene graphs as the truth.

`zscir synth --mode template` edits a caption and picks as target the image whose caption equals
the edited one, else the nearest caption by text embedding. On the shapes world every caption
comes from a scene graph, so each triplet can be checked: it is right when the target's scene
(up to position) is the reference's scene with exactly the stated edit applied to one element
(an object's colour, shape or size; the background; an object added or removed); it is wrong
otherwise, e.g. an "add" whose target lost one of the reference's objects, a colour replacement
that matched the background's colour word, or an edit no scene can show (a white object).

Prints, by edit type, the triplets kept, their exact-caption targets, the wrong ones (edits no
scene can show, and targets that are not the edited scene) and the share wrong; last line
`wrong: X% of N triplets`.

    python benchmarks/triplet_quality.py [--seed S] [--max-triplets N] [--train-pairs P] [--match content]
        [--exact-only | --model M --pretrained P --cache-dir DIR | --pretrain-steps K]
        [--triplets FILE --cache-dir DIR]

Matching (the demo's: `--seed` is its Stage II seed, 5000 triplets, min similarity 0.9):
  --exact-only (the default): exact caption matches only, no model;
  --model/--pretrained: nearest captions by that backbone's text features (e.g. the demo's base
      CLIP: --model zscir-shapes-rn --pretrained latest --cache-dir <the demo's cache>);
  --pretrain-steps K: first train the demo's base CLIP for K steps on the world's first
      --pretrain-pairs pairs (in --cache-dir, else a temporary one);
  --triplets FILE: check an existing triplet file of a shapes world prepared in --cache-dir.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

from zscir_cli.data import shapes
from zscir_cli.data.shapes import Obj, Scene

ATTRIBUTES = {"colour": tuple(shapes.COLOURS), "shape": shapes.SHAPES, "size": tuple(shapes.SIZES)}
REPLACE_TYPES = ("replace", "colour", "shape", "size")  # template's one type; scene's three


def _attribute(word: str) -> str | None:
    return next((a for a, values in ATTRIBUTES.items() if word in values), None)


def _without(scene: Scene, i: int) -> Scene:
    return Scene(scene.background, scene.objects[:i] + scene.objects[i + 1:])


def expected_signatures(ref: Scene, edit_type: str, old: str, new: str) -> set[str]:
    """The signatures (scenes up to position) a right target may have: the stated edit applied
    to one element of `ref` that holds the old value. Empty when no scene can show the edit."""
    out: set[str] = set()
    if edit_type in REPLACE_TYPES:
        attr = _attribute(old)
        if attr is not None and _attribute(new) == attr:
            for i, o in enumerate(ref.objects):
                if getattr(o, attr) == old:
                    out.add(Scene(ref.background, ref.objects[:i] + (replace(o, **{attr: new}),)
                                  + ref.objects[i + 1:]).signature())
    if edit_type in ("background", *REPLACE_TYPES) and old == ref.background and new in shapes.BACKGROUNDS:
        out.add(Scene(new, ref.objects).signature())  # "... on white": a template may edit it as a value
    if edit_type == "add":
        words = new.split()
        colours = [w for w in words if w in shapes.COLOURS]
        sizes = [w for w in words if w in shapes.SIZES] or list(shapes.SIZES)  # a template's phrase has none
        if words and words[-1] in shapes.SHAPES and len(colours) == 1 and len(ref.objects) < shapes.MAX_OBJECTS:
            for size in sizes:
                out.add(Scene(ref.background, ref.objects + (Obj(colours[0], words[-1], size, -1),)).signature())
    if edit_type == "remove":
        words = old.split()
        for i, o in enumerate(ref.objects):
            if words and words[-1] == o.shape and set(words) <= {o.size, o.colour, o.shape} and len(ref.objects) > 1:
                out.add(_without(ref, i).signature())
    return out


def verdict(ref: Scene, target: Scene, edit_type: str, old: str, new: str) -> str | None:
    """None for a right triplet; else why it is wrong."""
    allowed = expected_signatures(ref, edit_type, old, new)
    if not allowed:
        return "impossible edit"
    return None if target.signature() in allowed else "wrong target"


def check_triplets(rows: list[dict], scenes: dict[str, Scene]) -> dict[str, Counter]:
    """Per edit type: kept, exact (score 1), impossible edit, wrong target."""
    table: dict[str, Counter] = {}
    for t in rows:
        c = table.setdefault(t["edit_type"], Counter())
        c["triplets"] += 1
        c["exact"] += float(t.get("score", 0.0)) >= 1.0
        why = verdict(scenes[t["reference"]], scenes[t["target"]], t["edit_type"], t.get("old", ""), t.get("new", ""))
        if why is not None:
            c[why] += 1
    return table


def format_table(table: dict[str, Counter]) -> list[str]:
    head = f"{'edit type':<12}{'triplets':>9}{'exact':>7}{'impossible':>11}{'wrong tgt':>10}{'wrong %':>9}"
    lines = [head, "-" * len(head)]
    total = Counter()
    for kind, c in [*sorted(table.items()), ("total", None)]:
        c = c if c is not None else total
        wrong = c["impossible edit"] + c["wrong target"]
        share = 100.0 * wrong / c["triplets"] if c["triplets"] else 0.0
        lines.append(f"{kind:<12}{c['triplets']:>9}{c['exact']:>7}{c['impossible edit']:>11}{c['wrong target']:>10}"
                     f"{share:>8.1f}%")
        if kind != "total":
            total.update(c)
    wrong = total["impossible edit"] + total["wrong target"]
    lines.append(f"wrong: {100.0 * wrong / max(1, total['triplets']):.1f}% of {total['triplets']} triplets")
    return lines


def _embedder(args, ctx):
    """texts -> normalised features, as the demo embeds them; None for exact matching only."""
    if args.exact_only:
        return None, "exact caption matches only (no model)"
    import torch

    from zscir_cli.jobs.backbones import open_backbone, resolve_spec

    if args.pretrain_steps:
        from zscir_cli.jobs.backbones import backbone_spec
        from zscir_cli.jobs.datasets.shapes import prepare_shapes
        from zscir_cli.jobs.training.config import PretrainConfig
        from zscir_cli.jobs.training.pretrain import pretrain

        # the first P pairs of the corpus's world (a pair is a function of the seed and its index)
        world = shapes.WorldConfig(seed=args.seed, train_pairs=min(args.train_pairs, args.pretrain_pairs),
                                   val_pairs=args.val_pairs, cir_queries=args.queries)
        data, _ = prepare_shapes(ctx, world)
        art, _ = pretrain(ctx, PretrainConfig(data=data.key, steps=args.pretrain_steps, seed=args.seed))
        spec = backbone_spec(art)
    else:
        spec = resolve_spec(ctx, args.model, args.pretrained)
    backbone = open_backbone(ctx, spec)

    def embed(texts: list[str]):
        return torch.cat([backbone.encode_texts(texts[i:i + 512]).cpu() for i in range(0, len(texts), 512)]).numpy()
    how = f"nearest captions by {spec.label()}" + (
        f", pretrained here: {args.pretrain_steps} steps on {world.train_pairs} pairs" if args.pretrain_steps else "")
    return embed, how


def _from_file(args, ctx) -> tuple[list[dict], dict[str, Scene], str]:
    from zscir_cli.jobs.datasets.store import load_split

    rows = [json.loads(x) for x in Path(args.triplets).read_text(encoding="utf-8").splitlines() if x.strip()]
    key = rows[0].get("dataset") if rows else None
    data = ctx.store.get("dataset", key) if key else None
    if data is None or data.manifest.get("name") != "shapes":
        raise SystemExit(f"{args.triplets}: its triplets name no shapes world in {ctx.store.root}; "
                         "pass the --cache-dir of the world they were made from.")
    ds = load_split(data, "pairs", "train")
    return rows, {i: Scene.from_json(s) for i, s in zip(ds["id"], ds["scene"])}, f"file {args.triplets}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="world and synth seed (the demo's --seed)")
    ap.add_argument("--max-triplets", type=int, default=5000)
    ap.add_argument("--train-pairs", type=int, default=shapes.WorldConfig.train_pairs)
    ap.add_argument("--pretrain-pairs", type=int, default=10000, help="--pretrain-steps: pairs to train on")
    ap.add_argument("--val-pairs", type=int, default=200, help="--pretrain-steps: the world's val pairs")
    ap.add_argument("--queries", type=int, default=20, help="--pretrain-steps: the world's CIR queries")
    ap.add_argument("--min-similarity", type=float, default=0.9)
    ap.add_argument("--exact-only", action="store_true")
    ap.add_argument("--match", choices=("words", "content"), default="words", help="zscir synth --match")
    ap.add_argument("--model")
    ap.add_argument("--pretrained")
    ap.add_argument("--pretrain-steps", type=int, default=0)
    ap.add_argument("--triplets", type=Path, help="check this triplet file instead of synthesising")
    ap.add_argument("--cache-dir", type=Path)
    args = ap.parse_args()
    args.exact_only = args.exact_only or not (args.model or args.pretrain_steps)

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.synth import template_triplets
    from zscir_cli.jobs.context import Context

    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(store=ArtifactStore(args.cache_dir or Path(tmp)), workers=0)
        if args.triplets is not None:
            rows, scenes, how = _from_file(args, ctx)
        else:
            world = shapes.WorldConfig(seed=args.seed, train_pairs=args.train_pairs)
            records = [shapes.pair_record(world, "train", i) for i in range(args.train_pairs)]
            scenes = {r["id"]: r["scene"] for r in records}
            embed, how = _embedder(args, ctx)
            report = template_triplets([r["id"] for r in records], [r["caption"] for r in records], embed,
                                       max_triplets=args.max_triplets, seed=args.seed,
                                       min_similarity=args.min_similarity, match=args.match)
            rows = [t.to_json() for t in report.triplets]
    print(f"shapes world seed {args.seed}, {len(scenes)} captions; template triplets, matching: {how}")
    print("\n".join(format_table(check_triplets(rows, scenes))))


if __name__ == "__main__":
    main()
