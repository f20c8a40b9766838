"""Imported once by the test processes' forkserver (`runs.PRELOAD`), after zscir's modules: what
every command a test runs as a process of its own would otherwise redo in each child, done once.
The tiny model's tokenizer (its BPE table takes a sixth of a second to read), and the modules
that Typer and Pillow import on their first use (a quarter of a second)."""

import PIL.JpegImagePlugin  # noqa: F401
import PIL.PngImagePlugin  # noqa: F401
import pydantic  # noqa: F401

from zscir_cli.model.backbone import register_configs
from zscir_cli.model.tokenizers import tokenizer_of

register_configs()
tokenizer_of("zscir-tiny-vit")

try:  # where Typer parses with its pydantic adapters (a private module: another Typer may lack it)
    import typer._adapters  # noqa: F401
except ImportError:
    pass
