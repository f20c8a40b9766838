"""`zscir index` throughput against the bare `model.encode_image` loop, in one run.

Both encode the same images with the same model and batch size. The bare loop gets the images
already decoded and preprocessed in memory (the upper bound); `zscir index` reads and decodes
the files with DataLoader workers, encodes, and writes features and a faiss index. The ratio
says how much of the model's speed the pipeline keeps (target: at least 0.95).

With `--processes N` (N > 1) it then times the whole `zscir index` command on the same folder in
one process and under torchrun with N processes (gloo on the CPU, the machine's threads split
between them), process start and model loading included, and prints the speed-up.

    python benchmarks/index_throughput.py [--model ViT-B-32] [--images 256] [--batch-size 32] [--processes 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each; the best counts")
    ap.add_argument("--processes", type=int, default=1, help="also time torchrun with this many processes")
    ap.add_argument("--part-size", type=int, default=None, help="images per part under torchrun "
                                                                   "[default: an even split]")
    args = ap.parse_args()

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data import shapes
    from zscir_cli.data.galleries import FolderGallery
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.indexing import index_gallery
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    backbone = load_backbone(ModelSpec(args.model, "none"))
    size = backbone.preprocess.transforms[0].size
    side = size if isinstance(size, int) else size[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        world = shapes.WorldConfig(seed=0, image_size=side)
        for i in range(args.images):  # JPEGs at the model's resolution, as a photo folder would be
            shapes.render_record(world, shapes.pair_record(world, "train", i)).save(folder / f"{i:05d}.jpg", quality=90)
        gallery = FolderGallery(folder)
        tensors = torch.stack([backbone.preprocess(gallery.image(i)) for i in range(len(gallery))])

        def bare() -> None:
            with torch.inference_mode():
                for s in range(0, len(tensors), args.batch_size):
                    backbone.model.encode_image(tensors[s:s + args.batch_size])

        def pipeline(run: int) -> None:
            ctx = Context(store=ArtifactStore(Path(tmp) / f"cache{run}"), workers=args.workers)
            index_gallery(ctx, backbone, gallery, batch_size=args.batch_size)

        if args.processes > 1:
            processes(folder, Path(tmp), args)
        bare()  # warm-up: allocator, oneDNN kernels
        t_bare, t_pipe = [], []
        for run in range(args.repeats):  # interleaved, so drift hits both alike
            t = time.perf_counter()
            bare()
            t_bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            pipeline(run)
            t_pipe.append(time.perf_counter() - t)
    n = len(tensors)
    bare_ips, pipe_ips = n / min(t_bare), n / min(t_pipe)
    print(f"model {args.model} (random weights), {n} images of {side}px, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"bare encode_image loop (preprocessed, in memory): {bare_ips:8.1f} images/s")
    print(f"zscir index (read, decode, encode, write):        {pipe_ips:8.1f} images/s")
    print(f"ratio: {pipe_ips / bare_ips:.3f}")


def processes(folder: Path, tmp: Path, args) -> None:
    """The `zscir index` command in one process, then under torchrun with N; wall seconds of each."""
    threads = max(1, torch.get_num_threads())
    n = args.processes
    part = args.part_size or -(-args.images // n)
    common = ["-m", "zscir_cli", "index", str(folder), "--model", args.model, "--pretrained", "none",
              "--batch-size", str(args.batch_size), "--workers", str(args.workers if args.workers is not None else 0),
              "--json"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = {1: [sys.executable, *common, "--cache-dir", str(tmp / "p1")],
            n: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(port),
                *common, "--part-size", str(part), "--cache-dir", str(tmp / f"p{n}")]}
    wall = {}
    for count, cmd in runs.items():
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // count))}
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall[count] = time.perf_counter() - t
    print(f"zscir index command, {args.images} images, {threads} threads in all (start and model load included):")
    for count, sec in wall.items():
        print(f"  {count} process(es): {sec:6.1f} s  {args.images / sec:7.1f} images/s")
    print(f"  speed-up with {n} processes: {wall[1] / wall[n]:.2f}")


if __name__ == "__main__":
    main()
