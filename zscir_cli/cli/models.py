"""`zscir models`: the architectures --model accepts."""

from __future__ import annotations

from typing import Annotated

import typer

from zscir_cli.cli.common import print_json
from zscir_cli.cli.options import Json


def models(
    contains: Annotated[str | None, typer.Argument(help="Only names containing this (case-insensitive).")] = None,
    json_out: Json = False,
) -> None:
    """List the architectures and their pretrained tags (OpenCLIP's and zscir's own)."""
    import open_clip

    from zscir_cli.model.backbone import available_models

    names = [m for m in available_models() if not contains or contains.lower() in m.lower()]
    rows = {m: open_clip.list_pretrained_tags_by_model(m) for m in names}
    if json_out:
        print_json(rows)
        return
    for m, tags in rows.items():
        typer.echo(f"{m}\t{', '.join(tags) if tags else '(no zoo weights)'}")
