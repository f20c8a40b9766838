"""Where the composed query fails on the shapes lab: what its first result is, and what that
result shares with the target.

On a split of a demo's cache (`--split val`, the default: a diagnosis that guides a change is
made on val; `--split test` once, for reporting):

0. what the pseudo-word carries: each gallery image's "a photo of $" (pic2word's and stage1's
   mappers) ranks the gallery's distinct captions by text feature; caption R@1 against the
   image feature itself ranking them (the base CLIP's zero-shot ceiling), and the share of
   first captions that get the background, the colours and the shapes right.

For each method (stage1, tscir, and the target caption as a reference point):

1. the first-ranked image of each query (reference removed): the right target, this query's
   own near miss (the reference's layout with one other attribute changed) or wrong-value
   image, or an image made for another query;
2. for first results that are wrong: how often they agree with the target on the background,
   the number of objects, the colours, the shapes, the (colour, shape) kinds and the sizes;
3. removals: how often the first result still shows the removed object (its colour and shape),
   against how often the target's own gallery neighbours do by chance (`image` method).

    python benchmarks/where_it_fails.py --cache-dir DIR [--stage1 RUN] [--tscir RUN]

DIR is a cache that `zscir demo` filled; RUN pins a run (default: the newest of each method).
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

from zscir_cli.cli.common import make_context
from zscir_cli.data import shapes
from zscir_cli.jobs.backbones import open_backbone, resolve_spec
from zscir_cli.jobs.datasets.store import load_split
from zscir_cli.jobs.protocols.ranking import rank_split
from zscir_cli.jobs.protocols.results import target_caption_result
from zscir_cli.jobs.protocols.suites import shapes_suite
from zscir_cli.jobs.retrieval.methods import load_method


def facts(s: shapes.Scene) -> dict:
    return {"background": s.background, "objects": len(s.objects),
            "colours": sorted(o.colour for o in s.objects), "shapes": sorted(o.shape for o in s.objects),
            "kinds": sorted((o.colour, o.shape) for o in s.objects),
            "sizes": sorted((o.colour, o.shape, o.size) for o in s.objects)}


def pseudo_word_probe(ctx, backbone, suite, scene) -> None:
    import numpy as np
    import torch

    from zscir_cli.jobs.retrieval.encodings import encode_once
    from zscir_cli.jobs.retrieval.features import FeatureSet
    from zscir_cli.model.mapping import PROMPT
    from zscir_cli.model.text import TextEncoder

    gallery = suite.galleries[""]
    captions = sorted({shapes.caption(s) for s in scene.values()})
    row = {c: i for i, c in enumerate(captions)}
    own = np.array([row[shapes.caption(scene[g])] for g in gallery.ids])
    text = torch.cat([backbone.encode_texts(captions[i:i + 512]).cpu() for i in range(0, len(captions), 512)]).numpy()
    print(f"what the pseudo-word carries: 'a photo of $' ranking the {suite.split} gallery's "
          f"{len(captions)} distinct captions ({len(own)} images):")
    for name in ("image", "pic2word", "stage1"):
        method = load_method(ctx, name, backbone)
        grid = method.grid if method.needs_tokens else None
        feats = FeatureSet.open(encode_once(ctx, backbone, gallery, index=True, grid=grid or 4).features)
        v = torch.nn.functional.normalize(torch.from_numpy(np.asarray(feats.image, dtype=np.float32)), dim=-1)
        if method.mapper is None:
            q = v.numpy()
        else:
            cfg = method.mapper.cfg
            encoder = TextEncoder(backbone.model, cfg.placeholder_id)
            tokens = backbone.tokenizer([PROMPT.replace("$", cfg.placeholder)])
            with torch.inference_mode():
                q = torch.cat([method.mapper.encode(
                    encoder, tokens.expand(len(v[s:s + 256]), -1), v[s:s + 256],
                    torch.from_numpy(np.asarray(feats.tokens[s:s + 256], dtype=np.float32)) if grid else None)
                    for s in range(0, len(v), 256)]).numpy()
        first = (q @ text.T).argmax(1)
        right = Counter()
        for g, f in zip(gallery.ids, first):
            got, want = shapes.Scene.from_json(_scene_json(captions[f], scene)), scene[g]
            a, b = facts(got), facts(want)
            for k in ("background", "colours", "shapes"):
                right[k] += a[k] == b[k]
        print(f"  {name:8s} caption R@1 {100 * float(np.mean(first == own)):.1f}; first caption right on "
              + ", ".join(f"{k} {100 * v / len(own):.0f}%" for k, v in right.items()))


def _scene_json(caption: str, scene: dict) -> str:
    """The scene a gallery caption was written from (captions of the gallery are distinct per scene)."""
    if not hasattr(_scene_json, "by"):
        _scene_json.by = {shapes.caption(s): s.to_json() for s in scene.values()}
    return _scene_json.by[caption]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--stage1")
    ap.add_argument("--tscir")
    ap.add_argument("--split", choices=("val", "test"), default="val")
    args = ap.parse_args()
    ctx = make_context(args.cache_dir, "cpu", None)
    backbone = open_backbone(ctx, resolve_spec(ctx, "zscir-shapes-rn", "latest"))
    data = next(a for a in ctx.store.list("dataset") if a.manifest.get("name") == "shapes")
    suite = shapes_suite(ctx, data.key, args.split)
    gallery = load_split(data, "gallery", args.split)
    role = dict(zip(gallery["id"], gallery["role"]))
    scene = {i: shapes.Scene.from_json(s) for i, s in zip(gallery["id"], gallery["scene"])}
    queries = load_split(data, "cir", args.split)
    removed = dict(zip(queries["query_id"], queries["old"]))  # 'small red circle' for a removal
    refs = {q.reference: i for i, q in enumerate(suite.queries)}
    owner, cur = {}, None
    for g in gallery["id"]:  # a query's images follow its reference in the gallery
        cur = refs.get(g, cur)
        owner[g] = cur

    pseudo_word_probe(ctx, backbone, suite, scene)

    tops = {}
    for name, run in (("image", None), ("stage1", args.stage1), ("tscir", args.tscir)):
        tops[name] = rank_split(ctx, load_method(ctx, name, backbone, run), suite).top
    tops["target caption"] = target_caption_result(ctx, backbone, suite)[1].top

    print("first result of each query (% of queries):")
    for name in ("stage1", "tscir", "target caption"):
        c: Counter = Counter()
        for i, (q, top) in enumerate(zip(suite.queries, tops[name])):
            first = top[0]
            c["right" if first in q.targets else ("own " if owner[first] == i else "another query's ")
              + role[first]] += 1
        print(f"  {name:14s}", ", ".join(f"{k} {100 * v / len(suite.queries):.1f}" for k, v in c.most_common()))

    print("\nwrong first results agreeing with the target on (%):")
    for name in ("stage1", "tscir", "target caption"):
        agree: Counter = Counter()
        wrong = 0
        for q, top in zip(suite.queries, tops[name]):
            if top[0] in q.targets:
                continue
            wrong += 1
            a, b = facts(scene[top[0]]), facts(scene[q.target])
            for k in a:
                agree[k] += a[k] == b[k]
        print(f"  {name:14s} ({wrong} wrong)", ", ".join(f"{k} {100 * v / max(wrong, 1):.0f}" for k, v in agree.items()))

    print("\nremovals: first results that still show the removed object (colour and shape), %:")
    shown = defaultdict(list)
    for name in ("image", "stage1", "tscir", "target caption"):
        for q, top in zip(suite.queries, tops[name]):
            if q.edit != "remove":
                continue
            _, colour, shape = removed[q.qid].split()
            shown[name].append(any(o.colour == colour and o.shape == shape for o in scene[top[0]].objects))
    print("  " + ", ".join(f"{n} {100 * sum(v) / len(v):.0f}" for n, v in shown.items()) + f" ({len(shown['tscir'])} removals)")


if __name__ == "__main__":
    main()
