"""Options shared by several commands, as Annotated aliases (one definition each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CacheDir = Annotated[Path | None, typer.Option(
    "--cache-dir", help="Cache root [default: $ZSCIR_HOME, else $XDG_CACHE_HOME/zscir, else "
                        "~/.cache/zscir].", show_default=False)]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Workers = Annotated[int | None, typer.Option(
    help="DataLoader workers for image decoding [default: one per spare core, at most 4].",
    show_default=False)]
Seed = Annotated[int, typer.Option(help="Random seed: the same seed gives the same artifact.")]
_MODEL = "OpenCLIP architecture (e.g. ViT-L-14, or zscir-shapes-rn), or an hf-hub:/local-dir: id"
Model = Annotated[str | None, typer.Option("--model", help=f"{_MODEL} [default: ViT-L-14].", show_default=False)]
# commands that rank an index take its model unless told otherwise
IndexModel = Annotated[str | None, typer.Option(
    "--model", help=f"{_MODEL} [default: the model of --index, else of the newest index].", show_default=False)]
SplitModel = Annotated[str | None, typer.Option(
    "--model", help=f"{_MODEL} [default: the model of the newest index built on the split's gallery].",
    show_default=False)]
Pretrained = Annotated[str | None, typer.Option(
    "--pretrained", help="Weights: a zoo tag (openai, laion2b_s32b_b82k, ...), a local "
                         ".safetensors/.pt/.bin file, 'latest' (the newest 'zscir pretrain' of "
                         "--model), or 'none' for random weights [default: openai].",
    show_default=False)]
# released mappers (model.releases): what --weights takes
METHODS_HELP = "tscir (both stages), stage1, pic2word, sum, image, text; searle, lincir (released weights)"
_WEIGHTS = ("The released mapper's weights for searle, lincir or pic2word (pic2word without them: zscir's own "
            "run): a file, or hf-hub:OWNER/REPO/FILE. Formats: SEARLE and LinCIR, a torch file holding "
            "{'epoch', 'Phi'} (SEARLE_ViT-L14.pt, lincir_large.pt) or Phi's state dict (layers.0/3/6); "
            "Pic2Word, a checkpoint holding 'state_dict_img2text' (pic2word_large.pt; only the mapper is read) "
            "or that state dict (layers.N.0, fc_out); either state dict as .safetensors. Read without "
            "unpickling any object")
Weights = Annotated[str | None, typer.Option("--weights", help=f"{_WEIGHTS}.", show_default=False)]
ManyWeights = Annotated[list[str] | None, typer.Option(
    "--weights", help=f"{_WEIGHTS}. METHOD=FILE names the method where several are asked (repeat it).",
    show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")]
Force = Annotated[bool, typer.Option("--force", help="Rebuild even if the cache holds the result.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the interrupted run with these settings.")]
Retrain = Annotated[bool, typer.Option("--force", help="Train again even if the cache holds this run.")]


def parse_layers(value: str | None) -> list[int] | None:
    """--vsi-layers / --adapter-layers: comma-separated block numbers."""
    if value is None:
        return None
    try:
        return [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated block numbers such as 3,6,9,12, got {value!r}") from None
