"""Released mappers as query methods: `--method searle|lincir|pic2word --weights FILE`.

`--weights` takes a local file or `hf-hub:OWNER/REPO/FILE` (fetched once into the cache's
`hub/` folder, or found there offline); where several released methods run at once, each is
named: `--weights searle=FILE`. The file is checked against the backbone it will run on (its
widths must fit; an architecture or tag other than the release's is said in one line), and the
backbone reads images with the release's preprocessing (SEARLE: targetpad), so its galleries are
other indexes than the plain transform's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zscir_cli.core.errors import UserError
from zscir_cli.jobs.backbones import text_encoder
from zscir_cli.jobs.context import Context
from zscir_cli.model.backbone import Backbone
from zscir_cli.model.releases import FORMATS, RELEASED, RELEASES, Release, ReleasedMapper, read_mapper
from zscir_cli.model.weights import WeightsFileError, hub_offline, hub_unreachable

HUB = "hf-hub:"
HUB_FOLDER = "hub"  # under the cache root: released files fetched from the Hugging Face hub
WEIGHTS_HELP = (f"A released mapper's weights: a file, or {HUB}OWNER/REPO/FILE; METHOD=FILE when several "
                f"methods are asked (repeat it). Formats: {FORMATS}.")


def parse_weights(asked: list[str], weights: list[str] | tuple[str, ...]) -> dict[str, str]:
    """--weights as given -> {method: file or hub id}. A bare FILE belongs to the one released
    method among `asked`; METHOD=FILE names its method, which `asked` must hold unless it is
    empty (`serve`, or `eval` without --method: the named methods are added)."""
    out: dict[str, str] = {}
    for item in weights:
        name, sep, source = item.partition("=")
        if not sep or name not in RELEASED or os.path.exists(item):
            candidates = [m for m in asked if m in RELEASED]
            if len(candidates) != 1:
                raise UserError(f"--weights {item}: which method's file is it?",
                                f"Name it: --weights {RELEASED[0]}={item} (one of {', '.join(RELEASED)}).")
            name, source = candidates[0], item
        if asked and name not in asked:
            raise UserError(f"--weights {item} names {name}, which no --method asks for.",
                            f"Add --method {name}, or leave the weights out.")
        if name in out:
            raise UserError(f"--weights gives {name} twice ({out[name]} and {source}).", "Give each method one file.")
        if not source:
            raise UserError(f"--weights {item} names no file.", f"Give one: --weights {name}=/path/to/file.pt.")
        out[name] = source
    return out


def open_release(ctx: Context, name: str, backbone: Backbone, weights: str | None,
                 run: str | None = None) -> tuple[Backbone, ReleasedMapper, dict[str, Any]]:
    """(the backbone reading images as the release does, its mapper, the file's name, sha256
    and source) for `--method name --weights weights`."""
    release = RELEASES[name]
    if weights is None:
        lab = " The shapes lab has none: no release was trained on its CLIP." if backbone.spec.name.startswith(
            "zscir-") else ""
        raise UserError(f"{release.title} is a released mapper and needs its weights file.{lab}",
                        f"Pass --weights FILE ({release.files}).")
    if run is not None:
        raise UserError(f"--run {run} and --weights {weights} name two different {name} models.",
                        f"Give --weights for the released {release.title} mapper, or --run for zscir's own run.")
    path = fetch(ctx, weights)
    try:
        mapper = read_mapper(path, release)
    except WeightsFileError as e:
        raise UserError(str(e)) from None
    check_fit(ctx, release, mapper, backbone)
    info = {"name": path.name, "sha256": ctx.memo.sha256(path), "source": weights}  # type: ignore[union-attr]
    return backbone.with_preprocess(release.preprocess), mapper, info


def check_fit(ctx: Context, release: Release, mapper: ReleasedMapper, backbone: Backbone) -> None:
    """Widths that do not fit the backbone are refused; another architecture or tag than the
    release's is said in one line (it runs, but is not what the release was trained with)."""
    encoder = text_encoder(backbone, mapper.placeholder_id(backbone.tokenizer))
    if (mapper.image_dim, mapper.width) != (backbone.embed_dim, encoder.width):
        expected = release.backbones.get(mapper.image_dim)
        hint = f"--model {expected[0]} --pretrained {expected[1]}" if expected else "the model it was trained with"
        raise UserError(f"{mapper.path} maps {mapper.image_dim}-wide image features to {mapper.width}-wide tokens; "
                        f"{backbone.spec.label()} gives {backbone.embed_dim}-wide image features and takes "
                        f"{encoder.width}-wide tokens.", f"Run it on {hint}.")
    expected = release.backbones.get(mapper.image_dim)
    spec = backbone.spec.normalised()
    if expected is not None and (spec.name, spec.pretrained) != expected:
        ctx.reporter.info(f"warning: {release.title}'s {mapper.path.name} was trained on {expected[0]}/{expected[1]}, "
                          f"not {spec.label()}: its queries may be worse than published")


def fetch(ctx: Context, source: str) -> Path:
    """A local file, or a file of a Hugging Face repository (`hf-hub:OWNER/REPO/FILE`) kept in
    the cache's hub folder: downloaded once, then found there without the network."""
    if not source.startswith(HUB):
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"--weights file not found: {path}.", "Give the path of the released .pt file, or an "
                                                                    f"{HUB}OWNER/REPO/FILE id.")
        return path.resolve()
    parts = source[len(HUB):].split("/")
    if len(parts) < 3 or not all(parts):
        raise UserError(f"--weights {source} is not a hub file id.",
                        f"Write {HUB}OWNER/REPO/FILE, e.g. {HUB}navervision/zeroshot-cir-models/lincir_large.pt.")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download  # heavy: the hub client, only for hub ids
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    why = hub_unreachable()
    folder = ctx.store.root / HUB_FOLDER
    try:
        with hub_offline(why is not None):
            return Path(hf_hub_download(repo, filename, cache_dir=str(folder)))
    except LocalEntryNotFoundError:
        raise UserError(f"{source} is not in {folder}, and it cannot be downloaded now ({why or 'the hub did not answer'}).",
                        f"Fetch {filename} from https://huggingface.co/{repo} where there is a network and pass "
                        "--weights /path/to/it.") from None
    except (EntryNotFoundError, RepositoryNotFoundError) as e:
        raise UserError(f"{source}: {type(e).__name__.replace('Error', '')} on the hub.",
                        "Check the repository and the file's path in it.") from None
    except OSError as e:
        raise UserError(f"Could not fetch {source} into {folder} ({e}).", "Check the network and the disk.") from None
