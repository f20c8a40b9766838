"""`zscir query --queries FILE.jsonl`: many queries in one process, answers equal to single queries."""

from __future__ import annotations

import json

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(cache, folder, index key) over a tiny random model."""
    from conftest import image_folder as make_folder

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.galleries import FolderGallery
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.indexing import index_gallery
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    base = tmp_path_factory.mktemp("batch")
    folder = make_folder.__wrapped__(base)
    ctx = Context(store=ArtifactStore(base / "cache"), workers=0)
    key = index_gallery(ctx, load_backbone(ModelSpec("zscir-tiny-vit", "none")), FolderGallery(folder)).artifact.key
    return base / "cache", folder, key


def _write(path, lines) -> None:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))


def test_batch_answers_equal_single_queries_in_input_order(cli, world, tmp_path):
    cache, folder, key = world
    ids = json.loads((cache / "index" / key / "ids.json").read_text())
    near = Image.open(min(folder.rglob("*.png"))).convert("RGB")
    near.putpixel((1, 1), (9, 9, 9))
    (tmp_path / "refs").mkdir()
    near.save(tmp_path / "refs" / "near.png")
    queries = tmp_path / "q.jsonl"
    _write(queries, [{"reference": ids[4], "text": "make it red", "k": 3},
                     "",  # blank lines are not queries
                     {"reference": "refs/near.png", "text": "add a star"},  # relative to the file's folder
                     {"reference": ids[0], "text": "on a black background", "k": 7}])
    code, out, err = cli("query", "--queries", queries, "--method", "sum", "-k", "5", "--cache-dir", cache)
    assert code == 0, err
    lines = [json.loads(ln) for ln in out.splitlines()]
    assert [ln["line"] for ln in lines] == [1, 3, 4]
    assert [len(ln["results"]) for ln in lines] == [3, 5, 7]
    assert lines[1]["reference"] == "refs/near.png"  # as written
    singles = [(ids[4], "make it red", "3"), (tmp_path / "refs" / "near.png", "add a star", "5"),
               (ids[0], "on a black background", "7")]
    for got, (ref, text, k) in zip(lines, singles):
        code, out, err = cli("query", ref, text, "--method", "sum", "-k", k, "--json", "--cache-dir", cache)
        assert code == 0, err
        want = json.loads(out)
        assert {**got, "reference": want["reference"]} == {"line": got["line"], **want}


def test_batch_reports_progress_and_a_count(cli, world, tmp_path):
    cache, _, key = world
    ids = json.loads((cache / "index" / key / "ids.json").read_text())
    queries = tmp_path / "q.jsonl"
    _write(queries, [{"reference": i, "text": "make it blue"} for i in ids[:3]])
    code, out, err = cli("query", "--queries", queries, "--method", "text", "--cache-dir", cache)
    assert code == 0 and len(out.splitlines()) == 3
    assert "queries" in err and f"3 queries answered (index {key})" in err


def _bad_file(tmp_path, ids):
    queries = tmp_path / "bad.jsonl"
    _write(queries, [{"reference": ids[1], "text": "make it red"},
                     "{not json",
                     {"reference": "missing.png", "text": "x"},
                     {"reference": ids[2], "text": "x", "k": 0},
                     {"reference": ids[3], "text": "x", "kk": 2},
                     [1, 2],
                     {"reference": ids[4], "text": ""},
                     {"reference": ids[5], "text": "make it green"}])
    return queries


def test_invalid_lines_are_fatal_by_default_named_by_number(cli, world, tmp_path):
    cache, _, key = world
    ids = json.loads((cache / "index" / key / "ids.json").read_text())
    queries = _bad_file(tmp_path, ids)
    code, out, err = cli("query", "--queries", queries, "--method", "sum", "--cache-dir", cache)
    assert code == 2 and out == ""  # checked before any query runs
    assert f"{queries}, line 2: not JSON" in err and "(invalid lines: 2, 3, 4, 5, 6, 7)" in err
    assert "--skip-invalid" in err


def test_skip_invalid_answers_each_bad_line_with_an_error_line(cli, world, tmp_path):
    cache, _, key = world
    ids = json.loads((cache / "index" / key / "ids.json").read_text())
    queries = _bad_file(tmp_path, ids)
    code, out, err = cli("query", "--queries", queries, "--method", "sum", "--skip-invalid", "--cache-dir", cache)
    assert code == 0, err
    lines = [json.loads(ln) for ln in out.splitlines()]
    assert [ln["line"] for ln in lines] == list(range(1, 9))  # none dropped, in order
    errors = {ln["line"]: ln["error"] for ln in lines if "error" in ln}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7]
    assert "not JSON" in errors[2] and "'missing.png' is neither an id" in errors[3]
    assert "'k' must be a whole number >= 1, got 0" in errors[4] and "unknown key 'kk'" in errors[5]
    assert "expected a JSON object" in errors[6] and "empty" in errors[7]
    assert lines[0]["results"] and lines[7]["results"] and lines[7]["reference"] == ids[5]
    for n in errors:
        assert f"line {n}:" in err  # each named on stderr too
    assert "2 queries answered, 6 skipped" in err


def test_queries_refuses_single_query_outputs(cli, world, tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"reference": "x.png", "text": "make it red"}) + "\n")
    for extra in (["--json"], ["--html", str(tmp_path / "p.html")]):
        code, out, err = cli("query", "--queries", queries, *extra, "--cache-dir", world[0])
        assert code == 2 and "--queries writes JSON lines" in err and out == ""
    assert not (tmp_path / "p.html").exists()


def test_a_file_that_does_not_decode_is_named_at_run_time(cli, world, tmp_path):
    cache, folder, _key = world
    good = min(folder.rglob("*.png")).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[:60])  # a valid header, truncated pixels
    queries = tmp_path / "q.jsonl"
    _write(queries, [{"reference": "cut.png", "text": "make it red"}])
    code, out, err = cli("query", "--queries", queries, "--method", "sum", "--cache-dir", cache)
    assert code == 2 and f"{queries}, line 1:" in err and "cut.png" in err
    code, out, err = cli("query", "--queries", queries, "--method", "sum", "--skip-invalid", "--cache-dir", cache)
    assert code == 0 and json.loads(out)["line"] == 1 and "cut.png" in json.loads(out)["error"]


def test_usage(cli, world, tmp_path):
    cache, _, _ = world
    code, _, err = cli("query", "--cache-dir", cache)
    assert code == 2 and "REFERENCE and TEXT, or --queries FILE" in err
    code, _, err = cli("query", "x.png", "red", "--queries", tmp_path / "q.jsonl", "--cache-dir", cache)
    assert code == 2 and "takes the place of REFERENCE and TEXT" in err
    code, _, err = cli("query", "--queries", tmp_path / "none.jsonl", "--cache-dir", cache)
    assert code == 2 and "Queries file not found" in err
    (tmp_path / "empty.jsonl").write_text("\n\n")
    code, _, err = cli("query", "--queries", tmp_path / "empty.jsonl", "--cache-dir", cache)
    assert code == 2 and "holds no query" in err
