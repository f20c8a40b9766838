"""Every CUDA path zscir has, exercised in one command (at most 5 minutes on one GPU):

- encode: the gallery encoder of `zscir index` (its DataLoader with pinned memory, bf16
  autocast) on rendered images: images/s, and the bf16 features against fp32 ones of the same
  images computed on the CPU (cosine);
- stage1 / stage2: training steps of Stage I (token learner + VSI + STA) and Stage II (composing
  adapters, hard negatives) through the project's own step functions, bf16 autocast, AdamW:
  every loss finite, s/step, peak GPU memory, and the first batch's bf16 loss against the fp32
  loss of the same weights and batch on the CPU (dropout off for that comparison);
- nccl: a one-process group, the all-gather of the contrastive losses (forward and backward)
  and one step of DistributedDataParallel around the Stage I network.

One line per figure on stdout, `ok` or `FAIL`; the exit code is 1 when any check fails. The
logic runs on the CPU with a tiny model in the test suite:

    python benchmarks/gpu_check.py                                  # ViT-L-14, random weights, cuda
    python benchmarks/gpu_check.py --device cpu --model zscir-tiny-vit --batch 8 --steps 2 --images 16

A GPU machine without open_clip, ftfy or faiss takes them as wheels: `benchmarks/gpu_wheels.sh`
downloads them (about 20 MB, for its Python), and the machine installs them with
`pip install --no-index --no-deps --target /tmp/site .whl/*.whl` before running this.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zscir_cli.core.cache import ArtifactStore  # noqa: E402
from zscir_cli.data.galleries import Gallery  # noqa: E402
from zscir_cli.data.shapes import WorldConfig, pair_record, render_record  # noqa: E402
from zscir_cli.jobs.backbones import text_encoder  # noqa: E402
from zscir_cli.jobs.context import Context  # noqa: E402
from zscir_cli.jobs.distributed import Dist, gather  # noqa: E402
from zscir_cli.jobs.retrieval.encoder import encode_gallery  # noqa: E402
from zscir_cli.jobs.retrieval.features import FeatureSet  # noqa: E402
from zscir_cli.jobs.training.composing import HardNegativeMiner, TripletData  # noqa: E402
from zscir_cli.jobs.training.config import Stage1Config, Stage2Config  # noqa: E402
from zscir_cli.jobs.training.stage1 import Stage1Loss, Stage1Net, build_mapper, mapping_config  # noqa: E402
from zscir_cli.jobs.training.stage2 import ComposeLoss, Stage2Net, build_adapters  # noqa: E402
from zscir_cli.model.backbone import Backbone, ModelSpec, load_backbone  # noqa: E402
from zscir_cli.model.mapping import PROMPT, compose_tokens  # noqa: E402

BF16_TOLERANCE = 0.05  # |bf16 loss - fp32 loss| / fp32 loss
COSINE_FLOOR = 0.99  # bf16 image features against fp32 ones


@dataclass
class Check:
    name: str
    figure: str
    ok: bool

    def line(self) -> str:
        return f"{self.name:<8} {self.figure}  {'ok' if self.ok else 'FAIL'}"


class Renders(Gallery):
    """`n` shapes renders at the model's input size, as PNG bytes (decoded by the real reader)."""

    def __init__(self, n: int, size: int):
        cfg = WorldConfig(seed=0, image_size=size)
        self.ids = [f"r{i}" for i in range(n)]
        self.source = {"kind": "renders", "n": n, "size": size}
        self._bytes = []
        for i in range(n):
            buf = io.BytesIO()
            render_record(cfg, pair_record(cfg, "train", i)).save(buf, format="PNG")
            self._bytes.append(buf.getvalue())

    def raw(self, i: int) -> bytes:
        return self._bytes[i]

    def identity(self) -> dict:
        return dict(self.source)


def synthetic_features(n: int, dim: int, tokens: int, seed: int = 0) -> FeatureSet:
    """Normalised random image features, visual tokens and caption features of `n` images."""
    g = np.random.default_rng(seed)

    def unit(*shape: int) -> np.ndarray:
        x = g.standard_normal(shape).astype(np.float32)
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16)

    return FeatureSet(None, [f"i{k}" for k in range(n)], unit(n, dim), unit(n, tokens, dim), unit(n, dim))  # type: ignore[arg-type]


def check_encode(ctx: Context, gpu: Backbone, cpu: Backbone, images: int, size: int = 224) -> list[Check]:
    gallery = Renders(images, size)
    encode_gallery(ctx, gpu, Renders(8, size), batch_size=8)  # warm-up: kernels, workers
    sync(gpu.device)
    t = time.perf_counter()
    enc = encode_gallery(ctx, gpu, gallery, batch_size=64)
    sync(gpu.device)
    rate = len(enc.rows) / (time.perf_counter() - t)
    ref = encode_gallery(ctx, cpu, Renders(8, size), batch_size=8).features  # the same first 8 images
    cos = float(np.min(np.sum(ref * enc.features[:8], axis=1)))
    return [Check("encode", f"{rate:.0f} images/s ({len(enc.rows)} images, pinned={gpu.device.type == 'cuda'})",
                  len(enc.rows) == images and not enc.failures),
            Check("encode", f"bf16 vs fp32 feature cosine, min of 8: {cos:.4f} (floor {COSINE_FLOOR})", cos >= COSINE_FLOOR)]


def stage1_parts(backbone: Backbone, feats: FeatureSet, device: torch.device, d: Dist):
    cfg = Stage1Config()
    mcfg = mapping_config(backbone, cfg, token_dim=feats.image.shape[1])
    torch.manual_seed(0)
    mapper = build_mapper(mcfg).to(device)
    net = Stage1Net(mapper, text_encoder(backbone, mcfg.placeholder_id))
    prompt = backbone.tokenizer([PROMPT]).to(device)
    return net, Stage1Loss(feats, prompt, cfg, True, device, d)


def stage2_parts(backbone: Backbone, feats: FeatureSet, mapper_state: dict, device: torch.device, d: Dist,
                 batch: int):
    cfg = Stage2Config(triplets="synthetic", batch_size=batch, hard_negatives=2)
    s1cfg = Stage1Config()
    mcfg = mapping_config(backbone, s1cfg, token_dim=feats.image.shape[1])
    mapper = build_mapper(mcfg)
    mapper.load_state_dict(mapper_state)
    mapper = mapper.to(device)
    encoder = text_encoder(backbone, mcfg.placeholder_id)
    torch.manual_seed(0)
    adapters = build_adapters(encoder, cfg).to(device)
    n = len(feats.ids)
    rows = [{"reference": feats.ids[i], "target": feats.ids[(i + 1) % n], "modification": "make it red"}
            for i in range(n)]
    tokenize = partial(compose_tokens, backbone.tokenizer, placeholder=mcfg.placeholder,
                       placeholder_id=mcfg.placeholder_id)
    data = TripletData.from_triplets(rows, feats, [f"caption {i}" for i in range(n)], tokenize)
    miner = HardNegativeMiner(data, cfg.hard_negatives, cfg.false_negative_similarity, True, device)
    net = Stage2Net(mapper, adapters, encoder, tune_stage1=False)
    plain = backbone.tokenizer([PROMPT]).to(device)
    return net, ComposeLoss(data, miner, cfg, plain, True, device, d), miner


def train_steps(name: str, net, loss_fn, steps: int, batch: int, n: int, device: torch.device,
                miner=None) -> list[Check]:
    """`steps` AdamW steps on consecutive batches of `n` items."""
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    if miner is not None:
        miner.mine(net)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    sync(device)
    t = time.perf_counter()
    for s in range(steps):
        idx = torch.arange(s * batch, (s + 1) * batch) % n
        loss, _ = loss_fn(net, idx, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    sync(device)
    per_step = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    finite = all(np.isfinite(losses))
    return [Check(name, f"{steps} steps of {batch}: {per_step:.3f} s/step, losses {losses[0]:.4f} -> {losses[-1]:.4f}, "
                        f"peak {peak:.2f} GiB", finite)]


def eval_loss(net, loss_fn, batch: int) -> float:
    """The first batch's loss with dropout off and no gradient: comparable across devices."""
    net.eval()
    with torch.no_grad():
        loss, _ = loss_fn(net, torch.arange(batch), torch.arange(batch))
    net.train()
    return float(loss)


def compare(name: str, bf16: float, fp32: float) -> Check:
    rel = abs(bf16 - fp32) / max(abs(fp32), 1e-8)
    return Check(name, f"first batch loss {bf16:.5f} on the device vs {fp32:.5f} fp32 on the CPU: {rel:.2%} "
                       f"(tolerance {BF16_TOLERANCE:.0%})", np.isfinite(bf16) and rel <= BF16_TOLERANCE)


def check_nccl(backbone: Backbone, feats: FeatureSet, device: torch.device, batch: int) -> list[Check]:
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        d = Dist(0, 2)  # `gather` takes the group's path (a Dist of one rank would skip it)
        x = torch.randn(4, 3, device=device, requires_grad=True)
        y = gather(x, d)
        y.sum().backward()
        total = torch.ones(1, device=device)
        dist.all_reduce(total)
        ok_gather = torch.equal(y.detach(), x.detach()) and torch.equal(x.grad, torch.ones_like(x)) and total.item() == 1
        net, loss_fn = stage1_parts(backbone, feats, device, Dist())
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index or 0] if device.type == "cuda"
                                                        else None)
        loss, _ = loss_fn(ddp, torch.arange(batch), torch.arange(batch))
        loss.backward()
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        ok_ddp = bool(np.isfinite(loss.item())) and all(g is not None and torch.isfinite(g).all() for g in grads)
    finally:
        dist.destroy_process_group()
    return [Check("nccl" if backend == "nccl" else "gloo", "one-process group: all-gather forward and backward, "
                  "all-reduce", ok_gather),
            Check("nccl" if backend == "nccl" else "gloo", f"one DistributedDataParallel step of Stage I: loss "
                  f"{loss.item():.4f}, finite gradients", ok_ddp)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> list[Check]:
    device = torch.device(args.device)
    spec = ModelSpec(args.model, args.pretrained)
    t = time.perf_counter()
    gpu = load_backbone(spec, device=device)
    cpu = load_backbone(spec, device="cpu")  # the same seeded weights: the fp32 reference
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    checks = [Check("device", f"{name}, torch {torch.__version__}, {spec.label()} loaded in "
                              f"{time.perf_counter() - t:.1f} s", True)]
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(store=ArtifactStore(Path(tmp)), workers=args.workers, device=str(device))
        checks += check_encode(ctx, gpu, cpu, args.images, args.image_size)
    dim, grid = gpu.embed_dim, Stage1Config().vsi_grid
    feats = synthetic_features(args.steps * args.batch + args.batch, dim, 1 + grid * grid)
    net, loss_fn = stage1_parts(gpu, feats, device, Dist())
    cpu_net, cpu_loss = stage1_parts(cpu, feats, torch.device("cpu"), Dist())
    cpu_net.load_state_dict(copy.deepcopy({k: v.cpu() for k, v in net.state_dict().items()}))
    checks.append(compare("stage1", eval_loss(net, loss_fn, args.batch), eval_loss(cpu_net, cpu_loss, args.batch)))
    state = {k: v.detach().cpu().clone() for k, v in net.mapper.state_dict().items()}
    n = len(feats.ids)
    checks += train_steps("stage1", net, loss_fn, args.steps, args.batch, n, device)
    net2, loss2, miner = stage2_parts(gpu, feats, state, device, Dist(), args.batch)
    cpu_net2, cpu_loss2, _ = stage2_parts(cpu, feats, state, torch.device("cpu"), Dist(), args.batch)
    cpu_net2.adapters.load_state_dict({k: v.cpu() for k, v in net2.adapters.state_dict().items()})
    checks.append(compare("stage2", eval_loss(net2, loss2, args.batch), eval_loss(cpu_net2, cpu_loss2, args.batch)))
    checks += train_steps("stage2", net2, loss2, args.steps, args.batch, n, device, miner)
    checks += check_nccl(gpu, feats, device, args.batch)
    return checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="ViT-L-14")
    p.add_argument("--pretrained", default="none", help="random weights by default: no download")
    p.add_argument("--batch", type=int, default=64, help="Stage I and II batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--images", type=int, default=512, help="images for the encoder's throughput")
    p.add_argument("--image-size", type=int, default=224, help="side of the rendered images")
    p.add_argument("--workers", type=int, default=min(4, (os.cpu_count() or 2) - 1))
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("device   CUDA is not available here  FAIL")
        return 1
    failed = 0
    for check in run(args):
        print(check.line(), flush=True)
        failed += not check.ok
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
