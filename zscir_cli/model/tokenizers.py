"""OpenCLIP's tokenizer of a model, built once per process and model config.

Building a CLIP tokenizer reads and indexes its 49k BPE merges (about 0.15 s on a 2-core
machine), which a process that loads models again and again (an evaluation over methods, a
service, a test run) would pay each time. A tokenizer holds no state but a memo of words it has
split, so one instance serves every backbone of a config. Models named by `hf-hub:` or
`local-dir:` read their config from files that may change while the process runs: theirs is
built each time.
"""

from __future__ import annotations

import json
from typing import Any

import open_clip

_BUILT: dict[tuple[str, str], Any] = {}


def tokenizer_of(name: str) -> Any:
    """The tokenizer `open_clip.get_tokenizer(name)` builds, shared for a registered config."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return open_clip.get_tokenizer(name)
    # the text config decides the tokenizer: a name registered again with another config is another key
    text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    key = (name, json.dumps(text_cfg, sort_keys=True, default=str))
    if key not in _BUILT:
        _BUILT[key] = open_clip.get_tokenizer(name)
    return _BUILT[key]
