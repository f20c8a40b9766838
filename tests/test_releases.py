"""Released mappers (SEARLE, LinCIR, Pic2Word) as query methods: files written here in each
release's exact layout (random weights, on the tiny ViT), each query feature checked against a
computation written from the release's description, and every bad file refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import benchfixtures
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.core.errors import UserError
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.retrieval.methods import load_method
from zscir_cli.jobs.retrieval.releases import parse_weights
from zscir_cli.model.backbone import ModelSpec, load_backbone
from zscir_cli.model.releases import RELEASES, TargetPad

TINY = ("--model", "zscir-tiny-vit", "--pretrained", "none")
D, W = 32, 64  # the tiny ViT: image feature width, text token width
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _phi_state(seed: int, d: int = D, hidden: int = 4 * W, width: int = W) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"layers.0.weight": (hidden, d), "layers.0.bias": (hidden,), "layers.3.weight": (hidden, hidden),
              "layers.3.bias": (hidden,), "layers.6.weight": (width, hidden), "layers.6.bias": (width,)}
    return {k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}


def _img2text_state(seed: int, d: int = D, middle: int = 48, width: int = W) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"layers.0.0.weight": (middle, d), "layers.0.0.bias": (middle,), "layers.1.0.weight": (middle, middle),
              "layers.1.0.bias": (middle,), "fc_out.weight": (width, middle), "fc_out.bias": (width,)}
    return {k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}


def write_searle(path: Path, seed: int = 1) -> Path:
    """As SEARLE's train_phi saves it (and its GitHub release files hold): {'epoch', 'Phi'}."""
    torch.save({"epoch": 3, "Phi": _phi_state(seed)}, path)
    return path


def write_pic2word(path: Path, seed: int = 2) -> Path:
    """As Pic2Word's main.py saves a checkpoint: the whole CLIP, the mapper under
    'state_dict_img2text' with DistributedDataParallel's 'module.' prefixes, and the optimizer."""
    mapper = {f"module.{k}": v for k, v in _img2text_state(seed).items()}
    torch.save({"epoch": 30, "name": "pic2word", "state_dict": {"module.logit_scale": torch.tensor(4.6)},
                "state_dict_img2text": mapper,
                "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}},
                              "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-8, "params": [0]}]}},
               path)
    return path


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(ModelSpec("zscir-tiny-vit", "none"))


def _ctx(tmp_path) -> Context:
    return Context(store=ArtifactStore(tmp_path / "cache"), workers=0)


# -- the independent computation -------------------------------------------------------------------

def _pixels(image: Image.Image, targetpad: bool) -> torch.Tensor:
    """Resize the short side to 32 (bicubic), centre crop, CLIP's mean and std; with targetpad,
    an image longer than 1.25:1 padded with black to that ratio first (SEARLE's data_utils)."""
    if targetpad:
        w, h = image.size
        if max(w, h) / min(w, h) >= 1.25:
            side = max(w, h) / 1.25
            padded = Image.new("RGB", (w + 2 * max(int((side - w) / 2), 0), h + 2 * max(int((side - h) / 2), 0)))
            padded.paste(image, (max(int((side - w) / 2), 0), max(int((side - h) / 2), 0)))
            image = padded
    w, h = image.size
    s = 32 / min(w, h)
    image = image.resize((max(32, int(w * s)), max(32, int(h * s))), Image.BICUBIC)
    w, h = image.size
    left, top = int(round((w - 32) / 2)), int(round((h - 32) / 2))
    x = torch.from_numpy(np.asarray(image.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255)
    return ((x - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)


def _expected(backbone, state: dict[str, torch.Tensor], release: str, image: Image.Image, caption: str) -> torch.Tensor:
    """The query feature as each release's code computes it: the mapper on the unnormalised
    projected image feature; its token in place of the placeholder's embedding (SEARLE and
    Pic2Word: the first; LinCIR: every one) before the positions are added; the text tower;
    the end-of-text token's feature through the projection, normalised."""
    clip = backbone.model
    with torch.no_grad():
        v = clip.encode_image(_pixels(image, release == "searle").unsqueeze(0))[0]  # not normalised
        if release == "pic2word":
            h = v
            for i in range(2):
                h = torch.relu(h @ state[f"layers.{i}.0.weight"].T + state[f"layers.{i}.0.bias"])
            token = h @ state["fc_out.weight"].T + state["fc_out.bias"]
            prompt, placeholder = f"a photo of * , {caption}", 265
        else:
            h = F.gelu(v @ state["layers.0.weight"].T + state["layers.0.bias"])
            h = F.gelu(h @ state["layers.3.weight"].T + state["layers.3.bias"])
            token = h @ state["layers.6.weight"].T + state["layers.6.bias"]
            prompt, placeholder = f"a photo of $ that {caption}", 259
        ids = backbone.tokenizer([prompt])[0]
        x = clip.token_embedding(ids)
        hits = (ids == placeholder).nonzero().flatten().tolist()
        for pos in hits if release == "lincir" else hits[:1]:
            x[pos] = token
        x = (x + clip.positional_embedding).unsqueeze(0)
        for block in clip.transformer.resblocks:
            x = block(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)[0, int(ids.argmax())] @ clip.text_projection
        return F.normalize(x, dim=-1)


@pytest.mark.parametrize("release", ["searle", "lincir", "pic2word"])
def test_query_feature_matches_the_release_computation(backbone, tmp_path, release):
    ctx = _ctx(tmp_path)
    if release == "pic2word":
        path, state = write_pic2word(tmp_path / "pic2word_large.pt"), _img2text_state(2)
    else:
        path, state = write_searle(tmp_path / f"{release}.pt"), _phi_state(1)
    method = load_method(ctx, release, backbone, weights=str(path))
    assert method.backbone.spec.preprocess == ("targetpad" if release == "searle" else "clip")
    image = Image.fromarray((np.random.default_rng(0).random((24, 60, 3)) * 255).astype(np.uint8))  # 2.5:1
    caption = "has $ signs and is red"  # a '$' of the caption: LinCIR replaces it too, SEARLE does not
    raw = method.backbone.encode_images(method.backbone.preprocess(image).unsqueeze(0), normalise=False)
    got = method.encode(raw.numpy(), [caption])[0]
    want = _expected(backbone, state, release, image, caption).numpy()
    assert np.allclose(got, want, atol=1e-5), np.abs(got - want).max()
    assert np.linalg.norm(got) == pytest.approx(1, abs=1e-5)
    plain = load_method(ctx, "lincir" if release == "searle" else "searle", backbone,
                        weights=str(write_searle(tmp_path / "other.pt"))) if release != "pic2word" else None
    if plain is not None:  # the two Phi releases differ in what they replace and how they read images
        assert not np.allclose(plain.encode(raw.numpy(), [caption])[0], got, atol=1e-4)


def test_each_release_asks_fashioniq_its_own_way():
    c1, c2 = "is shiny and silver.", " fit and flare?"
    for name in ("searle", "lincir"):
        assert RELEASES[name].captions("fashioniq", [c1, c2]) == ["is shiny and silver and fit and flare",
                                                                  "fit and flare and is shiny and silver"]
    assert RELEASES["pic2word"].captions("fashioniq", [c1, c2]) == [f"{c2} and {c1}"]  # second first, as written
    assert RELEASES["pic2word"].captions("cirr", ["x"]) == ["x"]
    assert RELEASES["pic2word"].prompt_of("x") == "a photo of * , x"


def test_targetpad_pads_only_long_images_to_the_ratio():
    wide = Image.new("RGB", (100, 40), (255, 0, 0))
    out = TargetPad()(wide)
    assert out.size == (100, 80)  # 100 / 1.25 = 80: 20 black rows above and below
    assert out.getpixel((50, 10)) == (0, 0, 0) and out.getpixel((50, 40)) == (255, 0, 0)
    square = Image.new("RGB", (100, 90))
    assert TargetPad()(square) is square


# -- on the command line ---------------------------------------------------------------------------

@pytest.fixture
def folder_index(cli, tmp_path):
    root = tmp_path / "photos"
    for i in range(8):
        benchfixtures._img(root / f"p{i}.png", i)
    Image.open(root / "p0.png").resize((64, 24)).save(root / "wide.png")  # targetpad changes it
    code, out, err = cli("index", root, *TINY, "--cache-dir", tmp_path / "cache", "--workers", "0")
    assert code == 0, err
    return root, out.strip()


def test_query_with_released_weights_ranks_by_the_release_feature(cli, backbone, tmp_path, folder_index):
    root, index = folder_index
    path = write_searle(tmp_path / "SEARLE.pt")
    code, out, err = cli("query", root / "wide.png", "make it blue", "--method", "searle", "--weights", path,
                         "--json", "--cache-dir", tmp_path / "cache", "-k", "3")
    assert code == 0, err
    assert "using released SEARLE weights SEARLE.pt" in err
    assert "read its images with clip preprocessing" in err and "--preprocess targetpad" in err
    res = json.loads(out)
    feats = np.load(tmp_path / "cache" / "index" / index / "features.npy").astype(np.float32)
    ids = json.loads((tmp_path / "cache" / "index" / index / "ids.json").read_text())
    query = _expected(backbone, _phi_state(1), "searle", Image.open(root / "wide.png").convert("RGB"), "make it blue")
    scores = feats @ query.numpy()
    order = [i for i in np.argsort(-scores) if ids[i] != "wide.png"][:3]  # the reference is left out
    assert [r["id"] for r in res["results"]] == [ids[i] for i in order]
    assert [r["score"] for r in res["results"]] == pytest.approx([float(scores[i]) for i in order], abs=1e-3)


def test_an_index_read_with_targetpad_is_another_index(cli, tmp_path, folder_index):
    root, plain = folder_index
    code, out, err = cli("index", root, *TINY, "--preprocess", "targetpad", "--cache-dir", tmp_path / "cache",
                         "--workers", "0", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["index"] != plain and "targetpad images" in res["model"]
    manifest = json.loads((tmp_path / "cache" / "index" / res["index"] / "manifest.json").read_text())
    assert manifest["model"]["preprocess"] == "targetpad"
    a = np.load(tmp_path / "cache" / "index" / plain / "features.npy")
    b = np.load(tmp_path / "cache" / "index" / res["index"] / "features.npy")
    ids = json.loads((tmp_path / "cache" / "index" / plain / "ids.json").read_text())
    wide, square = ids.index("wide.png"), ids.index("p1.png")
    assert not np.allclose(a[wide], b[wide]) and np.allclose(a[square], b[square])  # only long images change
    code, out, err = cli("query", "wide.png", "make it blue", "--method", "searle", "--weights",
                         write_searle(tmp_path / "s.pt"), "--index", res["index"], "--cache-dir", tmp_path / "cache")
    assert code == 0, err and "preprocessing" not in err


def test_eval_and_submit_rank_each_release_its_own_way(cli, tmp_path):
    cache = tmp_path / "cache"
    assert cli("prepare", "cirr", benchfixtures.cirr(tmp_path / "cirr"), "--cache-dir", cache)[0] == 0
    searle, lincir = write_searle(tmp_path / "SEARLE_ViT-L14.pt"), write_searle(tmp_path / "lincir_large.pt", seed=5)
    p2w = write_pic2word(tmp_path / "pic2word_large.pt")
    code, out, err = cli("eval", "cirr", "--method", "searle", "--method", "lincir", "--method", "pic2word",
                         "--weights", f"searle={searle}", "--weights", f"lincir={lincir}", "--weights",
                         f"pic2word={p2w}", *TINY, "--json", "--cache-dir", cache)
    assert code == 0, err
    res = json.loads(out)
    rows = res["results"]
    assert set(rows) == {"searle", "lincir", "pic2word"}
    assert rows["searle"]["recipe"].startswith("released SEARLE weights SEARLE_ViT-L14.pt") and \
        rows["searle"]["recipe"].endswith("targetpad images")
    assert "released Pic2Word weights pic2word_large.pt" in rows["pic2word"]["recipe"]
    assert all(0 <= r["recall@1"] <= 100 and "recall_subset@1" in r for r in rows.values())
    assert len(res["index"]) == 2  # SEARLE's gallery read with targetpad: another index
    out_dir = tmp_path / "sub"
    code, out, err = cli("submit", "cirr", "--split", "val", "--method", "pic2word", "--weights", p2w, *TINY,
                         "--out", out_dir, "--cache-dir", cache)
    assert code == 0, err
    assert any(p.suffix == ".json" for p in out_dir.iterdir())


def test_served_with_released_weights(tmp_path, folder_index):
    from zscir_cli.jobs.service.service import load_service

    root, index = folder_index
    ctx = Context(store=ArtifactStore(tmp_path / "cache"), workers=0)
    service = load_service(ctx, [index], weights=[f"lincir={write_searle(tmp_path / 'l.pt')}"])
    assert "lincir" in service.methods and "searle" not in service.methods
    res = service.query(text="make it red", reference="p1.png", method="lincir", k=3)
    assert res.method == "lincir" and len(res.hits) == 3 and "p1.png" not in [h.id for h in res.hits]
    with pytest.raises(Exception, match="released mapper that this service was not started with"):
        service.query(text="make it red", reference="p1.png", method="searle")


# -- what is refused -------------------------------------------------------------------------------

class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("case", ["keys", "shapes", "other-release", "code", "empty", "nan", "width", "no-dict"])
def test_bad_files_are_refused_with_what_was_expected(cli, tmp_path, folder_index, case):
    root, _ = folder_index
    path, method = tmp_path / f"{case}.pt", "searle"
    expect = {"keys": "unexpected layers.4.weight", "shapes": "layers.3.weight is (256, 100), expected (256, 256)",
              "other-release": "holds a Pic2Word mapper (IM2TEXT), not SEARLE's", "code": "will not run",
              "empty": "is empty", "nan": "not finite", "width": "maps 768-wide image features to 768-wide tokens",
              "no-dict": "holds a dict with 'weights'"}[case]
    state = _phi_state(1)
    if case == "keys":
        torch.save({"Phi": {**state, "layers.4.weight": torch.zeros(2)}}, path)
    elif case == "shapes":
        torch.save({"Phi": {**state, "layers.3.weight": torch.zeros(4 * W, 100)}}, path)
    elif case == "other-release":
        write_pic2word(path)
    elif case == "code":
        torch.save({"Phi": state, "extra": _Boom()}, path)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "nan":
        torch.save({"Phi": {**state, "layers.0.bias": torch.full((4 * W,), float("nan"))}}, path)
    elif case == "width":
        torch.save({"Phi": _phi_state(1, 768, 3072, 768)}, path)
    else:
        torch.save({"weights": state}, path)
    code, out, err = cli("query", "p1.png", "make it red", "--method", method, "--weights", path,
                         "--cache-dir", tmp_path / "cache")
    assert code == 2 and expect in " ".join(err.split()), err
    assert not (Path.cwd() / "pwned").exists() and not (tmp_path / "pwned").exists()
    if case == "width":
        assert "--model ViT-L-14 --pretrained openai" in " ".join(err.split())


def test_weights_options_are_checked_before_anything_loads(cli, tmp_path):
    assert parse_weights(["searle"], ["a.pt"]) == {"searle": "a.pt"}
    assert parse_weights(["searle", "lincir"], ["lincir=b.pt", "searle=a.pt"]) == {"lincir": "b.pt", "searle": "a.pt"}
    assert parse_weights([], ["pic2word=c.pt"]) == {"pic2word": "c.pt"}
    for asked, given, message in ((["searle", "lincir"], ["a.pt"], "which method's file"),
                                  (["searle"], ["lincir=b.pt"], "no --method asks for"),
                                  ([], ["searle=a.pt", "searle=b.pt"], "twice")):
        with pytest.raises(UserError, match=message):
            parse_weights(asked, given)
    cache = tmp_path / "cache"
    code, out, err = cli("query", "x", "y", "--method", "tscir", "--weights", "a.pt", "--cache-dir", cache)
    assert code == 2 and "goes with a released mapper" in err  # before the empty cache is looked at


def test_run_and_weights_together_and_no_weights_are_refused(backbone, tmp_path):
    ctx = _ctx(tmp_path)
    path = write_pic2word(tmp_path / "p.pt")
    with pytest.raises(UserError, match="name two different pic2word models"):
        load_method(ctx, "pic2word", backbone, run="abc", weights=str(path))
    with pytest.raises(UserError, match="needs its weights file"):
        load_method(ctx, "lincir", backbone)
    shapes = load_backbone(ModelSpec("zscir-tiny-rn", "none"))
    object.__setattr__(shapes.spec, "name", "zscir-shapes-rn")  # the lab's model, by name
    with pytest.raises(UserError, match="The shapes lab has none"):
        load_method(ctx, "searle", shapes)


def test_a_hub_file_is_found_in_the_cache_offline_and_named_when_missing(backbone, tmp_path):
    ctx = _ctx(tmp_path)
    repo = ctx.store.root / "hub" / "models--navervision--zeroshot-cir-models"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    write_searle(snap / "lincir_large.pt")
    method = load_method(ctx, "lincir", backbone, weights="hf-hub:navervision/zeroshot-cir-models/lincir_large.pt")
    assert method.weights["name"] == "lincir_large.pt"
    with pytest.raises(UserError, match="cannot be downloaded now") as e:
        load_method(ctx, "searle", backbone, weights="hf-hub:miccunifi/searle/SEARLE_ViT-L14.pt")
    assert "huggingface.co/miccunifi/searle" in e.value.hint
    with pytest.raises(UserError, match="not a hub file id"):
        load_method(ctx, "searle", backbone, weights="hf-hub:only-a-repo")


def test_help_lists_the_formats(cli):
    code, out, err = cli("query", "--help")
    text = " ".join(out.split())
    assert code == 0 and "'Phi'" in text and "state_dict_img2text" in text and "hf-hub:OWNER/REPO/FILE" in text
