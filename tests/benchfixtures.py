"""Small trees in the exact public layouts of FashionIQ, CIRR and CIRCO, written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

from zscir_cli.data import shapes

WORLD = shapes.WorldConfig(seed=11, image_size=32)


def _img(path: Path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = shapes.render_record(WORLD, shapes.pair_record(WORLD, "train", i))
    img.save(path)


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def fashioniq(root: Path) -> Path:
    n = 0
    for cat in ("dress", "shirt", "toptee"):
        asins = [f"B{cat[:2].upper()}{i:06d}" for i in range(6)]
        for split in ("val", "test"):
            _write(root / f"image_splits/split.{cat}.{split}.json", asins)
        for i, a in enumerate(asins):
            _img(root / "images" / (f"{a}.png" if i % 2 else f"{a}.jpg"), n)  # mirrors mix .jpg and .png
            n += 1
        _write(root / f"captions/cap.{cat}.val.json", [
            {"target": asins[1], "candidate": asins[0], "captions": ["is shiny and silver.", " fit and flare?"]},
            {"target": asins[3], "candidate": asins[2], "captions": ["is red", "has longer sleeves"]},
        ])
        _write(root / f"captions/cap.{cat}.test.json", [
            {"candidate": asins[4], "captions": ["is blue", "is shorter"]}])
    return root


def cirr(root: Path) -> Path:
    split_files = {}
    for split, folder, count in (("val", "dev", 8), ("test1", "test1", 6)):
        names = {}
        for i in range(count):
            name = f"{folder}-{i}-0-img{i % 2}"
            _img(root / folder / f"{name}.png", i + (0 if split == "val" else 50))
            names[name] = f"./{folder}/{name}.png"
        _write(root / f"cirr/image_splits/split.rc2.{split}.json", names)
        split_files[split] = list(names)
    v = split_files["val"]
    _write(root / "cirr/captions/cap.rc2.val.json", [
        {"pairid": 12060, "reference": v[0], "target_hard": v[1], "target_soft": {v[1]: 1.0},
         "caption": "show three bottles of soft drink",
         "img_set": {"id": 36, "members": v[0:6], "reference_rank": 0, "target_rank": 1}},
        {"pairid": 12061, "reference": v[2], "target_hard": v[7], "target_soft": {v[7]: 1.0},
         "caption": "make it a dog", "img_set": {"id": 37, "members": [v[2], v[3], v[4], v[5], v[6], v[7]],
                                                 "reference_rank": 0, "target_rank": 5}},
    ])
    t = split_files["test1"]
    _write(root / "cirr/captions/cap.rc2.test1.json", [
        {"pairid": 12063, "reference": t[0], "caption": "add a cat",
         "img_set": {"id": 1, "members": t[0:6], "reference_rank": 0}},
        {"pairid": 12064, "reference": t[1], "caption": "remove the cat",
         "img_set": {"id": 2, "members": t[0:6], "reference_rank": 1}},
    ])
    return root


def circo(root: Path) -> Path:
    ids = [271520, 355099, 528417, 534704, 100001, 100002, 100003, 100004, 100005, 100006]
    images = []
    for i, image_id in enumerate(ids):
        name = f"{image_id:012d}.jpg"
        _img(root / "COCO2017_unlabeled/unlabeled2017" / name, 100 + i)
        images.append({"id": image_id, "file_name": name})
    _write(root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json", {"images": images})
    _write(root / "annotations/val.json", [
        {"reference_img_id": 271520, "target_img_id": 355099,
         "relative_caption": "shows two people and has a more colorful background",
         "shared_concept": "a girl with a traditional Chinese umbrella", "gt_img_ids": [355099, 528417, 534704],
         "id": 0, "semantic_aspects": ["cardinality", "statement_with_conjunction"]},
        {"reference_img_id": 100001, "target_img_id": 100002, "relative_caption": "is at night",
         "shared_concept": "a street", "gt_img_ids": [100002], "id": 1, "semantic_aspects": ["viewpoint"]},
    ])
    _write(root / "annotations/test.json", [
        {"reference_img_id": 100003, "relative_caption": "has a dog", "shared_concept": "a park", "id": 0},
        {"reference_img_id": 100004, "relative_caption": "is red", "shared_concept": "a car", "id": 1},
    ])
    return root
