"""How long a `zscir` process takes to end after its result is printed, with the CLI's exit (the
`zscir` script: `gc.freeze()` before `sys.exit`) and with a plain `sys.exit(run(...))`, measured
in one run on this machine.

    python benchmarks/cli_exit.py [--repeats 3] [-- ZSCIR ARGS]

The command defaults to `zscir models`, which imports torch and OpenCLIP as every training and
retrieval command does. Prints the seconds from the
last byte of output to the process's end for each way and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

PLAIN = "import sys; from zscir_cli.cli.app import run; sys.exit(run(sys.argv[1:]))"
CLI = "import sys; from zscir_cli.cli.app import main; sys.argv[0] = 'zscir'; main()"
# imports torch and OpenCLIP, prints the models, and exits
DEFAULT = ["models"]


def tail_seconds(code: str, args: list[str]) -> float:
    """Seconds between the last output the process writes and its end."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = time.monotonic()
    assert proc.stdout is not None
    while proc.stdout.read1(65536):
        last = time.monotonic()
    proc.wait()
    end = time.monotonic()
    if proc.returncode != 0:
        sys.exit(f"zscir {' '.join(args)} exited with {proc.returncode}")
    return end - last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("args", nargs="*", help="the zscir command (after --)")
    opts = ap.parse_args()
    args = opts.args or DEFAULT
    plain = [tail_seconds(PLAIN, args) for _ in range(opts.repeats)]
    cli = [tail_seconds(CLI, args) for _ in range(opts.repeats)]
    p, c = statistics.median(plain), statistics.median(cli)
    print(f"zscir {' '.join(args)}: seconds from the last output to the end, median of {opts.repeats}")
    print(f"  sys.exit(run(...))       {p:6.2f}")
    print(f"  the zscir script (main)  {c:6.2f}")
    print(f"  ratio                    {p / max(c, 1e-9):6.1f}x")


if __name__ == "__main__":
    main()
