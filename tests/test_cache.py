"""The artifact cache: keys, atomic writes, listing and removal, the root's resolution."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from zscir_cli.core.cache import ArtifactStore, parse_temp_name, resolve_cache_root, temp_name
from zscir_cli.core.errors import UserError


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("ZSCIR_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_root() == (tmp_path / "xdg" / "zscir").resolve()
    monkeypatch.setenv("ZSCIR_HOME", str(tmp_path / "home"))
    assert resolve_cache_root() == (tmp_path / "home").resolve()
    assert resolve_cache_root(tmp_path / "flag") == (tmp_path / "flag").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("ZSCIR_HOME")
    assert resolve_cache_root() == (resolve_cache_root.__globals__["Path"].home() / ".cache" / "zscir").resolve()


def test_key_depends_on_config_and_inputs():
    k = ArtifactStore.key_for("index", {"a": 1, "b": [1, 2]})
    assert k == ArtifactStore.key_for("index", {"b": [1, 2], "a": 1})  # canonical: order-free
    assert k != ArtifactStore.key_for("index", {"a": 2, "b": [1, 2]})
    assert k != ArtifactStore.key_for("index", {"a": 1, "b": [1, 2]}, [{"kind": "dataset", "key": "x"}])
    assert k != ArtifactStore.key_for("dataset", {"a": 1, "b": [1, 2]})


def test_complete_write_has_manifest_with_versions(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.create("thing", "k1", config={"x": 1}, seed=7, description="a thing",
                      model={"name": "m", "pretrained": None}) as out:
        (out.path / "data.bin").write_bytes(b"12345")
        out.manifest["count"] = 5
    art = store.get("thing", "k1")
    assert art is not None and (art.path / "data.bin").read_bytes() == b"12345"
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["seed"] == 7 and m["config"] == {"x": 1} and m["count"] == 5
    assert set(m["versions"]) == {"zscir", "open_clip_torch", "torch"}
    assert m["schema_version"] == 1 and m["model"]["name"] == "m"
    assert [a.key for a in store.list()] == ["k1"]
    assert store.incomplete() == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_write_leaves_nothing_visible(tmp_path, exc):
    store = ArtifactStore(tmp_path)
    with pytest.raises(type(exc)), store.create("thing", "k2", config={}) as out:
        (out.path / "half.bin").write_bytes(b"half")
        raise exc
    assert store.get("thing", "k2") is None
    assert store.list() == []
    assert not (tmp_path / "thing" / "k2").exists()
    assert store.incomplete() == []  # the temporary folder is gone too


def test_folder_without_manifest_is_never_trusted(tmp_path):
    store = ArtifactStore(tmp_path)
    (tmp_path / "thing" / "k3").mkdir(parents=True)  # as a killed process could leave it
    (tmp_path / "thing" / "k3" / "data.bin").write_bytes(b"x")
    assert store.get("thing", "k3") is None and store.list() == []
    with store.create("thing", "k3", config={}) as out:  # a later run replaces it
        (out.path / "data.bin").write_bytes(b"good")
    assert (store.get("thing", "k3").path / "data.bin").read_bytes() == b"good"


def test_resolve_and_remove(tmp_path):
    store = ArtifactStore(tmp_path)
    for key in ("abc111", "abc222", "def333"):
        with store.create("thing", key, config={"k": key}):
            pass
    assert store.resolve("def").key == "def333"
    assert store.resolve("thing/abc1").key == "abc111"
    with pytest.raises(UserError, match="matches 2"):
        store.resolve("abc")
    with pytest.raises(UserError, match="No artifact"):
        store.resolve("zzz")
    store.remove(store.resolve("def"))
    assert sorted(a.key for a in store.list()) == ["abc111", "abc222"]


def test_root_under_a_file_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="not writable"):
        ArtifactStore(blocker / "cache").ensure_writable()


# -- locks, temp names ---------------------------------------------------------------------------

def _held_elsewhere(root, name) -> bool:
    """Whether another process sees `name`'s lock as held (this process's own view is not proof)."""
    code = ("import sys; from pathlib import Path; from zscir_cli.core import locks; "
            "print(locks.is_held(Path(sys.argv[1]), sys.argv[2]))")
    res = subprocess.run([sys.executable, "-c", code, str(root), name], capture_output=True,
                         text=True, check=True)
    return res.stdout.strip() == "True"


def test_create_holds_the_artifact_lock_and_is_reentrant(tmp_path):
    store = ArtifactStore(tmp_path)
    assert not _held_elsewhere(tmp_path, "thing-k1")
    with store.create("thing", "k1", config={}) as out:
        (out.path / "a").write_bytes(b"1")
        assert _held_elsewhere(tmp_path, "thing-k1")
    assert not _held_elsewhere(tmp_path, "thing-k1")
    with store.lock("thing", "k2"), store.create("thing", "k2", config={}) as out:  # nested hold
        (out.path / "a").write_bytes(b"2")
    assert store.get("thing", "k2") is not None and not _held_elsewhere(tmp_path, "thing-k2")


def test_temp_names_are_unique_and_parse_back():
    names = {temp_name("text-features", "0123456789abcdef") for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert parse_temp_name(name) == ("text-features", "0123456789abcdef", os.getpid())
        assert parse_temp_name("rm-" + name) == ("text-features", "0123456789abcdef", os.getpid())
    assert parse_temp_name(".probe-abc") is None and parse_temp_name("junk") is None


def test_scratch_folder_is_marked_in_use_then_removed(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.scratch("backbone-eval") as path:
        (path / "weights.safetensors").write_bytes(b"w")
        kind, key, pid = parse_temp_name(path.name)
        assert (kind, pid) == ("backbone-eval", os.getpid())
        assert _held_elsewhere(tmp_path, f"{kind}-{key}")  # so cache rm --incomplete keeps it
        assert [x.live for x in store.leftovers()] == [True]
    assert not path.exists() and store.leftovers() == []


# -- disk full, permission denied ------------------------------------------------------------------

def _fail_with(code):
    def fail(self, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(self))
    return fail


@pytest.mark.parametrize("code,what", [(errno.ENOSPC, "the disk is full"),
                                       (errno.EDQUOT, "quota"),
                                       (errno.EACCES, "permission denied"),
                                       (errno.EROFS, "read-only")])
@pytest.mark.parametrize("where", ["content", "manifest"])
def test_write_failure_is_a_user_error_and_leaves_nothing(tmp_path, monkeypatch, code, what, where):
    store = ArtifactStore(tmp_path)
    with pytest.raises(UserError) as info, store.create("thing", "k", config={}) as out:
        (out.path / "data.bin").write_bytes(b"12345")
        # the manifest is written with write_text, the content here with write_bytes
        monkeypatch.setattr(Path, "write_bytes" if where == "content" else "write_text",
                            _fail_with(code))
        if where == "content":
            (out.path / "more.bin").write_bytes(b"x")
    monkeypatch.undo()
    failed = "more.bin" if where == "content" else "manifest.json"
    assert what in info.value.message and failed in info.value.message
    assert "--cache-dir" in info.value.hint
    assert list((tmp_path / ".tmp").iterdir()) == []
    assert not (tmp_path / "thing").exists() or list((tmp_path / "thing").iterdir()) == []
    assert store.get("thing", "k") is None


def test_os_error_in_a_foreign_writers_message_is_recognised(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(UserError, match="the disk is full"), store.create("thing", "k", config={}):
        # as safetensors reports it
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                           "message: \"No space left on device\" })")
    with pytest.raises(ValueError, match="unrelated"), store.create("thing", "k", config={}):
        raise ValueError("unrelated")  # other errors pass through unchanged
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_index_on_a_full_disk_exits_2_naming_the_path(cli, cache, image_folder, monkeypatch):
    real = Path.write_text

    def full_under_tmp(self, *args, **kwargs):  # the disk fills up while the index is written
        if (cache / ".tmp") in self.parents:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_under_tmp)
    code, _, err = cli("index", image_folder, "--model", "zscir-tiny-vit", "--pretrained", "none",
                       "--workers", "0", "--cache-dir", cache)
    assert code == 2, err
    assert "disk is full" in err and str(cache / ".tmp") in err and "--cache-dir" in err
    assert list((cache / ".tmp").iterdir()) == []
    assert list(cache.glob("index/*")) == []


# -- permissions and durability --------------------------------------------------------------------

@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_artifact_files_get_ordinary_permissions(tmp_path, umask, file_mode, dir_mode):
    import numpy as np
    from safetensors.numpy import save_file

    store = ArtifactStore(tmp_path)
    old = os.umask(umask)
    try:
        with store.create("thing", "k", config={}) as out:
            save_file({"w": np.zeros(3, dtype=np.float32)}, str(out.path / "weights.safetensors"))
            (out.path / "sub").mkdir()
            fd = os.open(out.path / "sub" / "secret.bin", os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
    finally:
        os.umask(old)
    art = store.get("thing", "k").path
    for f in ("weights.safetensors", "sub/secret.bin", "manifest.json"):
        assert stat.S_IMODE((art / f).stat().st_mode) == file_mode, f
    assert stat.S_IMODE((art / "sub").stat().st_mode) == dir_mode
    assert stat.S_IMODE(art.stat().st_mode) == dir_mode


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_manifest_content_and_rename_are_fsynced(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    store = ArtifactStore(tmp_path)
    with store.create("thing", "k", config={}) as out:
        (out.path / "data.bin").write_bytes(b"1")
        tmp = out.path
    assert str(tmp / "data.bin") in synced and str(tmp / "manifest.json") in synced
    assert synced.index(str(tmp / "manifest.json")) < synced.index(str(tmp))  # files, then folder
    assert synced[-1] == str(tmp_path / "thing")  # the rename, made durable last


# -- cache rm ---------------------------------------------------------------------------------------

def _two_things(store):
    for key in ("aaa111", "bbb222"):
        with store.create("thing", key, config={"k": key}) as out:
            (out.path / "x").write_bytes(b"x")


def test_rm_dry_run_and_confirmation(cli, tmp_path, monkeypatch):
    import zscir_cli.cli.cache as cache_cli

    store = ArtifactStore(tmp_path)
    _two_things(store)
    code, out, err = cli("cache", "rm", "--all", "--dry-run", "--cache-dir", tmp_path)
    assert code == 0 and "would remove thing/aaa111" in out and "would remove thing/bbb222" in out
    assert len(store.list()) == 2
    code, out, err = cli("cache", "rm", "aaa", "--cache-dir", tmp_path)  # no terminal to ask on
    assert code == 2 and "--yes" in err and "without confirmation" in err and len(store.list()) == 2
    monkeypatch.setattr(cache_cli, "_interactive", lambda: True)
    monkeypatch.setattr(cache_cli.typer, "confirm", lambda *a, **k: False)
    code, out, err = cli("cache", "rm", "aaa", "--cache-dir", tmp_path)
    assert code == 0 and "nothing was removed" in err and len(store.list()) == 2
    monkeypatch.setattr(cache_cli.typer, "confirm", lambda *a, **k: True)
    code, out, err = cli("cache", "rm", "aaa", "--cache-dir", tmp_path)
    assert code == 0 and "removed thing/aaa111" in out
    assert [a.key for a in store.list()] == ["bbb222"]


class _Holder:
    """Another process holding a lock until closed, as a live writer does."""

    def __init__(self, root, name):
        code = ("import sys; from pathlib import Path; from zscir_cli.core import locks\n"
                "with locks.hold(Path(sys.argv[1]), sys.argv[2]):\n"
                "    print('held', flush=True); sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(root), name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_rm_never_removes_what_a_live_process_writes(cli, tmp_path):
    store = ArtifactStore(tmp_path)
    _two_things(store)
    live = tmp_path / ".tmp" / "index-feedfeedfeedfeed-4242-0badc0de"
    dead = tmp_path / ".tmp" / "index-deaddeaddeaddead-4343-0badc0de"
    trash = tmp_path / ".tmp" / "rm-thing-cafecafecafecafe-4444-0badc0de"
    for p in (live, dead, trash):
        p.mkdir(parents=True)
        (p / "features.npy").write_bytes(b"half")
    holders = [_Holder(tmp_path, "index-feedfeedfeedfeed"), _Holder(tmp_path, "thing-aaa111")]
    try:
        code, out, err = cli("cache", "ls", "--json", "--cache-dir", tmp_path)
        states = {(e["key"], e["state"], e.get("live")) for e in json.loads(out)}
        assert ("feedfeedfeedfeed", "incomplete", True) in states
        assert ("deaddeaddeaddead", "incomplete", False) in states
        code, out, err = cli("cache", "rm", "--all", "--incomplete", "--yes", "--cache-dir", tmp_path)
        assert code == 0, err
        assert live.is_dir() and not dead.exists() and not trash.exists()
        assert "kept incomplete write index/feedfeedfeedfeed" in err and "is writing" in err
        assert "kept thing/aaa111" in err and "removed thing/bbb222" in out
        assert [a.key for a in store.list()] == ["aaa111"]
    finally:
        for h in holders:
            h.close()
    code, out, err = cli("cache", "rm", "--incomplete", "--yes", "--cache-dir", tmp_path)
    assert code == 0 and not live.exists() and list((tmp_path / ".tmp").iterdir()) == []


def test_unfinished_sharded_builds_are_listed_and_pruned_unless_live(cli, tmp_path):
    """The parts a stopped sharded (torchrun) build left in `.parts/` show in `cache ls`
    with how many parts were written; `rm --incomplete` removes them, but not a build a process
    (any rank) is working on."""
    for key, written in (("aaaa000011112222", 2), ("bbbb000011112222", 1)):
        folder = tmp_path / ".parts" / f"index-{key}"
        (folder / "log").mkdir(parents=True)
        (folder / "layout.json").write_text(json.dumps({"rows": 100, "part_rows": 32, "parts": 4}))
        for k in range(written):
            (folder / "log" / f"part_{k}.json").write_text("{}")
    holder = _Holder(tmp_path, "parts-index-bbbb000011112222-1")  # rank 1 of a live build
    try:
        code, out, err = cli("cache", "ls", "--cache-dir", tmp_path)
        assert code == 0, err
        assert "unfinished build index/aaaa000011112222: 2 of 4 parts written" in out
        assert "unfinished build index/bbbb000011112222: 1 of 4 parts written" in out and "being built now" in out
        code, out, err = cli("cache", "rm", "--incomplete", "--yes", "--cache-dir", tmp_path)
        assert code == 0, err
        assert not (tmp_path / ".parts" / "index-aaaa000011112222").exists()
        assert (tmp_path / ".parts" / "index-bbbb000011112222" / "layout.json").is_file()
        assert "kept unfinished build index/bbbb000011112222" in err
    finally:
        holder.close()
    code, out, err = cli("cache", "rm", "--incomplete", "--yes", "--cache-dir", tmp_path)
    assert code == 0 and list((tmp_path / ".parts").iterdir()) == []


# -- a moved cache -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_copied_cache_serves_every_method_without_rebuilding(cli, tmp_path, quick_demo):
    """`cp -a` a demo's cache elsewhere, remove the original: every trained method evaluates and
    queries from the copy, and no index or feature cache is built again. (The session's demo
    was built in a folder that no longer exists, and moved: nothing may point there either.)"""
    made, copy = quick_demo.copy(tmp_path / "made"), tmp_path / "elsewhere" / "copy"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(made), str(copy)], check=True)
    made.rename(tmp_path / "gone")  # nothing may point into the original any more
    # nor name where the demo was built; .memo only remembers files' digests by path and size,
    # and hashes again what it does not find there
    for f in copy.rglob("*"):
        if f.is_file() and ".memo" not in f.parts:
            assert quick_demo.built_at.encode() not in f.read_bytes(), f

    def encoded() -> list[str]:
        return sorted(str(p.parent.relative_to(copy)) for kind in ("index", "features", "text-features")
                      for p in copy.glob(f"{kind}/*/manifest.json"))

    before = encoded()
    code, out, err = cli("eval", "shapes", "--split", "test", "--model", "zscir-shapes-rn",
                         "--cache-dir", copy, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert {"pic2word", "stage1", "tscir"} <= set(res["results"]), res["results"].keys()
    assert encoded() == before  # nothing encoded again
    (index,) = [p.parent.name for p in copy.glob("index/*/manifest.json")]
    ref = json.loads((copy / "index" / index / "ids.json").read_text())[0]
    code, out, err = cli("query", ref, "make it green", "--method", "tscir", "--index", index,
                         "--cache-dir", copy, "--json")
    assert code == 0, err
    assert encoded() == before


def test_create_under_an_unwritable_root_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = ArtifactStore(blocker / "cache")
    with pytest.raises(UserError, match="not writable"), store.create("thing", "k", config={}):
        pass
    with pytest.raises(UserError, match="not writable"), store.lock("thing", "k"):
        pass
