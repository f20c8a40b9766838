"""What tests that run zscir in processes share: zscir as a process of its own, a prepared world,
a folder of renders, one process against two in a process group, and run metrics.

A test that kills, pauses or races zscir, or runs it as two ranks of a process group, needs a
process of its own; it need not pay for a fresh interpreter's imports (torch, OpenCLIP, faiss:
seconds) each time. `Process` forks each command from a server that imported zscir's modules
once and has run nothing (multiprocessing's forkserver: no thread pool is running when it forks,
so a child cannot inherit a lock another thread held). The child is a real process: its own pid,
killed by a real SIGKILL, its output in files, the test process's environment as it is when the
child starts, its own random seeds. Where the launcher itself is what a test checks, `torchrun`
starts the real one.

What a fresh interpreter would decide when a library loads is decided once, in the server: an
OpenMP or `datasets` variable a test passes to a child does not reach the library (the child
sets torch's and faiss's thread counts itself), and the console's width and colour follow the
server's stdout (a file or pipe under pytest). Tests of such settings start a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# what the server imports once: first the model layer alone (fresh_imports: what it loads, as in a
# fresh interpreter), every module a command under test runs, then what the commands would build
# or import on first use (forkserver_warmup)
PRELOAD = ("fresh_imports", "zscir_cli.cli.app", "zscir_cli.jobs.retrieval.build", "zscir_cli.jobs.training.stage1",
           "zscir_cli.jobs.training.stage2", "zscir_cli.jobs.training.pretrain", "zscir_cli.jobs.cache",
           "datasets", "forkserver_warmup")
_server: multiprocessing.context.BaseContext | None = None


def _context():
    """The forkserver, started once per test process, with one compute thread (OpenMP reads it
    when its library loads, in the server) and this folder on its path (Python 3.11's forkserver
    does not take the path of the process that starts it, and skips a preload it cannot import)."""
    global _server
    if _server is None:
        from multiprocessing import forkserver

        _server = multiprocessing.get_context("forkserver")
        _server.set_forkserver_preload(list(PRELOAD))
        here = str(Path(__file__).resolve().parent)
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        with _environment(OMP_NUM_THREADS="1", PYTHONPATH=path):
            forkserver.ensure_running()
    return _server


@contextlib.contextmanager
def _environment(**variables: str):
    """These variables set in os.environ while the block runs, as they were afterwards."""
    before = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _main(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """A child: `zscir ARGV` as `python -m zscir_cli ARGV` runs it, its output in files, in the
    environment the test process has now (plus the test's own variables)."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a fresh interpreter
    # and the platform's start method for the processes it starts (DataLoader workers), not the
    # forkserver it came from: a worker through the forkserver costs seconds, a fork milliseconds
    multiprocessing.set_start_method(None, force=True)
    import faiss
    import numpy as np
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    np.random.seed()  # unseeded generators differ between processes, as in fresh interpreters
    torch.seed()
    from zscir_cli.cli.app import run

    sys.exit(run(argv))  # multiprocessing joins the threads left and flushes the streams


def _write_model_layer_modules(path: str) -> None:
    # imported by the server before anything else, inherited here; imported now, it would record
    # a server that has loaded the CLI (the test then fails, but says why)
    assert "fresh_imports" in sys.modules, "the forkserver did not preload tests/fresh_imports.py"
    import fresh_imports

    Path(path).write_text(json.dumps(sorted(fresh_imports.MODEL_LAYER)))


def model_layer_modules(folder: Path) -> set[str]:
    """The modules an interpreter holds after importing the model layer first (fresh_imports)."""
    child = _context().Process(target=_write_model_layer_modules, args=(str(folder / "modules.json"),))
    child.start()
    child.join(120)
    assert child.exitcode == 0, f"the forkserver's child exited with {child.exitcode} (its stderr is the test's)"
    return set(json.loads((folder / "modules.json").read_text()))


class Process:
    """`zscir ARGS` in a process of its own (see the module's docstring); stdout and stderr go to
    LOGS.out and LOGS.err, read back as they grow."""

    def __init__(self, args: list[str], logs: Path, env: dict[str, str] | None = None):
        self.out, self.err = Path(f"{logs}.out"), Path(f"{logs}.err")
        self.started = time.monotonic()
        self.proc = _context().Process(target=_main, args=(
            [str(a) for a in args], {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, os.getcwd(),
            str(self.out), str(self.err)))
        self.proc.start()
        self.pid = self.proc.pid

    def wait(self, timeout: float = 300.0) -> int:
        """The exit code, or -N for a process killed by signal N."""
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join()
            raise AssertionError(f"zscir did not finish in {timeout} s: {self.err_text()[-3000:]}")
        self.seconds = time.monotonic() - self.started
        return int(self.proc.exitcode)

    def finished(self) -> bool:
        return self.proc.exitcode is not None

    def kill(self) -> None:
        self.proc.kill()

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def out_text(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def err_text(self) -> str:
        return self.err.read_text() if self.err.exists() else ""

    def wait_for(self, text: str, timeout: float = 240.0) -> None:
        """Until `text` is on its stderr (failing if it exits first)."""
        deadline = time.monotonic() + timeout
        while text not in self.err_text():
            assert not self.finished(), f"exited {self.proc.exitcode}: {self.err_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no '{text}' in {timeout} s: {self.err_text()[-3000:]}"
            time.sleep(0.02)

    def result(self, timeout: float = 300.0) -> subprocess.CompletedProcess:
        code = self.wait(timeout)
        return subprocess.CompletedProcess(self.proc.name, code, self.out_text(), self.err_text())


def free_port() -> int:
    """A port no one listens on now (the OS picks it), so parallel test runs never collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def zscir(args: list[str], cache: Path, env: dict[str, str] | None = None,
          timeout: int = 300) -> subprocess.CompletedProcess:
    """`zscir ARGS --cache-dir CACHE` in a process of its own, one thread."""
    logs = Path(tempfile.mkdtemp(prefix="zscir-run-", dir=Path(cache).parent)) / "log"
    return Process([*args, "--cache-dir", str(cache)], logs, env).result(timeout)


def ranks(args: list[str], cache: Path, env: dict[str, str] | None = None, n: int = 2,
          timeout: int = 300) -> subprocess.CompletedProcess:
    """`zscir ARGS --cache-dir CACHE` as `n` processes of one process group, each with the
    environment torchrun gives its workers (gloo, one thread each): rank 0's stdout, every
    rank's stderr, the first non-zero exit code."""
    base = Path(tempfile.mkdtemp(prefix="zscir-ranks-", dir=Path(cache).parent))
    group = {"WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(free_port()), "GROUP_RANK": "0", **(env or {})}
    procs = [Process([*args, "--cache-dir", str(cache)], base / f"rank{r}",
                     {**group, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(n)]
    deadline = time.monotonic() + timeout
    first: int | None = None  # the exit code of the first rank to fail, as torchrun reports it
    while not all(p.finished() for p in procs):  # as torchrun: one rank failing stops the others
        failed = [p for p in procs if p.finished() and p.proc.exitcode != 0]
        if failed or time.monotonic() > deadline:
            first = failed[0].proc.exitcode if failed and first is None else first
            for p in procs:
                if not p.finished():
                    p.kill()
            if not failed:
                for p in procs:
                    p.proc.join()
                raise AssertionError(f"zscir did not finish in {timeout} s: "
                                     f"{''.join(p.err_text() for p in procs)[-3000:]}")
        time.sleep(0.02)
    codes = [p.wait(timeout) for p in procs]
    code = first if first is not None else next((c for c in codes if c != 0), 0)
    return subprocess.CompletedProcess(args, code, procs[0].out_text(), "".join(p.err_text() for p in procs))


def torchrun(args: list[str], cache: Path, env: dict[str, str] | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """`zscir ARGS --cache-dir CACHE` under torchrun with two processes (gloo, one thread each)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), "-m", "zscir_cli", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          timeout=timeout, check=False)


def prepared_world(root: Path, **world) -> Path:
    """A cache at `root` holding a small prepared shapes world (WorldConfig fields in `world`)."""
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.shapes import WorldConfig
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.datasets.shapes import prepare_shapes

    prepare_shapes(Context(store=ArtifactStore(root)), WorldConfig(**world))
    return root


def rendered_gallery(root: Path, n: int, name: str = "img{i}.png") -> Path:
    """A folder of `n` shapes renders (32 px, seed 5) named by `name`."""
    from zscir_cli.data import shapes

    root.mkdir(parents=True, exist_ok=True)
    cfg = shapes.WorldConfig(seed=5, image_size=32)
    for i in range(n):
        shapes.render_record(cfg, shapes.pair_record(cfg, "train", i)).save(root / name.format(i=i))
    return root


def one_and_two_processes(args: list[str], single_cache: Path, ddp_cache: Path) -> tuple[dict, dict]:
    """Run `zscir ARGS --json` in one process and as two ranks of a process group (gloo, one
    thread each); returns both JSON results (only rank 0 prints)."""
    one = zscir(args, single_cache)
    assert one.returncode == 0, one.stderr[-3000:]
    two = ranks(args, ddp_cache)
    assert two.returncode == 0, two.stderr[-3000:]
    return json.loads(one.stdout), json.loads(two.stdout)


def losses(run_dir: Path) -> list[float]:
    """The per-epoch loss curve of a finished run."""
    from zscir_cli.jobs.training.loop import read_metrics

    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]
