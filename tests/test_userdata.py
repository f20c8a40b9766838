"""A user's own captions: one reader for every command, and data sets whose key follows their
captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from zscir_cli.core.errors import UserError
from zscir_cli.data.captions import read_captions


def _ids(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*") if p.suffix != ".jsonl")


@pytest.mark.parametrize("name,content,line", [
    ("c.jsonl", '{"image": "a.png", "caption": "a red dress"}\n\n{"image": "b.png", "caption": "x, y"}\n', 3),
    ("c.jsonl", '{"file_name": "a.png", "text": "a red dress"}\n{"file_name": "b.png", "text": "x, y"}\n', 2),
    ("c.csv", 'image,caption\na.png,a red dress\nb.png,"x, y"\n', 3),
    ("c.csv", '\ufefffile_name,text,extra\na.png,a red dress,1\nb.png,"x, y",2\n', 3),
    ("c.tsv", "file_name\ttext\na.png\ta red dress\nb.png\tx, y\n", 3),
    ("captions.txt", "image\tcaption\na.png\ta red dress\nb.png\tx, y\n", 3),
    ("captions.txt", '{"image": "a.png", "caption": "a red dress"}\n{"image": "b.png", "caption": "x, y"}\n', 2),
])
def test_one_reader_takes_both_conventions_in_jsonl_csv_and_tsv(tmp_path, name, content, line):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    rows = read_captions(f)
    assert [(r.image, r.caption) for r in rows] == [("a.png", "a red dress"), ("b.png", "x, y")]
    assert rows[1].line == line


@pytest.mark.parametrize("name,content,message", [
    ("c.jsonl", '{"image": "a.png", "caption": "x"}\n{"image": \n', r"c.jsonl:2: not valid JSON"),
    ("c.jsonl", '{"image": "a.png", "caption": "x"}\n\n["a.png"]\n', r"c.jsonl:3: expected a JSON object"),
    ("c.jsonl", '{"caption": "x"}\n', r"c.jsonl:1: no image path"),
    ("c.jsonl", '{"image": "a.png", "caption": 3}\n', r"c.jsonl:1: the caption must be a string"),
    ("c.jsonl", '{"image": "a.png"}\n', r"c.jsonl:1: no caption for 'a.png'"),
    ("c.csv", "name,caption\na.png,x\n", r"c.csv:1: the CSV header has no 'file_name' column"),
    ("c.csv", "image,caption\na.png,x\nb.png,\n", r"c.csv:3: no caption for 'b.png'"),
    ("c.csv", 'image,caption\na.png,"two\nlines"\n,y\n', r"c.csv:4: no image path"),
    ("c.jsonl", "\n\n", r"holds no captions"),
])
def test_bad_lines_are_named_by_number(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_captions(f)


def test_captions_optional_where_a_command_allows_it(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("file_name,text\na.png,\n", encoding="utf-8")
    assert read_captions(f, require_caption=False)[0].caption == ""


def test_every_command_that_reads_captions_names_the_formats_in_its_help(cli):
    for path in (("synth",), ("prepare", "imagefolder")):
        code, out, _ = cli(*path, "--help")
        flat = " ".join(out.split())
        assert code == 0 and "--captions" in out
        assert "JSONL, CSV or TSV" in flat and "image and caption, or file_name and text" in flat, path


def test_an_edited_caption_rebuilds_the_data_set(cli, tmp_path, image_folder):
    cache = tmp_path / "c"
    meta = image_folder / "metadata.jsonl"
    rows = [{"file_name": i, "text": f"picture {n}"} for n, i in enumerate(_ids(image_folder))]
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ("prepare", "imagefolder", image_folder, "--name", "mine", "--cache-dir", cache, "--json")
    first = json.loads(cli(*args)[1])
    again = json.loads(cli(*args)[1])
    assert first["built"] and not again["built"] and again["key"] == first["key"]
    rows[3]["text"] = "an edited caption"
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    edited = json.loads(cli(*args)[1])
    assert edited["built"] and edited["key"] != first["key"]
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.jobs.datasets.store import load_split

    art = ArtifactStore(cache).get("dataset", edited["key"])
    ds = load_split(art, "pairs", "train")
    assert dict(zip(ds["id"], ds["caption"]))[rows[3]["file_name"]] == "an edited caption"
    # the same captions from another file, in another convention and order, are the same data set
    meta.unlink()
    other = tmp_path / "caps.csv"
    other.write_text("image,caption\n" + "".join(f"gallery/{r['file_name']},{r['text']}\n" for r in rows[::-1]))
    code, out, err = cli(*args[:-1], "--captions", other, "--json")
    assert code == 0, err
    assert json.loads(out)["key"] == edited["key"] and not json.loads(out)["built"]


def test_a_captions_file_must_name_images_of_the_folder(cli, tmp_path, image_folder):
    cache = tmp_path / "c"
    caps = tmp_path / "caps.jsonl"
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere.png")
    caps.write_text(json.dumps({"image": "gallery/a/img1.png", "caption": "x"}) + "\n"
                    + json.dumps({"image": "elsewhere.png", "caption": "y"}) + "\n")
    code, _, err = cli("prepare", "imagefolder", image_folder, "--captions", caps, "--cache-dir", cache)
    assert code == 2 and "caps.jsonl:2: image 'elsewhere.png' is not under the folder" in err
    caps.write_text(json.dumps({"image": "gallery/a/img1.png", "caption": "x"}) + "\n"
                    + json.dumps({"image": "gallery/a/img1.png", "caption": "y"}) + "\n")
    code, _, err = cli("prepare", "imagefolder", image_folder, "--captions", caps, "--cache-dir", cache)
    assert code == 2 and "caps.jsonl:2: 'gallery/a/img1.png' already has a caption on line 1" in err
    assert not (cache / "dataset").exists() or not any((cache / "dataset").iterdir())
