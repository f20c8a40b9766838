"""Synthetic triplets (reference, modification, target) from captions, without a language model.

Two recipes:

- template (any captioned corpus): find editable spans with vocabularies, edit one (replace a
  value, add an object, remove an object, change a count), write the modification from a
  template drawn per edit type, and choose the target: the corpus image whose normalised
  caption equals the edited one, else the nearest caption by text embedding, accepted only
  above a similarity threshold, only if it holds the new word and lacks the old one.
- scene (the shapes world, `data.shapes.triplets`): exact triplets from the scene graph, worded
  with the same templates.

This module never imports the model: the nearest-caption search takes an `embed` function.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from zscir_cli.data.templates import write

VOCAB: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "grey",
               "pink", "brown", "beige", "navy", "teal", "gold", "silver", "maroon"),
    "material": ("cotton", "leather", "denim", "silk", "wool", "linen", "lace", "velvet", "satin",
                 "wooden", "metal", "glass", "plastic", "stone"),
    "pattern": ("striped", "floral", "plaid", "checkered", "dotted", "solid", "printed", "paisley"),
    "size": ("small", "large", "big", "tiny", "huge", "long", "short"),
    "count": ("two", "three", "four", "five", "six"),
    "object": ("circle", "square", "triangle", "star", "cross", "dog", "cat", "car", "bird", "horse",
               "person", "man", "woman", "child", "tree", "flower", "chair", "table", "cup", "bottle",
               "ball", "boat", "bicycle", "bag", "hat", "shoe"),
    "garment_part": ("sleeves", "collar", "neckline", "buttons", "pockets", "hood", "zipper", "belt"),
    "background": ("background",),  # marks '<value> background' spans
}
# a size edit is also asked for by comparison ('make it bigger'): the scales its values lie on,
# ranked, and the comparatives people say most for going down or up one
SCALES: dict[tuple[str, str], dict[str, int]] = {
    ("smaller", "bigger"): {"tiny": 0, "small": 1, "big": 2, "large": 2, "huge": 3},
    ("shorter", "longer"): {"short": 0, "long": 1},
}
# which categories a 'replace' edit may swap within
REPLACEABLE = ("colour", "material", "pattern", "size", "object", "count")
# grey/gray and big/large are synonyms: never swap one for the other
SYNONYMS = [{"gray", "grey"}, {"big", "large"}]

EDIT_TYPES = ("replace", "background", "count", "add", "remove")
# Bump when a change here changes the triplets a corpus and seed give: it is part of every
# triplet artifact's key, so triplets of an older recipe are never reused.
# 6: a removed object named so that it is the one (`unique_name`); 5: size edits asked for by
# comparison too; 4: object-naming templates inside frames
SYNTH_VERSION = 6
MATCHES = ("words", "content")  # how a nearest caption is accepted as a target (see `_accepts`)
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


def normalise(caption: str) -> str:
    """Lower case, punctuation to spaces, single spaces: the key of exact target matching."""
    return " ".join(_WORD.findall(caption.lower()))


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


# a word's category, looked up for every word of every caption matched on: its first in VOCAB
# (assigned last, as the categories are read in reverse)
_CATEGORY = {w: cat for cat, words in reversed(VOCAB.items()) if cat != "background" for w in words}


def _category(word: str) -> str | None:
    return _CATEGORY.get(word)


def comparative(old: str, new: str) -> str:
    """How a change from size `old` to `new` is asked for by comparison: 'bigger' for small ->
    large, 'smaller' for huge -> big; '' when the two lie on different scales (small -> long) or
    on none, or rank the same."""
    for words, rank in SCALES.items():
        if old in rank and new in rank and rank[old] != rank[new]:
            return words[rank[new] > rank[old]]
    return ""


def _synonyms(a: str, b: str) -> bool:
    return a == b or any(a in s and b in s for s in SYNONYMS)


@dataclass
class Candidate:
    """An edited caption waiting for its target."""

    ref: int  # corpus row of the reference
    edit_type: str
    old: str
    new: str
    edited: str  # the edited caption
    modification: str


@dataclass
class Triplet:
    reference: str
    target: str
    modification: str
    reference_caption: str
    target_caption: str
    edit_type: str
    old: str
    new: str
    score: float  # 1.0 for an exact match, else the caption similarity
    source: str  # template | scene
    recipe: str = ""  # template/words, template/content (the target's acceptance) or scene

    def to_json(self) -> dict:
        return asdict(self)


def corpus_vocab(normalised: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The vocabularies restricted to words the corpus holds: an edit towards a value that no
    caption has can never find a target. A colour word seen only as '<colour> background' is a
    background colour, not an object's ('make it black' on a world with black backgrounds only);
    'background_colour' holds the colours seen before 'background'."""
    present, backgrounds = set(), set()
    for c in normalised:
        words = c.split()
        for i, w in enumerate(words):
            (backgrounds if i + 1 < len(words) and words[i + 1] == "background" else present).add(w)
    out = {cat: tuple(w for w in words if w in present) for cat, words in VOCAB.items()}
    out["background_colour"] = tuple(w for w in VOCAB["colour"] if w in backgrounds)
    return out


MODIFIERS = ("colour", "size", "material", "pattern")  # words that may precede an object noun


@dataclass(frozen=True)
class Content:
    """What a caption says, up to word order: its object phrases (an object noun with the
    modifiers right before it, e.g. 'small red circle') and the colour words outside them (a
    background's: 'on a white background', 'on white')."""

    objects: tuple[str, ...]  # sorted
    colours: tuple[str, ...]  # sorted

    @staticmethod
    def of(words: Sequence[str]) -> Content:
        phrases, inside = [], set()
        for j, w in enumerate(words):
            if _category(w) == "object":
                k = j
                while k > 0 and _category(words[k - 1]) in MODIFIERS:
                    k -= 1
                phrases.append(" ".join(words[k:j + 1]))
                inside.update(range(k, j + 1))
        free = [w for i, w in enumerate(words) if i not in inside and _category(w) == "colour"]
        return Content(tuple(sorted(phrases)), tuple(sorted(free)))


def _fix_articles(words: list[str]) -> list[str]:
    out = list(words)
    for i in range(len(out) - 1):
        if out[i] in ("a", "an"):
            out[i] = "an" if out[i + 1][:1] in "aeiou" else "a"
    return out


def unique_name(words: list[str], j: int) -> str:
    """The shortest description that picks out the object whose noun is at `j` among the
    caption's objects, as people name one: its noun when no other object shares it ('remove the
    circle'; 'circles' shares it too), else its noun with one modifier that no other such object
    has, nor a synonym of it (big/large), colour first ('the red circle' beside a blue one), else
    its whole phrase (which tells two 'red circles' apart no better, though either removed leaves
    the same caption)."""
    def phrase(k: int) -> list[str]:
        start = k
        while start > 0 and _category(words[start - 1]) in MODIFIERS:
            start -= 1
        return words[start:k]
    noun = words[j]
    others = [phrase(k) for k, w in enumerate(words) if w in (noun, noun + "s", noun + "es") and k != j]
    if not others:
        return noun
    mods = phrase(j)
    for cat in MODIFIERS:
        for m in mods:
            if _category(m) == cat and not any(_synonyms(m, x) for o in others for x in o):
                return f"{m} {noun}"
    return " ".join([*mods, noun])


def _head_noun(words: list[str], i: int) -> str:
    """The object noun that the value at `i` modifies ('small red circle': circle), or ''."""
    j = i + 1
    while j < len(words) and _category(words[j]) in MODIFIERS:
        j += 1
    return words[j] if j < len(words) and _category(words[j]) == "object" else ""


def propose_edits(row: int, caption: str, rng: np.random.Generator, per_caption: int = 3,
                  vocab: dict[str, tuple[str, ...]] | None = None) -> list[Candidate]:
    """Up to `per_caption` edits of one caption, of different types where possible."""
    vocab = vocab or VOCAB
    words = normalise(caption).split()
    out: dict[str, Candidate] = {}
    spans = [(i, w, _category(w)) for i, w in enumerate(words)]
    # replace a value (colour, material, pattern, size, object, count)
    values = [(i, w, c) for i, w, c in spans if c in REPLACEABLE and c != "count"
              and not (i + 1 < len(words) and words[i + 1] == "background")]
    if values:
        i, old, cat = values[int(rng.integers(len(values)))]
        choices = [w for w in vocab[cat] if not _synonyms(w, old) and w not in words]
        if choices:
            new = choices[int(rng.integers(len(choices)))]
            edited = " ".join(_fix_articles(words[:i] + [new] + words[i + 1:]))
            kind = "replace_object" if cat == "object" else "replace"
            slots = {"old": old, "new": new, "noun": _head_noun(words, i) if cat != "object" else "",
                     "comparative": comparative(old, new) if cat == "size" else ""}
            out["replace"] = Candidate(row, "replace", old, new, edited, write(rng, kind, slots))
    # the background's value
    bg = [i for i, w in enumerate(words) if w == "background" and i > 0 and _category(words[i - 1]) == "colour"]
    if bg:
        i = bg[0] - 1
        old = words[i]
        choices = [w for w in vocab.get("background_colour", vocab["colour"]) if not _synonyms(w, old) and w != old]
        if choices:
            new = choices[int(rng.integers(len(choices)))]
            out["background"] = Candidate(row, "background", old, new,
                                          " ".join(_fix_articles(words[:i] + [new] + words[i + 1:])),
                                          write(rng, "background", {"old": old, "new": new}))
    # a count followed by a plural noun
    counts = [i for i, w in enumerate(words[:-1]) if w in VOCAB["count"]]
    count_choices = [w for w in vocab["count"] if counts and w != words[counts[0]]]
    if counts and count_choices:
        i = counts[0]
        old = words[i]
        new = count_choices[int(rng.integers(len(count_choices)))]
        out["count"] = Candidate(row, "count", old, new, " ".join(words[:i] + [new] + words[i + 1:]),
                                 write(rng, "count", {"old": old, "new": new, "noun": words[i + 1]}))
    # remove one phrase of an 'A, B and C' list: the phrase of an object noun with its modifiers
    objects = [i for i, w, c in spans if c == "object"]
    if len(objects) >= 2:
        k = int(rng.integers(len(objects)))
        end = objects[k]
        start = end
        while start > 0 and words[start - 1] not in ("and", "with") and _category(words[start - 1]) is not None \
                or (start > 0 and words[start - 1] in ("a", "an")):
            start -= 1
            if words[start] in ("a", "an"):
                break
        rest = words[:start] + words[end + 1:]
        rest = [w for j, w in enumerate(rest) if not (w == "and" and (j == 0 or j == len(rest) - 1 or rest[j - 1] == "and"))]
        phrase = " ".join(w for w in words[start:end + 1] if w not in ("a", "an"))
        out["remove"] = Candidate(row, "remove", phrase, "", " ".join(rest),
                                  write(rng, "remove", {"obj": unique_name(words, end), "phrase": phrase}))
    # add an object phrase before 'on a ... background' (or at the end), with the modifiers the
    # caption's first object phrase has ('a small red circle' -> add 'a large green star')
    obj = vocab["object"][int(rng.integers(len(vocab["object"])))] if vocab["object"] else None
    first = Content.of(words).objects
    kinds = [_category(w) for w in first[0].split()[:-1]] if first else ["colour"]
    if obj is not None and obj not in words and all(vocab.get(k) for k in kinds):
        phrase = " ".join([vocab[k][int(rng.integers(len(vocab[k])))] for k in kinds] + [obj])
        cut = words.index("on") if "on" in words else len(words)
        edited = words[:cut] + ["and", *_article(phrase).split()] + words[cut:]
        out["add"] = Candidate(row, "add", "", phrase, " ".join(edited), write(rng, "add", {"a_obj": _article(phrase)}))
    picked = list(out.values())
    rng.shuffle(picked)
    return picked[:per_caption]


@dataclass
class SynthReport:
    triplets: list[Triplet]
    counts: Counter  # kept, by edit type
    rejected: Counter  # by reason


def template_triplets(ids: Sequence[str], captions: Sequence[str],
                      embed: Callable[[list[str]], np.ndarray] | None, *, max_triplets: int, seed: int = 0,
                      min_similarity: float = 0.9, per_caption: int = 3, match: str = "words",
                      progress: Callable[[int], None] | None = None) -> SynthReport:
    """The caption-template recipe. `embed` maps texts to L2-normalised rows (None: exact only);
    `match`: how a nearest caption is accepted as the target (see `_accepts`)."""
    if match not in MATCHES:
        raise ValueError(f"unknown match '{match}': {' or '.join(MATCHES)}")
    rng = np.random.default_rng(seed)
    norm = [normalise(c) for c in captions]
    exact: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(norm):
        exact[c].append(i)
    rejected: Counter = Counter()
    cands: list[Candidate] = []
    vocab = corpus_vocab(norm)
    for row, cap in enumerate(captions):
        got = propose_edits(row, cap, rng, per_caption, vocab)
        if not got:
            rejected["no editable span"] += 1
        cands.extend(got)
    corpus = embed(list(norm)) if embed is not None else None
    pending = [c for c in cands if not exact.get(c.edited)]
    sims: dict[int, tuple[int, float]] = {}
    contents: dict[str, Content] = {}  # each caption parsed once: captions repeat, and are nearest to many edits
    if corpus is not None and pending:
        for s in range(0, len(pending), 1024):
            chunk = pending[s:s + 1024]
            q = embed([c.edited for c in chunk])
            scores = q @ corpus.T  # (chunk, N)
            top = min(8, scores.shape[1])
            best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
            order = np.take_along_axis(scores, best, axis=1).argsort(axis=1)[:, ::-1]
            best = np.take_along_axis(best, order, axis=1)  # the 8 nearest, nearest first
            for j, c in enumerate(chunk):
                sims[id(c)] = next(((int(b), float(scores[j, b])) for b in best[j] if _accepts(c, norm[b], match, contents)),
                                   (-1, float(scores[j, best[j, 0]])))
            if progress:
                progress(len(chunk))
    by_type: dict[str, list[Triplet]] = defaultdict(list)
    seen: set[tuple[str, str, str]] = set()
    for c in cands:
        matches = [m for m in exact.get(c.edited, []) if m != c.ref]
        if matches:
            tgt, score = matches[int(rng.integers(len(matches)))], 1.0
        elif corpus is None:
            rejected["no exact target"] += 1
            continue
        else:
            tgt, score = sims[id(c)]
            if tgt < 0:
                rejected["nearest captions lack the new word or keep the old one"] += 1
                continue
            if score < min_similarity:
                rejected[f"nearest caption below similarity {min_similarity}"] += 1
                continue
            if tgt == c.ref:
                rejected["target is the reference"] += 1
                continue
        key = (ids[c.ref], ids[tgt], c.modification)
        if key in seen:
            rejected["duplicate"] += 1
            continue
        seen.add(key)
        by_type[c.edit_type].append(Triplet(ids[c.ref], ids[tgt], c.modification, captions[c.ref], captions[tgt],
                                            c.edit_type, c.old, c.new, round(score, 4), "template",
                                            f"template/{match}"))
    return balance(by_type, max_triplets, rng, rejected)


def _accepts(c: Candidate, target_norm: str, match: str = "words",
             contents: dict[str, Content] | None = None) -> bool:
    """Whether a nearest caption may be the target of edit `c`.

    words (the paper's low-quality recipe): the target shows the new value and not the old
    one, phrases checked as phrases where a word alone would mislead ('purple background', not
    any purple object). It accepts targets that lost or gained other objects.
    content: when the edited caption names objects of the vocabulary, the target must say the
    same up to word order (`Content`): the same object phrases (an 'add' keeps the reference's
    objects, a 'remove' removes only the one, a colour goes to the object and not to the
    background) and the same free colour words; otherwise as words. `contents` remembers the
    parsed captions across calls."""
    memo = {} if contents is None else contents
    for text in ((c.edited, target_norm) if match == "content" else ()):
        if text not in memo:
            memo[text] = Content.of(text.split())
    want = memo[c.edited] if match == "content" else None
    if want is not None and want.objects:
        return memo[target_norm] == want
    padded = f" {target_norm} "
    words = set(target_norm.split())
    if c.edit_type == "background":
        return f" {c.new} background " in padded and f" {c.old} background " not in padded
    if c.edit_type == "add":
        return f" {c.new} " in padded
    if c.edit_type == "remove":
        return c.old.split()[-1] not in words
    return all(w in words for w in c.new.split()) and c.old not in words


def balance(by_type: dict[str, list[Triplet]], max_triplets: int, rng: np.random.Generator,
             rejected: Counter) -> SynthReport:
    """Round-robin over edit types so that no type dominates; the rest is counted as 'over budget'."""
    for items in by_type.values():
        rng.shuffle(items)
    kept: list[Triplet] = []
    queues = {k: list(v) for k, v in sorted(by_type.items())}
    while len(kept) < max_triplets and any(queues.values()):
        for k in list(queues):
            if queues[k] and len(kept) < max_triplets:
                kept.append(queues[k].pop())
    over = sum(len(v) for v in queues.values())
    if over:
        rejected["over --max-triplets after balancing"] += over
    return SynthReport(kept, Counter(t.edit_type for t in kept), rejected)
