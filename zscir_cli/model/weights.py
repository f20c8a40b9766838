"""Weights files: named by their content, read without running code, fetched without stalling.

A weights file is identified by its sha256, never by where it lies: a cache copied to another
folder keeps every artifact bound to it. Hashing a 1.7 GB checkpoint takes seconds, so the hash
is memoised on disk per (real path, size, mtime), in a small JSON file under the cache root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zscir_cli.core.digests import file_sha256
from zscir_cli.core.durable import write_atomically

MEMO_FILE = Path(".memo") / "weights-sha256.json"
HUB_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 2.0


class WeightsFileError(ValueError):
    """A weights file that cannot be used; the message says what it is and what to do."""


# -- content identity ----------------------------------------------------------------------------

class WeightsMemo:
    """Weights files' content hashes, remembered per (real path, size, mtime): in a small JSON file
    under a cache root (the command's, which the context carries), or, with no root, in this
    process only (nothing is written anywhere)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else None
        self._entries: dict[str, dict[str, Any]] | None = None

    @property
    def path(self) -> Path | None:
        return self.root / MEMO_FILE if self.root is not None else None

    def entries(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None:
                try:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                    self._entries = {k: v for k, v in data.get("files", {}).items() if isinstance(v, dict)}
                except (OSError, ValueError, AttributeError):
                    pass
        return self._entries

    def _save(self) -> None:
        """Write the memo durably; a read-only cache only loses the memo, never the command."""
        if self.path is None:
            return
        live = {k: v for k, v in self.entries().items() if os.path.exists(k)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, (json.dumps({"version": 1, "files": live}, indent=1, sort_keys=True)
                                         + "\n").encode("utf-8"))
        except OSError:
            pass

    def sha256(self, path: str | os.PathLike) -> str:
        """The file's sha256, remembered while the file's size and mtime are unchanged."""
        real = os.path.realpath(path)
        st = os.stat(real)
        entry = self.entries().get(real)
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return str(entry["sha256"])
        digest = file_sha256(Path(real))
        self.entries()[real] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self._save()
        return digest

    def find(self, sha256: str, candidates: Iterable[Path] = ()) -> Path | None:
        """A file on this machine whose content hash is `sha256`: first the files the memo knows
        (unchanged since they were hashed), then `candidates`."""
        for real, entry in list(self.entries().items()):
            if entry.get("sha256") != sha256:
                continue
            try:
                st = os.stat(real)
            except OSError:
                continue
            if entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
                return Path(real)
        for path in candidates:
            if path.is_file() and self.sha256(path) == sha256:
                return path
        return None


# -- reading a user's torch checkpoint -----------------------------------------------------------

def load_torch_file(path: str | os.PathLike) -> Any:
    """Whatever a .pt/.pth/.bin file holds, unpickled with `weights_only=True` (tensors and plain
    containers only: a pickle that names any Python callable is refused before anything of it
    runs). Memory-mapped where the file's format allows, so that a large file whose caller needs
    a small part of it is not read whole."""
    import torch

    path = Path(path)
    if path.stat().st_size == 0:
        raise WeightsFileError(f"{path} is empty (0 bytes): an interrupted download or copy. "
                               "Fetch or copy the checkpoint again.")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # the legacy (not zip) format cannot be mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsFileError(_unsafe_message(path, str(e))) from None
    except Exception as e:  # noqa: BLE001 - a zip/pickle reader fails in many ways on non-checkpoints
        raise WeightsFileError(f"{path} is not a PyTorch checkpoint that can be read "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'no detail'}). "
                               "Give a .safetensors file or a .pt saved with torch.save(state_dict).") from None


def read_torch_state(path: str | os.PathLike) -> dict[str, Any]:
    """The state dict of a .pt/.pth/.bin file (`load_torch_file`): the file's dict of tensors,
    or the one under 'state_dict', without DistributedDataParallel's 'module.' prefixes."""
    import torch

    path = Path(path)
    obj = load_torch_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        what = type(obj).__name__ if not isinstance(obj, dict) else (
            "an empty dict" if not obj else "a dict whose values are not all tensors")
        raise WeightsFileError(f"{path} holds {what}, not a state dict (a dict of parameter names "
                               "to tensors, alone or under 'state_dict'). Save the model's "
                               "state_dict() to it, ideally with safetensors.torch.save_file.")
    return strip_module_prefix(obj)


def strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict saved from DistributedDataParallel ('module.' before every key) as the bare
    module's."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _unsafe_message(path: Path, detail: str) -> str:
    found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", detail, re.IGNORECASE)  # torch words it two ways
    if found is None:
        return (f"{path} is not a PyTorch checkpoint: its pickle stream cannot be read as plain "
                "tensors. Give a .safetensors file or a .pt saved with torch.save(state_dict).")
    return (f"{path} is a pickle that refers to the Python object '{found.group(1)}', which zscir "
            "will not run: a checkpoint is plain tensors, and loading this one would execute "
            "code. If you trust its source, load it once in your own Python, save its state "
            "dict with safetensors.torch.save_file(state_dict, 'weights.safetensors') and pass "
            "that file instead.")


# -- the hub, reachable or not -------------------------------------------------------------------

_probe: dict[str, str | None] = {}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_unreachable(url: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why downloads from `url` (default: the Hugging Face endpoint) cannot work, or None.

    HF_HUB_OFFLINE is honoured; otherwise one TCP connect, bounded by `timeout` including the
    name lookup, decides once per process and host, so no download is retried for a minute.
    """
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return "HF_HUB_OFFLINE is set"
    target = url or os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT
    parsed = urlparse(target)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    where = f"{host}:{port}"
    if where not in _probe:
        _probe[where] = _connect(host, port, timeout)
    return _probe[where]


def _connect(host: str, port: int, timeout: float) -> str | None:
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"{host}:{port} cannot be reached ({e.strerror or type(e).__name__})")

    # the name lookup has no timeout of its own, so the whole attempt runs in a thread we stop
    # waiting for
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"{host}:{port} did not answer within {timeout:g} s"


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Within: huggingface_hub serves cached files only and never opens a connection."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
