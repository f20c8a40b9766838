from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

# No test may reach the network: hub lookups fail at once instead of timing out.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.pop("ZSCIR_DEBUG", None)
# No test may write outside its temporary folders: the default cache (a command without
# --cache-dir) and ~/.cache point into a folder of this process's own, and the session fails if
# anything was written there.
# pytest-xdist's workers inherit the folder from the process that started them, which checks it
_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if not _WORKER:
    os.environ["ZSCIR_TESTS_OUTSIDE"] = tempfile.mkdtemp(prefix="zscir-tests-outside-")
_OUTSIDE = Path(os.environ["ZSCIR_TESTS_OUTSIDE"])
# nor in the folder the tests run from (a command's default output file, e.g. zscir-demo.html)
_CWD, _IN_CWD = Path.cwd(), set(os.listdir())
os.environ["ZSCIR_HOME"] = str(_OUTSIDE / "zscir")
os.environ["XDG_CACHE_HOME"] = str(_OUTSIDE / "xdg-cache")


# pytest-xdist's workers share the cores: each computes on its share (OpenMP reads this when torch
# loads, after this file), so that two workers do not spin four threads on two cores
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))


def pytest_sessionfinish(session, exitstatus):
    if _WORKER:
        return  # the controlling process checks, once every worker has finished
    written = sorted(str(p.relative_to(_OUTSIDE)) for p in _OUTSIDE.rglob("*") if p.is_file())
    shutil.rmtree(_OUTSIDE, ignore_errors=True)
    written += sorted(str(_CWD / name) for name in set(os.listdir(_CWD)) - _IN_CWD
                      if not name.startswith(".") and name != "__pycache__")
    if written:
        session.exitstatus = 1
        print(f"\ntests wrote outside their temporary folders: {', '.join(written[:10])}")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A pytest-xdist worker leaves at once when it is done (its results are sent by then): an
    interpreter that holds torch, OpenCLIP and faiss takes seconds to tear its modules down, and
    the run waits for the slower worker's exit. What it printed outside tests goes out first, and
    a child a test left running is killed, not waited for."""
    if not hasattr(config, "workerinput"):
        return
    import multiprocessing

    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()
    for child in multiprocessing.active_children():
        child.kill()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@dataclass(frozen=True)
class QuickDemo:
    """`zscir demo --quick --cache-dir CACHE --html PAGE`, run once per test session: what it
    printed, its cache and page. A test that writes to the cache works on `copy()`."""

    cache: Path
    page: Path
    out: str
    err: str
    built_at: str  # where it was built, before it was moved to `cache`

    def copy(self, dst: Path) -> Path:
        shutil.copytree(self.cache, dst, symlinks=True)
        return dst


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory, request) -> QuickDemo:
    """One quick demo for the whole run: built by the first test process that asks (pytest-xdist's
    workers share the run's base folder and wait on its lock), read back by the others."""
    from filelock import FileLock

    from zscir_cli.cli.app import run

    shared = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):  # an xdist worker: its base folder is one per worker
        shared = shared.parent
    root = shared / "quick-demo"
    with FileLock(str(shared / "quick-demo.lock")):
        if not (root / "code").is_file():
            shutil.rmtree(root, ignore_errors=True)
            # built under another name, then moved: a path into the build would dangle in every test
            build = shared / "quick-demo-build"
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir()
            out, err = io.StringIO(), io.StringIO()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = run(["demo", "--quick", "--cache-dir", str(build / "cache"), "--html",
                                str(build / "demo.html")])
            except BaseException:  # recorded once, for every test that asks, then raised
                err.write(traceback.format_exc())
                code = 1
            (build / "out").write_text(out.getvalue())
            (build / "err").write_text(err.getvalue())
            (build / "built-at").write_text(str(build / "cache"))
            (build / "code").write_text(str(code))
            build.rename(root)
    assert (root / "code").read_text() == "0", (root / "err").read_text()[-3000:]
    return QuickDemo(root / "cache", root / "demo.html", (root / "out").read_text(), (root / "err").read_text(),
                     (root / "built-at").read_text())


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cli(capsys):
    """Run the zscir CLI in-process: returns (exit code, stdout, stderr)."""
    from zscir_cli.cli.app import run

    def invoke(*args: str) -> tuple[int, str, str]:
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A small gallery on disk: shapes renders as png/jpg/webp in nested folders, one RGBA, one L."""
    from zscir_cli.data import shapes

    root = tmp_path / "gallery"
    cfg = shapes.WorldConfig(seed=3, image_size=32)
    for i in range(10):
        rec = shapes.pair_record(cfg, "train", i)
        img = shapes.render_record(cfg, rec)
        sub = root / ("a" if i % 2 else "b" / Path("deep"))
        sub.mkdir(parents=True, exist_ok=True)
        ext = ("png", "jpg", "webp")[i % 3]
        if i == 2:  # a png
            img = img.convert("RGBA")
        if i == 5:  # a webp
            img = img.convert("L")
        img.save(sub / f"img{i}.{ext}")
    return root


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path
