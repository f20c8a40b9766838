"""The shapes world: an embedded, offline data set generated from a seed, the project's lab.

`scene` (objects on a background, drawn), `edits` (what a modification changes), `wording`
(captions, and the families of sentences that ask for an edit) and `world` (the splits, and what
each may show). Composed-retrieval queries are built from the scene graph: a reference scene, an
edit, a modification text, and the target scene rendered with fresh positions. The gallery
holds, besides the targets, same-layout near misses of the reference (so that copying the
reference's layout is no shortcut) and wrong-value variants of the edit (so that ignoring the
text is no shortcut). A gallery image is a ground truth of a query when its scene equals the
target scene up to position.
"""

from zscir_cli.data.shapes.edits import (
    EDIT_TYPES,
    Edit,
    apply_edit,
    possible_edits,
    reference_phrase,
    with_article,
)
from zscir_cli.data.shapes.scene import (
    BACKGROUNDS,
    COLOURS,
    GRID,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    pick,
    random_object,
    random_scene,
    relayout,
    render,
    rng_for,
)
from zscir_cli.data.shapes.wording import CAPTIONS, FAMILIES, PHRASINGS, caption, phrase, web_caption
from zscir_cli.data.shapes.world import (
    GENERATOR_VERSION,
    HARD_EDITS,
    HELD_OUT,
    SEEN,
    WorldConfig,
    bucket,
    cir_split,
    pair_record,
    pretrain_batch,
    render_record,
)

__all__ = [
    "BACKGROUNDS", "CAPTIONS", "COLOURS", "EDIT_TYPES", "FAMILIES", "GENERATOR_VERSION", "GRID", "HARD_EDITS",
    "HELD_OUT", "MAX_OBJECTS", "PHRASINGS", "SEEN", "SHAPES", "SIZES", "Edit", "Obj", "Scene", "WorldConfig",
    "apply_edit", "bucket", "caption", "cir_split", "pair_record", "phrase", "pick", "possible_edits",
    "pretrain_batch", "random_object", "random_scene", "reference_phrase", "relayout", "render",
    "render_record", "rng_for", "web_caption", "with_article",
]
