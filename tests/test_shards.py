"""Training data in shards: `prepare webdataset` and `prepare csv`, then map-train on them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from zscir_cli.data.shards import expand_braces

MODEL = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


def _png(i: int) -> tuple[bytes, str]:
    from zscir_cli.data import shapes

    cfg = shapes.WorldConfig(seed=4, image_size=32)
    rec = shapes.pair_record(cfg, "train", i)
    buf = io.BytesIO()
    shapes.render_record(cfg, rec).save(buf, format="PNG")
    return buf.getvalue(), rec["caption"]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, shards: int = 3, per: int = 6, corrupt: tuple[int, int] | None = (1, 2),
                 uncaptioned: tuple[int, int] | None = (2, 4), captions: bool = True) -> dict[str, tuple[bytes, str]]:
    """img2dataset-style shards: KEY.png + KEY.txt + KEY.json per sample. Returns id -> (bytes, caption)."""
    root.mkdir(parents=True, exist_ok=True)
    samples, k = {}, 0
    for s in range(shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for j in range(per):
                data, caption = _png(k)
                key = f"{s:05d}{j:04d}"
                if (s, j) == corrupt:
                    data = b"\x89PNG not really"
                _add(tar, f"{key}.png", data)
                if captions and (s, j) != uncaptioned:
                    _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps({"key": key}).encode())
                samples[f"{s:05d}/{key}"] = (data, caption)
                k += 1
    return samples


def _train_split(cache: Path, key: str):
    import datasets as hf

    return hf.load_from_disk(str(cache / "dataset" / key / "pairs" / "train"))


def test_brace_expansion():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_webdataset_corrupt_member_is_named_then_skipped_and_counted(cli, cache, tmp_path):
    samples = write_shards(tmp_path / "shards")
    pattern = str(tmp_path / "shards" / "{00000..00002}.tar")
    code, out, err = cli("prepare", "webdataset", pattern, "--cache-dir", cache)
    assert code == 2 and out == ""
    assert f"{tmp_path / 'shards' / '00001.tar'}: 000010002.png is not a readable image" in " ".join(err.split())
    assert "--skip-bad" in err
    assert not (cache / "dataset").is_dir() or not any((cache / "dataset").iterdir())  # nothing half-written
    code, out, err = cli("prepare", "webdataset", pattern, "--skip-bad", "--json", "--cache-dir", cache)
    assert code == 0, err
    info = json.loads(out)
    assert (info["images"], info["bad_images"], info["uncaptioned"], info["name"]) == (16, 1, 1, "shards")
    ds = _train_split(cache, info["key"])
    assert "00001/000010002" not in ds["id"] and "00002/000020004" not in ds["id"]  # corrupt; uncaptioned
    raw = ds.cast_column("image", __import__("datasets").Image(decode=False))
    for row in raw:  # the shard's bytes, kept as they were, and the caption of the same key
        data, caption = samples[row["id"]]
        assert row["caption"] == caption and row["image"]["bytes"] == data
    manifest = json.loads((cache / "dataset" / info["key"] / "manifest.json").read_text())
    assert {s["error"] for s in manifest["skipped"]} >= {"no caption"}
    assert not (cache / "dataset" / info["key"] / ".build").exists()


def test_webdataset_missing_caption_keep_and_all_uncaptioned(cli, cache, tmp_path):
    write_shards(tmp_path / "shards", corrupt=None)
    code, out, err = cli("prepare", "webdataset", tmp_path / "shards", "--missing-caption", "keep", "--json",
                         "--cache-dir", cache)
    assert code == 0, err
    info = json.loads(out)
    assert (info["images"], info["captioned"], info["uncaptioned"]) == (18, 17, 1)
    assert min(_train_split(cache, info["key"])["caption"]) == ""
    write_shards(tmp_path / "bare", corrupt=None, captions=False)
    code, _, err = cli("prepare", "webdataset", tmp_path / "bare", "--cache-dir", cache)
    assert code == 2 and "No sample of bare has a caption" in err and "--missing-caption keep" in err


def test_webdataset_truncated_shard_and_missing_shard(cli, cache, tmp_path):
    write_shards(tmp_path / "shards", corrupt=None, uncaptioned=None)
    last = tmp_path / "shards" / "00002.tar"
    last.write_bytes(last.read_bytes()[:2600])  # cut inside the third member's data
    code, _, err = cli("prepare", "webdataset", tmp_path / "shards", "--cache-dir", cache)
    assert code == 2 and f"Shard {last} cannot be read to its end" in " ".join(err.split())
    code, out, err = cli("prepare", "webdataset", tmp_path / "shards", "--skip-bad", "--json", "--cache-dir", cache)
    assert code == 0, err
    info = json.loads(out)
    assert info["broken_shards"] == 1 and 12 <= info["images"] < 18
    code, _, err = cli("prepare", "webdataset", str(tmp_path / "shards" / "{00000..00004}.tar"), "--cache-dir", cache)
    assert code == 2 and "2 of the 5 shard(s)" in err and "00003.tar" in err


@pytest.mark.parametrize("where", ["data", "header", "after a member", "gzip"])
def test_a_shard_cut_anywhere_is_named_with_its_member(cli, cache, tmp_path, where):
    """A tar read as a stream ends quietly where the bytes end: every cut must be said."""
    import gzip

    write_shards(tmp_path / "shards", shards=1, corrupt=None, uncaptioned=None)
    shard = tmp_path / "shards" / "00000.tar"
    raw = shard.read_bytes()
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    last = members[-4]  # the fifth sample's image: the sixth follows
    cuts = {"data": last.offset_data + 100, "header": last.offset + 100, "after a member": last.offset}
    if where == "gzip":
        shard.unlink()
        shard = shard.with_suffix(".tar.gz")
        packed = gzip.compress(raw)
        shard.write_bytes(packed[:len(packed) * 2 // 3])
    else:
        shard.write_bytes(raw[:cuts[where]])
    code, _, err = cli("prepare", "webdataset", tmp_path / "shards", "--cache-dir", cache)
    said = " ".join(err.split())
    assert code == 2 and f"Shard {shard} cannot be read to its end" in said and "member" in said
    code, out, err = cli("prepare", "webdataset", tmp_path / "shards", "--skip-bad", "--json", "--cache-dir", cache)
    assert code == 0, err
    info = json.loads(out)
    assert info["broken_shards"] == 1 and info["images"] < 6  # the samples before the cut, counted apart


def write_csv(root: Path, sep: str = "\t", name: str = "train.tsv") -> Path:
    import csv

    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = [["filepath", "title"]]
    for i in range(12):
        data, caption = _png(i)
        (root / "img" / f"{i}.png").write_bytes(data)
        rows.append([f"img/{i}.png", "" if i == 3 else caption])
    (root / "img" / "bad.png").write_bytes(b"junk")
    rows.append(["img/bad.png", "a red circle"])
    with open(root / name, "w", newline="") as f:  # captions hold commas: quoted where needed
        csv.writer(f, delimiter=sep, lineterminator="\n").writerows(rows)
    return root / name


def test_csv_columns_separator_bad_rows(cli, cache, tmp_path):
    tsv = write_csv(tmp_path / "data")
    code, _, err = cli("prepare", "csv", tsv, "--cache-dir", cache)
    assert code == 2 and f"{tsv}:14: img/bad.png is not a readable image" in " ".join(err.split())
    code, out, err = cli("prepare", "csv", tsv, "--skip-bad", "--json", "--cache-dir", cache)
    assert code == 0, err
    info = json.loads(out)
    assert (info["images"], info["bad_images"], info["uncaptioned"], info["name"]) == (11, 1, 1, "train")
    ds = _train_split(cache, info["key"])
    assert ds["id"][:3] == ["img/0.png", "img/1.png", "img/2.png"] and "img/3.png" not in ds["id"]
    code, _, err = cli("prepare", "csv", tsv, "--separator", ",", "--cache-dir", cache)
    assert code == 2 and "has no column 'filepath', 'title'" in err and "--separator" in err
    code, _, err = cli("prepare", "csv", tsv, "--image-column", "path", "--cache-dir", cache)
    assert code == 2 and "no column 'path'" in err
    csv_file = write_csv(tmp_path / "comma", sep=",", name="pairs.csv")  # .csv: comma by default
    code, out, err = cli("prepare", "csv", csv_file, "--skip-bad", "--json", "--cache-dir", cache)
    assert code == 0 and json.loads(out)["images"] == 11, err


def test_csv_paths_outside_the_folder(cli, cache, tmp_path):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(_png(0)[0])
    (tmp_path / "data").mkdir()
    f = tmp_path / "data" / "list.csv"
    f.write_text(f"filepath,title\n{outside},a photo\n../elsewhere.png,a photo\n")
    code, _, err = cli("prepare", "csv", f, "--cache-dir", cache)
    assert code == 2 and f"{f}:2: image '{outside}' lies outside" in " ".join(err.split())
    code, out, err = cli("prepare", "csv", f, "--allow-outside-paths", "--json", "--cache-dir", cache)
    assert code == 0 and json.loads(out)["images"] == 2, err
    f.write_text("filepath,title\nmissing.png,a photo\n")
    code, _, err = cli("prepare", "csv", f, "--cache-dir", cache)
    assert code == 2 and "missing.png is not a readable image (no such file)" in " ".join(err.split())


@pytest.mark.slow
def test_map_train_on_webdataset_and_csv(cli, cache, tmp_path):
    write_shards(tmp_path / "shards")
    assert cli("prepare", "webdataset", tmp_path / "shards", "--skip-bad", "--cache-dir", cache)[0] == 0
    write_csv(tmp_path / "data")
    assert cli("prepare", "csv", tmp_path / "data" / "train.tsv", "--skip-bad", "--cache-dir", cache)[0] == 0
    for name, n in (("shards", 16), ("train", 11)):
        code, out, err = cli("map-train", "--data", name, *MODEL, "--epochs", "1", "--batch-size", "8",
                             "--workers", "0", "--json", "--cache-dir", cache)
        assert code == 0, err
        run = json.loads(out)
        manifest = json.loads((Path(run["path"]) / "manifest.json").read_text())
        feats = [i for i in manifest["inputs"] if i["kind"] == "features"]
        assert len(feats) == 1
        fm = json.loads((cache / "features" / feats[0]["key"] / "manifest.json").read_text())
        assert fm["count"] == n and "sta" in run  # every kept sample has a caption: STA is on
