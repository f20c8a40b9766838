"""Named kill and pause points for fault-injection tests.

`point("checkpoint:after-write")` does nothing unless an environment variable names that point
(optionally with the occurrence to act on, `checkpoint:after-write@2`):

- `ZSCIR_KILL_AT`: the process kills itself with SIGKILL on the spot, as a power cut or the
  OOM killer would. Tests use it to place a kill between two writes, which a timer cannot do
  reliably.
- `ZSCIR_PAUSE_AT` (with `ZSCIR_PAUSE_RELEASE=FILE`): the process creates `FILE.reached` and
  waits there until FILE exists, so a test can act (start a second command, prune the cache)
  while the first stands at a known point, without guessing at timings.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "ZSCIR_KILL_AT"
PAUSE_ENV = "ZSCIR_PAUSE_AT"
RELEASE_ENV = "ZSCIR_PAUSE_RELEASE"
MAX_PAUSE_S = 600.0
_seen: dict[tuple[str, str], int] = {}


def _reached(env: str, name: str) -> bool:
    want = os.environ.get(env)
    if not want:
        return False
    target, _, nth = want.partition("@")
    if target != name:
        return False
    _seen[env, name] = _seen.get((env, name), 0) + 1
    return _seen[env, name] == int(nth or 1)


def point(name: str) -> None:
    if _reached(ENV, name):
        os.kill(os.getpid(), signal.SIGKILL)
    if _reached(PAUSE_ENV, name) and os.environ.get(RELEASE_ENV):
        release = Path(os.environ[RELEASE_ENV])
        release.with_name(release.name + ".reached").write_text(f"{os.getpid()}\n")
        deadline = time.monotonic() + MAX_PAUSE_S
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
