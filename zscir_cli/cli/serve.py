"""`zscir serve`: the retrieval service and its web page."""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context
from zscir_cli.cli.console import err, warn
from zscir_cli.cli.options import CacheDir, Device
from zscir_cli.core.errors import UserError

Host = Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps the service to this machine.")]
Port = Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")]


def serve(
    index: Annotated[list[str] | None, typer.Option(
        "--index", metavar="KEY", help="Index key to serve; repeat for several (one model) [default: the newest index "
                        "in the cache].", show_default=False)] = None,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    max_upload_mb: Annotated[float, typer.Option(
        min=0.01, help="Largest uploaded image, in MB.")] = 20.0,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Answer composed queries over HTTP, with a page to walk a gallery (GET /)."""
    ctx = make_context(cache_dir, device)
    serve_indexes(ctx, index or [], host, port, max_upload_mb)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound now so that a busy port is a user error and port 0 a real one."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so, and without it a
    # response written in two parts waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"Port {port} on {host} is already in use.",
                            "Pass another --port (or --port 0 for any free one).") from None
        raise UserError(f"Cannot listen on {host}:{port} ({e.strerror or e}).",
                        "Pass --host 127.0.0.1, or an address of this machine.") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve_indexes(ctx, index_refs: list[str], host: str, port: int, max_upload_mb: float = 20.0) -> None:
    """Load the indexes, their model and methods once, then serve until Ctrl-C."""
    import uvicorn

    from zscir_cli.jobs.service.service import Limits, load_service
    from zscir_cli.web.app import create_app

    sock = bind(host, port)  # before loading: a busy port fails at once
    try:
        service = load_service(ctx, index_refs, Limits(max_upload_mb=max_upload_mb))
        app = create_app(service, log=_log_line)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{sock.getsockname()[1]}/"
        if host not in ("127.0.0.1", "localhost", "::1"):
            warn(f"listening on {host}: anyone who can reach this machine can query the service.")
        err.print(f"serving {url} (model {service.backbone.spec.label()}; index "
                  f"{', '.join(service.indexes)}; methods {', '.join(service.methods)}); Ctrl-C stops",
                  highlight=False, markup=False)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _log_line(line: str) -> None:
    """One request, one line on stderr: written plainly, as Rich would cost each request a
    millisecond; the line's user part (the path) is escaped by the app."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
