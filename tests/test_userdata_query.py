"""A query whose reference file is itself an indexed image never returns it, in every method."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import pytest
from PIL import Image

from zscir_cli.jobs.retrieval.references import reference_arg, resolve, upload_arg

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    from conftest import image_folder as make_folder

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.galleries import FolderGallery
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.indexing import index_gallery
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    base = tmp_path_factory.mktemp("q")
    folder = make_folder.__wrapped__(base)
    ctx = Context(store=ArtifactStore(base / "cache"), workers=0)
    res = index_gallery(ctx, load_backbone(ModelSpec("zscir-tiny-vit", "none")), FolderGallery(folder))
    return base / "cache", folder, res.artifact.key


@pytest.mark.parametrize("method", ["image", "sum", "text"])
def test_a_gallery_file_as_reference_is_left_out_and_said(cli, indexed, tmp_path, method):
    cache, folder, key = indexed
    ref = min(folder.rglob("*.png"))
    rel = ref.relative_to(folder).as_posix()
    copy = tmp_path / "copy of it.png"  # the same bytes elsewhere are the same image
    shutil.copyfile(ref, copy)
    for given in (ref, copy, folder / ".." / folder.name / rel):
        code, out, err = cli("query", given, "make it red", "--method", method, "-k", "20", "--json",
                             "--index", key, "--cache-dir", cache)
        assert code == 0, err
        res = json.loads(out)
        got = [r["id"] for r in res["results"]]
        assert rel not in got and len(got) == 9, given
        assert res["excluded_reference"] == rel
        assert f"the reference is the indexed image {rel}: it is left out of the results" in err


def test_another_image_excludes_nothing(cli, indexed, tmp_path):
    cache, _folder, key = indexed
    other = tmp_path / "other.png"
    Image.new("RGB", (32, 32), "purple").save(other)
    code, out, err = cli("query", other, "make it red", "--method", "image", "-k", "20", "--json",
                         "--index", key, "--cache-dir", cache)
    assert code == 0, err
    res = json.loads(out)
    assert len(res["results"]) == 10 and res["excluded_reference"] is None
    assert "left out of the results" not in err
    ids = json.loads((cache / "index" / key / "ids.json").read_text())
    code, out, _ = cli("query", ids[0], "make it red", "--method", "image", "--json", "--index", key,
                       "--cache-dir", cache)
    assert json.loads(out)["excluded_reference"] == ids[0]  # by id, as before, and said in --json


def test_stored_image_bytes_of_a_prepared_data_set_are_compared(tmp_path):
    import datasets as hf

    from zscir_cli.data.galleries import DatasetGallery

    blobs = []
    for colour in ("red", "green", "blue"):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    ds = hf.Dataset.from_dict({"id": ["r", "g", "b"], "image": [{"bytes": b, "path": None} for b in blobs]},
                              features=hf.Features({"id": hf.Value("string"), "image": hf.Image()}))
    gallery = DatasetGallery(ds, {"kind": "dataset", "dataset": "k", "split": "test"})
    from zscir_cli.core.cache import Artifact
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.query import LoadedIndex

    def index(folder, with_gallery):  # an index of ids b, g made before digests were kept
        folder.mkdir()
        return LoadedIndex(Context(), Artifact("index", folder.name, folder, {}), None, None, ["b", "g"],
                           gallery if with_gallery else None, {"b": 0, "g": 1},
                           {"r": 0, "g": 1, "b": 2} if with_gallery else {})

    loaded = index(tmp_path / "old", True)
    (tmp_path / "g.png").write_bytes(blobs[1])
    assert resolve(reference_arg(str(tmp_path / "g.png")), loaded).row == 1  # a row of the index's ids
    assert resolve(upload_arg(blobs[2], "up.png"), loaded).row == 0  # an upload's bytes
    assert resolve(upload_arg(blobs[0], "up.png"), loaded).row is None  # not in the index
    assert json.loads((tmp_path / "old" / "digests.json").read_text())[1] == hashlib.sha256(blobs[1]).hexdigest()
    gone = index(tmp_path / "gone", False)
    assert resolve(reference_arg(str(tmp_path / "g.png")), gone).row is None  # gallery gone
