"""The shapes world's exact triplets (`zscir synth --mode scene`): an edit of a corpus scene
whose result is another corpus scene (up to position), worded with the training phrasings."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from zscir_cli.data.shapes.edits import apply_edit, possible_edits
from zscir_cli.data.shapes.wording import phrase
from zscir_cli.data.synth import SynthReport, Triplet, balance


def scene_triplets(ids: Sequence[str], scenes: Sequence, captions: Sequence[str], *, max_triplets: int,
                   seed: int = 0, per_scene: int = 6) -> SynthReport:
    """Exact triplets of the shapes world: the edited scene must exist in the corpus."""
    rng = np.random.default_rng(seed)
    by_sig: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(scenes):
        by_sig[s.signature()].append(i)
    by_type: dict[str, list[Triplet]] = defaultdict(list)
    rejected: Counter = Counter()
    for row, scene in enumerate(scenes):
        kinds = possible_edits(scene)
        rng.shuffle(kinds)
        for kind in kinds[:per_scene]:
            edit = apply_edit(rng, scene, kind)
            matches = [m for m in by_sig.get(edit.target.signature(), []) if m != row]
            if not matches:
                rejected["edited scene not in the corpus"] += 1
                continue
            tgt = matches[int(rng.integers(len(matches)))]
            text = phrase(kind, edit.slots, "train", rng)  # the world's training phrasings
            by_type[kind].append(Triplet(ids[row], ids[tgt], text, captions[row], captions[tgt], kind,
                                         edit.old, edit.new, 1.0, "scene", "scene"))
    return balance(by_type, max_triplets, rng, rejected)
