"""`zscir serve`, `zscir query --queries` and `zscir eval` beside other work: the co-tenant mode
of serve_latency.py (`python benchmarks/serve_latency.py --cotenant [--rounds 3] [--compare]
[--parts serve,batch,eval]`).

A neighbour is its own process running continuous torch matrix products (1024 x 1024) with
torch's default threads and no sleeps, as a training job would. Scenarios, each for several
rounds, neighbours started 2 s before a round and killed after it: quiet, beside one neighbour,
beside two, quiet again. A round: 20 sequential id queries over one keep-alive connection (p50),
then 8 clients x 10 requests (requests/s). Then `zscir query --queries` over 50 lines and `zscir
eval shapes --split test`, quiet and beside one neighbour (the whole command's wall seconds, twice
each).

Targets beside one neighbour, in every round: p50 <= 2.5x the quiet p50 and 8-client throughput
>= 0.4x the quiet throughput; batch queries and eval <= 2.5x their quiet time. Every figure is printed with
the ratio to its quiet median, measured in this one run.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from serve_client import Client, concurrent, start_server

NEIGHBOUR = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"
SCENARIOS = (("quiet", 0), ("1 neighbour", 1), ("2 neighbours", 2), ("quiet again", 0))


def neighbours(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) for _ in range(n)]
    time.sleep(2.0 if n else 0.0)  # their thread pools up and busy
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def one_round(port: int, method: str, queries: list[tuple[str, str]]) -> tuple[float, float, int]:
    """(p50 ms of 20 sequential id queries, 8-client requests/s, failures)."""
    client = Client(port)
    lat = []
    for ref, text in queries[:20]:
        status, body, seconds = client.query({"text": text, "method": method, "k": "10", "reference": ref})
        assert status == 200, body
        lat.append(seconds * 1000)
    work = [(ref, text, None) for ref, text in queries]
    rps, errors, _ = concurrent(port, method, work, 8, 10, 120)
    return statistics.median(lat), rps, errors


def batch_seconds(cache: Path, key: str, method: str, queries: list[tuple[str, str]], tmp: Path) -> float:
    path = tmp / "queries.jsonl"
    path.write_text("".join(json.dumps({"reference": r, "text": t}) + "\n" for r, t in (queries * 5)[:50]))
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "zscir_cli", "query", "--queries", str(path), "--index", key,
                          "--method", method, "--cache-dir", str(cache), "--device", "cpu"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return time.perf_counter() - start


def eval_seconds(cache: Path) -> float:
    """`zscir eval shapes --split test` on the demo's index: every method, the whole command."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "zscir_cli", "eval", "shapes", "--split", "test", "--cache-dir",
                          str(cache), "--device", "cpu", "--json"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return time.perf_counter() - start


def serve_rounds(cache: Path, key: str, method: str, queries, rounds: int, extra: list[str], tmp: Path) -> list[dict]:
    proc, port = start_server(cache, key, tmp / "serve.log", extra)
    rows = []
    try:
        for ref, text in queries[:5]:  # warm-up
            Client(port).query({"text": text, "method": method, "k": "10", "reference": ref})
        for name, n in SCENARIOS:
            for r in range(rounds):
                procs = neighbours(n)
                try:
                    p50, rps, errors = one_round(port, method, queries)
                finally:
                    stop(procs)
                rows.append({"scenario": name, "round": r + 1, "p50_ms": p50, "rps": rps, "errors": errors})
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def report(label: str, rows: list[dict]) -> bool:
    quiet = [x for x in rows if x["scenario"] == "quiet"]
    p50q, rpsq = statistics.median(x["p50_ms"] for x in quiet), statistics.median(x["rps"] for x in quiet)
    print(f"\nzscir serve, {label}: p50 of 20 sequential id queries, 8 clients x 10 requests")
    print("| scenario | round | p50 ms | x quiet | req/s | x quiet | failed |")
    print("|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['scenario']} | {x['round']} | {x['p50_ms']:.1f} | {x['p50_ms'] / p50q:.2f} | {x['rps']:.1f} | "
              f"{x['rps'] / rpsq:.2f} | {x['errors']} |")
    one = [x for x in rows if x["scenario"] == "1 neighbour"]
    ok = all(x["p50_ms"] <= 2.5 * p50q and x["rps"] >= 0.4 * rpsq for x in one)
    print(f"beside one neighbour, every round: p50 <= 2.5x quiet and req/s >= 0.4x quiet: {'met' if ok else 'NOT met'}")
    return ok


def run(cache: Path, key: str, method: str, queries, rounds: int, compare: bool, tmp: Path,
        parts: set[str] = frozenset({"serve", "batch", "eval"})) -> None:
    configs = [("zscir's serving defaults", [])]
    if compare:
        configs.append(("earlier threading (--threads 0 --wait-policy active)", ["--threads", "0", "--wait-policy",
                                                                                 "active"]))
    for label, extra in configs if "serve" in parts else []:
        report(label, serve_rounds(cache, key, method, queries, rounds, extra, tmp))
    commands = {"batch": ("zscir query --queries (50 lines, the whole command)",
                          lambda: batch_seconds(cache, key, method, queries, tmp)),
                "eval": ("zscir eval shapes --split test (every method, the whole command)",
                         lambda: eval_seconds(cache))}
    for label, measure in (commands[p] for p in ("batch", "eval") if p in parts):
        times = {"quiet": [], "1 neighbour": []}
        for name, n in (("quiet", 0), ("1 neighbour", 1), ("quiet", 0), ("1 neighbour", 1)):
            procs = neighbours(n)
            try:
                times[name].append(measure())
            finally:
                stop(procs)
        quiet, busy = statistics.median(times["quiet"]), statistics.median(times["1 neighbour"])
        print(f"\n{label}: quiet {quiet:.1f} s, beside one neighbour {busy:.1f} s, {busy / quiet:.2f}x "
              "(target <= 2.5x)")
