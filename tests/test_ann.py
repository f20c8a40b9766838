"""Index kinds: auto's rules, approximate search re-ranked exactly, and the kind as part of an index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zscir_cli.index import ann, search

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


def _clustered(n: int, d: int, seed: int = 0, queries: int = 60):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(4, n // 50), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    q = centres[rng.integers(0, len(centres), queries)] + 0.4 * rng.standard_normal((queries, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True))


def test_auto_picks_flat_then_hnsw_then_ivf_and_compressed_codes_under_little_memory():
    gb = 2 ** 30
    small = ann.choose("auto", 2_000, 768, 4 * gb)
    assert small.kind == "flat" and small.identity() == ann.FLAT.identity() and "exact scan" in small.reason
    mid = ann.choose("auto", 40_000, 768, 4 * gb)
    assert (mid.kind, mid.factory, mid.params["efSearch"]) == ("hnsw", "HNSW32", ann.HNSW_EF_SEARCH)
    assert ann.choose("auto", 40_000, 768, 100 * 2 ** 20).kind == "ivf"  # the graph does not fit
    assert ann.choose("auto", 100_000, 768, 4 * gb).kind == "ivf"  # past HNSW_MAX_ROWS
    big = ann.choose("auto", 1_000_000, 768, 4 * gb)
    assert (big.kind, big.factory) == ("ivf", "IVF1024,SQ8")
    assert big.params["nprobe"] == 16 and big.params["train_rows"] == 50 * 1024
    tight = ann.choose("auto", 1_000_000, 768, 200 * 2 ** 20)  # SQ8 codes (776 MB) do not fit
    assert tight.params["codes"] == "PQ96" and tight.factory == "IVF1024,PQ96np"
    with pytest.raises(ValueError, match="raise --max-memory"):
        ann.choose("auto", 1_000_000, 768, 2 ** 20)


def test_factory_strings_and_memory_amounts():
    spec = ann.choose("IVF64,PQ8", 10_000, 32)
    assert spec.kind == "factory" and spec.params["nlist"] == 64 and spec.params["nprobe"] == 16
    assert ann.choose("Flat", 10, 32) == ann.FLAT
    with pytest.raises(ValueError, match="faiss factory string"):
        ann.choose("IVF64,Bogus", 10_000, 32)
    assert ann.parse_memory("8G") == 8 * 2 ** 30 and ann.parse_memory("1.5gb") == int(1.5 * 2 ** 30)
    assert ann.parse_memory("512M") == 512 * 2 ** 20 and ann.parse_memory("1000") == 1000
    for bad in ("lots", "8Q", "0"):
        with pytest.raises(ValueError):
            ann.parse_memory(bad)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "IVF16,PQ8np"])
def test_approximate_kinds_re_rank_exactly_against_the_fp16_vectors(tmp_path, kind):
    n, d = 3000, 32
    x, q = _clustered(n, d)
    spec = ann.choose(kind, n, d)
    search.save(tmp_path, x, [str(i) for i in range(n)], spec)
    opened = search.open_index(tmp_path)
    assert opened.spec == spec and json.loads((tmp_path / search.SPEC).read_text())["factory"] == spec.factory
    stored = np.load(tmp_path / search.FEATURES).astype(np.float32)
    exclude = [[i, i + 1] for i in range(len(q))]
    exact, exact_s = search.rank(stored, q, 10, exclude=exclude)
    got, got_s = search.rank(opened, q, 10, exclude=exclude)
    assert not any(set(e) & set(r) for e, r in zip(exclude, got.tolist()))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), exact.tolist())])
    assert recall >= 0.97
    # every score returned is the exact inner product with the stored vector, best first
    assert np.allclose(got_s, np.einsum("qkd,qd->qk", stored[got], q), atol=1e-5)
    assert np.all(np.diff(got_s, axis=1) <= 0)
    same = [a == b for a, b in zip(got.tolist(), exact.tolist())]
    assert np.allclose(got_s[same], exact_s[same], atol=1e-5)


def test_a_flat_index_ranks_the_stored_fp16_numbers_and_old_folders_open_as_flat(tmp_path):
    x, q = _clustered(500, 16)
    search.save(tmp_path, x, [str(i) for i in range(500)])
    (tmp_path / search.SPEC).unlink()  # as written before index kinds
    opened = search.open_index(tmp_path)
    assert opened.spec.exact
    stored = np.load(tmp_path / search.FEATURES).astype(np.float32)
    assert np.array_equal(opened.index.reconstruct_n(0, 500), stored)
    rows, _ = search.rank(opened, q, 5)
    assert np.array_equal(rows, search.rank(stored, q, 5)[0])


def test_a_small_gallery_returns_every_row_once(tmp_path):
    x, q = _clustered(40, 16)
    spec = ann.choose("hnsw", 40, 16)
    search.save(tmp_path, x, [str(i) for i in range(40)], spec)
    rows, scores = search.rank(search.open_index(tmp_path), q[:3], 50, exclude=[[0], [], [1, 2]])
    assert [sorted(r[r >= 0].tolist()) for r in rows] == [list(range(1, 40)), list(range(40)),
                                                          [0] + list(range(3, 40))]
    assert np.isneginf(scores[0, 39:]).all() and (rows[0, 39:] == -1).all()


def test_index_kinds_are_two_artifacts_the_second_built_from_the_first(cli, cache, image_folder, monkeypatch):
    from zscir_cli.jobs.retrieval import encodings as galleries

    code, out, err = cli("index", image_folder, *TINY, "--cache-dir", cache, "--workers", "0", "--json")
    assert code == 0, err
    flat = json.loads(out)
    assert flat["kind"]["kind"] == "flat" and "exact scan" in flat["kind"]["reason"]  # auto, 10 images
    calls = []
    monkeypatch.setattr(galleries, "run_encoder", lambda *a, **k: calls.append(1))  # the name galleries calls
    code, out, err = cli("index", image_folder, *TINY, "--cache-dir", cache, "--kind", "hnsw", "--json")
    assert code == 0, err
    hnsw = json.loads(out)
    assert hnsw["index"] != flat["index"] and hnsw["built"] and calls == []  # no image encoded again
    assert hnsw["kind"]["factory"] == "HNSW32" and hnsw["kind"]["params"]["efSearch"] == ann.HNSW_EF_SEARCH
    folder = cache / "index" / hnsw["index"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["from_index"] == flat["index"] and manifest["config"]["index"]["kind"] == "hnsw"
    assert np.array_equal(np.load(folder / "features.npy"), np.load(cache / "index" / flat["index"] / "features.npy"))
    code, out, _ = cli("cache", "ls", "--cache-dir", cache)
    assert code == 0 and "hnsw index (HNSW32)" in out and "flat index (Flat)" in out
    code, out, err = cli("index", image_folder, *TINY, "--cache-dir", cache, "--kind", "hnsw")
    assert code == 0 and out.strip() == hnsw["index"] and "already built" in err
    # query without --index takes the newest index of the model: the hnsw one
    ref = image_folder / "a" / "img1.jpg"
    code, out, err = cli("query", ref, "make it red", *TINY, "--method", "image", "--cache-dir", cache,
                         "--json", "--top-k", "9")
    assert code == 0, err
    got = json.loads(out)
    assert got["index"] == hnsw["index"]
    code, out, err = cli("query", ref, "make it red", "--index", flat["index"], "--method", "image",
                         "--cache-dir", cache, "--json", "--top-k", "9")
    assert [h["id"] for h in json.loads(out)["results"]] == [h["id"] for h in got["results"]]


def test_bad_kind_and_memory_are_user_errors_before_encoding(cli, cache, image_folder):
    code, _, err = cli("index", image_folder, *TINY, "--cache-dir", cache, "--kind", "IVF8,Nonsense")
    assert code == 2 and "faiss factory string" in err and "IVF4096,PQ64" in err
    code, _, err = cli("index", image_folder, *TINY, "--cache-dir", cache, "--max-memory", "lots")
    assert code == 2 and "'lots' is not an amount of memory" in err
    assert not (cache / "index").exists() or not any((cache / "index").iterdir())


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    """A shapes world with a gallery (about 500 images) larger than the re-rank's candidate list."""
    from zscir_cli.cli.app import run

    cache = tmp_path_factory.mktemp("ann-shapes")
    assert run(["prepare", "shapes", "--train-pairs", "8", "--val-pairs", "8", "--queries", "100",
                "--cache-dir", str(cache)]) == 0
    return cache


def test_eval_on_shapes_gives_the_same_numbers_with_flat_and_hnsw(cli, shapes_cache):
    results = {}
    for kind in ("flat", "hnsw"):
        code, out, err = cli("eval", "shapes", *TINY, "--method", "image", "--method", "sum",
                             "--kind", kind, "--cache-dir", shapes_cache, "--json")
        assert code == 0, err
        results[kind] = json.loads(out)
    flat, hnsw = results["flat"], results["hnsw"]
    assert flat["gallery"] > search.candidates(50) and flat["index"] != hnsw["index"]
    assert flat["results"] == hnsw["results"]
    manifest = json.loads((shapes_cache / "index" / hnsw["index"] / "manifest.json").read_text())
    assert manifest["index"]["kind"] == "hnsw"
