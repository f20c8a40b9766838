"""Running the service: the socket bound first (a busy port fails at once), the threads set
before torch and faiss start, then the indexes, their model and methods loaded once and served
by uvicorn until Ctrl-C."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable

from zscir_cli.core.errors import UserError
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.service import threads
from zscir_cli.jobs.service.config import ServeRequest

LOCAL = ("127.0.0.1", "localhost", "::1")


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


def run(ctx: Context, req: ServeRequest, sock: socket.socket, log: Callable[[str], None]) -> None:
    """Serve `req` on `sock` (bound with `bind`) until Ctrl-C; `log` takes the notices and one
    line per request."""
    late = threads.prepare(req.threads)
    import uvicorn  # heavy: torch, faiss and the web stack, after the threads are prepared

    from zscir_cli.jobs.service.service import Limits, load_service  # heavy: torch and faiss
    from zscir_cli.web.app import create_app  # heavy: fastapi

    if late:
        log(f"{' and '.join(late)} started before the service's threads were set: OMP_WAIT_POLICY and "
            "OMP_NUM_THREADS apply to a fresh 'zscir serve' only")
    counts = threads.apply(req.threads)
    service = load_service(ctx, req.indexes, Limits(max_upload_mb=req.max_upload_mb), req.weights)
    app = create_app(service, log=log, io_threads=req.threads.io)
    shown = f"[{req.host}]" if ":" in req.host else req.host
    if req.host not in LOCAL:
        log(f"listening on {req.host}: anyone who can reach this machine can query the service.")
    log(f"serving http://{shown}:{sock.getsockname()[1]}/ (model {service.backbone.spec.label()}; index "
        f"{', '.join(service.indexes)}; methods {', '.join(service.methods)}; threads: torch {counts['torch']}, "
        f"faiss {counts['faiss']}, image reads {req.threads.io}, OpenMP wait {threads.wait_policy()}); "
        "Ctrl-C stops")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
