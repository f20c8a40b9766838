"""What each `zscir prepare` command asks for, one dataclass each, whose fields hold every default
(the commands take theirs from here; the shapes world's is `data.shapes.WorldConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

MISSING_CAPTION = ("skip", "keep")  # a sample without a caption: left out (counted), or kept with ''


@dataclass
class FolderRequest:
    """`zscir prepare imagefolder`: a folder of images, captions optional."""

    folder: str
    name: str | None = None  # what --data calls it [default: the folder's name]
    captions: str | None = None  # a captions file [default: the folder's metadata.jsonl/.csv, if any]
    skip_bad: bool = False  # leave unreadable images out instead of failing
    force: bool = False  # prepare again even if the cache holds it


@dataclass
class WebdatasetRequest:
    """`zscir prepare webdataset`: tar shards (img2dataset's .jpg/.png + .txt per key)."""

    shards: str  # a brace pattern ('s/{00000..00099}.tar') or a folder of .tar files
    name: str | None = None  # [default: the shards' folder's name]
    skip_bad: bool = False  # leave corrupt images (and a truncated shard's rest) out, counted
    missing_caption: str = "skip"  # skip | keep
    force: bool = False


@dataclass
class CsvRequest:
    """`zscir prepare csv`: a CSV/TSV file of image paths and captions (open_clip's convention)."""

    file: str
    image_column: str = "filepath"  # open_clip's --csv-img-key
    caption_column: str = "title"  # open_clip's --csv-caption-key
    separator: str | None = None  # [default: tab for .tsv, else comma]
    name: str | None = None  # [default: the file's name without suffix]
    skip_bad: bool = False
    missing_caption: str = "skip"  # skip | keep
    allow_outside: bool = False  # accept image paths that leave the file's folder
    force: bool = False
