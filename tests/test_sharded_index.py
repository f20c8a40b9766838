"""`zscir index` under torchrun: parts in clip-retrieval's layout, equal to one process, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runs import ranks, rendered_gallery, torchrun, zscir

MODEL = ["--model", "zscir-tiny-vit", "--pretrained", "none"]
# batch 4 and parts of 8 images: 40 images make 5 parts, dealt to 2 processes as 0,2,4 / 1,3
ARGS = [*MODEL, "--batch-size", "4", "--part-size", "8", "--workers", "0", "--json"]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    return rendered_gallery(tmp_path_factory.mktemp("sharded") / "gallery", 40, "img{i:03d}.png")


@pytest.fixture(scope="module")
def single(gallery, tmp_path_factory) -> Path:
    """The index one process builds (no parts)."""
    cache = tmp_path_factory.mktemp("single-cache")
    res = zscir(["index", str(gallery), *ARGS], cache)
    assert res.returncode == 0, res.stderr[-3000:]
    return Path(json.loads(res.stdout)["path"])


def _top50(folder: Path) -> tuple[np.ndarray, list[str]]:
    from zscir_cli.index import search

    index, features, ids = search.load(folder)
    rows, _ = search.rank(index, np.asarray(features, dtype=np.float32), 50)
    return rows, ids


def test_two_processes_write_parts_and_the_same_index(gallery, single, tmp_path):
    import pyarrow.parquet as pq

    res = torchrun(["index", str(gallery), *ARGS], tmp_path / "cache")
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout)
    assert (info["images"], info["parts"], info["parts_reused"], info["processes"]) == (40, 5, 0, 2)
    folder = Path(info["path"])
    assert folder.name == single.name  # the same key as the one-process index
    assert np.array_equal(np.load(folder / "features.npy"), np.load(single / "features.npy"))
    rows2, ids2 = _top50(folder)
    rows1, ids1 = _top50(single)
    assert ids1 == ids2 and np.array_equal(rows1, rows2)
    # the parts, in clip-retrieval's layout, as autofaiss/embedding-reader read them: sorted by name
    parts = sorted((folder / "embeddings" / "img_emb").glob("*.npy"))
    metas = sorted((folder / "embeddings" / "metadata").glob("*.parquet"))
    assert [p.name for p in parts] == [f"img_emb_{i}.npy" for i in range(5)]
    assert [p.name for p in metas] == [f"metadata_{i}.parquet" for i in range(5)]
    arrays = [np.load(p) for p in parts]
    assert all(a.dtype == np.float16 and a.shape == (8, 32) for a in arrays)
    assert np.array_equal(np.concatenate(arrays), np.load(single / "features.npy"))
    paths = [v for m in metas for v in pq.read_table(m).column("image_path").to_pylist()]
    assert paths == [str(gallery / i) for i in ids1]
    assert not any((tmp_path / "cache" / ".parts").iterdir())  # moved into the index, nothing left
    again = ranks(["index", str(gallery), *ARGS], tmp_path / "cache")
    assert again.returncode == 0 and json.loads(again.stdout)["built"] is False


def test_a_killed_run_resumes_and_skips_written_parts(gallery, single, tmp_path):
    cache = tmp_path / "cache"
    killed = ranks(["index", str(gallery), *ARGS], cache, env={"ZSCIR_KILL_AT": "index:after-part"})
    assert killed.returncode == -9, killed.stderr[-2000:]  # the rank killed at its kill point
    assert not (cache / "index").is_dir() or not any((cache / "index").iterdir())
    (parts_dir,) = (cache / ".parts").iterdir()
    # a part counts once its log is written, after both its files (a process stopped before redoes it)
    written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (parts_dir / "img_emb").glob("*.npy")
               if (parts_dir / "log" / f"part_{p.stem.removeprefix('img_emb_')}.json").is_file()}
    assert 1 <= len(written) <= 2  # each process wrote one part before its kill (or was stopped first)
    res = ranks(["index", str(gallery), *ARGS], cache)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout)
    assert info["parts_reused"] == len(written) and info["built"] is True
    assert f"resuming: {len(written)} of 5 parts are already written" in res.stderr
    folder = Path(info["path"])
    for name, stamp in written.items():  # the very files of the first run, linked into the index
        p = folder / "embeddings" / "img_emb" / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    assert np.array_equal(np.load(folder / "features.npy"), np.load(single / "features.npy"))
    assert _top50(folder)[0].tolist() == _top50(single)[0].tolist()
