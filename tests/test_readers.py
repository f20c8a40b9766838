"""Every reader of a user's file against the faults files have: a byte-order mark and Windows
line ends read as what they are; repeated ids, wrong types, empty files and non-finite numbers
refused, naming the file and the line, entry or row (the cells that earlier rounds' tests do not
already hold; docs/data.md has the whole matrix)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from zscir_cli.core.errors import UserError

BOM = "\ufeff"


def _png(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    return path


# -- caption files ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,content", [
    ("c.jsonl", BOM + '{"image": "a.png", "caption": "a red square"}\r\n{"image": "b.png", "caption": "blue"}\r\n'),
    ("c.csv", BOM + "image,caption\r\na.png,a red square\r\nb.png,blue\r\n"),
    ("c.tsv", BOM + "file_name\ttext\r\na.png\ta red square\r\nb.png\tblue\r\n"),
])
def test_caption_files_with_a_bom_and_crlf_lines(tmp_path, name, content):
    from zscir_cli.data.captions import read_captions

    (tmp_path / name).write_text(content, encoding="utf-8", newline="")
    rows = read_captions(tmp_path / name)
    assert [(r.line, r.image, r.caption) for r in rows] == [(2 - name.endswith("l"), "a.png", "a red square"),
                                                            (3 - name.endswith("l"), "b.png", "blue")]


def test_a_repeated_image_in_captions_for_synth_is_named(tmp_path):
    from zscir_cli.jobs.training.synth import corpus_from_file

    _png(tmp_path / "a.png")
    (tmp_path / "c.jsonl").write_text('{"image": "a.png", "caption": "red"}\n{"image": "./a.png", "caption": "x"}\n')
    with pytest.raises(UserError, match=r"c\.jsonl:2: '\./a\.png' already has a caption on line 1"):
        corpus_from_file(tmp_path / "c.jsonl")


# -- CSV data sets ---------------------------------------------------------------------------

def test_csv_with_a_bom_is_read_and_a_repeated_image_is_named(cli, cache, tmp_path):
    for i, colour in enumerate(("red", "green", "blue")):
        _png(tmp_path / "img" / f"{i}.png", colour)
    (tmp_path / "t.csv").write_text(BOM + "filepath,title\r\nimg/0.png,red\r\nimg/1.png,green\r\nimg/2.png,blue\r\n",
                                    encoding="utf-8", newline="")
    code, out, err = cli("prepare", "csv", tmp_path / "t.csv", "--json", "--cache-dir", cache)
    assert code == 0, err
    assert json.loads(out)["images"] == 3
    (tmp_path / "d.csv").write_text("filepath,title\nimg/0.png,red\nimg/1.png,green\nimg/0.png,again\n")
    code, _, err = cli("prepare", "csv", tmp_path / "d.csv", "--cache-dir", cache)
    assert code == 2 and "d.csv:4: image 'img/0.png' already has a row, line 2" in " ".join(err.split())


# -- webdataset shards -----------------------------------------------------------------------

def _shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png_bytes(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_a_shard_caption_with_a_bom_and_a_repeated_key(cli, cache, tmp_path):
    import datasets as hf

    _shard(tmp_path / "s" / "0.tar", [("a.png", _png_bytes("red")), ("a.txt", (BOM + "a red square\r\n").encode()),
                                      ("b.png", _png_bytes("blue")), ("b.txt", b"blue"),
                                      ("a.png", _png_bytes("green")), ("a.txt", b"again")])
    code, _, err = cli("prepare", "webdataset", tmp_path / "s", "--cache-dir", cache)
    assert code == 2 and "0.tar: a.png" in err and "repeats the key of an earlier sample" in " ".join(err.split())
    code, out, err = cli("prepare", "webdataset", tmp_path / "s", "--skip-bad", "--json", "--cache-dir", cache)
    assert code == 0, err
    info = json.loads(out)
    assert info["images"] == 2 and info["bad_images"] == 1  # the repeat left out, counted
    train = hf.load_from_disk(str(cache / "dataset" / info["key"] / "pairs" / "train"))
    assert train["caption"] == ["a red square", "blue"]


@pytest.mark.parametrize("member, fault", [
    (b"{not json", "a.json is not JSON"),
    (b'["a red square"]', "a.json holds list, not an object with a 'caption'"),
    (b'{"caption": 5}', "the caption of a.json is int, not text"),
])
def test_a_shard_caption_member_of_the_wrong_kind_is_named(cli, cache, tmp_path, member, fault):
    """img2dataset's `.json` metadata holds the caption: one that is not JSON, or not text, is a
    bad sample (named, or left out and counted with --skip-bad), never a silently missing caption;
    a null caption is a missing one."""
    _shard(tmp_path / "s" / "0.tar", [("a.png", _png_bytes("red")), ("a.json", member),
                                      ("b.png", _png_bytes("blue")), ("b.json", b'{"caption": "blue"}'),
                                      ("c.png", _png_bytes("green")), ("c.json", b'{"caption": null}')])
    code, _, err = cli("prepare", "webdataset", tmp_path / "s", "--cache-dir", cache)
    assert code == 2 and f"0.tar: a.png: {fault}" in " ".join(err.split()), err
    code, out, err = cli("prepare", "webdataset", tmp_path / "s", "--skip-bad", "--json", "--cache-dir", cache)
    assert code == 0, err
    info = json.loads(out)
    assert info["images"] == 1 and info["bad_images"] == 1  # b kept; a bad; c without a caption, skipped


# -- JSONL files: triplets, queries, texts; prediction files -----------------------------------

def test_triplet_and_query_files_with_a_bom_and_crlf_lines(tmp_path):
    from zscir_cli.jobs.retrieval.batch import read_queries
    from zscir_cli.jobs.training.triplet_files import read_triplets

    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", "blue")
    (tmp_path / "t.jsonl").write_text(BOM + '{"reference": "a.png", "target": "b.png", "modification": "blue"}\r\n',
                                      encoding="utf-8", newline="")
    assert read_triplets(tmp_path / "t.jsonl").rows[0]["modification"] == "blue"
    (tmp_path / "q.jsonl").write_text(BOM + '{"reference": "g1", "text": "make it red"}\r\n\r\n', encoding="utf-8",
                                      newline="")
    (q,) = read_queries(tmp_path / "q.jsonl", {"g1"}, "k", "sum")
    assert q.error is None and q.reference == "g1" and q.line == 1


def test_texts_for_eval_need_one_line_per_query(tmp_path):
    from zscir_cli.jobs.protocols.suites import read_texts

    path = tmp_path / "texts.jsonl"
    path.write_text(BOM + '{"query_id": "q1", "modification": "make it red"}\r\n', encoding="utf-8", newline="")
    assert read_texts(path) == {"q1": "make it red"}
    path.write_text('{"query_id": "q1", "modification": "a"}\n{"query_id": "q1", "modification": "b"}\n')
    with pytest.raises(UserError, match="texts.jsonl:2: query q1 repeats"):
        read_texts(path)
    path.write_text('{"query_id": "q1", "modification": 3}\n')
    with pytest.raises(UserError, match="texts.jsonl:1: expected"):
        read_texts(path)


# -- the public benchmarks' annotation files -------------------------------------------------------

@pytest.fixture
def cirr_tree(tmp_path):
    import benchfixtures

    return benchfixtures.cirr(tmp_path / "cirr")


def _edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text(encoding="utf-8-sig"))
    change(obj)
    path.write_text(json.dumps(obj))


def test_annotations_with_a_bom_repeated_ids_wrong_types_and_no_queries(cirr_tree):
    from zscir_cli.data.public_trees import load_cirr

    caps = cirr_tree / "cirr/captions/cap.rc2.val.json"
    caps.write_text(BOM + caps.read_text(), encoding="utf-8")
    assert load_cirr(cirr_tree, "val").queries  # the mark is no part of the JSON
    original = json.loads(caps.read_text(encoding="utf-8-sig"))
    _edit_json(caps, lambda rows: rows[1].update(pairid=rows[0]["pairid"]))
    with pytest.raises(UserError, match="entries 0 and 1 have the same pairid"):
        load_cirr(cirr_tree, "val")
    caps.write_text(json.dumps(original))
    _edit_json(caps, lambda rows: rows[1].update(caption=["not", "text"]))
    with pytest.raises(UserError, match=r"entry 1: .caption. is \[\"not\", \"text\"\], not a non-empty string"):
        load_cirr(cirr_tree, "val")
    caps.write_text("[]")
    with pytest.raises(UserError, match="holds no pairids"):
        load_cirr(cirr_tree, "val")


def test_prediction_files_with_a_bom(cirr_tree, cli, tmp_path):
    from zscir_cli.data.public_trees import load_cirr

    data = load_cirr(cirr_tree, "val")
    gallery = sorted(data.galleries[""])
    pred = {"version": "rc2", "metric": "recall", **{q.qid: gallery[:3] for q in data.queries}}
    (tmp_path / "p.json").write_text(BOM + json.dumps(pred), encoding="utf-8")
    code, out, err = cli("score", "cirr", tmp_path / "p.json", "--root", cirr_tree, "--json")
    assert code == 0, err
    assert 0 <= json.loads(out)["recall@1"] <= 100


# -- weights ---------------------------------------------------------------------------------

def test_weights_holding_nan_are_refused_naming_the_tensor(tmp_path):
    from zscir_cli.jobs.backbones import user_errors
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    state = {k: v.clone() for k, v in load_backbone(ModelSpec("zscir-tiny-vit", None)).model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError, match=rf"not finite numbers \(NaN or infinity\) in '{name}'"), user_errors():
        load_backbone(ModelSpec("zscir-tiny-vit", str(tmp_path / "w.safetensors")))
    state[name].view(-1)[0] = 0.0
    save_file(state, str(tmp_path / "ok.safetensors"))
    assert torch.isfinite(load_backbone(ModelSpec("zscir-tiny-vit", str(tmp_path / "ok.safetensors")))
                          .encode_texts(["a red circle"])).all()
