"""The threading of a served process: set before torch and faiss start, a user's variable kept,
the libraries' thread counts as asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from zscir_cli.jobs.service.config import ServeThreads

PROBE = """
import json, sys
from zscir_cli.jobs.service import threads
from zscir_cli.jobs.service.config import ServeThreads
t = ServeThreads(compute=int(sys.argv[1]), wait_policy=sys.argv[2])
late = threads.prepare(t)
import os
env = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
print(json.dumps({"late": late, "env": env, "counts": threads.apply(t)}))
"""


def probe(compute: int, policy: str) -> dict:
    """PROBE in a fresh interpreter whose environment sets no thread variable."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "OPENBLAS_"))}
    run = subprocess.run([sys.executable, "-c", PROBE, str(compute), policy], capture_output=True, text=True,
                         env=clean, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def test_defaults_suit_a_shared_machine():
    t = ServeThreads()
    assert (t.compute, t.wait_policy) == (1, "passive")
    assert t.environment() == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                               "OPENBLAS_NUM_THREADS": "1"}
    # 0 leaves the count to the libraries: no thread variable set
    assert ServeThreads(compute=0, wait_policy="active").environment() == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_set_before_torch_and_faiss_start_in_a_fresh_process():
    res = probe(1, "passive")
    assert res["late"] == []  # neither library had started when the variables were set
    assert res["env"] == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert res["counts"] == {"torch": 1, "faiss": 1}


def _unset(monkeypatch, *names: str) -> None:
    """Each name unset for the test and restored after it (set first, so monkeypatch records it)."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def test_a_variable_the_user_set_wins(monkeypatch):
    import faiss
    import torch

    from zscir_cli.jobs.service import threads

    _unset(monkeypatch, *THREAD_VARS)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    threads.prepare(ServeThreads())
    assert (os.environ["OMP_WAIT_POLICY"], os.environ["OMP_NUM_THREADS"]) == ("ACTIVE", "2")
    assert os.environ["MKL_NUM_THREADS"] == "1"  # what the user left unset is set
    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        assert threads.apply(ServeThreads()) == {"torch": 2, "faiss": 2}  # OMP_NUM_THREADS=2 over --threads 1
        assert threads.wait_policy() == "active"  # what the serving line reports
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


def test_libraries_started_first_are_named(monkeypatch):
    """In a process that already runs torch (this one), the variables come too late: said."""
    import torch  # noqa: F401

    from zscir_cli.jobs.service import threads

    _unset(monkeypatch, *THREAD_VARS)
    assert "torch" in threads.prepare(ServeThreads())


def test_unknown_wait_policy_is_refused(cli, tmp_path):
    code, _, err = cli("serve", "--wait-policy", "spin", "--cache-dir", tmp_path / "cache")
    assert code == 2
    assert "Unknown --wait-policy 'spin'" in err and "passive or active" in err


def test_query_lets_idle_openmp_threads_sleep_unless_told_otherwise(cli, monkeypatch, tmp_path):
    """`zscir query` (many small forward passes) sets OMP_WAIT_POLICY first thing; a value the
    user set wins. (That the command's process has not loaded torch by then is
    test_layers.test_cli_app_starts_without_torch.)"""
    _unset(monkeypatch, "OMP_WAIT_POLICY")
    code, _, _ = cli("query", "--cache-dir", tmp_path / "cache")  # refused (no reference): after the setting
    assert code == 2 and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli("query", "--cache-dir", tmp_path / "cache")
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
