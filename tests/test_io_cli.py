"""Input and output at the command line: literal user strings, whole help texts, OS errors,
pixel limits, and queries that find their index and model themselves, in a moved cache too."""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save_file

from zscir_cli.core.cache import ArtifactStore


def _commands(command, path=()):
    """Every (sub)command of the app as (argv prefix, click command)."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_of_every_command_shows_defaults_whole(cli):
    from zscir_cli.cli.app import click_command

    checked = 0
    for path, command in _commands(click_command()):
        code, out, _ = cli(*path, "--help")
        assert code == 0, path
        flat = " ".join(out.split())
        assert "…" not in out and not re.search(r"\w \.(\s|$)", out), (path, out)
        for param in command.params:
            if param.param_type_name != "option" or getattr(param, "hidden", False):
                continue
            assert max(param.opts, key=len) in out, (path, param.opts)
            for default in re.findall(r"\[default: [^\]]*\]", param.help or ""):
                assert " ".join(default.split()) in flat, (path, default)
                checked += 1
    assert checked >= 10  # --model, --pretrained, --cache-dir, --workers, ... on many commands
    code, out, _ = cli("index", "--help")
    flat = " ".join(out.split())
    assert "random weights [default: openai]." in flat and "id [default: ViT-L-14]." in flat
    code, out, _ = cli("query", "--help")  # a command that ranks an index takes the index's model
    assert "id [default: the model of --index, else of the newest index]." in " ".join(out.split())


def _tiny_backbone_in(cache: Path) -> Path:
    """A 'zscir pretrain' checkpoint of zscir-tiny-vit, as the cache holds it (random weights)."""
    from zscir_cli.jobs.backbones import KIND, WEIGHTS
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    model = load_backbone(ModelSpec("zscir-tiny-vit", "none")).model
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    store = ArtifactStore(cache)
    with store.create(KIND, "tinyvit0", config={"model": "zscir-tiny-vit"}, description="test") as out:
        save_file(state, str(out.path / WEIGHTS))
    return store.root / KIND / "tinyvit0" / WEIGHTS


@pytest.fixture
def bracket_gallery(tmp_path) -> Path:
    folder = tmp_path / "gal"
    folder.mkdir()
    # the id of "[" / "bold] b.png" is "[/bold] b.png": a closing tag that matches nothing
    for name, colour in [("photo [draft].png", "red"), ("[/bold] b.png", "blue"), ("plain.png", "green")]:
        (folder / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), colour).save(folder / name)
    return folder


def test_query_after_index_in_a_moved_cache_with_literal_names(tmp_path, bracket_gallery, cli):
    first = tmp_path / "cache"
    _tiny_backbone_in(first)
    code, _, err = cli("index", bracket_gallery, "--model", "zscir-tiny-vit", "--workers", "0",
                       "--cache-dir", first)
    assert code == 0, err
    manifest = json.loads(next((first / "index").glob("*/manifest.json")).read_text())
    assert set(manifest["model"]) == {"name", "pretrained", "sha256"} and str(first) not in json.dumps(
        manifest["model"])
    moved = tmp_path / "elsewhere" / "cache"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    # a near copy of "photo [draft].png" (the image itself, as a gallery file, is left out)
    ref = tmp_path / "near [copy].png"
    near = Image.new("RGB", (32, 32), "red")
    near.putpixel((0, 0), (250, 0, 0))
    near.save(ref)
    # neither --model nor --index: the newest index, and the model its manifest names
    code, out, err = cli("query", ref, "make it [/b] red", "--method", "image", "--cache-dir", moved)
    assert code == 0, err
    assert "using the newest index" in err and "photo [draft].png" in out and "[/bold] b.png" in out
    assert 'make it [/b] red' in out
    # the same backbone named by the user is found bound to the same index after the move
    code, out, err = cli("query", ref, "make it red", "--method", "image", "--model", "zscir-tiny-vit",
                         "--cache-dir", moved, "--json")
    assert code == 0, err
    assert json.loads(out)["results"][0]["id"] == "photo [draft].png"


def test_query_checks_its_input_before_any_index_or_model(tmp_path, cli):
    empty = tmp_path / "empty-cache"
    code, _, err = cli("query", tmp_path / "[/nope].png", "make it red", "--cache-dir", empty)
    assert code == 2 and "Image not found" in err and "[/nope].png" in err
    not_image = tmp_path / "notes [v2].png"
    not_image.write_text("not an image")
    code, _, err = cli("query", not_image, "make it red", "--cache-dir", empty)
    assert code == 2 and "Cannot read" in err and "notes [v2].png" in err
    good = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(good)
    code, _, err = cli("query", good, "  ", "--cache-dir", empty)
    assert code == 2 and "modification text is empty" in err
    code, _, err = cli("query", good, "make it red", "--cache-dir", empty)
    assert code == 2 and "holds no index" in err and "zscir index" in err
    assert not empty.exists()  # nothing was written, no model was fetched


def test_an_image_over_the_pixel_limit_is_refused_naming_it(tmp_path, cli, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("1", (10000, 10000)).save(big)  # 100 Mpx: PIL itself would only warn
    t0 = time.monotonic()
    code, _, err = cli("query", big, "make it red", "--cache-dir", tmp_path / "c")
    assert code == 2 and time.monotonic() - t0 < 5
    assert "big.png is 10000x10000 = 100.0 Mpx, over the limit of 64 Mpx" in err
    assert "ZSCIR_MAX_IMAGE_PIXELS" in err
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 40)).save(small)
    monkeypatch.setenv("ZSCIR_MAX_IMAGE_PIXELS", "1000")
    code, _, err = cli("query", small, "make it red", "--cache-dir", tmp_path / "c")
    assert code == 2 and "small.png is 40x40" in err
    from zscir_cli.data.images import load_rgb

    monkeypatch.setenv("ZSCIR_MAX_IMAGE_PIXELS", "2000")
    assert load_rgb(small).size == (40, 40)


def test_os_errors_exit_2_naming_the_path(tmp_path, cli):
    caps = tmp_path / "caps.jsonl"
    from test_synth import CAPTIONS

    caps.write_text("".join(json.dumps({"image": f"{i}.png", "caption": c}) + "\n"
                            for i, c in enumerate(CAPTIONS)))
    for i in range(len(CAPTIONS)):  # the images exist: the failure must be the output's
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    out_dir = tmp_path / "out [dir]"
    out_dir.mkdir()
    (out_dir / "keep").write_text("x")  # a non-empty folder where the triplet file should go
    code, _, err = cli("synth", "--captions", caps, "--exact-only", "--out", out_dir,
                       "--cache-dir", tmp_path / "c")
    assert code == 2, err
    assert "This is a bug" not in err and "out [dir]" in err
    assert err.count("error:") == 1


def test_the_zscir_script_exits_with_the_run_s_code_and_its_output_out():
    """`python -m zscir_cli` (the `zscir` script's `main`): the exit code is the run's, and what it
    printed is out before it leaves."""
    bad = subprocess.run([sys.executable, "-m", "zscir_cli", "no-such-command"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert bad.returncode == 2 and "No such command" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "zscir_cli", "--version"], capture_output=True, text=True,
                        timeout=120, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("zscir ")


def test_os_error_sentences():
    from zscir_cli.core.errors import os_error

    msg = str(os_error(PermissionError(errno.EACCES, "Permission denied", "/data/x [1].jpg")))
    assert msg.startswith("/data/x [1].jpg: permission denied.") and "--cache-dir" in msg
    msg = str(os_error(OSError(errno.ENOSPC, "No space left on device", "/c/features.npy")))
    assert "/c/features.npy" in msg and "disk is full" in msg
    assert "folder" in str(os_error(IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp")))


def test_a_real_bug_is_still_called_a_bug(cli, monkeypatch):
    from zscir_cli.cli import models

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(models, "available_models", broken, raising=False)
    from zscir_cli.model import backbone

    monkeypatch.setattr(backbone, "available_models", broken)
    code, _, err = cli("models", "vit")
    assert code == 1 and "This is a bug in zscir" in err


def test_prepare_waits_for_a_build_in_another_process(tmp_path):
    from zscir_cli.core.progress import Reporter
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.datasets.config import FolderRequest
    from zscir_cli.jobs.datasets.folders import prepare_imagefolder
    from zscir_cli.jobs.datasets.store import KIND

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(folder / f"{i}.png")
    store = ArtifactStore(tmp_path / "cache")
    infos: list[str] = []

    class Recording(Reporter):
        def info(self, message: str) -> None:
            infos.append(message)

    ctx = Context(store=store, reporter=Recording())
    # the key this folder gets, computed as prepare_imagefolder does
    from zscir_cli.data.galleries import FolderGallery

    root = folder.resolve()
    files = sorted(root.glob("*.png"))
    config = {"name": "imgs", "kind": "imagefolder", "source": FolderGallery(root, files).identity(),
              "skip_bad": False, "captions": None}
    key = store.key_for(KIND, config)
    code = ("import time; from pathlib import Path; from zscir_cli.core import locks\n"
            f"with locks.hold(Path({str(store.root)!r}), {f'{KIND}-{key}'!r}):\n"
            "    print('held', flush=True); time.sleep(2)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        art, built = prepare_imagefolder(ctx, FolderRequest(str(folder)))
    finally:
        holder.wait(timeout=30)
    assert built and art.key == key
    assert any("waiting for" in m for m in infos)
