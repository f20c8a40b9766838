"""`zscir index` and `zscir query` through the CLI, on a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One folder and its index for the read-only tests of this module: (cache, folder, key)."""
    from conftest import image_folder as make_folder

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.galleries import FolderGallery
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.indexing import index_gallery
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    base = tmp_path_factory.mktemp("shared")
    folder = make_folder.__wrapped__(base)
    ctx = Context(store=ArtifactStore(base / "cache"), workers=0)
    res = index_gallery(ctx, load_backbone(ModelSpec("zscir-tiny-vit", "none")), FolderGallery(folder))
    return base / "cache", folder, res.artifact.key


@pytest.fixture
def indexed(cli, cache, image_folder):
    code, out, err = cli("index", image_folder, *TINY, "--cache-dir", cache, "--workers", "0")
    assert code == 0, err
    return out.strip()


def test_index_writes_features_ids_and_manifest(cli, shared):
    cache, image_folder, indexed = shared
    folder = cache / "index" / indexed
    manifest = json.loads((folder / "manifest.json").read_text())
    ids = json.loads((folder / "ids.json").read_text())
    feats = np.load(folder / "features.npy")
    assert manifest["count"] == 10 == len(ids) and feats.shape == (10, 32)
    assert feats.dtype == np.float16
    assert np.allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=2e-3)
    assert manifest["model"] == {"name": "zscir-tiny-vit", "pretrained": None}
    assert sorted(ids) == sorted(p.relative_to(image_folder).as_posix()
                                 for p in image_folder.rglob("*") if p.is_file())
    code, out, err = cli("index", image_folder, *TINY, "--cache-dir", cache)
    assert code == 0 and out.strip() == indexed and "already built" in err
    code, out, _ = cli("cache", "ls", "--json", "--cache-dir", cache)
    assert [a["key"] for a in json.loads(out)] == [indexed]


def test_query_by_file_finds_the_image_itself_first(cli, shared, tmp_path):
    from PIL import Image

    cache, image_folder, indexed = shared
    original = min(image_folder.rglob("*.png"))
    # a near copy (one pixel changed): the gallery file itself would be left out of the results
    ref = tmp_path / "near.png"
    with Image.open(original) as im:
        near = im.convert("RGB")
    near.putpixel((0, 0), tuple(255 - c for c in near.getpixel((0, 0))))
    near.save(ref)
    code, out, err = cli("query", ref, "make it red", "--method", "image", "-k", "3", "--json",
                         *TINY, "--cache-dir", cache)
    assert code == 0, err
    res = json.loads(out)
    assert res["index"] == indexed and len(res["results"]) == 3
    assert res["results"][0]["id"] == original.relative_to(image_folder).as_posix()
    assert res["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert f"using index {indexed}" in err


def test_query_by_id_never_returns_the_reference(cli, shared):
    cache, _image_folder, indexed = shared
    ids = json.loads((cache / "index" / indexed / "ids.json").read_text())
    code, out, err = cli("query", ids[0], "add a star", "--index", indexed, "-k", "20", "--json", "--method", "sum",
                         "--cache-dir", cache)
    assert code == 0, err
    got = [r["id"] for r in json.loads(out)["results"]]
    assert ids[0] not in got and len(got) == 9  # the other nine, best first


@pytest.mark.parametrize("method", ["text", "sum"])
def test_query_table_and_html(cli, shared, tmp_path, method):
    cache, image_folder, indexed = shared
    ref = min(image_folder.rglob("*.jpg"))
    page = tmp_path / "out.html"
    code, out, err = cli("query", ref, "<script>alert(1)</script> make it blue", "--method", method,
                         "-k", "4", "--html", page, "--index", indexed, "--cache-dir", cache)
    assert code == 0, err
    assert "rank" in out and out.count("│") >= 4 * 4
    html = page.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("data:image/png;base64,") == 5  # the reference and 4 results


def test_query_refuses_an_index_of_another_model(cli, shared):
    cache, _image_folder, indexed = shared
    code, _, err = cli("query", "x.png", "make it red", "--index", indexed, "--model", "zscir-tiny-rn",
                       "--pretrained", "none", "--cache-dir", cache)
    assert code == 2
    assert "built with zscir-tiny-vit (random weights), not zscir-tiny-rn (random weights)" in err
    assert "Traceback" not in err


def test_default_method_needs_a_trained_run(cli, shared):
    cache, image_folder, _indexed = shared
    ref = min(image_folder.rglob("*.png"))
    code, _, err = cli("query", ref, "make it red", *TINY, "--cache-dir", cache)
    assert code == 2 and "No tscir run (Stage II) trained on zscir-tiny-vit" in err and "--method" in err


def test_query_without_an_index_for_the_model(cli, shared):
    cache, _image_folder, _indexed = shared
    code, _, err = cli("query", "x.png", "make it red", "--model", "zscir-tiny-rn", "--pretrained", "none",
                       "--cache-dir", cache)
    assert code == 2 and "No index built with zscir-tiny-rn" in err and "zscir-tiny-vit" in err


def test_empty_text_and_missing_reference(cli, shared):
    cache, image_folder, _indexed = shared
    ref = min(image_folder.rglob("*.png"))
    code, _, err = cli("query", ref, "  ", *TINY, "--cache-dir", cache)
    assert code == 2 and "modification text is empty" in err
    code, _, err = cli("query", "/no/such/ref.png", "make it red", "--method", "sum", *TINY, "--cache-dir", cache)
    assert code == 2 and "Image not found: /no/such/ref.png" in err


def test_unreadable_images_are_named_and_skippable(cli, cache, image_folder):
    (image_folder / "broken.png").write_bytes(b"not a png")
    (image_folder / "a" / "empty.jpg").write_bytes(b"")
    code, out, err = cli("index", image_folder, *TINY, "--cache-dir", cache, "--workers", "0")
    assert code == 2 and "2 image(s) could not be read" in err
    assert "broken.png" in err and "a/empty.jpg" in err and "--skip-bad" in err
    assert not (cache / "index").exists() or not any((cache / "index").iterdir())
    assert not any((cache / ".tmp").iterdir())  # nothing half-written
    code, out, err = cli("index", image_folder, *TINY, "--cache-dir", cache, "--skip-bad")
    assert code == 0 and "skipped 2" in err
    manifest = json.loads((cache / "index" / out.strip() / "manifest.json").read_text())
    assert manifest["count"] == 10 and {s["id"] for s in manifest["skipped"]} == {"broken.png", "a/empty.jpg"}


def test_bad_galleries(cli, cache, tmp_path):
    code, _, err = cli("index", tmp_path / "nowhere", *TINY, "--cache-dir", cache)
    assert code == 2 and "Gallery folder not found" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("index", tmp_path / "empty", *TINY, "--cache-dir", cache)
    assert code == 2 and "No images" in err
    code, _, err = cli("index", "shapes", *TINY, "--cache-dir", cache)
    assert code == 2 and "Run 'zscir prepare shapes' first" in err


def test_bad_models_through_the_cli(cli, cache, image_folder):
    code, _, err = cli("index", image_folder, "--model", "ViT-B-23", "--cache-dir", cache)
    assert code == 2 and "Unknown model 'ViT-B-23'" in err and "ViT-B-32" in err
    assert "Traceback" not in err
    code, _, err = cli("index", image_folder, "--model", "zscir-tiny-vit", "--pretrained",
                       "missing.safetensors", "--cache-dir", cache)
    assert code == 2 and "--pretrained file not found" in err
    code, _, err = cli("index", image_folder, "--cache-dir", cache)  # default ViT-L-14/openai, offline
    assert code == 2 and "ViT-L-14" in err and "'openai'" in err and "zscir demo" in err
    code, _, err = cli("index", image_folder, "--model", "zscir-tiny-vit", "--cache-dir", cache)
    assert code == 2 and "zscir pretrain --model zscir-tiny-vit" in err


def test_unwritable_cache_root(cli, tmp_path, image_folder):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache should go")
    code, _, err = cli("index", image_folder, *TINY, "--cache-dir", blocker / "cache")
    assert code == 2 and "not writable" in err and "--cache-dir" in err


def test_cache_rm(cli, cache, indexed):
    code, out, _ = cli("cache", "rm", indexed[:6], "--yes", "--cache-dir", cache)
    assert code == 0 and f"removed index/{indexed}" in out
    assert not (cache / "index" / indexed).exists()
    code, _, err = cli("cache", "rm", "--cache-dir", cache)
    assert code == 2 and "Nothing to remove" in err


def test_usage_errors_exit_2(cli):
    code, _, _ = cli("query")
    assert code == 2
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("zscir ")


def test_debug_shows_the_traceback(cli, cache, monkeypatch, capsys):
    monkeypatch.setenv("ZSCIR_DEBUG", "1")
    code, _, err = cli("index", "/no/where", *TINY, "--cache-dir", cache)
    assert code == 2 and "Traceback" in err


