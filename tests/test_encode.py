"""The encoding runner and gallery identity: one pass per (model, gallery), by content."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.data.galleries import FilesGallery, FolderGallery
from zscir_cli.jobs.context import Context

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


@pytest.fixture(scope="module")
def backbone():
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    return load_backbone(ModelSpec("zscir-tiny-vit", "none"))


def _ctx(root: Path) -> Context:
    return Context(store=ArtifactStore(root), workers=0)


def test_index_and_feature_cache_hold_the_same_global_features(backbone, image_folder, tmp_path):
    from zscir_cli.jobs.retrieval.features import cached_features
    from zscir_cli.jobs.retrieval.indexing import index_gallery

    gallery = FolderGallery(image_folder)
    alone = index_gallery(_ctx(tmp_path / "a"), backbone, gallery).artifact  # global features only
    both = index_gallery(_ctx(tmp_path / "b"), backbone, gallery, grid=2)  # one pass, tokens too
    fs = cached_features(_ctx(tmp_path / "b"), backbone, gallery, grid=2)
    assert both.built and fs.artifact.ref != both.artifact.ref
    assert len(list((tmp_path / "b").glob("*/*/manifest.json"))) == 2  # features found, not re-encoded
    a_idx, b_idx = (faiss.read_index(str(x.path / "index.faiss")) for x in (alone, both.artifact))
    assert np.array_equal(a_idx.reconstruct_n(0, a_idx.ntotal), b_idx.reconstruct_n(0, b_idx.ntotal))  # fp32
    assert np.array_equal(np.load(alone.path / "features.npy"), np.asarray(fs.image))
    assert np.array_equal(np.asarray(fs.tokens[:, 0]), np.asarray(fs.image))  # the global token first
    assert "tokens" not in os.listdir(alone.path) and fs.tokens.shape[1] == 5


def test_an_index_is_derived_from_existing_features_without_encoding(backbone, image_folder, tmp_path, monkeypatch):
    from zscir_cli.jobs.retrieval import encoder as encode
    from zscir_cli.jobs.retrieval.features import cached_features
    from zscir_cli.jobs.retrieval.indexing import index_gallery

    ctx = _ctx(tmp_path / "c")
    gallery = FolderGallery(image_folder)
    fs = cached_features(ctx, backbone, gallery, grid=2)
    monkeypatch.setattr(encode.DataLoader, "__iter__", lambda self: pytest.fail("encoded again"))
    res = index_gallery(ctx, backbone, FolderGallery(image_folder))
    assert res.built and res.artifact.manifest["from_features"] == fs.artifact.key
    assert np.array_equal(np.load(res.artifact.path / "features.npy"), np.asarray(fs.image))


def test_index_json_and_manifest_show_stage_timings(cli, cache, image_folder):
    code, out, err = cli("index", image_folder, *TINY, "--cache-dir", cache, "--workers", "0", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert set(info["timings_s"]) == {"read_decode", "encode", "write"}
    assert all(v >= 0 for v in info["timings_s"].values()) and info["timings_s"]["encode"] > 0
    manifest = json.loads((cache / "index" / info["index"] / "manifest.json").read_text())
    assert manifest["timings_s"] == info["timings_s"]
    code, out, _ = cli("index", image_folder, *TINY, "--cache-dir", cache, "--json")
    assert json.loads(out)["built"] is False and json.loads(out)["timings_s"] == info["timings_s"]


def _corpus(folder: Path, n: int, offset: int = 0) -> list[str]:
    from zscir_cli.data import shapes

    cfg = shapes.WorldConfig(seed=5, image_size=32)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"im{i}.png"
        shapes.render_record(cfg, shapes.pair_record(cfg, "train", i + offset)).save(p)
        paths.append(str(p))
    return paths


def test_triplet_images_are_identified_by_content(backbone, tmp_path):
    from zscir_cli.jobs.retrieval.features import cached_features

    ctx = _ctx(tmp_path / "cache")
    first = _corpus(tmp_path / "one", 4)
    other = _corpus(tmp_path / "two", 4, offset=10)  # another corpus of the same size
    a = cached_features(ctx, backbone, FilesGallery(first), grid=2)
    b = cached_features(ctx, backbone, FilesGallery(other), grid=2)
    assert a.artifact.key != b.artifact.key and not np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert cached_features(ctx, backbone, FilesGallery(first), grid=2).artifact.key == a.artifact.key  # reused

    from zscir_cli.data import shapes

    cfg = shapes.WorldConfig(seed=5, image_size=32)
    shapes.render_record(cfg, shapes.pair_record(cfg, "train", 99)).save(first[2])  # edited in place
    st = os.stat(first[2])
    os.utime(first[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    c = cached_features(ctx, backbone, FilesGallery(first), grid=2)
    assert c.artifact.key != a.artifact.key
    assert np.array_equal(np.asarray(c.image[[0, 1, 3]]), np.asarray(a.image[[0, 1, 3]]))
    assert not np.array_equal(np.asarray(c.image[2]), np.asarray(a.image[2]))  # fresh features


def test_a_prepared_gallery_is_one_gallery_whatever_it_is_called(tmp_path):
    from zscir_cli.data.shapes import WorldConfig
    from zscir_cli.jobs.datasets.shapes import prepare_shapes
    from zscir_cli.jobs.datasets.store import resolve_gallery

    ctx = _ctx(tmp_path / "cache")
    art, _ = prepare_shapes(ctx, WorldConfig(seed=0, train_pairs=2, val_pairs=2, cir_queries=2))
    by_name, by_key = resolve_gallery(ctx, "shapes:test"), resolve_gallery(ctx, f"{art.key}:test")
    assert by_name.identity() == by_key.identity() == {"kind": "dataset", "dataset": art.key, "part": "gallery",
                                                        "split": "test"}
    assert resolve_gallery(ctx, "shapes:val").identity() != by_name.identity()
