"""What each training command asks for: `zscir pretrain`, `map-train` and `compose-train`, one
dataclass each, whose fields hold every default (the commands take theirs from here). Nothing
here imports torch, so that `--help` answers at once."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class PretrainConfig:
    data: str = "shapes"  # the prepared shapes world (its key names the run, not this name)
    model: str = "zscir-shapes-rn"  # architecture: our shipped config or any OpenCLIP name
    steps: int = 900  # optimiser updates; the number of updates is what a CPU budget buys
    batch_size: int = 64  # pairs per step (half of them hard negatives)
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 0.1  # on weight matrices only, not gains, biases or embeddings
    warmup: float = 0.08  # fraction of steps with linear warm-up, then cosine decay
    hard_negatives: float = 0.5  # fraction of each batch that are one-attribute edits
    # fraction of those that add an object which the fresh scene's caption says is absent
    # (chosen on val, seeds 0 and 1: tscir R@1 28.0/29.8 without, 38.5/34.2 with 0.25)
    absence_negatives: float = 0.25
    seed: int = 0  # initialisation and batch stream
    steps_per_epoch: int = 100  # a checkpoint (and a point to --resume from) every this many steps

    @property
    def epochs(self) -> int:
        return math.ceil(self.steps / self.steps_per_epoch)

    @property
    def warmup_steps(self) -> int:
        return max(1, int(self.warmup * self.steps))


@dataclass
class Stage1Config:
    data: str = "shapes"  # prepared image(-caption) data set; trains on its 'train' split
    epochs: int = 10  # passes over the training images
    batch_size: int = 256  # global batch (split over torchrun processes)
    lr: float = 1e-4  # AdamW, cosine schedule
    weight_decay: float = 0.01  # AdamW
    seed: int = 0  # initialisation, dropout and batch order
    temperature: float = 0.07  # tau of the contrastive and alignment predictions
    vsi: bool = True  # visual semantic injection
    vsi_layers: list[int] | None = None  # 1-based; None = 4 layers spread over the depth
    vsi_grid: int = 4  # spatial grid side: M = 1 + grid^2 visual tokens (at most the map's size)
    vsi_scope: str = "placeholder"  # placeholder | all
    vsi_heads: int = 4  # cross-attention heads of a VSI block
    sta: bool = True  # soft text alignment (needs captions)
    sta_weight: float = 1.0  # lambda
    sta_temperature: float = 0.05  # tau_s of the caption-to-caption soft targets
    dropout: float = 0.5  # token learner dropout
    placeholder: str = "$"  # the pseudo-word in prompts (a single BPE token of the tokenizer)
    # the backbone, as --model/--pretrained give it (None: their defaults); resolved by the job,
    # and named in the run's key by its identity
    model: str | None = None
    pretrained: str | None = None

    @property
    def method(self) -> str:
        return "pic2word" if not self.vsi and not self.sta else "stage1"


@dataclass
class Stage2Config:
    triplets: str  # JSONL written by 'zscir synth' (or by hand, same schema)
    epochs: int = 10  # passes over the triplets
    batch_size: int = 128  # global batch of triplets
    lr: float = 1e-4  # AdamW, cosine schedule
    weight_decay: float = 0.01  # AdamW
    seed: int = 0  # the adapters' initialisation and the batch order
    adapter_dim: int = 64  # bottleneck width
    adapter_layers: list[int] | None = None  # 1-based blocks followed by an adapter; None = every block
    # also an adapter on the token embeddings (layer 0), before the first block; off: the paper's
    embedding_adapter: bool = True
    # the token positions the embedding adapter changes: all, pseudo-word or words (`model.adapters`)
    embedding_positions: str = "all"
    # K mined negatives per query, besides its reference image; 0: in-batch negatives only
    hard_negatives: int = 8
    tune_stage1: bool = False  # unfreeze the Stage I mapper (the run then stores its own copy)
    stage1_weight: float = 0.0  # weight of the Stage I loss, to keep a tuned mapping from drifting
    temperature: float = 0.07  # tau of the composing loss
    # an image is a likely false negative of a query when its caption equals the target's, or
    # when their caption features have at least this cosine (> 1 turns the second test off)
    false_negative_similarity: float = 0.98
    stage1: str | None = None  # Stage I run key; None = the newest stage1 run of the backbone
    skip_bad: bool = False  # leave out triplets whose image files are missing
    allow_outside_paths: bool = False  # accept image paths that leave the triplet file's folder
    # after every epoch, R@1 (overall and per edit type) and mAP@10 on the CIR val split when the
    # triplets come from a shapes world (metrics.jsonl); it changes no weight, so no part of the key
    validate: bool = True
    # weight of a second cross-entropy over the same candidates' caption features (the base
    # CLIP's text features of their captions): the composed query also aims at its target's
    # caption, as the target-caption row queries; 0 turns it off (the paper's objective)
    caption_weight: float = 0.0
    # the backbone, as --model/--pretrained give it (None: their defaults); resolved by the job,
    # and named in the run's key by its identity
    model: str | None = None
    pretrained: str | None = None


@dataclass
class SynthRequest:
    """`zscir synth`: triplets from a prepared data set's captions (or scene graphs), or from a
    captions file."""

    out: str = "synth.jsonl"  # the triplet file to write (JSONL)
    data: str | None = None  # a prepared image-caption data set (its train split)
    captions: str | None = None  # or a captions file (image paths relative to it)
    mode: str = "template"  # template (captions only) | scene (the shapes world's scene graphs, exact)
    max_triplets: int = 5000  # at most this many, balanced over edit types
    seed: int = 0
    min_similarity: float = 0.9  # nearest-caption targets below this text similarity are rejected
    match: str = "words"  # how a nearest caption is accepted: words (the paper's) | content
    exact_only: bool = False  # exact caption matches only: no text embedding, no model
    allow_outside: bool = False  # accept caption-file image paths outside the file's folder
    model: str | None = None  # the backbone that embeds captions (--model/--pretrained)
    pretrained: str | None = None
