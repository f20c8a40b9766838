"""`zscir prepare shapes`: the shapes world written to the cache as a prepared data set (pairs
for training and validation, and each CIR split's queries and gallery)."""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any

from zscir_cli.core.cache import Artifact
from zscir_cli.data import shapes
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import KIND


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def prepare_shapes(ctx: Context, cfg: shapes.WorldConfig, force: bool = False) -> tuple[Artifact, bool]:
    """Generate and store the shapes world; returns (artifact, built_now)."""
    config = {"name": "shapes", "generator": shapes.GENERATOR_VERSION, **asdict(cfg)}
    key = ctx.store.key_for(KIND, config)
    return ctx.store.get_or_build(KIND, key, lambda: _build_shapes(ctx, cfg, key, config), force=force,
                                  on_wait=ctx.reporter.info)


def _build_shapes(ctx: Context, cfg: shapes.WorldConfig, key: str, config: dict[str, Any]) -> None:
    import datasets as hf

    image_feature = hf.Image()
    pair_features = hf.Features({"id": hf.Value("string"), "image": image_feature,
                                 "caption": hf.Value("string"), "scene": hf.Value("string")})
    gallery_features = hf.Features({"id": hf.Value("string"), "image": image_feature,
                                    "caption": hf.Value("string"), "scene": hf.Value("string"),
                                    "role": hf.Value("string")})

    def image_rows(records: list[dict], what: str, extra=()) -> dict[str, list]:
        cols: dict[str, list] = {"id": [], "image": [], "caption": [], "scene": []}
        for name in extra:
            cols[name] = []
        for r in ctx.reporter.track(records, f"rendering {what}"):
            cols["id"].append(r["id"])
            cols["image"].append({"bytes": _png(shapes.render_record(cfg, r)), "path": None})
            cols["caption"].append(r["caption"])
            cols["scene"].append(r["scene"].to_json())
            for name in extra:
                cols[name].append(r[name])
        return cols

    counts: dict[str, Any] = {}
    with ctx.store.create(KIND, key, config=config, seed=cfg.seed,
                          description=f"shapes world, seed {cfg.seed}: {cfg.train_pairs} train pairs, "
                                      f"{cfg.cir_queries} CIR queries per split") as out:
        pairs = {}
        for split, n in (("train", cfg.train_pairs), ("val", cfg.val_pairs)):
            records = [shapes.pair_record(cfg, split, i) for i in range(n)]
            pairs[split] = hf.Dataset.from_dict(image_rows(records, f"{split} pairs"),
                                                features=pair_features)
            counts[f"pairs/{split}"] = n
        hf.DatasetDict(pairs).save_to_disk(str(out.path / "pairs"))
        cir, gallery = {}, {}
        for split in ("val", "test"):
            queries, items = shapes.cir_split(cfg, split)
            gallery[split] = hf.Dataset.from_dict(
                image_rows(items, f"{split} gallery", extra=("role",)), features=gallery_features)
            cir[split] = hf.Dataset.from_list(queries)
            counts[f"cir/{split}"] = len(queries)
            counts[f"gallery/{split}"] = len(items)
        hf.DatasetDict(cir).save_to_disk(str(out.path / "cir"))
        hf.DatasetDict(gallery).save_to_disk(str(out.path / "gallery"))
        out.manifest["name"] = "shapes"
        out.manifest["counts"] = counts
        out.manifest["splits"] = {"pairs": ["train", "val"], "cir": ["val", "test"]}
