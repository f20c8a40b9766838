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
from zscir_cli.core import faults, locks
from zscir_cli.core.digests import canonical_json, content_key
from zscir_cli.core.durable import fsync_path, settle, write_failure
from zscir_cli.core.errors import UserError

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
    built: bool = field(default=False, compare=False, repr=False)  # made by this call, not found

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
        self.ensure_writable()  # the lock file lives in the cache: say so if it cannot be written

        def waiting(who: str) -> None:
            if on_wait is not None:
                on_wait(f"waiting for {who}, which is building {kind}/{key}")

        return locks.hold(self.root, f"{kind}-{key}", on_wait=waiting)

    def get_or_build(self, kind: str, key: str, build: Callable[[], None], *, force: bool = False,
                     on_wait: Callable[[str], None] | None = None) -> tuple[Artifact, bool]:
        """(the artifact, whether this call built it). `build()` writes it with `create`; with
        `force` the artifact found is removed first. Checked, then built under the artifact's lock
        after checking again: a second identical command waits, then finds the first's."""
        found = self.get(kind, key)
        if found is not None and not force:
            return found, False
        with self.lock(kind, key, on_wait=on_wait):
            found = self.get(kind, key)
            if found is not None and not force:
                return found, False
            if found is not None:
                self.remove(found)
            build()
        return self.get(kind, key), True  # type: ignore[return-value]

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
               model: dict[str, Any] | None = None, seed: int | None = None,
               on_wait: Callable[[str], None] | None = None) -> Iterator[Pending]:
        """Write an artifact atomically. On any exception (Ctrl-C too) nothing is left behind.

        The artifact's lock is held throughout (re-entrant: a caller that already holds it, as a
        check-then-build does, keeps it), so `cache rm` can tell a live write from a dead one."""
        with self.lock(kind, key, on_wait):
            self._sweep(kind, key)
            tmp = self.root / TMP_DIR / temp_name(kind, key)
            manifest: dict[str, Any] = {
                "schema_version": SCHEMA_VERSION, "kind": kind, "key": key,
                "description": description, "versions": library_versions(), "config": config,
                "model": model, "seed": seed, "inputs": inputs or [],
            }
            try:
                tmp.mkdir(parents=True)
                yield Pending(kind, key, tmp, manifest)
                self._publish(tmp, kind, key, manifest)
            except BaseException as e:
                shutil.rmtree(tmp, ignore_errors=True)
                failure = write_failure(e, self.root)
                if failure is not None:
                    raise failure from e
                raise

    def _sweep(self, kind: str, key: str) -> None:
        """Remove what killed writers of this artifact left under `.tmp/`: under its lock, no
        other process can be writing it."""
        for prefix in ("", "rm-"):
            for path in (self.root / TMP_DIR).glob(f"{prefix}{kind}-{key}-*"):
                parsed = parse_temp_name(path.name)
                if parsed is not None and parsed[:2] == (kind, key) and parsed[2] != os.getpid():
                    shutil.rmtree(path, ignore_errors=True)

    def _publish(self, tmp: Path, kind: str, key: str, manifest: dict[str, Any]) -> None:
        now = time.time()
        manifest["created_unix"] = now
        manifest["created"] = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(
            timespec="seconds")
        faults.point("cache:before-manifest")
        # manifest last: its presence marks the artifact complete
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str)
                                    + "\n", encoding="utf-8")
        settle(tmp)
        final = self.root / kind / key
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # an earlier writer won, or a broken leftover: replace it
            if _read_manifest(final) is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(final)
        faults.point("cache:before-rename")
        os.rename(tmp, final)
        fsync_path(final.parent)
        faults.point("cache:after-rename")

    def remove(self, artifact: Artifact) -> None:
        # rename first so a half-deleted folder is never read as an artifact
        with self.lock(artifact.kind, artifact.key):
            trash = self.root / TMP_DIR / ("rm-" + temp_name(artifact.kind, artifact.key))
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(artifact.path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    @contextlib.contextmanager
    def scratch(self, label: str) -> Iterator[Path]:
        """A private folder under `.tmp/` for the block, removed after it; its lock is held, so
        `cache rm --incomplete` knows it is in use (a `tempfile` folder there would look dead)."""
        key = uuid.uuid4().hex[:16]
        with self.lock(label, key):
            path = self.root / TMP_DIR / temp_name(label, key)
            path.mkdir(parents=True)
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)

    def leftovers(self) -> list[Leftover]:
        """What interrupted writes and removals left under `.tmp/`, each marked live when the
        process writing it still holds its artifact's lock."""
        found = []
        for path in self.incomplete():
            parsed = parse_temp_name(path.name)
            if parsed is None:
                found.append(Leftover(path, None, None, None, False))
                continue
            kind, key, pid = parsed
            found.append(Leftover(path, kind, key, pid, locks.is_held(self.root, f"{kind}-{key}")))
        return found


@dataclass
class Leftover:
    """A folder under `.tmp/`: an artifact being (or once being) written, or removed."""

    path: Path
    kind: str | None
    key: str | None
    pid: int | None
    live: bool

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.key}" if self.kind else self.path.name


def temp_name(kind: str, key: str) -> str:
    """A name no other write (this process's or another's) can take: kind, key, pid, random."""
    return f"{kind}-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def parse_temp_name(name: str) -> tuple[str, str, int] | None:
    """(kind, key, pid) of a `temp_name` (a removal's `rm-` prefix is dropped); kinds may hold
    dashes, keys and pids do not."""
    parts = name.removeprefix("rm-").rsplit("-", 3)
    if len(parts) != 4 or not parts[0] or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


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
    "Leftover",
    "Pending",
    "canonical_json",
    "identity",
    "library_versions",
    "parse_temp_name",
    "resolve_cache_root",
    "temp_name",
    "write_failure",
]
