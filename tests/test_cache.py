"""The artifact cache: keys, atomic writes, listing and removal, the root's resolution."""

from __future__ import annotations

import json

import pytest

from zscir_cli.core.cache import ArtifactStore, resolve_cache_root
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
