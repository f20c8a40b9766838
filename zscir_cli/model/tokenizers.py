"""OpenCLIP's tokenizer of a model, built once per process and model config.

Building a CLIP tokenizer reads and indexes its 49k BPE merges (about 0.15 s on a 2-core
machine), which a process that loads models again and again (an evaluation over methods, a
service, a test run) would pay each time. OpenCLIP's `SimpleTokenizer` holds no state after it
is built but a memo of the words it has split (always written with the same value), so one
instance serves every backbone of a config, from any thread. Other tokenizers (Hugging Face's,
SigLIP's) set options on a shared Rust tokenizer at each call, and models named by `hf-hub:` or
`local-dir:` read their config from files that may change while the process runs: those are
built each time, as OpenCLIP builds them.
"""

from __future__ import annotations

import json
from typing import Any

import open_clip
from open_clip.tokenizer import SimpleTokenizer

_BUILT: dict[tuple[str, str], SimpleTokenizer] = {}


def tokenizer_of(name: str) -> Any:
    """The tokenizer `open_clip.get_tokenizer(name)` builds, shared where it is a `SimpleTokenizer`
    of a registered config."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return open_clip.get_tokenizer(name)
    # the text config decides the tokenizer: a name registered again with another config is another key
    text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    key = (name, json.dumps(text_cfg, sort_keys=True, default=str))
    if key in _BUILT:
        return _BUILT[key]
    tokenizer = open_clip.get_tokenizer(name)
    if type(tokenizer) is SimpleTokenizer:
        _BUILT[key] = tokenizer
    return tokenizer
