"""`zscir serve`'s API through FastAPI's TestClient, on a tiny random model over a folder gallery."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(cache, folder, index key, service): one index and one loaded service for the module."""
    from conftest import image_folder as make_folder

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.galleries import FolderGallery
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.indexing import index_gallery
    from zscir_cli.jobs.service.service import load_service
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    base = tmp_path_factory.mktemp("serve")
    folder = make_folder.__wrapped__(base)
    ctx = Context(store=ArtifactStore(base / "cache"), workers=0)
    key = index_gallery(ctx, load_backbone(ModelSpec("zscir-tiny-vit", "none")), FolderGallery(folder)).artifact.key
    return base / "cache", folder, key, load_service(ctx, [key])


@pytest.fixture
def client(world):
    from fastapi.testclient import TestClient

    from zscir_cli.web.app import create_app

    log: list[str] = []
    with TestClient(create_app(world[3], log=log.append)) as c:
        c.log = log
        yield c


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_health_info_and_ids(client, world):
    _, _, key, _ = world
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["indexes"] == [key]
    info = client.get("/api/info").json()
    assert info["model"] == world[3].backbone.spec.label() and info["model"].startswith("zscir-tiny-vit")
    assert info["indexes"] == [{"key": key, "size": 10, "kind": "flat", "source": "folder",
                                "description": info["indexes"][0]["description"], "images": True}]
    # no trained run for a random model: the baselines only, and the default falls back to sum
    assert info["methods"] == [{"name": m, "run": None} for m in ("image", "text", "sum")]
    assert info["default_method"] == "sum" and info["default_index"] == key
    assert info["limits"]["max_k"] == 100 and info["limits"]["max_upload_mb"] == 20
    ids = json.loads((world[0] / "index" / key / "ids.json").read_text())
    page = client.get("/api/ids", params={"offset": 3, "limit": 4}).json()
    assert page == {"index": key, "total": 10, "offset": 3, "ids": ids[3:7]}


@pytest.mark.parametrize("method", ["sum", "text", "image"])
def test_query_by_id_equals_the_cli(client, world, cli, method):
    cache, _, key, _ = world
    ids = json.loads((cache / "index" / key / "ids.json").read_text())
    r = client.post("/api/query", data={"reference": ids[2], "text": "make it red", "k": "5", "method": method})
    assert r.status_code == 200, r.text
    code, out, err = cli("query", ids[2], "make it red", "--index", key, "-k", "5", "--json", "--method", method,
                         "--cache-dir", cache)
    assert code == 0, err
    assert r.json() == json.loads(out)
    assert len(r.json()["results"]) == 5 and ids[2] not in [h["id"] for h in r.json()["results"]]


def test_query_by_upload_equals_the_cli_with_the_file(client, world, cli, tmp_path):
    cache, folder, key, _ = world
    # a near copy (one pixel changed) outside the gallery: not the indexed image itself
    src = Image.open(min(folder.rglob("*.png"))).convert("RGB")
    src.putpixel((0, 0), (1, 2, 3))
    copy = tmp_path / "near copy.png"
    src.save(copy)
    r = client.post("/api/query", files={"image": ("../../near copy.png", copy.read_bytes(), "image/png")},
                    data={"text": "add a star", "k": "4"})
    assert r.status_code == 200, r.text
    code, out, err = cli("query", copy, "add a star", "--method", "sum", "-k", "4", "--json", "--cache-dir", cache)
    assert code == 0, err
    want = json.loads(out)
    got = r.json()
    assert got["reference"] == "near copy.png"  # the upload's base name, a label only
    assert {**got, "reference": want["reference"]} == want
    assert got["method"] == "sum" and got["index"] == key


def test_an_uploaded_gallery_image_is_left_out_as_the_cli_leaves_out_the_file(client, world, cli):
    cache, folder, _, _ = world
    ref = min(folder.rglob("*.png"))
    r = client.post("/api/query", files={"image": ("x.png", ref.read_bytes(), "image/png")},
                    data={"text": "add a star", "k": "9", "method": "image"})
    code, out, err = cli("query", ref, "add a star", "--method", "image", "-k", "9", "--json", "--cache-dir", cache)
    assert code == 0 and r.status_code == 200, (err, r.text)
    want = json.loads(out)
    assert want["excluded_reference"] == ref.relative_to(folder).as_posix()
    assert r.json()["results"] == want["results"] and r.json()["excluded_reference"] == want["excluded_reference"]


def test_gallery_images_whole_and_as_thumbnails(client, world):
    cache, folder, key, _ = world
    ids = json.loads((cache / "index" / key / "ids.json").read_text())
    nested = next(i for i in ids if "/" in i)
    r = client.get(f"/api/images/{nested}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    want = np.asarray(Image.open(folder / nested).convert("RGB"))
    assert got.shape == want.shape and np.array_equal(got, want)
    thumb = Image.open(io.BytesIO(client.get(f"/api/images/{nested}", params={"size": 16}).content))
    assert max(thumb.size) == 16
    assert client.get(f"/api/images/{nested}", params={"size": 16, "index": key}).status_code == 200


@pytest.mark.parametrize("path, status", [
    ("/api/images/nope.png", 404),
    ("/api/images/..%2F..%2F..%2Fetc%2Fpasswd", 404),
    ("/api/images/%2Fetc%2Fpasswd", 404),
    ("/api/images/a?size=8", 400),
    ("/api/images/a?size=abc", 400),
    ("/api/images/a?index=nope", 400),
    ("/static/..%2Fservice.py", 404),
    ("/static/index.html", 404),
    ("/nowhere", 404),
    ("/api/ids?limit=0", 400),
])
def test_nothing_else_is_reachable_and_every_refusal_is_json(client, world, path, status):
    r = client.get(path)
    assert r.status_code == status
    body = r.json()
    assert set(body) == {"error", "hint"} and body["error"] and body["hint"]


def test_an_image_path_of_the_server_is_not_an_id(client, world):
    _, folder, _, _ = world
    real = min(folder.rglob("*.png"))
    assert client.get(f"/api/images/{real}").status_code == 404  # absolute paths are not ids
    r = client.post("/api/query", data={"reference": str(real), "text": "make it red"})
    assert r.status_code == 404 and "is not an id" in r.json()["error"]


def _bad_requests(ids: list[str], png: bytes) -> list[tuple[str, dict, int, str]]:
    text = {"text": "make it red"}
    return [
        ("no reference", {"data": text}, 400, "neither an image nor a reference id"),
        ("both", {"data": {**text, "reference": ids[0]}, "files": {"image": ("a.png", png, "image/png")}}, 400,
         "Both an image and a reference id"),
        ("unknown id", {"data": {**text, "reference": "nope"}}, 404, "'nope' is not an id"),
        ("not an image", {"data": text, "files": {"image": ("a.png", b"not an image", "image/png")}}, 415,
         "is not an image"),
        ("empty text", {"data": {"reference": ids[0], "text": "  "}}, 400, "The modification text is empty"),
        ("k zero", {"data": {**text, "reference": ids[0], "k": "0"}}, 400, "k must be between 1 and 100"),
        ("k too large", {"data": {**text, "reference": ids[0], "k": "101"}}, 400, "k must be between 1 and 100"),
        ("k not a number", {"data": {**text, "reference": ids[0], "k": "ten"}}, 400, "k must be a whole number"),
        ("unknown method", {"data": {**text, "reference": ids[0], "method": "magic"}}, 400, "Unknown method 'magic'"),
        ("untrained method", {"data": {**text, "reference": ids[0], "method": "tscir"}}, 400, "no trained run"),
        ("unknown index", {"data": {**text, "reference": ids[0], "index": "nope"}}, 400, "Unknown index 'nope'"),
        ("text too long", {"data": {"reference": ids[0], "text": "red " * 300}}, 400, "over the limit of 1000"),
        ("text as a file", {"data": {"reference": ids[0]}, "files": {"text": ("t.txt", b"red", "text/plain")}}, 400,
         "must be text"),
    ]


def test_every_bad_request_is_a_4xx_with_error_and_hint(client, world):
    cache, folder, key, _ = world
    ids = json.loads((cache / "index" / key / "ids.json").read_text())
    png = min(folder.rglob("*.png")).read_bytes()
    for name, request, status, words in _bad_requests(ids, png):
        r = client.post("/api/query", **request)
        assert r.status_code == status, (name, r.text)
        assert words in r.json()["error"] and r.json()["hint"], name
    # an empty text is fine for the image method
    assert client.post("/api/query", data={"reference": ids[0], "text": "", "method": "image"}).status_code == 200
    assert client.put("/api/query").status_code == 405 and client.put("/api/query").json()["hint"]


def test_upload_limits_bytes_and_pixels(world, monkeypatch):
    from fastapi.testclient import TestClient

    from zscir_cli.jobs.service.service import Limits
    from zscir_cli.web.app import create_app

    _, folder, _, service = world
    small = type(service)(service.ctx, service.backbone, service.methods, service.indexes, Limits(max_upload_mb=0.01))
    noise = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)))
    assert len(noise) > 0.01 * 2**20
    with TestClient(create_app(small, log=lambda _: None)) as c:
        r = c.post("/api/query", files={"image": ("n.png", noise, "image/png")}, data={"text": "red"})
        assert r.status_code == 413 and "over the limit of 0.01 MB" in r.json()["error"]
        assert "--max-upload-mb" in r.json()["hint"]
        # a body far over the limit is refused by its Content-Length, before it is read
        r = c.post("/api/query", content=b"x" * (2 * 2**20), headers={"content-type": "multipart/form-data; b=x"})
        assert r.status_code == 413
    monkeypatch.setenv("ZSCIR_MAX_IMAGE_PIXELS", "1000")  # the 32x32 renders are 1024 px
    with TestClient(create_app(service, log=lambda _: None)) as c:
        r = c.post("/api/query", files={"image": ("b.png", min(folder.rglob("*.png")).read_bytes(), "image/png")},
                   data={"text": "red"})
        assert r.status_code == 413 and "decompression bombs" in r.json()["error"]


def test_the_page_is_offline_and_sets_user_strings_as_text(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    js, css = client.get("/static/app.js"), client.get("/static/app.css")
    assert js.status_code == css.status_code == 200
    for body in (r.text, js.text, css.text):
        assert "http://" not in body and "https://" not in body and "//cdn" not in body
    assert "innerHTML" not in js.text and "insertAdjacentHTML" not in js.text and "textContent" in js.text
    assert client.get("/favicon.ico").status_code == 204


def test_concurrent_queries_are_answered_correctly_one_model_call_at_a_time(world):
    from fastapi.testclient import TestClient

    from zscir_cli.web.app import create_app

    cache, _, key, service = world
    ids = json.loads((cache / "index" / key / "ids.json").read_text())
    method = service.methods["sum"]
    inside, most, guard = [0], [0], threading.Lock()
    real = method.encode

    def counting(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return real(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    app = create_app(service, log=lambda _: None)
    with TestClient(app) as c:
        want = {i: c.post("/api/query", data={"reference": i, "text": "make it blue", "k": 3}).json() for i in ids}
    method.encode = counting
    got: dict[str, list] = {i: [] for i in ids}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with TestClient(app) as c:
                for i in ids[n % 3::3]:
                    got[i].append(c.post("/api/query", data={"reference": i, "text": "make it blue", "k": 3}).json())
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        del method.encode
    assert not errors and most[0] == 1
    assert all(answer == want[i] for i in ids for answer in got[i]) and sum(map(len, got.values())) > 8


def test_one_log_line_per_request(client, world):
    client.get("/api/health")
    client.post("/api/query", data={"text": "red"})
    client.get("/api/images/%0Afake 200 line")
    assert len(client.log) == 3
    assert client.log[0].startswith("testclient GET /api/health 200 ")
    assert " POST /api/query 400 " in client.log[1]
    assert "\n" not in client.log[2] and "\\x0afake" in client.log[2]
