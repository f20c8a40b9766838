"""Prepared data sets from shards: webdataset tar files and CSV/TSV files of paths and captions.

Both become what `prepare imagefolder` makes, a `dataset` artifact whose `pairs/train` split has
the columns id, image, caption, so `map-train --data NAME` and `synth --data NAME` take them
alike. Rows stream from the reader into `datasets.Dataset.from_generator`, which writes them to
disk a batch at a time: memory does not grow with the corpus. Images of tar shards are stored
in the data set (their bytes, as they were); images of a CSV file are referenced by path.

A corrupt image stops the preparation naming it, or with `skip_bad` is left out and counted. A
sample without a caption is left out and counted (`missing_caption="skip"`, the default), or
kept with an empty caption (`"keep"`), which turns soft text alignment off in map-train.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.data import shards
from zscir_cli.data.galleries import files_digest
from zscir_cli.data.imagefolder import check_image
from zscir_cli.data.paths import OUTSIDE_HINT, inside
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.config import MISSING_CAPTION, CsvRequest, WebdatasetRequest
from zscir_cli.jobs.datasets.store import KIND

NAMED = 100  # skipped samples listed in the manifest; the count covers them all
WRITER_BATCH = 256  # rows the writer holds before it writes them out
SKIP_HINT = "Fix or remove it, or pass --skip-bad to leave such samples out (they are counted)."


@dataclass
class Tally:
    """What the stream held besides the kept rows."""

    kept: int = 0
    captioned: int = 0
    bad: int = 0  # unreadable images, left out (--skip-bad)
    uncaptioned: int = 0  # samples without a caption (left out, or kept with an empty one)
    no_image: int = 0  # samples without an image member: left out
    skipped: list[dict[str, str]] = field(default_factory=list)  # the first NAMED of them

    def skip(self, where: str, reason: str) -> None:
        if len(self.skipped) < NAMED:
            self.skipped.append({"id": where, "error": reason})


@dataclass
class Row:
    id: str
    where: str  # for messages
    image: dict[str, Any] | None  # {"bytes": ...} or {"path": ...}; None: no image
    caption: str | None
    error: str | None = None  # why the image cannot be read
    fault: str | None = None  # why the sample cannot be used otherwise (a bad caption member, a repeated key)


def _rows(source: Iterator[Row], tally: Tally, *, skip_bad: bool, missing_caption: str) -> Iterator[dict]:
    for row in source:
        if row.image is None:
            tally.no_image += 1
            tally.skip(row.where, "no image member")
            continue
        if row.error is not None or row.fault is not None:
            if not skip_bad:
                raise UserError(f"{row.where} is not a readable image ({row.error})." if row.error is not None
                                else f"{row.where}: {row.fault}.", SKIP_HINT)
            tally.bad += 1
            tally.skip(row.where, row.error or row.fault)
            continue
        if row.caption is None:
            tally.uncaptioned += 1
            if missing_caption == "skip":
                tally.skip(row.where, "no caption")
                continue
        tally.kept += 1
        tally.captioned += row.caption is not None
        yield {"id": row.id, "image": row.image, "caption": row.caption or ""}


def _build(ctx: Context, key: str, config: dict[str, Any], description: str, source: Iterator[Row],
           *, skip_bad: bool, missing_caption: str, extra: Callable[[Tally], dict[str, Any]]) -> None:
    import datasets as hf

    features = hf.Features({"id": hf.Value("string"), "image": hf.Image(), "caption": hf.Value("string")})
    tally = Tally()
    with ctx.store.create(KIND, key, config=config, description=description) as out:
        build = out.path / ".build"
        rows = _rows(source, tally, skip_bad=skip_bad, missing_caption=missing_caption)
        # an explicit fingerprint: the generator is never hashed, and nothing outside the
        # artifact being written is read back as a cached result
        try:
            ds = hf.Dataset.from_generator(lambda: rows, features=features, cache_dir=str(build),
                                           fingerprint=key, writer_batch_size=WRITER_BATCH)
        except Exception as e:  # datasets wraps what the generator raised: a user error stays one
            cause = e.__cause__ or e.__context__
            if isinstance(cause, UserError):
                raise cause from None
            if tally.kept == 0:  # datasets refuses an empty split
                raise _nothing_kept(tally, config["name"]) from None
            raise
        hf.DatasetDict({"train": ds}).save_to_disk(str(out.path / "pairs"))
        del ds
        shutil.rmtree(build)
        out.manifest.update({"name": config["name"], "kind": config["kind"], "counts": {"pairs/train": tally.kept},
                             "captioned": tally.captioned, "skipped": tally.skipped, "bad_images": tally.bad,
                             "uncaptioned": tally.uncaptioned, "missing_caption": missing_caption,
                             "no_image": tally.no_image, "splits": {"pairs": ["train"]}, **extra(tally)})


def _nothing_kept(tally: Tally, name: str) -> UserError:
    if tally.uncaptioned and not tally.bad and not tally.no_image:
        return UserError(f"No sample of {name} has a caption, so none was kept.",
                         "Pass --missing-caption keep to prepare them without captions (map-train then "
                         "runs without soft text alignment).")
    return UserError(f"No usable sample in {name}: {tally.bad} unreadable, {tally.no_image} without an image, "
                     f"{tally.uncaptioned} without a caption.", "Check the data.")


def _prepare(ctx: Context, config: dict[str, Any], force: bool, build: Callable[[str], None]) -> tuple[Artifact, bool]:
    """Find the data set, else build it once under its lock (a second command waits, then finds it)."""
    if config["name"] == "shapes":
        raise UserError("'shapes' is the embedded world's name.", "Pass --name with another name.")
    if config["missing_caption"] not in MISSING_CAPTION:
        raise UserError(f"--missing-caption must be skip or keep, got '{config['missing_caption']}'.",
                        "skip leaves uncaptioned samples out; keep keeps them with an empty caption.")
    key = ctx.store.key_for(KIND, config)
    return ctx.store.get_or_build(KIND, key, lambda: build(key), force=force, on_wait=ctx.reporter.info)


# -- webdataset -------------------------------------------------------------------------------

def shard_files(pattern: str) -> list[Path]:
    """The shards a brace pattern names (or every .tar in a folder), each checked to exist."""
    as_dir = Path(pattern).expanduser()
    if as_dir.is_dir():
        files = sorted(p for p in as_dir.iterdir() if p.is_file() and p.name.endswith((".tar", ".tar.gz", ".tgz")))
        if not files:
            raise UserError(f"No .tar shards in {as_dir}.", "Give the folder of the shards, or a pattern "
                                                              "such as 'shards/{00000..00099}.tar'.")
        return files
    files = [Path(p).expanduser() for p in shards.expand_braces(pattern)]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise UserError(f"{len(missing)} of the {len(files)} shard(s) that '{pattern}' names do not exist: "
                        + ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "") + ".",
                        "Check the pattern (brace ranges such as {00000..00099} keep their zero padding).")
    return files


def prepare_webdataset(ctx: Context, req: WebdatasetRequest) -> tuple[Artifact, bool]:
    """Record webdataset tar shards (img2dataset's output) as a data set (split 'train')."""
    pattern, name, skip_bad, missing_caption, force = req.shards, req.name, req.skip_bad, req.missing_caption, req.force
    files = [p.resolve() for p in shard_files(pattern)]
    root = Path(os.path.commonpath([str(p.parent) for p in files]))
    names = [p.relative_to(root).as_posix() for p in files]
    config = {"name": name or root.name, "kind": "webdataset", "root": str(root), "shards": len(files),
              "digest": files_digest(names, files), "skip_bad": skip_bad, "missing_caption": missing_caption}

    def source(tally_broken: list[dict[str, str]]) -> Iterator[Row]:
        seen: set[str] = set()
        with ctx.reporter.task(f"reading {len(files)} shard(s)", total=len(files)) as task:
            for path, shard_name in zip(files, names):
                try:
                    for s in shards.iter_tar(path, shard_name.removesuffix(".tar")):
                        err = shards.check_image_bytes(s.image, s.where) if s.image is not None else None
                        fault = s.fault
                        if s.id in seen:  # two samples of one key in a shard: two images under one id
                            fault = "its key repeats the key of an earlier sample of the shard"
                        seen.add(s.id)
                        yield Row(s.id, s.where, {"bytes": s.image, "path": None} if s.image is not None else None,
                                  s.caption, err, fault)
                except shards.ShardError as e:
                    if not skip_bad:
                        raise UserError(f"Shard {e.path} cannot be read to its end ({e.reason}).",
                                        "Fetch or write it again, or pass --skip-bad to keep the samples "
                                        "before the damage.") from e
                    tally_broken.append({"shard": str(e.path), "error": e.reason})
                task.advance(1)

    def build(key: str) -> None:
        broken: list[dict[str, str]] = []
        _build(ctx, key, config, f"webdataset {pattern} ({len(files)} shards)", source(broken),
               skip_bad=skip_bad, missing_caption=missing_caption, extra=lambda t: {"broken_shards": broken})

    return _prepare(ctx, config, force, build)


# -- CSV / TSV --------------------------------------------------------------------------------

def prepare_csv(ctx: Context, req: CsvRequest) -> tuple[Artifact, bool]:
    """Record a CSV/TSV file of image paths and captions as a data set (split 'train'); the images
    stay in place. Relative paths are read from the file's folder, and must stay inside it
    unless `allow_outside`."""
    image_column, caption_column, name, skip_bad = req.image_column, req.caption_column, req.name, req.skip_bad
    missing_caption, allow_outside, force = req.missing_caption, req.allow_outside, req.force
    path = Path(req.file).expanduser()
    if not path.is_file():
        raise UserError(f"CSV file not found: {path}.", "Give a CSV or TSV file with a header line.")
    path = path.resolve()
    sep = shards.separator_for(path, req.separator)
    st = path.stat()
    config = {"name": name or path.stem, "kind": "csv", "file": str(path), "size": st.st_size,
              "mtime_ns": st.st_mtime_ns, "image_column": image_column, "caption_column": caption_column,
              "separator": sep, "skip_bad": skip_bad, "missing_caption": missing_caption,
              "allow_outside": allow_outside}
    folder = path.parent

    def source() -> Iterator[Row]:
        with ctx.reporter.task(f"reading {path.name}") as task:
            lines: dict[str, int] = {}
            for line, value, caption in shards.iter_csv(path, image_column, caption_column, sep):
                where = f"{path}:{line}: {value}"
                if value in lines:
                    raise UserError(f"{path}:{line}: image '{value}' already has a row, line {lines[value]}.",
                                    "Keep one row per image (one caption each).")
                lines[value] = line
                image = inside(folder, value)
                if image is None and not allow_outside:
                    raise UserError(f"{path}:{line}: image '{value}' lies outside the file's folder {folder}.",
                                    OUTSIDE_HINT)
                image = image or (folder / Path(value).expanduser()).resolve()
                error = "no such file" if not image.is_file() else check_image(image)
                yield Row(value, where, {"path": str(image), "bytes": None}, caption, error)
                task.advance(1)

    def build(key: str) -> None:
        _check_header(path, image_column, caption_column, sep)  # before any work
        _build(ctx, key, config, f"{path} ({image_column}, {caption_column})", source(),
               skip_bad=skip_bad, missing_caption=missing_caption, extra=lambda t: {"file": str(path)})

    return _prepare(ctx, config, force, build)


def _check_header(path: Path, image_column: str, caption_column: str, sep: str) -> None:
    rows = shards.iter_csv(path, image_column, caption_column, sep)
    next(rows, None)  # reads the header (a user error when a column is missing) and one row
    rows.close()
