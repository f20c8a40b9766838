"""A client of `zscir serve` for the benchmarks (serve_latency.py, cotenant.py): the server
started on a free loopback port, multipart queries over one keep-alive connection, and many
clients at once, bounded in count and time."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path


def multipart(fields: dict[str, str], image: bytes | None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if image is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="ref.png"\r\n'
                     "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Client:
    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def query(self, fields: dict[str, str], image: bytes | None = None) -> tuple[int, dict, float]:
        body, ctype = multipart(fields, image)
        start = time.perf_counter()
        self.conn.request("POST", "/api/query", body=body, headers={"Content-Type": ctype})
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data), time.perf_counter() - start


def start_server(cache: Path, key: str, log: Path, extra: list[str] | None = None) -> tuple[subprocess.Popen, int]:
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "zscir_cli", "serve", "--index", key, "--port", "0",
                                 "--host", "127.0.0.1", "--cache-dir", str(cache), "--device", "cpu", *(extra or [])],
                                stdout=subprocess.DEVNULL, stderr=stderr)
    end = time.time() + 300
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"zscir serve exited: {log.read_text()}")
        found = re.search(r"serving http://127\.0\.0\.1:(\d+)/", log.read_text())
        if found:
            return proc, int(found.group(1))
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("zscir serve did not start in 300 s")


def concurrent(port: int, method: str, work: list, clients: int, per_client: int, seconds: float):
    ok, errors, lock = [0], [0], threading.Lock()
    stop = time.time() + seconds

    def run(c: int) -> None:
        client = Client(port)
        for i in range(per_client):
            if time.time() > stop:
                break
            ref, text, image = work[(c * per_client + i) % len(work)]
            fields = {"text": text, "method": method, "k": "10", **({} if image else {"reference": ref})}
            try:
                status, _, _ = client.query(fields, image)
                good = status == 200
            except (OSError, http.client.HTTPException, ValueError):
                good, client = False, Client(port)
            with lock:
                ok[0] += good
                errors[0] += not good

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok[0] / (time.perf_counter() - start), errors[0], ok[0]
