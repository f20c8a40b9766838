"""`zscir index --embeddings DIR`: an index from parts in clip-retrieval's layout made elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

MODEL = ["--model", "zscir-tiny-vit", "--pretrained", "none"]
DIM = 32  # zscir-tiny-vit's embedding width


def write_parts(root: Path, sizes: list[int], dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Parts as clip-retrieval's inference writes them: float16 normalised rows, zero-padded part
    numbers, an image_path column. Returns all rows (float32) and paths in order."""
    rng = np.random.default_rng(seed)
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    width = len(str(len(sizes)))
    rows, paths = [], []
    for i, n in enumerate(sizes):
        x = rng.standard_normal((n, dim)).astype(np.float32)
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
        names = [f"/data/images/{i:02d}/{j:05d}.jpg" for j in range(n)]
        np.save(root / "img_emb" / f"img_emb_{str(i).zfill(width)}.npy", x)
        pq.write_table(pa.table({"image_path": names, "caption": ["a photo"] * n}),
                       root / "metadata" / f"metadata_{str(i).zfill(width)}.parquet")
        rows.append(x.astype(np.float32))
        paths += names
    return np.concatenate(rows), paths


def test_index_from_clip_retrieval_parts(cli, cache, tmp_path):
    from zscir_cli.index import search

    # 11 parts: names img_emb_00 .. img_emb_10, so numeric order and name order agree
    want, paths = write_parts(tmp_path / "emb", [7, 3, 5, 1, 4, 4, 2, 6, 3, 2, 5])
    code, out, err = cli("index", "--embeddings", tmp_path / "emb", *MODEL, "--json", "--cache-dir", cache)
    assert code == 0, err
    info = json.loads(out)
    assert info["images"] == len(paths) == 42 and info["built"] is True
    index, features, ids = search.load(Path(info["path"]))
    assert ids == paths
    assert np.array_equal(np.asarray(features, dtype=np.float32), want)
    assert index.ntotal == 42
    rows, _ = search.rank(index, want[:3], 1)
    assert rows[:, 0].tolist() == [0, 1, 2]
    manifest = json.loads((Path(info["path"]) / "manifest.json").read_text())
    assert manifest["gallery_source"]["kind"] == "embeddings" and manifest["renormalised_rows"] == 0
    code, out, _ = cli("index", "--embeddings", tmp_path / "emb", *MODEL, "--json", "--cache-dir", cache)
    assert code == 0 and json.loads(out)["built"] is False
    code, out, err = cli("index", "--embeddings", tmp_path / "emb", *MODEL, "--kind", "hnsw", "--json",
                         "--cache-dir", cache)
    assert code == 0, err
    hnsw = json.loads(out)
    assert hnsw["index"] != info["index"] and hnsw["kind"]["kind"] == "hnsw"
    # the index answers queries for the model it was made with
    img = tmp_path / "q.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(img)
    code, out, err = cli("query", img, "make it blue", "--method", "sum", *MODEL, "--index", info["index"],
                         "--top-k", "3", "--json", "--cache-dir", cache)
    assert code == 0, err
    hits = json.loads(out)["results"]
    assert len(hits) == 3 and all(h["id"] in paths for h in hits)


def test_rows_that_are_not_unit_length_are_normalised(cli, cache, tmp_path):
    root = tmp_path / "emb"
    write_parts(root, [4])
    x = np.load(root / "img_emb" / "img_emb_0.npy").astype(np.float32)
    x[1] *= 3.0
    np.save(root / "img_emb" / "img_emb_0.npy", x)  # float32 parts are read too
    code, out, err = cli("index", "--embeddings", root, *MODEL, "--json", "--cache-dir", cache)
    assert code == 0, err
    info = json.loads(out)
    features = np.load(Path(info["path"]) / "features.npy").astype(np.float32)
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=2e-3)
    assert json.loads((Path(info["path"]) / "manifest.json").read_text())["renormalised_rows"] == 1


@pytest.mark.parametrize("damage, message", [
    ("dim", "holds 16-dimensional embeddings, but zscir-tiny-vit (random weights) makes 32-dimensional ones"),
    ("no-metadata", "has no metadata_1.parquet, the metadata of"),
    ("rows", "metadata_0.parquet has 3 rows but"),
    ("no-id", "has none of the columns id, image_path"),
    ("empty", "has no img_emb/img_emb_N.npy files"),
    ("orphan-metadata", "metadata_2.parquet has no embeddings file"),
    ("not-2d", "not (rows, dimension) float embeddings"),
    ("nan", "img_emb_1.npy: row 2 (id '/data/images/01/00002.jpg') holds a value that is not a finite number"),
    ("inf", "img_emb_0.npy: row 0 (id '/data/images/00/00000.jpg') holds a value that is not a finite number"),
    ("zero", "img_emb_1.npy: row 3 (id '/data/images/01/00003.jpg') is all zeros"),
    ("id-in-part", "metadata_0.parquet: row 2 has id 'same', as row 1 of"),
    ("id-across", "metadata_1.parquet: row 0 has id '/data/images/00/00003.jpg', as row 3 of"),
    ("truncated-npy", "img_emb_1.npy"),
    ("truncated-parquet", "metadata_0.parquet"),
])
def test_bad_parts_exit_2_naming_the_file(cli, cache, tmp_path, damage, message):
    root = tmp_path / "emb"
    write_parts(root, [4, 4], dim=16 if damage == "dim" else DIM)
    if damage == "no-metadata":
        (root / "metadata" / "metadata_1.parquet").unlink()
    elif damage == "rows":
        pq.write_table(pa.table({"image_path": ["a", "b", "c"]}), root / "metadata" / "metadata_0.parquet")
    elif damage == "no-id":
        pq.write_table(pa.table({"caption": ["a"] * 4}), root / "metadata" / "metadata_0.parquet")
    elif damage == "empty":
        for p in (root / "img_emb").iterdir():
            p.unlink()
    elif damage == "orphan-metadata":
        pq.write_table(pa.table({"image_path": ["a"]}), root / "metadata" / "metadata_2.parquet")
    elif damage == "not-2d":
        np.save(root / "img_emb" / "img_emb_1.npy", np.zeros((4,), np.float16))
    elif damage in ("nan", "inf", "zero"):
        part, row, value = {"nan": (1, 2, np.nan), "inf": (0, 0, np.inf), "zero": (1, 3, 0.0)}[damage]
        x = np.load(root / "img_emb" / f"img_emb_{part}.npy")
        x[row, :] = 0.0 if damage == "zero" else x[row, :]
        x[row, 3] = value
        np.save(root / "img_emb" / f"img_emb_{part}.npy", x)
    elif damage.startswith("truncated"):  # a copy cut short
        path = root / ("img_emb/img_emb_1.npy" if damage == "truncated-npy" else "metadata/metadata_0.parquet")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "id-in-part":
        pq.write_table(pa.table({"image_path": ["a", "same", "same", "d"]}), root / "metadata" / "metadata_0.parquet")
    elif damage == "id-across":
        pq.write_table(pa.table({"image_path": ["/data/images/00/00003.jpg", "x", "y", "z"]}),
                       root / "metadata" / "metadata_1.parquet")
    code, out, err = cli("index", "--embeddings", root, *MODEL, "--cache-dir", cache)
    assert code == 2, err
    assert message in " ".join(err.split()), err
    assert out == ""
    assert not (cache / "index").is_dir() or not any((cache / "index").iterdir())  # nothing half-written


def test_a_gallery_and_embeddings_are_exclusive(cli, cache, tmp_path):
    code, _, err = cli("index", tmp_path, "--embeddings", tmp_path, *MODEL, "--cache-dir", cache)
    assert code == 2 and "not both" in err
    code, _, err = cli("index", *MODEL, "--cache-dir", cache)
    assert code == 2 and "Give a gallery to index, or --embeddings DIR" in " ".join(err.split())
