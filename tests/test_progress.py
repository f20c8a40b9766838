"""Progress when stderr is not a terminal: plain lines at an interval and at each task's end."""

from __future__ import annotations

import io

from rich.console import Console

from zscir_cli.cli.console import RichReporter


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _reporter(interval: float = 10.0):
    stream = io.StringIO()
    clock = Clock()
    return RichReporter(Console(file=stream, width=200), interval=interval, clock=clock), stream, clock


def test_a_redirected_run_writes_a_line_every_interval_with_rate_eta_and_fields():
    rep, stream, clock = _reporter()
    with rep.task("training stage I", total=100) as task:
        for step in range(1, 101):
            clock.now += 0.5  # 2 steps a second: a line every 20 steps
            task.advance(1, loss=1.0 / step)
            if step == 19:
                assert stream.getvalue() == ""  # nothing before 10 seconds
            if step == 20:
                first = stream.getvalue().splitlines()
                assert first == ["training stage I: 20/100 (20%)  2/s  eta 40s  loss 0.05"]
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5 + 1  # every 10 s over 50 s, then the end
    assert lines[-2] == "training stage I: 100/100 (100%)  2/s  eta 0s  loss 0.01"
    assert lines[-1] == "training stage I: 100/100 (100%)  done in 50s  2/s  loss 0.01"


def test_a_resumed_run_counts_its_rate_from_its_own_steps_and_an_open_total_works():
    rep, stream, clock = _reporter(interval=60)
    with rep.task("pretraining", total=1000) as task:
        task.advance(900)  # the epochs a resumed run already has
        for _ in range(100):
            clock.now += 1.0
            task.advance(1)
    assert stream.getvalue().splitlines() == ["pretraining: 960/1000 (96%)  1/s  eta 40s",
                                              "pretraining: 1000/1000 (100%)  done in 1m40s  1/s"]
    rep, stream, clock = _reporter()
    with rep.task("matching edited captions") as task:
        clock.now += 4
        task.advance(1024)
        clock.now += 4
        task.advance(1024)
    assert stream.getvalue().splitlines() == ["matching edited captions: 2048  done in 8s  256/s"]


def test_an_interrupted_task_says_where_it_stopped():
    rep, stream, clock = _reporter()
    try:
        with rep.task("encoding images", total=50) as task:
            clock.now += 3725
            task.advance(10)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert stream.getvalue().splitlines() == ["encoding images: 10/50 (20%)  stopped after 1h02m  0.00268/s"]


def test_the_cli_writes_progress_lines_to_a_redirected_stderr(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "zscir_cli", "prepare", "shapes", "--train-pairs", "40",
                            "--val-pairs", "8", "--queries", "6", "--image-size", "16", "--cache-dir",
                            str(tmp_path / "c")], check=False, stdout=subprocess.PIPE, stderr=f, text=True,
                           env={**__import__("os").environ, "ZSCIR_PROGRESS_SECONDS": "0"}, timeout=300)
    assert r.returncode == 0
    text = log.read_text()
    assert "rendering train pairs: 40/40 (100%)  done in" in text
    assert "rendering test gallery: " in text and "\x1b[" not in text  # plain text, no terminal codes
