"""`zscir serve`: the retrieval service and its web page."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context
from zscir_cli.cli.options import CacheDir, Device
from zscir_cli.jobs.service.config import ServeRequest as D
from zscir_cli.jobs.service.config import ServeThreads as T

Host = Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps the service to this machine.")]
Port = Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")]


def serve(
    index: Annotated[list[str] | None, typer.Option(
        "--index", metavar="KEY", help="Index key to serve; repeat for several (one model) [default: the newest index "
                        "in the cache].", show_default=False)] = None,
    host: Host = D.host,
    port: Port = D.port,
    max_upload_mb: Annotated[float, typer.Option(
        min=0.01, help="Largest uploaded image, in MB.")] = D.max_upload_mb,
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", metavar="METHOD=FILE", help="Also serve a released mapper: searle=FILE, lincir=FILE or "
                                                 "pic2word=FILE (in place of zscir's own pic2word run); repeat "
                                                 "for several. Formats: see 'zscir query --help'.",
        show_default=False)] = None,
    threads: Annotated[int, typer.Option(
        min=0, help="Compute threads of the model and faiss (0: one per core). One suits a machine shared with "
                    "other work; see docs/service.md.")] = T.compute,
    wait_policy: Annotated[str, typer.Option(
        help="What OpenMP's idle threads do: passive (sleep, leaving the cores to other work) or active "
             "(spin). OMP_WAIT_POLICY, when set, wins.")] = T.wait_policy,
    io_threads: Annotated[int, typer.Option(min=1, help="Threads that read gallery images for thumbnails.")] = T.io,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Answer composed queries over HTTP, with a page to walk a gallery (GET /)."""
    from zscir_cli.core.errors import UserError
    from zscir_cli.web.server import bind, run

    if wait_policy not in ("passive", "active"):
        raise UserError(f"Unknown --wait-policy '{wait_policy}'.", "Use passive or active.")
    req = D(indexes=list(index or []), host=host, port=port, max_upload_mb=max_upload_mb, weights=list(weights or []),
            threads=T(compute=threads, wait_policy=wait_policy, io=io_threads))
    sock = bind(host, port)  # before loading: a busy port fails at once
    try:
        run(make_context(cache_dir, device), req, sock, log_line)
    finally:
        sock.close()


def log_line(line: str) -> None:
    """One request (or notice), one line on stderr: written plainly, as Rich would cost each
    request a millisecond; the line's user part (the path) is escaped by the app."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
