"""Named kill points for fault-injection tests.

`point("checkpoint:after-write")` does nothing unless the environment variable
`ZSCIR_KILL_AT` names that point (optionally with the occurrence to stop at,
`checkpoint:after-write@2`); then the process kills itself with SIGKILL on the spot, as a
power cut or the OOM killer would. Tests use it to place a kill between two writes, which a
timer cannot do reliably.
"""

from __future__ import annotations

import os
import signal

ENV = "ZSCIR_KILL_AT"
_seen: dict[str, int] = {}


def point(name: str) -> None:
    want = os.environ.get(ENV)
    if not want:
        return
    target, _, nth = want.partition("@")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
