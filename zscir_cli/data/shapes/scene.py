"""Scenes of the shapes world: objects on a background, sampled from a seed and drawn.

A scene is 1-3 objects (colour, shape, size, a cell of a 2x2 grid) on a coloured background.
Two scenes are the same picture up to position when their `signature`s are equal: that is what
a ground truth must match, and what the world's splits are cut by (`world.bucket`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

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
MAX_OBJECTS = 3


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

    def combos(self) -> set[tuple[str, str]]:
        """The (colour, shape) pairs the scene shows."""
        return {(o.colour, o.shape) for o in self.objects}

    def to_json(self) -> str:
        return json.dumps({"background": self.background,
                           "objects": [asdict(o) for o in self.objects]}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Scene:
        d = json.loads(text)
        return Scene(d["background"], tuple(Obj(**o) for o in d["objects"]))

    def sorted(self) -> Scene:
        return Scene(self.background, tuple(sorted(self.objects, key=lambda o: o.cell)))


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def pick(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def random_object(rng: np.random.Generator, cell: int, taken: set[tuple[str, str]]) -> Obj:
    """An object whose (colour, shape) is not yet in the scene, so references stay unique."""
    while True:
        colour, shape = pick(rng, COLOURS), pick(rng, SHAPES)
        if (colour, shape) not in taken:
            return Obj(colour, shape, pick(rng, SIZES), cell)


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    n = n_objects or int(rng.integers(1, MAX_OBJECTS + 1))
    cells = rng.permutation(GRID * GRID)[:n]
    objs: list[Obj] = []
    for cell in cells:
        objs.append(random_object(rng, int(cell), {(o.colour, o.shape) for o in objs}))
    return Scene(pick(rng, BACKGROUNDS), tuple(objs)).sorted()


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
