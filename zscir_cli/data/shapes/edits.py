"""Edits of a scene: what changes, the scene that results, and the values a sentence asking for
it can name (its slots). An edit carries no sentence: `wording.phrase` writes one from its slots
in a family of phrasings, so the same edit can be asked for in any wording."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from zscir_cli.data.shapes.scene import (
    BACKGROUNDS,
    COLOURS,
    GRID,
    MAX_OBJECTS,
    SHAPES,
    Obj,
    Scene,
    pick,
    random_object,
)

EDIT_TYPES = ("colour", "shape", "size", "add", "remove", "background")


@dataclass
class Edit:
    edit_type: str
    old: str
    new: str
    slots: dict[str, str]  # the values a phrasing may name: ref, new, old, a_new, ... (see `wording`)
    target: Scene
    wrong: list[Scene] = field(default_factory=list)  # same edit type, other values


def with_article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def reference_phrase(scene: Scene, obj: Obj) -> str:
    """The shortest unique description of `obj` in `scene`: shape, else colour + shape."""
    if sum(o.shape == obj.shape for o in scene.objects) == 1:
        return obj.shape
    return f"{obj.colour} {obj.shape}"


def possible_edits(scene: Scene) -> list[str]:
    out = ["colour", "shape", "size", "background"]
    if len(scene.objects) < MAX_OBJECTS:
        out.append("add")
    if len(scene.objects) > 1:
        out.append("remove")
    return out


def apply_edit(rng: np.random.Generator, scene: Scene, edit_type: str) -> Edit:
    """Edit `scene` (a pure function of rng's state); the target keeps the reference's cells."""
    objs = list(scene.objects)
    taken = {(o.colour, o.shape) for o in objs}
    if edit_type == "background":
        old = scene.background
        choices = [b for b in BACKGROUNDS if b != old]
        new = pick(rng, choices)
        make = lambda v: Scene(v, scene.objects)  # noqa: E731
        slots = {"new": new, "old": old, "a_new": with_article(new)}
        return Edit(edit_type, old, new, slots, make(new), [make(v) for v in choices if v != new])
    if edit_type == "add":
        free = [c for c in range(GRID * GRID) if c not in {o.cell for o in objs}]
        obj = random_object(rng, pick(rng, free), taken)
        wrong_colour = [Obj(c, obj.shape, obj.size, obj.cell) for c in COLOURS
                        if c != obj.colour and (c, obj.shape) not in taken]
        mk = lambda o: Scene(scene.background, tuple(objs + [o])).sorted()  # noqa: E731
        return Edit(edit_type, "", obj.phrase(), {"a_obj": with_article(obj.phrase()), "obj": obj.phrase()},
                    mk(obj), [mk(o) for o in wrong_colour[:2]])
    i = int(rng.integers(len(objs)))
    obj = objs[i]
    ref = reference_phrase(scene, obj)

    def with_obj(o: Obj | None) -> Scene:
        rest = objs[:i] + ([o] if o else []) + objs[i + 1:]
        return Scene(scene.background, tuple(rest)).sorted()

    if edit_type == "remove":
        # the wrong value of a removal is removing another object
        wrong = [Scene(scene.background, tuple(o for j, o in enumerate(objs) if j != k)).sorted()
                 for k in range(len(objs)) if k != i]
        return Edit(edit_type, obj.phrase(), "", {"ref": ref, "obj": obj.shape, "phrase": obj.phrase()},
                    with_obj(None), wrong)
    if edit_type == "colour":
        choices = [c for c in COLOURS if c != obj.colour and (c, obj.shape) not in taken]
        new = pick(rng, choices)
        return Edit(edit_type, obj.colour, new, {"ref": ref, "new": new, "old": obj.colour, "noun": obj.shape},
                    with_obj(replace(obj, colour=new)),
                    [with_obj(replace(obj, colour=c)) for c in choices if c != new][:2])
    if edit_type == "shape":
        choices = [s for s in SHAPES if s != obj.shape and (obj.colour, s) not in taken]
        new = pick(rng, choices)
        slots = {"ref": ref, "new": new, "old": obj.shape, "a_new": with_article(new),
                 "a_colour_new": with_article(f"{obj.colour} {new}")}
        return Edit(edit_type, obj.shape, new, slots, with_obj(replace(obj, shape=new)),
                    [with_obj(replace(obj, shape=s)) for s in choices if s != new][:2])
    if edit_type == "size":
        new = "small" if obj.size == "large" else "large"
        slots = {"ref": ref, "new": new, "old": obj.size, "noun": obj.shape,
                 "comparative": "smaller" if new == "small" else "bigger",
                 "verb": "shrink" if new == "small" else "enlarge"}
        # the wrong value of a size edit is the edit applied to another object
        wrong = [Scene(scene.background, tuple(replace(o, size="small" if o.size == "large" else
                                                        "large") if j == k else o
                                               for j, o in enumerate(objs))).sorted()
                 for k in range(len(objs)) if k != i]
        return Edit(edit_type, obj.size, new, slots, with_obj(replace(obj, size=new)), wrong)
    raise ValueError(f"unknown edit type {edit_type}")
