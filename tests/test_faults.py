"""Fault injection on `zscir index`: SIGKILL at every step of an artifact's write, then rerun;
two identical commands at once; pruning the cache during a build.

Each build runs as a process of its own (`runs.Process`), killed with SIGKILL by a named point
(`core.faults`: the cache's write steps, the encoder's batches) or by a timer.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from runs import Process, rendered_gallery

from zscir_cli.core.cache import MANIFEST, TMP_DIR

ARGS = ["--model", "zscir-tiny-vit", "--pretrained", "none", "--workers", "0", "--batch-size", "2"]
INDEX_FILES = ("features.npy", "ids.json", "index.faiss")
NAMED_POINTS = ["cache:before-manifest", "cache:before-rename", "cache:after-rename"]
KILL_BATCH = 3  # of the 5 batches of 2 images


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    return rendered_gallery(tmp_path_factory.mktemp("faults") / "gallery", 10, "img{i}.png")


def start(args: list[str], logs: Path, env: dict[str, str] | None = None, kill_at_batch: int | None = None) -> Process:
    """`zscir ARGS` in a process of its own (`runs.Process`), killed by the encoder's kill point
    after `kill_at_batch` batches are written when that is given."""
    env = dict(env or {})
    if kill_at_batch is not None:
        env["ZSCIR_KILL_AT"] = f"encode:batch@{kill_at_batch}"
    return Process(args, logs, env)


def index_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in INDEX_FILES}


@pytest.fixture(scope="module")
def reference(gallery, tmp_path_factory) -> dict:
    """An uninterrupted build: its key, its files' bytes and how long it took."""
    cache = tmp_path_factory.mktemp("reference") / "cache"
    child = start(["index", gallery, *ARGS, "--cache-dir", cache], cache.parent / "log")
    assert child.wait() == 0, child.err.read_text()
    key = child.out.read_text().split()[-1]
    return {"key": key, "files": index_files(cache / "index" / key), "seconds": child.seconds}


def assert_no_half_artifact(cache: Path, reference: dict) -> None:
    """Whatever is under index/ is a complete artifact, equal to an uninterrupted build."""
    for folder in (cache / "index").glob("*") if (cache / "index").is_dir() else []:
        assert (folder / MANIFEST).is_file(), f"{folder} has no manifest"
        assert folder.name == reference["key"]
        assert index_files(folder) == reference["files"]


# timer: seconds after the build's first file appears under .tmp/ (the encoder streams its
# batches into it), or a fraction of an uninterrupted run (the model is loading, or it is done)
KILLS = [*[("point", p) for p in NAMED_POINTS], ("batch", KILL_BATCH), ("timer", "+0.0"),
         ("timer", "+0.01"), ("timer", 0.3)]


def _kill_by_timer(child: Process, cache: Path, when, seconds: float) -> None:
    if isinstance(when, str):
        deadline = time.monotonic() + 120
        while not any((cache / TMP_DIR).glob("index-*/*")) and time.monotonic() < deadline:
            if child.finished():
                raise AssertionError("the build finished before it could be killed")
            time.sleep(0.001)
        time.sleep(float(when))
    else:
        time.sleep(when * seconds)
    child.kill()


@pytest.mark.parametrize("how,where", KILLS, ids=[f"{h}-{w}" for h, w in KILLS])
def test_killed_index_build_then_rerun(cli, gallery, reference, tmp_path, how, where):
    cache = tmp_path / "cache"
    command = ["index", gallery, *ARGS, "--cache-dir", cache]
    env = {"ZSCIR_KILL_AT": where} if how == "point" else {}
    child = start(command, tmp_path / "killed", env=env,
                  kill_at_batch=where if how == "batch" else None)
    if how == "timer":
        _kill_by_timer(child, cache, where, reference["seconds"])
    code = child.wait()
    if how != "timer":
        assert code == -signal.SIGKILL, child.err.read_text()
    assert_no_half_artifact(cache, reference)
    leftovers = [p for p in (cache / TMP_DIR).glob("*")] if (cache / TMP_DIR).is_dir() else []
    if how == "point" and where != "cache:after-rename" or how == "batch":
        assert leftovers, "the killed write should have left its folder under .tmp/"
    _, out, _ = cli("cache", "ls", "--json", "--cache-dir", cache)
    listed = [e for e in json.loads(out) if e["state"] == "incomplete"]
    assert sorted(e["path"] for e in listed) == sorted(str(p) for p in leftovers)
    assert not any(e["live"] for e in listed)  # its writer is dead

    rerun = start(command, tmp_path / "rerun")
    assert rerun.wait() == 0, rerun.err.read_text()
    assert rerun.out.read_text().split()[-1] == reference["key"]
    assert index_files(cache / "index" / reference["key"]) == reference["files"]  # byte-identical
    assert_no_half_artifact(cache, reference)
    assert list((cache / TMP_DIR).iterdir()) == []  # the rerun swept the dead write's folder
    if how == "point" and where == "cache:after-rename":
        assert "already built" in rerun.err.read_text()


def test_rm_incomplete_removes_a_killed_write(cli, gallery, reference, tmp_path):
    cache = tmp_path / "cache"
    child = start(["index", gallery, *ARGS, "--cache-dir", cache], tmp_path / "killed",
                  env={"ZSCIR_KILL_AT": "cache:before-rename"})
    assert child.wait() == -signal.SIGKILL
    (left,) = (cache / TMP_DIR).iterdir()
    code, out, _ = cli("cache", "rm", "--incomplete", "--dry-run", "--cache-dir", cache)
    assert code == 0 and f"would remove incomplete write index/{reference['key']}" in out
    assert left.is_dir()
    code, out, _ = cli("cache", "rm", "--incomplete", "--yes", "--cache-dir", cache)
    assert code == 0 and "removed incomplete write" in out and not left.exists()


def _wait_file(path: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_identical_index_commands_and_rm_during_the_build(cli, gallery, reference, tmp_path):
    cache, release = tmp_path / "cache", tmp_path / "release"
    command = ["index", gallery, *ARGS, "--cache-dir", cache]
    # the first stands still with its artifact written but not yet published, its lock held
    first = Process(command, tmp_path / "first", {"ZSCIR_PAUSE_AT": "cache:before-rename",
                                                   "ZSCIR_PAUSE_RELEASE": str(release)})
    second = None
    try:
        _wait_file(release.with_name("release.reached"))
        (building,) = (cache / TMP_DIR).iterdir()
        code, out, err = cli("cache", "ls", "--json", "--cache-dir", cache)
        assert [(e["key"], e["live"]) for e in json.loads(out) if e["state"] == "incomplete"] == \
            [(reference["key"], True)]
        code, out, err = cli("cache", "rm", "--incomplete", "--all", "--yes", "--cache-dir", cache)
        assert code == 0 and building.is_dir() and "removed" not in out
        assert f"kept incomplete write index/{reference['key']}" in err and f"pid {first.pid}" in err

        second = Process(command, tmp_path / "second")
        second.wait_for(f"waiting for pid {first.pid}")
    finally:
        release.touch()
    code1, code2 = first.wait(), second.wait()  # type: ignore[union-attr]
    assert code1 == 0 and code2 == 0, first.err_text() + second.err_text()  # type: ignore[union-attr]
    assert first.out_text().split()[-1] == second.out_text().split()[-1] == reference["key"]  # type: ignore[union-attr]
    assert "built index" in first.err_text() and "already built" in second.err_text()  # type: ignore[union-attr]
    assert [p.name for p in (cache / "index").iterdir()] == [reference["key"]]
    assert index_files(cache / "index" / reference["key"]) == reference["files"]
    assert list((cache / TMP_DIR).iterdir()) == []


PRETRAIN = ["pretrain", "--model", "zscir-tiny-vit", "--steps", "6", "--steps-per-epoch", "2",
            "--batch-size", "8", "--device", "cpu"]  # 3 epochs


@pytest.mark.slow
def test_interrupted_runs_in_ls_and_rm(cli, tmp_path):
    """A killed run is listed with its epoch and how to resume it, and pruned by rm --incomplete;
    a run in progress is listed as such and kept."""
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.shapes import WorldConfig
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.datasets.shapes import prepare_shapes

    cache, release = tmp_path / "cache", tmp_path / "release"
    prepare_shapes(Context(store=ArtifactStore(cache)), WorldConfig(train_pairs=8, val_pairs=6, cir_queries=6))
    killed = start([*PRETRAIN, "--cache-dir", cache], tmp_path / "killed",
                   env={"ZSCIR_KILL_AT": "train:epoch-end@2"})
    assert killed.wait() == -signal.SIGKILL, killed.err.read_text()
    code, out, _ = cli("cache", "ls", "--cache-dir", cache)
    assert code == 0 and "interrupted run backbone/" in out and "at epoch 2/3" in out
    assert "rerun the same 'zscir pretrain' command with --resume" in out
    (dead,) = (cache / ".partial").iterdir()

    live = start([*PRETRAIN, "--cache-dir", cache, "--seed", "1"], tmp_path / "live",
                 env={"ZSCIR_PAUSE_AT": "train:epoch-end", "ZSCIR_PAUSE_RELEASE": str(release)})
    try:
        _wait_file(release.with_name("release.reached"))
        _, out, _ = cli("cache", "ls", "--json", "--cache-dir", cache)
        runs = {e["path"]: (e["epoch"], e["epochs"], e["live"]) for e in json.loads(out)
                if e["state"] == "interrupted"}
        assert runs.pop(str(dead)) == (2, 3, False)
        assert [is_live for _, _, is_live in runs.values()] == [True]
        code, out, err = cli("cache", "rm", "--incomplete", "--yes", "--cache-dir", cache)
        assert code == 0 and "removed interrupted run backbone/" in out and not dead.exists()
        assert "kept interrupted run backbone/" in err and f"pid {live.pid}" in err
        (kept,) = (cache / ".partial").iterdir()
    finally:
        release.touch()
    assert live.wait() == 0, live.err.read_text()
    assert not kept.exists() and len(ArtifactStore(cache).list("backbone")) == 1
