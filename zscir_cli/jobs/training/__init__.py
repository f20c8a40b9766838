"""Training: the one loop (`loop`: checkpoints per epoch, resume, torchrun, a lock per run) and
what runs through it: the shapes world's base CLIP (`pretrain`, checked by `clip_check`), Stage I
(`stage1`) and Stage II (`stage2`, with `composing` and `validation`); synthetic triplets
(`synth`, files in `triplet_files`); the frozen features both stages train on (`inputs`); each
command's request with its defaults (`config`)."""
