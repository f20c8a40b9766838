"""Stage I's feature cache under torchrun: every process encodes its parts, the artifact is the
bytes one process writes, a killed run's parts are reused, unreadable images stop every rank."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from runs import prepared_world, ranks, zscir

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.core.errors import UserError
from zscir_cli.jobs.context import Context
from zscir_cli.model.backbone import ModelSpec

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]
# 200 training images, batch 64: parts of 64 rows (4 parts, dealt to 2 processes as 0,2 / 1,3)
ARGS = ["map-train", *TINY, "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--workers", "0", "--json"]
FILES = ("image.npy", "tokens.npy", "ids.json")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return prepared_world(tmp_path_factory.mktemp("world"), train_pairs=200, val_pairs=16, cir_queries=6)


@pytest.fixture(scope="module")
def single(world, tmp_path_factory) -> Path:
    """The cache after map-train in one process (no parts)."""
    cache = tmp_path_factory.mktemp("single") / "cache"
    shutil.copytree(world, cache)
    res = zscir(ARGS, cache)
    assert res.returncode == 0, res.stderr[-3000:]
    return cache


def _features(cache: Path) -> dict[str, Path]:
    return {p.name: p for p in (cache / "features").iterdir() if (p / "manifest.json").is_file()}


def _train_key(cache: Path) -> str:
    return max(_features(cache).items(), key=lambda kv: json.loads((kv[1] / "manifest.json").read_text())["count"])[0]


def _assert_same_features(cache: Path, single: Path) -> None:
    mine, theirs = _features(cache), _features(single)
    assert mine.keys() == theirs.keys() and len(mine) == 2  # train and val, the one-process keys
    for key in mine:
        for name in FILES:
            assert (mine[key] / name).read_bytes() == (theirs[key] / name).read_bytes(), (key, name)
    assert not any((cache / ".parts").iterdir())  # the parts are removed once assembled


@pytest.mark.slow
def test_two_processes_encode_parts_into_the_one_process_features(world, single, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(world, cache)
    res = ranks(ARGS, cache)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_features(cache, single)
    key = _train_key(cache)
    manifest = json.loads((cache / "features" / key / "manifest.json").read_text())
    assert (manifest["count"], manifest["parts"], manifest["processes"]) == (200, 4, 2)
    assert manifest["part_ranks"] == [0, 1, 0, 1]  # each rank encoded its parts
    assert manifest["tokens"] == 17 and manifest["description"].startswith("frozen features of 200 images")
    assert "features: 4 part(s), 4 written now, by rank(s) 0, 1 (0 reused)" in res.stderr


@pytest.mark.slow
def test_a_kill_after_a_part_then_a_rerun_reuses_the_written_parts(world, single, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(world, cache)
    killed = ranks(ARGS, cache, {"ZSCIR_KILL_AT": "features:after-part"})
    assert killed.returncode == -9, killed.stderr[-2000:]  # the rank killed at its kill point
    folders = list((cache / ".parts").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("features-")
    written = sorted(p.name for p in (folders[0] / "log").glob("part_*.json"))
    assert 1 <= len(written) < 4  # the first rank to finish a part died after it, the other was stopped
    assert not (cache / "features").is_dir() or not _features(cache)
    res = ranks(ARGS, cache)
    assert res.returncode == 0, res.stderr[-3000:]
    n = len(written)
    assert f"resuming: {n} of 4 parts are already written" in res.stderr
    assert f"features: 4 part(s), {4 - n} written now" in res.stderr and f"({n} reused)" in res.stderr
    _assert_same_features(cache, single)


def _gallery(folder: Path, count: int):
    from zscir_cli.data import shapes
    from zscir_cli.data.galleries import FilesGallery

    folder.mkdir()
    cfg = shapes.WorldConfig(seed=5, image_size=32)
    for i in range(count):
        shapes.render_record(cfg, shapes.pair_record(cfg, "train", i)).save(folder / f"img{i:03d}.png")
    return FilesGallery([str(p) for p in sorted(folder.glob("*.png"))])


def test_one_process_equals_encode_once_and_unreadable_images_are_named(tmp_path):
    """The sharded path in one process (a group of one): parts of 4 rows give encode_once's bytes
    and key; an unreadable image is a user error naming it, with nothing left behind."""
    from zscir_cli.jobs.backbones import open_backbone
    from zscir_cli.jobs.distributed import Dist
    from zscir_cli.jobs.retrieval.encodings import encode_once
    from zscir_cli.jobs.retrieval.sharded_features import sharded_features

    gallery = _gallery(tmp_path / "images", 10)
    one, many = (Context(store=ArtifactStore(tmp_path / c), device="cpu", workers=0) for c in ("one", "many"))
    backbone = open_backbone(one, ModelSpec("zscir-tiny-vit", "none"))
    ref = encode_once(one, backbone, gallery, index=False, grid=2, batch_size=4).features
    art = sharded_features(many, backbone, gallery, Dist(), 2, batch_size=4)
    assert art.key == ref.key and art.manifest["parts"] == 3  # 10 rows: parts of 4, 4 and 2
    for name in FILES:
        assert (art.path / name).read_bytes() == (ref.path / name).read_bytes(), name
    again = sharded_features(many, backbone, gallery, Dist(), 2, batch_size=4)  # found: nothing encoded
    assert again.path == art.path and again.manifest == art.manifest

    (tmp_path / "images" / "img007.png").write_bytes(b"not a png")
    broken = _gallery_of(tmp_path / "images")
    with pytest.raises(UserError, match=r"1 image\(s\) of the data set could not be read: .*img007\.png"):
        sharded_features(many, backbone, broken, Dist(), 2, batch_size=4)
    assert not any((tmp_path / "many" / ".parts").iterdir())
    assert len(list((tmp_path / "many" / "features").iterdir())) == 1  # only the first artifact


def _gallery_of(folder: Path):
    from zscir_cli.data.galleries import FilesGallery

    return FilesGallery([str(p) for p in sorted(folder.glob("*.png"))])
