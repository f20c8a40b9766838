"""The world's language: captions of scenes, and the sentences that ask for an edit.

Captions. A stored image-caption pair (the corpus Stage I and `zscir synth` read) has a plain
caption from `CAPTIONS`; a gallery image has the first of them. The base CLIP is pretrained on a
wider stream (`web_caption`): plain captions, and descriptions framed as people write them on
the web ("you can see ...", "a set of shapes on gray: ...") with clauses that compare sizes or
name what is absent. So the base CLIP has seen every word of the val and test phrasings (below)
many times, in ordinary descriptions, but never a sentence that asks for an edit.

Phrasings. The modification texts of an edit come in three disjoint families:

- train: `zscir synth`'s caption-edit templates, which also word the scene-graph triplets;
- val: the CIR val split's queries, for choosing every default;
- test: the CIR test split's queries.

Val and test are written as people write modifications (varied verbs and word order, "same
image, only ...", "let's see ...", polite forms), each in its own words, so that val can tell
how a setting copes with wording it was not trained on.

No three consecutive fixed words (slots removed) of a val or test phrasing occur in a train
phrasing, in `synth`'s caption templates, in the other held-out family or in any pretraining
caption (`fixed_ngrams`; tested). A prepared query keeps its edit's slots, so any family (or any
other wording) can ask it again (`phrase`).
"""

from __future__ import annotations

import re
import string

import numpy as np

from zscir_cli.data.shapes.edits import reference_phrase, with_article
from zscir_cli.data.shapes.scene import SHAPES, Scene, pick
from zscir_cli.data.templates import TEMPLATES, write

# -- captions ------------------------------------------------------------------------------------

CAPTIONS = (
    "{objects} on a {background} background",
    "a {background} background with {objects}",
    "a picture of {objects} on {background}",
    "{objects}, {background} background",
)
# descriptions as found on the web, for the pretraining stream only
WEB_FRAMINGS = (
    "you can see {objects} on a {background} background",
    "i drew {objects} on {background}, as a child would",
    "shapes like {objects}, all on a {background} background",
    "{objects} put together on a {background} backdrop",
    "a set of shapes on {background}: {objects}",
    "{objects} against a plain {background} backdrop",
    "in this picture: {objects} on {background}",
    "{objects} with {background} behind everything",
    "please share: {objects} on a {background} background",
    "the same {background} background, now with {objects}",
    "{objects}; there is also a {background} background",
    "{objects} next to each other on {background}",
    "{objects} where the background is {background}",
    "{objects} on {background}, which was easy to make",
    "a bit of colour: {objects} on {background}",
    "this could become a pattern: {objects} on {background}",
    "{objects} on {background}; leave a comment",
    "{objects} on {background}, ready to go",
    "shapes to cut out: {objects} on {background}",
    "{objects} on {background}, so simple it needs no words",
    "{objects} on {background}, from a sticker swap",
    "{objects} on {background}, made for kids",
    "{objects}, each in its place on a {background} background",
    "the picture has {objects} on {background}",
    "{objects} on {background}, as it should be",
    "{objects} on {background}; nice colours too",
    "{objects} on {background}, well drawn",
    "let me show you {objects} on {background}",
    "we have {objects} on a {background} background",
    "brightly coloured shapes: {objects} on {background}",
    "{objects} on {background}, the shapes used in class",
    "a rather simple picture of {objects} on {background}",
    "{objects} on {background}; they look nice",
    "{objects} appear on a {background} background",
    "a picture taken of {objects} on {background}",
    "{objects} on {background}, simple but nice",
    "this time: {objects} on {background}",
    "{objects} on {background}, better than before",
    "{objects} on {background}; nothing to lose",
    "{objects} on {background}, minus the clutter",
    "{objects} on {background}, a drop of colour",
    "{objects} alongside each other on {background}",
    "{objects} on {background}, spot the difference",
    "each shape sits on {background}: {objects}",
    "{objects} on {background}, colours added by hand",
    "you get {objects} on {background}",
    "{objects} on {background} instead of on paper",
    "an image of {objects} on {background}",
    "only {objects} on {background}",
    "let's look at {objects} on {background}",
    "{objects} on {background}, not a photo but a drawing",
    "{objects} on {background}, and that is all",
)
COMPARISONS = ("the {big} is bigger than the {small}", "the {small} is smaller than the {big}")
ABSENCES = ("no {absent}", "without any {absent}", "and the {absent} is gone", "with {a_absent} missing")
WEB_SHARE = 0.5  # of pretraining captions framed as on the web (the rest: plain captions)
CLAUSE_SHARE = 0.3  # of web captions followed by a comparison, and again by an absence


def join_phrases(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _objects(scene: Scene) -> str:
    return join_phrases([with_article(o.phrase()) for o in scene.objects])


def caption(scene: Scene, template: int = 0) -> str:
    return CAPTIONS[template % len(CAPTIONS)].format(objects=_objects(scene), background=scene.background)


def web_caption(scene: Scene, rng: np.random.Generator, absent: list[str], named: str | None = None) -> str:
    """A pretraining caption of `scene` (see the module's doc); `absent` are the object phrases
    an absence clause may name (never one of the world's held-out colour-shape pairs); `named`,
    when given, is one the caption must say is absent."""
    if named is None and rng.random() >= WEB_SHARE:
        return caption(scene, int(rng.integers(len(CAPTIONS))))
    text = pick(rng, WEB_FRAMINGS).format(objects=_objects(scene), background=scene.background)
    sizes = {o.size: o for o in scene.objects}
    if rng.random() < CLAUSE_SHARE and len(sizes) == 2:
        big, small = (reference_phrase(scene, sizes[s]) for s in ("large", "small"))
        text += ", " + pick(rng, COMPARISONS).format(big=big, small=small)
    if named is not None or (rng.random() < CLAUSE_SHARE and absent):
        gone = named or pick(rng, absent)
        text += ", " + pick(rng, ABSENCES).format(absent=gone, a_absent=with_article(gone))
    return text


def absent_phrases(scene: Scene, allowed: set[tuple[str, str]]) -> list[str]:
    """What a caption may say is not in `scene`: a shape it lacks, or a colour-shape pair among
    `allowed` that it lacks."""
    shapes = [s for s in SHAPES if all(o.shape != s for o in scene.objects)]
    pairs = [f"{c} {s}" for c, s in sorted(allowed) if (c, s) not in scene.combos()]
    return shapes + pairs


# -- phrasings of edits --------------------------------------------------------------------------

FAMILIES = ("train", "val", "test")
# the world's edits worded as `zscir synth` words caption edits (`data.templates`), so that every
# training triplet, of either recipe, speaks one language
SYNTH_KINDS = {"colour": "replace", "size": "replace", "shape": "replace_object", "background": "background",
               "add": "add", "remove": "remove"}
PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {edit: TEMPLATES[kind] for edit, kind in SYNTH_KINDS.items()},
    "val": {
        "colour": ("same image, only the {ref} {new}", "can we get the {ref} in {new} instead",
                   "let's see the {ref} {new} this time", "the {ref} would look better in {new}"),
        "shape": ("same image, only {a_colour_new} where the {ref} sits", "can we get {a_new} in that spot",
                  "let's see {a_new} this time, not the {ref}", "the {ref} would be better as {a_new}"),
        "size": ("same image, only the {ref} {new}", "can we get the {ref} {comparative}",
                 "let's see a {new} {ref} this time", "the {ref} would be better {new}"),
        "add": ("same image, only with {a_obj} added", "can we get {a_obj} in there too",
                "let's see {a_obj} alongside", "it would be better with {a_obj}"),
        "remove": ("same image, only the {ref} is missing", "can we drop the {ref}", "let's lose the {ref}",
                   "it would be better minus the {ref}"),
        "background": ("same image, only on {new}", "can we get {a_new} background instead",
                       "let's see it on {new} this time", "it would be better against {new}"),
    },
    "test": {
        "colour": ("same picture but the {ref} is {new}", "could you colour the {ref} {new}?",
                   "the {ref} needs to be {new}", "i would like the {ref} in {new}",
                   "{new} for the {ref}, please"),
        "shape": ("same picture but {a_new} where the {ref} is", "could you swap the {ref} for {a_new}?",
                  "i would like {a_new} in place of the {ref}", "the {ref} needs to become {a_new}",
                  "{a_colour_new} where the {ref} was, please"),
        "size": ("same picture but the {ref} is {new}", "could you make the {ref} a bit {comparative}?",
                 "the {ref} is too {old}", "i would like a {new} {ref}", "{comparative} {ref}, please"),
        "add": ("same picture but with {a_obj} too", "could you put {a_obj} next to it?",
                "i would like {a_obj} as well", "there should also be {a_obj}", "{a_obj} next to it, please"),
        "remove": ("same picture but no {ref}", "could you leave out the {ref}?", "i would like the {ref} gone",
                   "the {ref} has to go", "no {ref}, please"),
        "background": ("same picture but on {a_new} backdrop", "could you set the backdrop to {new}?",
                       "i would like {a_new} backdrop", "the backdrop needs to be {new}",
                       "{new} behind everything, please"),
    },
}


def phrase(edit_type: str, slots: dict[str, str], family: str, rng: np.random.Generator) -> str:
    """A sentence asking for the edit, drawn from `family`'s phrasings of `edit_type` (those whose
    slots the edit fills: every val and test phrasing, the training ones it has values for)."""
    if family == "train":
        return write(rng, SYNTH_KINDS[edit_type], slots)
    return pick(rng, PHRASINGS[family][edit_type]).format(**slots)


# -- checking wording --------------------------------------------------------------------------

_SLOT = re.compile(r"\{[a-z_]+\}")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped (an apostrophe splits: "i'd" -> i, d)."""
    return text.lower().translate(_PUNCT).split()


def ngrams(tokens: list[str], n: int = 3) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def fixed_ngrams(template: str, n: int = 3) -> set[tuple[str, ...]]:
    """The n-grams of a template's fixed words: within each stretch between slots, and across
    the slots once they are removed (the stricter reading)."""
    stretches = [words(part) for part in _SLOT.split(template)]
    out = set().union(*(ngrams(s, n) for s in stretches))
    return out | ngrams([w for s in stretches for w in s], n)


def fixed_words(template: str) -> set[str]:
    return set(words(_SLOT.sub(" ", template)))

