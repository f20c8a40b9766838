"""FashionIQ, CIRR and CIRCO: reading the public layouts into one query/gallery form.

Each loader validates the tree (naming every missing annotation file), and returns a
`BenchSplit`: queries with their reference, texts and ground truth (empty on test splits), the
galleries (FashionIQ has one per category), and where each image lives. Missing image files are
listed, never silently dropped: `prepare` decides what to do with them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zscir_cli.core.errors import UserError
from zscir_cli.core.text import read_text

FIQ_CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = {"fashioniq": ("val", "test"), "cirr": ("val", "test1"), "circo": ("val", "test")}
SOURCES = {
    "fashioniq": "https://github.com/XiaoxiaoGuo/fashion-iq (annotations; images from the ASIN lists)",
    "cirr": "https://github.com/Cuberick-Orion/CIRR (annotations; NLVR2 images via the form linked there)",
    "circo": "https://github.com/miccunifi/CIRCO (annotations; COCO 2017 unlabeled images)",
}
LAYOUTS = {
    "fashioniq": """ROOT/
  captions/cap.{dress,shirt,toptee}.{val,test}.json
  image_splits/split.{dress,shirt,toptee}.{val,test}.json
  images/<ASIN>.jpg   (or .png)""",
    "cirr": """ROOT/
  dev/*.png   test1/*.png
  cirr/captions/cap.rc2.{val,test1}.json
  cirr/image_splits/split.rc2.{val,test1}.json""",
    "circo": """ROOT/
  annotations/{val,test}.json
  COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
  COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg""",
}


@dataclass
class BenchQuery:
    qid: str  # pairid (CIRR), id (CIRCO), '<category>-<index>' (FashionIQ)
    reference: str  # image id
    texts: list[str]  # FashionIQ: the two captions, in file order; else one
    targets: list[str] = field(default_factory=list)  # ground truth ids ([] on test splits)
    target: str | None = None  # the designated target
    group: str = ""  # FashionIQ category
    subset: list[str] = field(default_factory=list)  # CIRR img_set members
    aspects: list[str] = field(default_factory=list)  # CIRCO semantic aspects
    edit: str = ""  # shapes: the edit type

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchSplit:
    name: str
    split: str
    queries: list[BenchQuery]
    galleries: dict[str, list[str]]  # group -> image ids ('' for the one gallery)
    images: dict[str, Path]  # image id -> file
    missing: list[str]  # ids of referenced images whose file does not exist

    @property
    def has_ground_truth(self) -> bool:
        return bool(self.queries) and all(q.targets for q in self.queries)


def _json(path: Path, kind: type = list) -> Any:
    """An annotation file's top-level JSON value, which must be a `kind` (list or dict)."""
    try:
        obj = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}).",
                        "Download that annotation file again.") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text.", "Download that annotation file again.") from e
    if not isinstance(obj, kind):
        raise UserError(f"{path} holds a JSON {type(obj).__name__}, not the expected "
                        f"{'list' if kind is list else 'object'}.", "Download that annotation file again.")
    return obj


def _get(row: Any, key: str, path: Path, i: int | None) -> Any:
    """row[key] of entry i (None: the top level) of an annotation file, or a user error naming
    the file, the entry and the key."""
    where = f"{path}" if i is None else f"{path} entry {i}"
    if not isinstance(row, dict):
        raise UserError(f"{where} is a JSON {type(row).__name__}, not an object.",
                        "Download that annotation file again.")
    if key not in row:
        raise UserError(f"{where} has no '{key}' key.",
                        "The file is damaged or from another release; download it again.")
    return row[key]


def _text(row: Any, key: str, path: Path, i: int) -> str:
    """A caption or image name of entry i: a string (ids may be integers), else a user error."""
    value = _get(row, key, path, i)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{path} entry {i}: '{key}' is {json.dumps(value)[:40]}, not a non-empty string or id.",
                        "The file is damaged or from another release; download it again.")
    return value


def _unique(ids: list[str], path: Path, what: str) -> None:
    """Query ids (or image ids) are each one query (image): a repeat is a user error naming both."""
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        if x in seen:
            raise UserError(f"{path} entries {seen[x]} and {i} have the same {what} {x}.",
                            "The file is damaged or from another release; download it again.")
        seen[x] = i
    if not ids:
        raise UserError(f"{path} holds no {what}s.", "The file is damaged; download it again.")


def tree_hint(name: str, first: str) -> str:
    """`first` (what to do), then the expected tree on lines of its own: the tree comes last, so
    that no sentence is printed after its last line."""
    return f"{first} The expected tree:\n{LAYOUTS[name]}"


def split_files(name: str, split: str) -> list[str]:
    """The annotation files one split of a benchmark needs (besides those all splits share)."""
    if name == "fashioniq":
        return [f"captions/cap.{c}.{split}.json" for c in FIQ_CATEGORIES] + \
               [f"image_splits/split.{c}.{split}.json" for c in FIQ_CATEGORIES]
    if name == "cirr":
        return [f"cirr/captions/cap.rc2.{split}.json", f"cirr/image_splits/split.rc2.{split}.json"]
    return [f"annotations/{split}.json"]


def present_splits(name: str, root: Path) -> list[str]:
    """The splits of which at least one annotation file is there (a split partly there is an
    error its loader names)."""
    return [s for s in SPLITS[name] if any((Path(root) / r).is_file() for r in split_files(name, s))]


def _require(root: Path, name: str, rels: list[str]) -> None:
    if not root.is_dir():
        raise UserError(f"{name} not found at {root}.",
                        tree_hint(name, f"Get it from {SOURCES[name]}, then run 'zscir prepare {name} ROOT' "
                                        "(or set ZSCIR_DATA to the folder holding it)."))
    missing = [r for r in rels if not (root / r).is_file()]
    if missing:
        raise UserError(f"{name} at {root} lacks {len(missing)} annotation file(s): " + ", ".join(missing[:10]) + ".",
                        tree_hint(name, f"Add the missing files from {SOURCES[name]}."))


def _check_split(name: str, split: str) -> None:
    if split not in SPLITS[name]:
        raise UserError(f"{name} has no split '{split}'.", f"Choose one of: {', '.join(SPLITS[name])}.")


def _clean_caption(c: str) -> str:
    return c.strip(".?, ")


def load_fashioniq(root: Path, split: str) -> BenchSplit:
    _check_split("fashioniq", split)
    root = Path(root)
    _require(root, "fashioniq", split_files("fashioniq", split))
    queries, galleries, names = [], {}, set()
    for cat in FIQ_CATEGORIES:
        galleries[cat] = list(_json(root / f"image_splits/split.{cat}.{split}.json"))
        names.update(galleries[cat])
        cap_file = root / f"captions/cap.{cat}.{split}.json"
        rows = _json(cap_file)
        if not rows:
            raise UserError(f"{cap_file} holds no queries.", "The file is damaged; download it again.")
        for i, row in enumerate(rows):
            candidate = str(_text(row, "candidate", cap_file, i))
            caps = _get(row, "captions", cap_file, i)
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise UserError(f"{cap_file} entry {i}: 'captions' must be a list of strings.",
                                "The file is damaged; download it again.")
            caps = [_clean_caption(c) for c in caps]
            if len(caps) != 2:
                raise UserError(f"captions/cap.{cat}.{split}.json entry {i}: expected 2 captions, got {len(caps)}.",
                                "The file is damaged; download it again.")
            tgt = row.get("target")
            queries.append(BenchQuery(f"{cat}-{i}", candidate, caps, [tgt] if tgt else [], tgt, cat))
            names.add(candidate)
            if tgt:
                names.add(tgt)
    images, missing = {}, []
    for n in sorted(names):
        for ext in (".jpg", ".png"):  # mirrors ship either
            p = root / "images" / f"{n}{ext}"
            if p.is_file():
                images[n] = p
                break
        else:
            missing.append(n)
            images[n] = root / "images" / f"{n}.jpg"
    return BenchSplit("fashioniq", split, queries, galleries, images, missing)


def load_cirr(root: Path, split: str) -> BenchSplit:
    _check_split("cirr", split)
    root = Path(root)
    _require(root, "cirr", split_files("cirr", split))
    name_to_rel = _json(root / f"cirr/image_splits/split.rc2.{split}.json", dict)
    images = {n: (root / rel).resolve() for n, rel in name_to_rel.items()}
    queries = []
    cap_file = root / f"cirr/captions/cap.rc2.{split}.json"
    for i, row in enumerate(_json(cap_file)):
        pairid, ref, caption = (_text(row, k, cap_file, i) for k in ("pairid", "reference", "caption"))
        tgt = row.get("target_hard")
        queries.append(BenchQuery(str(pairid), ref, [caption], [tgt] if tgt else [],
                                  tgt, "", list((row.get("img_set") or {}).get("members", []))))
    _unique([q.qid for q in queries], cap_file, "pairid")
    unknown = sorted({n for q in queries for n in [q.reference, *q.targets, *q.subset] if n not in images})
    if unknown:
        raise UserError(f"cap.rc2.{split}.json names {len(unknown)} image(s) absent from split.rc2.{split}.json, "
                        f"e.g. {unknown[0]}.", "The annotation files are from different releases; use rc2 for both.")
    missing = sorted(n for n, p in images.items() if not p.is_file())
    return BenchSplit("cirr", split, queries, {"": sorted(images)}, images, missing)


def load_circo(root: Path, split: str) -> BenchSplit:
    _check_split("circo", split)
    root = Path(root)
    info_rel = "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
    _require(root, "circo", [*split_files("circo", split), info_rel])
    info = _json(root / info_rel, dict)
    folder = root / "COCO2017_unlabeled" / "unlabeled2017"
    listed = _get(info, "images", root / info_rel, None)
    image_ids = [str(_text(im, "id", root / info_rel, i)) for i, im in enumerate(listed)]
    _unique(image_ids, root / info_rel, "image id")
    images = {x: folder / str(_text(im, "file_name", root / info_rel, i)) for i, (x, im) in enumerate(zip(image_ids, listed))}
    queries = []
    ann = root / f"annotations/{split}.json"
    for i, row in enumerate(_json(ann)):
        qid, ref, caption = (_text(row, k, ann, i) for k in ("id", "reference_img_id", "relative_caption"))
        gts = [str(g) for g in row.get("gt_img_ids", [])]
        tgt = row.get("target_img_id")
        queries.append(BenchQuery(str(qid), str(ref), [caption], gts,
                                  str(tgt) if tgt is not None else None, aspects=list(row.get("semantic_aspects", []))))
    _unique([q.qid for q in queries], ann, "query id")
    unknown = sorted({n for q in queries for n in [q.reference, *q.targets] if n not in images})
    if unknown:
        raise UserError(f"annotations/{split}.json names {len(unknown)} image id(s) absent from {info_rel}, "
                        f"e.g. {unknown[0]}.", "Use the image_info file of COCO 2017 unlabeled.")
    missing = sorted(n for n, p in images.items() if not p.is_file())
    return BenchSplit("circo", split, queries, {"": sorted(images, key=int)}, images, missing)


LOADERS = {"fashioniq": load_fashioniq, "cirr": load_cirr, "circo": load_circo}
