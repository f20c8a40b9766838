"""Template and scene triplets on hand-written captions; triplet files that are wrong."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from zscir_cli.core.errors import UserError
from zscir_cli.data.shapes.triplets import scene_triplets
from zscir_cli.data.synth import normalise, propose_edits, template_triplets
from zscir_cli.jobs.training.triplet_files import read_triplets

CAPTIONS = [
    "a red dress with long sleeves",  # 0
    "a blue dress with long sleeves",  # 1: 0 with red -> blue
    "A red dress with short sleeves.",  # 2: 0 with long -> short
    "two dogs on a white background",  # 3
    "three dogs on a white background",  # 4: 3 with two -> three
    "two dogs on a black background",  # 5: 3 with a black background
    "a cat and a dog on a white background",  # 6
    "a dog on a white background",  # 7: 6 without the cat
]
IDS = [f"img{i}" for i in range(len(CAPTIONS))]


def test_normalise():
    assert normalise("A red dress, with SHORT sleeves.") == "a red dress with short sleeves"


def test_exact_targets_of_hand_written_captions():
    got, rejected = set(), 0
    for seed in range(5):  # each seed draws one value per edit type; together they cover the corpus
        rep = template_triplets(IDS, CAPTIONS, None, max_triplets=100, seed=seed, per_caption=5)
        rejected += rep.rejected["no exact target"]
        for t in rep.triplets:  # every kept triplet is an exact, verified match
            assert t.score == 1.0 and t.reference != t.target and t.source == "template"
            ref, tgt = normalise(t.reference_caption).split(), normalise(t.target_caption).split()
            if t.edit_type in ("replace", "count", "background"):
                assert [w if w != t.old else t.new for w in ref] == tgt
            got.add((t.reference, t.target, t.edit_type, t.old, t.new))
    assert ("img3", "img4", "count", "two", "three") in got
    assert ("img3", "img5", "background", "white", "black") in got
    assert ("img6", "img7", "remove", "cat", "") in got
    assert ("img0", "img2", "replace", "long", "short") in got
    assert ("img0", "img5", "replace", "red", "black") not in got  # a dress is not two dogs
    assert rejected > 0  # e.g. red -> white: no white dress in the corpus


def test_edits_only_propose_values_the_corpus_holds():
    from zscir_cli.data.synth import corpus_vocab

    vocab = corpus_vocab([normalise(c) for c in CAPTIONS])
    # white and black are only ever backgrounds here: no object is offered those colours
    assert set(vocab["colour"]) == {"red", "blue"}
    assert set(vocab["background_colour"]) == {"white", "black"}
    rng = np.random.default_rng(1)
    for _ in range(20):
        for c in propose_edits(0, CAPTIONS[0], rng, 5, vocab):
            assert all(w in " ".join(CAPTIONS).lower() for w in c.new.split())


def _bag_of_words(texts, corpus):
    """A stand-in text embedding: bag of words over the corpus's and the synth vocabularies'
    words (one fixed space for every call), normalised: enough to order near captions."""
    from zscir_cli.data.synth import VOCAB

    vocab = sorted({w for t in corpus for w in normalise(t).split()} | {w for ws in VOCAB.values() for w in ws}
                   | {"and", "a", "an", "on"})
    out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in normalise(t).split():
            if w in vocab:
                out[i, vocab.index(w)] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_nearest_caption_checks_new_and_old_words_and_the_threshold():
    caps = ["a red dress", "a small blue dress on a white background", "a red car"]
    ids = ["a", "b", "c"]
    words = sorted({w for t in caps for w in normalise(t).split()} | {"blue"})

    def embed(texts):
        out = np.zeros((len(texts), len(words)), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in normalise(t).split():
                if w in words:
                    out[i, words.index(w)] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    pairs = set()
    for seed in range(6):
        loose = template_triplets(ids, caps, embed, max_triplets=50, seed=seed, min_similarity=0.3, per_caption=5)
        for t in loose.triplets:
            target = normalise(t.target_caption).split()
            assert t.score < 1.0 and t.reference != t.target
            if t.edit_type == "replace":  # the target shows the new value and not the old one
                assert t.new in target and t.old not in target
            pairs.add((t.reference, t.target, t.new))
    assert ("a", "b", "blue") in pairs  # red -> blue: 'b' has blue and no red
    assert ("a", "c", "blue") not in pairs  # 'c' keeps red
    strict = [template_triplets(ids, caps, embed, max_triplets=50, seed=seed, min_similarity=0.99, per_caption=5)
              for seed in range(6)]
    assert not any(t.score < 0.99 for rep in strict for t in rep.triplets)
    assert any("below similarity 0.99" in r for rep in strict for r in rep.rejected)


def test_balancing_and_deduplication():
    rep = template_triplets(IDS, CAPTIONS, None, max_triplets=2, seed=0, per_caption=5)
    assert len(rep.triplets) == 2 and len({t.edit_type for t in rep.triplets}) == 2
    assert rep.rejected["over --max-triplets after balancing"] > 0


def test_scene_triplets_are_exact():
    from zscir_cli.data import shapes

    cfg = shapes.WorldConfig(seed=2)
    recs = [shapes.pair_record(cfg, "train", i) for i in range(400)]
    rep = scene_triplets([r["id"] for r in recs], [r["scene"] for r in recs], [r["caption"] for r in recs],
                         max_triplets=200, seed=0)
    by_id = {r["id"]: r for r in recs}
    assert len(rep.triplets) > 20 and len(rep.counts) >= 4
    for t in rep.triplets:
        assert t.source == "scene" and t.reference != t.target
        ref, tgt = by_id[t.reference]["scene"], by_id[t.target]["scene"]
        assert ref.signature() != tgt.signature()
        if t.edit_type == "background":
            assert tgt.background == t.new and tgt.objects and sorted(o.kind for o in tgt.objects) == \
                sorted(o.kind for o in ref.objects)


def test_no_triplet_shows_or_names_a_held_out_pair_or_a_val_or_test_query():
    """Both recipes train on the world's train scenes and training phrasings only: no image with
    a held-out colour-shape pair, no text naming one, no modification a val or test query asks."""
    from zscir_cli.data import shapes

    cfg = shapes.WorldConfig(seed=3, cir_queries=120)
    recs = [shapes.pair_record(cfg, "train", i) for i in range(1500)]
    ids, scenes, caps = [r["id"] for r in recs], [r["scene"] for r in recs], [r["caption"] for r in recs]
    scene_of = dict(zip(ids, scenes))
    asked = {q["modification"] for split in ("val", "test") for q in shapes.cir_split(cfg, split)[0]}
    reports = [scene_triplets(ids, scenes, caps, max_triplets=2000, seed=0),
               template_triplets(ids, caps, None, max_triplets=2000, seed=0)]
    assert all(len(r.triplets) > 100 for r in reports)
    for t in (t for r in reports for t in r.triplets):
        assert not (scene_of[t.reference].combos() | scene_of[t.target].combos()) & shapes.HELD_OUT
        text = " ".join((t.modification, t.reference_caption, t.target_caption))
        assert not [p for p in shapes.HELD_OUT if " ".join(p) in text], t
        assert t.modification not in asked


def test_malformed_triplet_files_name_the_line(tmp_path):
    good = {"reference": "a", "target": "b", "modification": "make it red", "dataset": "k"}
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(good) + "\n" + '{"reference": "a", "target": \n')
    with pytest.raises(UserError, match=r"t.jsonl:2: not valid JSON"):
        read_triplets(f)
    f.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "modification": " "}) + "\n")
    with pytest.raises(UserError, match=r"t.jsonl:3: missing or empty modification"):
        read_triplets(f)
    f.write_text("")
    with pytest.raises(UserError, match="holds no usable triplet"):
        read_triplets(f)
    with pytest.raises(UserError, match="Triplet file not found"):
        read_triplets(tmp_path / "none.jsonl")


def test_missing_images_are_named_or_skipped(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    f = tmp_path / "t.jsonl"
    rows = [{"reference": "a.png", "target": "b.png", "modification": "m"},
            {"reference": "a.png", "target": "gone.png", "modification": "m"}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(UserError, match=r"t.jsonl:2: target image not found: .*gone.png.*--skip-bad"):
        read_triplets(f)
    tf = read_triplets(f, skip_bad=True)
    assert len(tf.rows) == 1 and len(tf.skipped) == 1 and tf.rows[0]["reference"] == str(tmp_path / "a.png")


def test_image_paths_outside_the_file_folder_are_refused_before_any_is_opened(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png"):
        (data / name).write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"x")
    f = data / "t.jsonl"
    ok = {"reference": "a.png", "target": "b.png", "modification": "m"}
    for bad in ("../../etc/passwd", "/etc/passwd", "sub/../../outside.png"):
        f.write_text(json.dumps(ok) + "\n" + json.dumps({**ok, "target": bad}) + "\n")
        with pytest.raises(UserError, match=r"t.jsonl:2: target '.*' lies outside the triplet file's "
                                            r"folder .*--allow-outside-paths"):
            read_triplets(f)
    f.write_text(json.dumps({**ok, "target": "../outside.png"}) + "\n")
    tf = read_triplets(f, allow_outside=True)
    assert tf.rows[0]["target"] == str((tmp_path / "outside.png").resolve())
    f.write_text(json.dumps({**ok, "target": "./sub/../b.png"}) + "\n")  # climbs back in: fine
    assert read_triplets(f).rows[0]["target"] == str(data / "b.png")


def test_repeated_triplets_are_dropped_and_counted_or_refused_with_strict(tmp_path, caplog):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    f = tmp_path / "t.jsonl"
    row = {"reference": "a.png", "target": "b.png", "modification": "make it red"}
    rows = [row, {**row, "modification": "make it blue"}, row, {**row, "reference": "./a.png"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING", logger="zscir"):
        tf = read_triplets(f)
    assert len(tf.rows) == 2 and tf.duplicates == 2
    assert "dropped 2 repeated triplet(s)" in caplog.text
    with pytest.raises(UserError, match=r"t.jsonl:3: repeats the triplet of line 1"):
        read_triplets(f, strict=True)


def test_captions_outside_their_folder_are_refused_and_synth_writes_relative_paths(tmp_path, cli):
    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"image": "../x.png", "caption": "a red dress"}) + "\n")
    code, _, err = cli("synth", "--captions", caps, "--exact-only", "--cache-dir", tmp_path / "c")
    assert code == 2 and "caps.jsonl:1: image '../x.png' lies outside" in err
    caps.write_text("".join(json.dumps({"image": f"img/{i}.png", "caption": c}) + "\n"
                            for i, c in enumerate(CAPTIONS)))
    out = tmp_path / "t.jsonl"
    # every image the captions name must exist: no triplet file pointing at nothing
    code, _, err = cli("synth", "--captions", caps, "--exact-only", "--out", out, "--cache-dir", tmp_path / "c")
    assert code == 2 and f"names {len(CAPTIONS)} image(s) that do not exist (line 1: img/0.png; line 2:" in err
    assert not out.exists()
    (tmp_path / "img").mkdir()
    for i in range(len(CAPTIONS)):
        Image.new("RGB", (8, 8)).save(tmp_path / "img" / f"{i}.png")
    code, _, err = cli("synth", "--captions", caps, "--exact-only", "--out", out, "--cache-dir", tmp_path / "c")
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["reference"].startswith("img/") and r["target"].startswith("img/") for r in rows)
    assert len(read_triplets(out).rows) == len(rows)  # compose-train's reader takes the file as written


def test_write_triplets_refuses_images_gone_since_the_captions_were_read(tmp_path):
    from zscir_cli.data.synth import SynthReport, Triplet
    from zscir_cli.jobs.training.triplet_files import write_triplets

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (8, 8)).save(a)
    t = Triplet(str(a), str(b), "make it red", "x", "y", "replace", "blue", "red", 1.0, "template")
    report = SynthReport([t], Counter({"replace": 1}), Counter())
    out = tmp_path / "t.jsonl"
    with pytest.raises(UserError, match=r"1 image\(s\) of the triplets do not exist: .*b\.png"):
        write_triplets(report, out, None)
    assert not out.exists()
    Image.new("RGB", (8, 8)).save(b)
    write_triplets(report, out, None)
    assert json.loads(out.read_text())["target"] == "b.png"


SHAPE_CAPTIONS = [
    "a small green circle on a white background",  # 0
    "a small green triangle on a white background",  # 1: 0 with the circle replaced, not added to
    "a small green circle and a large red star on a white background",  # 2: 0 with a red star added
    "a large red star on a black background",  # 3
    "a large black star on a white background",  # 4 (no scene here has a black object otherwise)
    "a small red circle on a black background",  # 5: 0 recoloured red, background black too
    "a small red circle on a white background",  # 6: 0 recoloured red
]


def _bag_embed(texts):
    return _bag_of_words(texts, SHAPE_CAPTIONS)


def test_match_content_keeps_the_reference_objects_and_the_background():
    ids = [f"s{i}" for i in range(len(SHAPE_CAPTIONS))]
    got = {"words": set(), "content": set()}
    for match in got:
        for seed in range(40):
            rep = template_triplets(ids, SHAPE_CAPTIONS, _bag_embed, max_triplets=100, seed=seed,
                                    min_similarity=0.3, per_caption=5, match=match)
            got[match] |= {(t.reference, t.target, t.edit_type, t.new) for t in rep.triplets}
    # words: an 'add' whose target lost the reference's circle, a recolouring that changed the background
    wrong = {("s0", "s1", "add"), ("s0", "s5", "replace")}
    assert wrong & {k[:3] for k in got["words"]}
    # content: the target names the edited caption's objects and colours, up to word order
    assert not wrong & {k[:3] for k in got["content"]}
    assert ("s0", "s2", "add", "large red star") in got["content"]  # the added object has the caption's modifiers
    assert ("s0", "s6", "replace", "red") in got["content"]
    for t in (t for seed in range(5) for t in template_triplets(
            ids, SHAPE_CAPTIONS, _bag_embed, max_triplets=100, seed=seed, min_similarity=0.3, per_caption=5,
            match="content").triplets):
        assert t.new not in ("white", "black") or t.edit_type == "background"  # background colours stay backgrounds


def test_unknown_match_is_refused():
    with pytest.raises(ValueError, match="unknown match"):
        template_triplets(IDS, CAPTIONS, None, max_triplets=5, match="exact")


def test_a_size_edit_is_also_asked_for_by_comparison_and_no_other_edit_is():
    from zscir_cli.data.synth import VOCAB, comparative

    assert [comparative(*pair) for pair in (("small", "large"), ("large", "small"), ("huge", "big"),
                                            ("tiny", "small"), ("long", "short"), ("big", "large"),
                                            ("small", "short"), ("red", "blue"))] == \
        ["bigger", "smaller", "smaller", "bigger", "shorter", "", "", ""]
    asked: dict[tuple[str, str], set[str]] = {}
    for caption in ("a small red dog", "a red dress with long sleeves"):
        for seed in range(1000):
            for c in propose_edits(0, caption, np.random.default_rng(seed), per_caption=5):
                if c.edit_type == "replace":
                    asked.setdefault((c.old, c.new), set()).add(c.modification)
    words = {"smaller", "bigger", "shorter", "longer"}
    for (old, new), texts in asked.items():
        said = {w for t in texts for w in t.split() if w in words}
        if comparative(old, new):  # e.g. small -> large: 'make it bigger', and by the value itself too
            assert said == {comparative(old, new)} and any(new in t.split() for t in texts), (old, new, texts)
        else:  # a colour, small -> long (another scale), ...
            assert not said, (old, new, texts)
    assert {("small", "large"), ("small", "tiny"), ("long", "short")} <= set(asked)
    assert any(old in VOCAB["colour"] for old, _ in asked)


def test_a_removal_names_the_object_so_that_it_is_the_one_removed():
    import re

    from zscir_cli.data.synth import unique_name

    def named(caption: str, k: int) -> str:  # the k-th object noun of the caption
        words = caption.split()
        return unique_name(words, [i for i, w in enumerate(words) if w in ("circle", "square")][k])

    assert named("a small red circle and a large blue square", 0) == "circle"
    assert named("a small red circle and a large blue circle", 1) == "blue circle"  # colour first
    assert named("a small red circle and a large red circle", 0) == "small circle"
    assert named("a big red circle and a large red circle", 0) == "big red circle"  # big and large say the same
    assert named("a red circle and two blue circles", 0) == "red circle"  # a plural shares the noun
    assert named("a small red circle and a small red circle", 1) == "small red circle"  # nothing tells them apart
    # every removal the template recipe writes names the removed object by one of these: its
    # shortest unique name, or its whole phrase ('remove the {phrase}')
    caption = "a small red circle, a large red circle and a small blue square on a gray background"
    allowed = {"small red circle": {"small circle", "small red circle"},
               "large red circle": {"large circle", "large red circle"},
               "small blue square": {"square", "small blue square"}}
    name = re.compile(r"(?:(?:small|large|red|blue) )*(?:circle|square)")
    said: dict[str, set[str]] = {}
    for seed in range(300):
        for c in propose_edits(0, caption, np.random.default_rng(seed), per_caption=5):
            if c.edit_type == "remove":
                said.setdefault(c.old, set()).update(name.findall(c.modification))
    assert said == allowed  # each name drawn, and no other ('the circle' of two, another's name)


def test_a_word_has_its_category_and_background_none():
    from zscir_cli.data.synth import VOCAB, _category

    assert [_category(w) for w in ("red", "circle", "small", "two", "striped", "background", "blue-ish")] == \
        ["colour", "object", "size", "count", "pattern", None, None]
    assert all(_category(w) == cat for cat, words in VOCAB.items() if cat != "background" for w in words)
