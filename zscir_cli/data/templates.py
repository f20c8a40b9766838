"""The training side's sentences for an edit: the templates `zscir synth` writes modifications
with, per kind of caption edit. The shapes world words its scene-graph triplets with the same
templates (`shapes.wording`), so every training triplet, of either recipe, speaks one language,
and the world's val and test phrasings share no three fixed words with any of these (tested).

Slots: {old} and {new} are the values an edit swaps (a colour, a size, an object noun, a count);
{noun} the object noun a swapped value belongs to ("red circle": circle); {a_obj} an added
object phrase with its article; {obj} a removed object as people name one: its noun or, when
another object shares the noun, the noun with a modifier that tells them apart
(`synth.unique_name`); {phrase} its whole phrase ("small red circle"); {comparative} how a size
edit compares its new value with the old one ("bigger" for small -> large; `synth.comparative`).
A template whose slots an edit lacks is never drawn for it.
"""

from __future__ import annotations

import re

TEMPLATES: dict[str, tuple[str, ...]] = {
    # a value of an object (colour, size, material, pattern), named or not by its object
    "replace": ("make it {new}", "change the {old} to {new}", "{new} instead of {old}", "replace {old} with {new}",
                "make the {old} one {new}", "it should be {new}, not {old}", "make the {noun} {new}",
                "turn the {noun} {new}", "the {noun} should be {new}", "change the {old} {noun} to {new}",
                "{new} {noun} instead of {old} {noun}", "i want the {noun} {new}",
                # a size asked for by comparison, as people ask for one
                "make it {comparative}", "make the {noun} {comparative}", "i want the {noun} {comparative}"),
    # an object noun
    "replace_object": ("change the {old} to a {new}", "a {new} instead of the {old}", "replace the {old} with a {new}",
                       "show a {new} rather than a {old}", "turn the {old} into a {new}", "make the {old} into a {new}",
                       "the {old} should be a {new}", "i want a {new}, not the {old}"),
    "background": ("change the background to {new}", "make the background {new}", "on a {new} background instead",
                   "use a {new} background", "the background should be {new}", "turn the background {new}",
                   "i want a {new} background"),
    "count": ("show {new} instead of {old}", "make it {new} {noun}", "there should be {new} {noun}"),
    "add": ("add {a_obj}", "also show {a_obj}", "with {a_obj} as well", "put {a_obj} in it", "include {a_obj}",
            "there should be {a_obj} too", "i want {a_obj} added"),
    "remove": ("remove the {obj}", "without the {obj}", "take away the {obj}", "get rid of the {obj}",
               "remove the {phrase}", "delete the {obj}", "the {obj} should not be there", "i want the {obj} removed"),
}
# how people wrap a request: a modification is one of these with the template's sentence as {m}
# (a quarter of them bare), so that Stage II learns to find the edit inside words it does not need
FRAMES = ("{m}", "{m}", "{m}", "{m}", "{m}", "{m}", "{m}", "now {m}", "{m} now", "ok, {m}", "{m}, thanks",
          "just {m}", "this one: {m}", "{m} for this one", "and {m}", "{m}, the rest stays",
          "keep everything else and {m}", "{m} but keep the rest", "{m} if you can", "try to {m}", "maybe {m}",
          "{m}, that's all", "{m} in this one", "i need you to {m}", "go ahead and {m}",
          "{m}, nothing else", "{m} for me", "here, {m}")
_SLOT = re.compile(r"\{([a-z_]+)\}")


def slots_of(template: str) -> set[str]:
    return set(_SLOT.findall(template))


def framed() -> list[str]:
    """Every template inside every frame: the training side's whole wording."""
    return [f.replace("{m}", t) for ts in TEMPLATES.values() for t in ts for f in dict.fromkeys(FRAMES)]


def write(rng, kind: str, slots: dict[str, str]) -> str:
    """A modification for an edit of `kind`: a template the slots fill, inside a frame, both drawn
    uniformly with `rng`."""
    choices = usable(kind, slots)
    text = choices[int(rng.integers(len(choices)))].format(**slots)
    return FRAMES[int(rng.integers(len(FRAMES)))].format(m=text)


def usable(kind: str, slots: dict[str, str]) -> tuple[str, ...]:
    """The templates of `kind` whose every slot `slots` fills."""
    return tuple(t for t in TEMPLATES[kind] if slots_of(t) <= {k for k, v in slots.items() if v})
