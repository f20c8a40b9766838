"""The lab's wording is held out: no three consecutive fixed words of a val or test phrasing occur
in any training source, yet the base CLIP has seen every one of their words, many times."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from zscir_cli.data import shapes
from zscir_cli.data.shapes import wording
from zscir_cli.data.templates import framed

PRETRAIN_STEPS = 150  # a sixth of the default stream (900 steps of 64): its counts are lower bounds


@pytest.fixture(scope="module")
def pretraining_captions() -> list[str]:
    out = []
    for step in range(PRETRAIN_STEPS):
        out += shapes.pretrain_batch(0, 0, step, 64, 0.5)[2]
    return out


def _ngrams(templates) -> set[tuple[str, ...]]:
    return set().union(*(wording.fixed_ngrams(t) for t in templates))


TRAINING_TEMPLATES = [t for ts in shapes.PHRASINGS["train"].values() for t in ts] + \
    framed() + list(shapes.CAPTIONS)


@pytest.mark.parametrize("family,other", [("val", "test"), ("test", "val")])
@pytest.mark.parametrize("edit_type", shapes.EDIT_TYPES)
def test_no_three_fixed_words_of_a_held_out_phrasing_occur_in_a_training_source(
        family, other, edit_type, pretraining_captions):
    training = _ngrams(TRAINING_TEMPLATES)
    others = _ngrams(t for ts in shapes.PHRASINGS[other].values() for t in ts)
    captions = set().union(*(wording.ngrams(wording.words(c)) for c in pretraining_captions))
    sequences = {tuple(wording.words(wording._SLOT.sub(" ", t))) for t in TRAINING_TEMPLATES}
    for template in shapes.PHRASINGS[family][edit_type]:
        grams = wording.fixed_ngrams(template)
        # one with fewer than three fixed words ("{comparative} {ref}, please") is no training one
        assert tuple(wording.words(wording._SLOT.sub(" ", template))) not in sequences, template
        assert not grams & training, (template, grams & training)
        assert not grams & others, (template, grams & others)
        assert not grams & captions, (template, grams & captions)


def test_every_word_of_the_held_out_phrasings_is_in_the_pretraining_captions(pretraining_captions):
    counts = Counter(w for c in pretraining_captions for w in wording.words(c))
    needed = {w for fam in ("val", "test") for ts in shapes.PHRASINGS[fam].values() for t in ts
              for w in wording.fixed_words(t)} | {"bigger", "smaller"}  # {comparative}'s values
    assert {w: counts[w] for w in needed if counts[w] < 50} == {}


def test_the_pretraining_captions_never_ask_for_an_edit(pretraining_captions):
    """The edit words are seen inside descriptions: no caption is a phrasing of any family."""
    rng = np.random.default_rng(0)
    scene = shapes.Scene("white", (shapes.Obj("red", "circle", "large", 0), shapes.Obj("blue", "star", "small", 1)))
    asked = {shapes.phrase(e.edit_type, e.slots, fam, rng) for fam in shapes.FAMILIES
             for e in (shapes.apply_edit(rng, scene, t) for t in shapes.EDIT_TYPES for _ in range(20))}
    assert not asked & set(pretraining_captions)
    assert any(" is bigger than " in c for c in pretraining_captions)  # comparisons and absences
    assert any(c.endswith(" is gone") for c in pretraining_captions)   # are described, though


def test_fixed_ngrams_read_across_slots_too():
    assert wording.fixed_ngrams("could you colour the {ref} {new}?") == {
        ("could", "you", "colour"), ("you", "colour", "the")}
    assert ("but", "no", "please") in wording.fixed_ngrams("same picture but no {ref}, please")
    assert wording.words("I'd like it, please!") == ["i", "d", "like", "it", "please"]


def test_a_query_keeps_its_slots_and_any_family_can_ask_it():
    queries, _ = shapes.cir_split(shapes.WorldConfig(seed=2, cir_queries=24), "test")
    import json

    for q in queries:
        slots = json.loads(q["slots"])
        rng = np.random.default_rng(0)
        texts = {fam: shapes.phrase(q["edit_type"], slots, fam, rng) for fam in shapes.FAMILIES}
        assert len(set(texts.values())) == 3
        if q["edit_type"] in ("colour", "shape", "background"):  # every phrasing names the new value
            assert all(q["new"] in t for t in texts.values())
    assert all(q["family"] == "test" for q in queries)
