"""`zscir serve` latency against the same queries through `run_query` in-process (the floor).

On the shapes lab (by default the quick demo's world and trained `tscir`, built in a temporary
cache; `--model ViT-B-32 --pretrained none` indexes the same world's test gallery with a bigger
random model and queries it with `sum`):

- 100 sequential POST /api/query over one keep-alive loopback connection with an id reference,
  and 100 with an uploaded image, against the same queries through `run_query` in this process
  (the upload's floor decodes the same bytes): p50/p95 and the ratio of the p50s (target <= 1.2);
- 8 concurrent clients, bounded in count and time: requests/s and failed requests (target 0);
- the server's resident memory after warm-up and at the end (target: flat).

    python benchmarks/serve_latency.py [--model ViT-B-32 --pretrained none] [--requests 100]

Loopback (127.0.0.1) only. The last line: `serve p50 S ms, in-process p50 P ms, ratio R,
8 clients Q req/s, errors E`.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from cotenant import run as cotenant
from serve_client import Client, concurrent, start_server


def build_world(cache: Path, model: str | None, pretrained: str | None) -> tuple[str, str, list[tuple[str, str]]]:
    """(index key, method, [(reference id, modification)]) on the shapes lab."""
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.datasets.shapes import prepare_shapes
    from zscir_cli.jobs.datasets.store import load_split, resolve_gallery
    from zscir_cli.jobs.demo.run import DemoConfig, run_demo

    ctx = Context(store=ArtifactStore(cache), workers=0)
    cfg = DemoConfig.quick()
    if model is None:
        res = run_demo(ctx, cfg)
        key, method = res.index_key, "tscir"
        data, _ = prepare_shapes(ctx, cfg.world)
    else:
        from zscir_cli.jobs.backbones import open_backbone, resolve_spec
        from zscir_cli.jobs.retrieval.indexing import index_gallery

        data, _ = prepare_shapes(ctx, cfg.world)
        backbone = open_backbone(ctx, resolve_spec(ctx, model, pretrained))
        key = index_gallery(ctx, backbone, resolve_gallery(ctx, f"{data.key}:test")).artifact.key
        method = "sum"
    queries = [(r["reference_id"], r["modification"]) for r in load_split(data, "cir", "test")]
    return key, method, queries


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


class InProcess:
    """The floor: `run_query` in this process on the service's own loaded objects."""

    def __init__(self, cache: Path, key: str, method: str):
        from zscir_cli.core.cache import ArtifactStore
        from zscir_cli.jobs.context import Context
        from zscir_cli.jobs.service.service import load_service

        self.svc = load_service(Context(store=ArtifactStore(cache), workers=0, device="cpu"), [key])
        self.method, self.loaded = self.svc.methods[method], self.svc.indexes[key]

    def query(self, ref: str, text: str, image: bytes | None) -> float:
        from zscir_cli.jobs.retrieval.query import run_query
        from zscir_cli.jobs.retrieval.references import ID, ReferenceArg, resolve, upload_arg

        start = time.perf_counter()
        arg = upload_arg(image, "ref.png") if image is not None else ReferenceArg(ID, ref)
        reference = resolve(arg, self.loaded)
        reference.image()  # the service decodes an upload before it ranks, too
        run_query(self.svc.ctx, self.method, self.loaded, reference, text, k=10)
        return time.perf_counter() - start


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="index the lab with this model instead of the quick demo's")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--requests", type=int, default=100, help="sequential requests of each kind")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=25, help="requests per concurrent client")
    ap.add_argument("--seconds", type=float, default=120, help="time bound of the concurrent run")
    ap.add_argument("--cotenant", action="store_true",
                    help="instead: the service quiet and beside 1 and 2 busy torch processes (cotenant.py)")
    ap.add_argument("--rounds", type=int, default=3, help="--cotenant: rounds of each scenario")
    ap.add_argument("--parts", default="serve,batch,eval",
                    help="--cotenant: what to measure, of serve,batch,eval")
    ap.add_argument("--compare", action="store_true",
                    help="--cotenant: also the threading of earlier versions (--threads 0 --wait-policy active)")
    args = ap.parse_args()
    unknown = set(args.parts.split(",")) - {"serve", "batch", "eval"}
    if unknown:
        ap.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose among serve, batch, eval")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        key, method, queries = build_world(cache, args.model, args.pretrained)
        if args.cotenant:
            cotenant(cache, key, method, queries, args.rounds, args.compare, Path(tmp), set(args.parts.split(",")))
            return
        from zscir_cli.core.cache import ArtifactStore
        from zscir_cli.jobs.context import Context
        from zscir_cli.jobs.retrieval.query import load_index

        gallery = load_index(Context(store=ArtifactStore(cache)), ArtifactStore(cache).resolve(f"index/{key}")).gallery
        pngs = {}
        for ref, _ in queries:
            if ref not in pngs:  # the reference's image as a client would upload it
                buf = io.BytesIO()
                gallery.image(gallery.ids.index(ref)).save(buf, format="PNG")
                pngs[ref] = buf.getvalue()
        by_id = [(queries[i % len(queries)][0], queries[i % len(queries)][1], None) for i in range(args.requests)]
        by_upload = [(r, t, pngs[r]) for r, t, _ in by_id]

        proc, port = start_server(cache, key, Path(tmp) / "serve.log")
        try:
            client, local = Client(port), InProcess(cache, key, method)
            for ref, text, image in (by_id[:5] + by_upload[:5]):  # warm-up
                fields = {"text": text, "method": method, "k": "10", **({} if image else {"reference": ref})}
                assert client.query(fields, image)[0] == 200
                local.query(ref, text, image)
            rss_start = rss_mb(proc.pid)
            serve: dict[str, list[float]] = {"id": [], "upload": []}
            floor: dict[str, list[float]] = {"id": [], "upload": []}
            for name, work in (("id", by_id), ("upload", by_upload)):
                for ref, text, image in work:  # interleaved, so load from elsewhere hits both alike
                    fields = {"text": text, "method": method, "k": "10", **({} if image else {"reference": ref})}
                    status, body, seconds = client.query(fields, image)
                    assert status == 200, body
                    serve[name].append(seconds)
                    floor[name].append(local.query(ref, text, image))
            rps, errors, done = concurrent(port, method, by_id + by_upload, args.clients, args.per_client, args.seconds)
            rss_end = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)

    print(f"model {args.model or 'zscir-shapes-rn (quick demo)'}, method {method}, index {key}, "
          f"{args.requests} sequential requests of each kind, k=10")
    for name in ("id", "upload"):
        s, p = serve[name], floor[name]
        print(f"{name:>6}: serve p50 {pct(s, 50):.1f} ms p95 {pct(s, 95):.1f} ms | in-process p50 "
              f"{pct(p, 50):.1f} ms p95 {pct(p, 95):.1f} ms | ratio {pct(s, 50) / pct(p, 50):.2f}")
    print(f"{args.clients} clients: {done} requests ok, {errors} failed, {rps:.1f} req/s")
    print(f"server RSS: {rss_start:.0f} MB after warm-up, {rss_end:.0f} MB at the end ({rss_end - rss_start:+.0f} MB)")
    s_all, p_all = serve["id"] + serve["upload"], floor["id"] + floor["upload"]
    print(f"serve p50 {pct(s_all, 50):.1f} ms, in-process p50 {pct(p_all, 50):.1f} ms, "
          f"ratio {pct(s_all, 50) / pct(p_all, 50):.2f}, {args.clients} clients {rps:.1f} req/s, errors {errors}")


if __name__ == "__main__":
    main()
