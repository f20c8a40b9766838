"""The shapes world: an embedded, offline data set, generated from a seed.

A scene is 1-3 objects (colour, shape, size, a cell of a 2x2 grid) on a coloured background.
Captions come from the scene graph. Composed-retrieval queries are built from the scene graph
too: a reference scene, an edit, a modification text drawn from varied templates, and the
target scene rendered with fresh positions. The gallery holds, besides the targets, same-layout
near misses of the reference (so that copying the reference's layout is no shortcut) and
wrong-value variants of the edit (so that ignoring the text is no shortcut). A gallery image
is a ground truth of a query when its scene equals the target scene up to position.

Everything is a pure function of (seed, indices): the same seed gives the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230),
    "yellow": (240, 215, 40), "purple": (150, 60, 190), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = {"small": 0.6, "large": 0.95}  # fraction of a grid cell
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "gray": (125, 125, 125), "black": (15, 15, 15),
}
GRID = 2  # cells per side
# Bump when a change to this module changes what a seed generates: it is part of every
# prepared data set's cache key, so stale worlds are never reused.
GENERATOR_VERSION = 2
MAX_OBJECTS = 3
EDIT_TYPES = ("colour", "shape", "size", "add", "remove", "background")


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str
    cell: int  # 0 .. GRID*GRID-1, reading order

    @property
    def kind(self) -> tuple[str, str, str]:
        return (self.size, self.colour, self.shape)

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]

    def signature(self) -> str:
        """The scene up to position: what a ground truth must match."""
        kinds = sorted("-".join(o.kind) for o in self.objects)
        return self.background + "|" + ",".join(kinds)

    def to_json(self) -> str:
        return json.dumps({"background": self.background,
                           "objects": [asdict(o) for o in self.objects]}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Scene:
        d = json.loads(text)
        return Scene(d["background"], tuple(Obj(**o) for o in d["objects"]))

    def sorted(self) -> Scene:
        return Scene(self.background, tuple(sorted(self.objects, key=lambda o: o.cell)))


# -- sampling ------------------------------------------------------------------------------------

def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _pick(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def random_object(rng: np.random.Generator, cell: int, taken: set[tuple[str, str]]) -> Obj:
    """An object whose (colour, shape) is not yet in the scene, so references stay unique."""
    while True:
        colour, shape = _pick(rng, COLOURS), _pick(rng, SHAPES)
        if (colour, shape) not in taken:
            return Obj(colour, shape, _pick(rng, SIZES), cell)


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    n = n_objects or int(rng.integers(1, MAX_OBJECTS + 1))
    cells = rng.permutation(GRID * GRID)[:n]
    objs: list[Obj] = []
    for cell in cells:
        objs.append(random_object(rng, int(cell), {(o.colour, o.shape) for o in objs}))
    return Scene(_pick(rng, BACKGROUNDS), tuple(objs)).sorted()


def relayout(rng: np.random.Generator, scene: Scene, avoid: Scene | None = None) -> Scene:
    """The same objects in fresh cells (different from `avoid`'s layout when possible)."""
    n = len(scene.objects)
    for _ in range(8):
        cells = rng.permutation(GRID * GRID)[:n]
        out = Scene(scene.background, tuple(replace(o, cell=int(c))
                                            for o, c in zip(scene.objects, cells))).sorted()
        if avoid is None or _layout(out) != _layout(avoid):
            return out
    return out


def _layout(scene: Scene) -> tuple:
    return tuple(sorted((o.cell, o.kind) for o in scene.objects))


# -- captions ------------------------------------------------------------------------------------

CAPTION_TEMPLATES = (
    "{objects} on a {background} background",
    "a {background} background with {objects}",
    "a picture of {objects} on {background}",
    "{objects}, {background} background",
)


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene, template: int = 0) -> str:
    objects = _join([with_article(o.phrase()) for o in scene.objects])
    return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(
        objects=objects, background=scene.background)


# -- rendering -----------------------------------------------------------------------------------

def render(scene: Scene, size: int = 64, jitter_rng: np.random.Generator | None = None) -> Image.Image:
    """Draw a scene; `jitter_rng` moves each object by a few pixels inside its cell."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    cell = size / GRID
    for o in scene.objects:
        r = cell * SIZES[o.size] / 2
        cx = (o.cell % GRID + 0.5) * cell
        cy = (o.cell // GRID + 0.5) * cell
        if jitter_rng is not None:
            slack = max(0.0, cell / 2 - r - 1)
            cx += float(jitter_rng.uniform(-slack, slack))
            cy += float(jitter_rng.uniform(-slack, slack))
        _draw_shape(draw, o.shape, cx, cy, r, COLOURS[o.colour])
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        w = r * 0.36
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


# -- edits ---------------------------------------------------------------------------------------

MOD_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": ("make the {ref} {new}", "change the {ref} to {new}", "turn the {ref} {new}",
               "the {ref} should be {new}", "paint the {ref} {new}", "{new} instead of {old}"),
    "shape": ("make the {ref} {a_new}", "replace the {ref} with {a_colour_new}",
              "change the {ref} into {a_new}", "turn the {ref} into {a_new}",
              "{a_new} instead of the {old}"),
    "size": ("make the {ref} {new}", "make the {ref} {comparative}", "the {ref} should be {new}",
             "{verb} the {ref}"),
    "add": ("add {a_obj}", "put {a_obj} in the picture", "include {a_obj} as well",
            "also show {a_obj}", "with one more object: {a_obj}"),
    "remove": ("remove the {ref}", "take away the {ref}", "delete the {ref}",
               "get rid of the {ref}", "without the {ref}"),
    "background": ("change the background to {new}", "make the background {new}",
                   "put it on {a_new} background", "use {a_new} background",
                   "{new} background instead of {old}"),
}


@dataclass
class Edit:
    edit_type: str
    old: str
    new: str
    text: str
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
    template = _pick(rng, MOD_TEMPLATES[edit_type])
    if edit_type == "background":
        old = scene.background
        choices = [b for b in BACKGROUNDS if b != old]
        new = _pick(rng, choices)
        make = lambda v: Scene(v, scene.objects)
        text = template.format(new=new, old=old, a_new=with_article(new))
        return Edit(edit_type, old, new, text, make(new), [make(v) for v in choices if v != new])
    if edit_type == "add":
        free = [c for c in range(GRID * GRID) if c not in {o.cell for o in objs}]
        obj = random_object(rng, _pick(rng, free), taken)
        text = template.format(a_obj=with_article(obj.phrase()))
        wrong_colour = [Obj(c, obj.shape, obj.size, obj.cell) for c in COLOURS
                        if c != obj.colour and (c, obj.shape) not in taken]
        mk = lambda o: Scene(scene.background, tuple(objs + [o])).sorted()
        return Edit(edit_type, "", obj.phrase(), text, mk(obj), [mk(o) for o in wrong_colour[:2]])
    i = int(rng.integers(len(objs)))
    obj = objs[i]
    ref = reference_phrase(scene, obj)

    def with_obj(o: Obj | None) -> Scene:
        rest = objs[:i] + ([o] if o else []) + objs[i + 1:]
        return Scene(scene.background, tuple(rest)).sorted()

    if edit_type == "remove":
        text = template.format(ref=ref)
        # the wrong value of a removal is removing another object
        wrong = [Scene(scene.background, tuple(o for j, o in enumerate(objs) if j != k)).sorted()
                 for k in range(len(objs)) if k != i]
        return Edit(edit_type, obj.phrase(), "", text, with_obj(None), wrong)
    if edit_type == "colour":
        choices = [c for c in COLOURS if c != obj.colour and (c, obj.shape) not in taken]
        new = _pick(rng, choices)
        text = template.format(ref=ref, new=new, old=obj.colour)
        return Edit(edit_type, obj.colour, new, text, with_obj(replace(obj, colour=new)),
                    [with_obj(replace(obj, colour=c)) for c in choices if c != new][:2])
    if edit_type == "shape":
        choices = [s for s in SHAPES if s != obj.shape and (obj.colour, s) not in taken]
        new = _pick(rng, choices)
        text = template.format(ref=ref, new=new, old=obj.shape, a_new=with_article(new),
                               a_colour_new=with_article(f"{obj.colour} {new}"))
        return Edit(edit_type, obj.shape, new, text, with_obj(replace(obj, shape=new)),
                    [with_obj(replace(obj, shape=s)) for s in choices if s != new][:2])
    if edit_type == "size":
        new = "small" if obj.size == "large" else "large"
        text = template.format(ref=ref, new=new,
                               comparative="smaller" if new == "small" else "bigger",
                               verb="shrink" if new == "small" else "enlarge")
        # the wrong value of a size edit is the edit applied to another object
        wrong = [Scene(scene.background, tuple(replace(o, size="small" if o.size == "large" else
                                                        "large") if j == k else o
                                               for j, o in enumerate(objs))).sorted()
                 for k in range(len(objs)) if k != i]
        return Edit(edit_type, obj.size, new, text, with_obj(replace(obj, size=new)), wrong)
    raise ValueError(f"unknown edit type {edit_type}")


# -- splits --------------------------------------------------------------------------------------

SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}


@dataclass
class WorldConfig:
    seed: int = 0  # everything below is a function of this
    image_size: int = 64  # pixels per side
    train_pairs: int = 10000  # image-caption pairs for Stage I
    val_pairs: int = 1000  # image-caption pairs for backbone validation
    cir_queries: int = 400  # composed-retrieval queries per split (val and test)
    near_misses: int = 2  # same-layout variants of the reference per query, in the gallery


def pair_record(cfg: WorldConfig, split: str, index: int) -> dict[str, Any]:
    rng = _rng(cfg.seed, SPLIT_STREAMS[split], 0, index)
    scene = random_scene(rng)
    return {"id": f"{split}-{index:06d}", "scene": scene,
            "caption": caption(scene, int(rng.integers(len(CAPTION_TEMPLATES)))),
            "jitter": int(rng.integers(2**31))}


def cir_split(cfg: WorldConfig, split: str) -> tuple[list[dict], list[dict]]:
    """(queries, gallery) of one CIR split. Gallery items carry their Scene; ids are unique."""
    gallery: list[dict] = []
    queries: list[dict] = []
    edit_cycle = list(EDIT_TYPES)

    def add(scene: Scene, rng: np.random.Generator, role: str) -> str:
        gid = f"{split}-g{len(gallery):06d}"
        gallery.append({"id": gid, "scene": scene, "caption": caption(scene), "role": role,
                        "jitter": int(rng.integers(2**31))})
        return gid

    for q in range(cfg.cir_queries):
        rng = _rng(cfg.seed, SPLIT_STREAMS[split], 1, q)
        # balance edit types: cycle through them, skipping those the scene does not allow
        wanted = edit_cycle[q % len(edit_cycle)]
        scene = random_scene(rng)
        while wanted not in possible_edits(scene):
            scene = random_scene(rng)
        edit = apply_edit(rng, scene, wanted)
        ref_id = add(scene, rng, "reference")
        target = relayout(rng, edit.target, avoid=scene)
        tgt_id = add(target, rng, "target")
        for _ in range(cfg.near_misses):  # same layout as the reference, one thing changed
            other = _pick(rng, [e for e in possible_edits(scene) if e not in ("add", "remove")])
            add(apply_edit(rng, scene, other).target, rng, "near-miss")
        if edit.wrong:  # the right kind of edit with the wrong value, fresh layout
            add(relayout(rng, _pick(rng, edit.wrong)), rng, "wrong-value")
        queries.append({"query_id": f"{split}-q{q:05d}", "reference_id": ref_id,
                        "target_id": tgt_id, "modification": edit.text, "edit_type": edit.edit_type,
                        "old": edit.old, "new": edit.new, "target_signature": target.signature()})
    by_sig: dict[str, list[str]] = {}
    for g in gallery:
        by_sig.setdefault(g["scene"].signature(), []).append(g["id"])
    for q in queries:
        q["ground_truth"] = [g for g in by_sig[q.pop("target_signature")] if g != q["reference_id"]]
    return queries, gallery


def render_record(cfg: WorldConfig, record: dict) -> Image.Image:
    return render(record["scene"], cfg.image_size, _rng(record["jitter"]))
