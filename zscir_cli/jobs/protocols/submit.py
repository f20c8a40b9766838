"""`zscir submit`: the test servers' prediction files, written only once they pass the checks
the server makes (`zscir score`, which scores them offline, is in `predictions`: no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from zscir_cli.core.durable import write_atomically
from zscir_cli.core.errors import UserError
from zscir_cli.core.outputs import check_output_dir
from zscir_cli.data.public_trees import SPLITS
from zscir_cli.jobs.backbones import open_backbone
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.protocols.config import SubmitRequest
from zscir_cli.jobs.protocols.evaluate import split_model
from zscir_cli.jobs.protocols.predictions import read_predictions, submission
from zscir_cli.jobs.protocols.ranking import rank_split
from zscir_cli.jobs.protocols.trees import open_split
from zscir_cli.jobs.retrieval.methods import check_method, load_method


@dataclass
class Submission:
    files: list[Path]
    excluded: int  # queries left out for missing images: the server counts them as failures


def write_submission(ctx: Context, req: SubmitRequest) -> Submission:
    """Rank the split with the method and write the server's files into `req.out`, each checked as
    the server would check it before any is in place."""
    if req.dataset not in SPLITS:
        raise UserError(f"No submission format for '{req.dataset}'.", "Choose cirr, circo or fashioniq.")
    check_method(req.method, req.weights)
    split = req.split or SPLITS[req.dataset][-1]
    data = open_split(ctx, req.dataset, split)
    out_dir = check_output_dir(Path(req.out))  # before any encoding
    key = data.artifact.key if data.artifact is not None else ""
    backbone = open_backbone(ctx, split_model(ctx, key, req.dataset, req.model, req.pretrained))
    files = submission(data, rank_split(ctx, load_method(ctx, req.method, backbone, req.run, req.weights), data))
    checked = {}
    for kind, obj in files.items():  # what the server would check, before anything is in place
        blob = json.dumps(obj).encode()
        probe = out_dir / f".{req.dataset}_{split}_{req.method}_{kind}.json.check"
        try:
            probe.write_bytes(blob)
            read_predictions(data, [probe])
        finally:
            probe.unlink(missing_ok=True)
        checked[out_dir / f"{req.dataset}_{split}_{req.method}_{kind}.json"] = blob
    for path, blob in checked.items():
        write_atomically(path, blob)
    return Submission(list(checked), data.excluded)
