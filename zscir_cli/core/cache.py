"""The content-addressed artifact cache.

Every artifact (a prepared data set, a trained backbone, an index, a feature cache, a run)
lives in `<root>/<kind>/<key>/` with a `manifest.json`. The key is a hash of the canonical JSON
of the artifact's config, its inputs' manifests and the library versions, so the same request
finds the same artifact and a changed one never reuses a stale one.

Writes go to `<root>/.tmp/` and are renamed into place after `manifest.json` is written last:
a reader that finds a manifest finds a complete artifact, and an interrupted write leaves
nothing under `<kind>/` that a later run could trust.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from zscir_cli import __version__
from zscir_cli.core.errors import UserError
from zscir_cli.core.jsonutil import canonical_json, content_key

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TMP_DIR = ".tmp"


def resolve_cache_root(override: str | os.PathLike | None = None) -> Path:
    """--cache-dir > ZSCIR_HOME > $XDG_CACHE_HOME/zscir > ~/.cache/zscir."""
    if override:
        return Path(override).expanduser().resolve()
    if os.environ.get("ZSCIR_HOME"):
        return Path(os.environ["ZSCIR_HOME"]).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "zscir").resolve()


def library_versions() -> dict[str, str]:
    """Versions that change what an artifact contains (read without importing the packages)."""
    out = {"zscir": __version__}
    for dist in ("open_clip_torch", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


@dataclass
class Artifact:
    kind: str
    key: str
    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.key}"

    @property
    def created(self) -> float:
        return float(self.manifest.get("created_unix", 0.0))

    @property
    def description(self) -> str:
        return str(self.manifest.get("description", ""))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


@dataclass
class Pending:
    """An artifact being written: files go under `path`; `manifest` takes extra fields."""

    kind: str
    key: str
    path: Path
    manifest: dict[str, Any]


class ArtifactStore:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = resolve_cache_root(root)

    # -- keys -------------------------------------------------------------------------------
    @staticmethod
    def key_for(kind: str, config: dict[str, Any], inputs: list[dict[str, Any]] | None = None) -> str:
        """Content key: config + the identities of the inputs + library versions."""
        return content_key({"kind": kind, "config": config, "inputs": inputs or [],
                            "versions": library_versions(), "schema": SCHEMA_VERSION})

    # -- reading ----------------------------------------------------------------------------
    def get(self, kind: str, key: str) -> Artifact | None:
        path = self.root / kind / key
        manifest = _read_manifest(path)
        if manifest is None:
            return None
        return Artifact(kind, key, path, manifest)

    def list(self, kind: str | None = None) -> list[Artifact]:
        """Complete artifacts, newest first."""
        if not self.root.is_dir():
            return []
        kinds = [kind] if kind else sorted(p.name for p in self.root.iterdir()
                                           if p.is_dir() and not p.name.startswith("."))
        found = []
        for k in kinds:
            d = self.root / k
            if not d.is_dir():
                continue
            for p in d.iterdir():
                manifest = _read_manifest(p)
                if manifest is not None:
                    found.append(Artifact(k, p.name, p, manifest))
        return sorted(found, key=lambda a: a.created, reverse=True)

    def find(self, kind: str, where: Callable[[Artifact], bool]) -> list[Artifact]:
        return [a for a in self.list(kind) if where(a)]

    def resolve(self, ref: str) -> Artifact:
        """An artifact from 'kind/key', a key, or a unique key prefix."""
        kind, _, key = ref.rpartition("/")
        matches = [a for a in self.list(kind or None) if a.key.startswith(key)] if key else []
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UserError(f"No artifact '{ref}' in the cache at {self.root}.",
                            "Run 'zscir cache ls' to see what is there.")
        raise UserError(f"'{ref}' matches {len(matches)} artifacts: "
                        + ", ".join(a.ref for a in matches[:5]) + ".", "Give more of the key.")

    def incomplete(self) -> list[Path]:
        tmp = self.root / TMP_DIR
        return sorted(tmp.iterdir()) if tmp.is_dir() else []

    # -- writing ----------------------------------------------------------------------------
    def lock(self, kind: str, key: str, on_wait: Callable[[str], None] | None = None):
        """Hold the artifact's inter-process lock: build under it after checking `get` again, so
        two identical commands never both do the work (the second waits, then finds it)."""
        from zscir_cli.core import locks

        def waiting(who: str) -> None:
            if on_wait is not None:
                on_wait(f"waiting for {who}, which is building {kind}/{key}")

        return locks.hold(self.root, f"{kind}-{key}", on_wait=waiting)

    def ensure_writable(self) -> None:
        try:
            (self.root / TMP_DIR).mkdir(parents=True, exist_ok=True)
            probe = self.root / TMP_DIR / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UserError(f"The cache root {self.root} is not writable ({e.strerror}).",
                            "Pass --cache-dir DIR or set ZSCIR_HOME to a folder you can write.") from e

    @contextlib.contextmanager
    def create(self, kind: str, key: str, *, config: dict[str, Any],
               inputs: list[dict[str, Any]] | None = None, description: str = "",
               model: dict[str, Any] | None = None, seed: int | None = None) -> Iterator[Pending]:
        """Write an artifact atomically. On any exception (Ctrl-C too) nothing is left behind."""
        self.ensure_writable()
        tmp = self.root / TMP_DIR / f"{kind}-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "kind": kind, "key": key,
            "description": description, "versions": library_versions(), "config": config,
            "model": model, "seed": seed, "inputs": inputs or [],
        }
        pending = Pending(kind, key, tmp, manifest)
        try:
            yield pending
            now = time.time()
            manifest["created_unix"] = now
            manifest["created"] = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(
                timespec="seconds")
            # manifest last: its presence marks the artifact complete
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str)
                                        + "\n", encoding="utf-8")
            final = self.root / kind / key
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a concurrent writer won, or a broken leftover: replace it
                if _read_manifest(final) is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove(self, artifact: Artifact) -> None:
        # rename first so a half-deleted folder is never read as an artifact
        trash = self.root / TMP_DIR / f"rm-{artifact.kind}-{artifact.key}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(artifact.path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        return None
    return manifest


def identity(artifact: Artifact) -> dict[str, Any]:
    """How an artifact is named among another artifact's inputs."""
    return {"kind": artifact.kind, "key": artifact.key}


__all__ = [
    "Artifact",
    "ArtifactStore",
    "Pending",
    "canonical_json",
    "identity",
    "library_versions",
    "resolve_cache_root",
]
