"""The on-disk cache of the per-CPU encoder backend choice (inference/backend_cache.py): written
atomically, read defensively (corrupt, foreign or mistyped content is ignored, never raised),
keyed by CPU, kernel set, shape, kernel build, torch and threads; off with
EDGE_VLM_BACKEND_CACHE=0; and backend_choice reads it instead of measuring again."""
import json
import os

import pytest
import torch

from edge_vlm.inference import backend_cache, native_vit
from edge_vlm.inference import vit as vit_mod
from edge_vlm.inference.backend_cache import BackendChoice
from edge_vlm.model.config import ModelConfig
from edge_vlm.model.sttf import SparseViT

TIMINGS = {"dense_native": 1.5, "dense_torch": 2.0, "sparse_native": 0.1, "sparse_torch": 0.4}
FIELDS = {"shape": ["SparseViT", [256, 32]], "isa": "avx2", "build": "abc", "torch": "x",
          "threads": 1, "calibration_tokens": 16}


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """A private cache folder (XDG_CACHE_HOME) and a known CPU model name."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(backend_cache.ENV, raising=False)
    monkeypatch.setattr(backend_cache, "_cpu_model", "Test CPU 9000")
    return tmp_path


def _path(home) -> str:
    return os.path.join(str(home), "edge_vlm", backend_cache.FILE_NAME)


def test_a_stored_choice_is_read_back_under_its_key_only(cache_home):
    key = backend_cache.entry_key(FIELDS)
    assert backend_cache.lookup(key) is None                 # nothing yet
    choice = BackendChoice(True, False, "avx2", dict(TIMINGS))
    assert backend_cache.store(key, choice, FIELDS)
    assert backend_cache.cache_path() == _path(cache_home)
    got = backend_cache.lookup(key)
    assert got == BackendChoice(True, False, "avx2", TIMINGS, cached=True)
    assert got.names() == {"dense": "native", "sparse": "torch"}
    doc = json.load(open(_path(cache_home)))
    assert doc["format"] == backend_cache.FORMAT
    assert doc["entries"][key]["key"]["cpu"] == "Test CPU 9000"
    assert os.listdir(os.path.dirname(_path(cache_home))) == [backend_cache.FILE_NAME]  # no temp
    # any field of the key changed (another kernel build, thread count, shape, CPU): a miss
    for name, value in (("build", "def"), ("threads", 2), ("shape", ["SparseViT", [256, 64]])):
        assert backend_cache.lookup(backend_cache.entry_key({**FIELDS, name: value})) is None
    backend_cache._cpu_model = "Another CPU"
    assert backend_cache.lookup(backend_cache.entry_key(FIELDS)) is None


@pytest.mark.parametrize("content", [
    b"\x00\xff garbage", b"", b"[1, 2, 3]", b'{"format": "someone else", "entries": {}}',
    b'{"format": "edge_vlm.backend_choice/1", "entries": [1]}', b"{" * 100000,
])
def test_a_corrupt_or_foreign_file_is_ignored_and_replaced(cache_home, content):
    os.makedirs(os.path.dirname(_path(cache_home)))
    with open(_path(cache_home), "wb") as fh:
        fh.write(content)
    key = backend_cache.entry_key(FIELDS)
    assert backend_cache.lookup(key) is None
    assert backend_cache.store(key, BackendChoice(False, True, "avx2", dict(TIMINGS)), FIELDS)
    assert backend_cache.lookup(key).sparse is True


@pytest.mark.parametrize("entry", [
    None, 3, {"dense": 1, "sparse": True, "isa": "avx2", "timings_ms": TIMINGS},
    {"dense": True, "sparse": True, "isa": 2, "timings_ms": TIMINGS},
    {"dense": True, "sparse": True, "isa": "avx2", "timings_ms": {"dense_native": 1.0}},
    {"dense": True, "sparse": True, "isa": "avx2", "timings_ms": {**TIMINGS, "dense_torch": -1}},
    {"dense": True, "sparse": True, "isa": "avx2", "timings_ms": {**TIMINGS, "dense_torch": "1"}},
    {"dense": True, "sparse": True, "isa": "avx2", "timings_ms": {**TIMINGS, "dense_torch": True}},
])
def test_an_entry_of_the_wrong_form_is_a_miss(cache_home, entry):
    key = backend_cache.entry_key(FIELDS)
    os.makedirs(os.path.dirname(_path(cache_home)))
    with open(_path(cache_home), "w") as fh:
        json.dump({"format": backend_cache.FORMAT, "entries": {key: entry}}, fh)
    assert backend_cache.lookup(key) is None


def test_off_unknown_cpu_or_unwritable_means_no_cache_and_no_error(cache_home, monkeypatch):
    choice = BackendChoice(True, True, "avx2", dict(TIMINGS))
    key = backend_cache.entry_key(FIELDS)
    monkeypatch.setenv(backend_cache.ENV, "0")
    assert backend_cache.cache_path() is None
    assert not backend_cache.store(key, choice) and backend_cache.lookup(key) is None
    assert not os.path.exists(os.path.join(str(cache_home), "edge_vlm"))
    # a file named by the variable; its folder cannot be created (a file is in the way)
    blocker = cache_home / "blocker"
    blocker.write_text("not a folder")
    monkeypatch.setenv(backend_cache.ENV, str(blocker / "sub" / "choice.json"))
    assert not backend_cache.store(key, choice) and backend_cache.lookup(key) is None
    monkeypatch.setenv(backend_cache.ENV, str(cache_home / "named.json"))
    assert backend_cache.store(key, choice) and backend_cache.lookup(key) is not None
    # a choice without its timings (no kernel) is not stored; no CPU model name: no key
    assert not backend_cache.store(key, BackendChoice(False, False))
    backend_cache._cpu_model = ""
    assert backend_cache.entry_key(FIELDS) is None
    assert not backend_cache.store(None, choice) and backend_cache.lookup(None) is None


def test_the_file_keeps_the_latest_entries_only(cache_home, monkeypatch):
    monkeypatch.setattr(backend_cache, "MAX_ENTRIES", 3)
    keys = [backend_cache.entry_key({**FIELDS, "threads": t}) for t in range(5)]
    for k in keys:
        assert backend_cache.store(k, BackendChoice(True, True, "avx2", dict(TIMINGS)))
    assert [backend_cache.lookup(k) is not None for k in keys] == [False, False, True, True, True]


needs_kernel = pytest.mark.skipif(native_vit.load() is None,
                                  reason=f"kernel not loaded: {native_vit.why()}")


@needs_kernel
@torch.no_grad()
def test_backend_choice_measures_once_then_reads_the_disk(cache_home, monkeypatch):
    """A first process measures and writes; a later one (a fresh in-process table) reads the
    same choice from disk without measuring; with the cache off it measures again."""
    monkeypatch.setattr(vit_mod, "_choices", {})
    cfg = ModelConfig(dim=32, heads=2, depth=2)
    torch.manual_seed(3)
    first = vit_mod.backend_choice(SparseViT(cfg).eval())
    assert not first.cached and set(first.timings_ms) == set(TIMINGS)
    assert os.path.isfile(_path(cache_home))
    entry, = json.load(open(_path(cache_home)))["entries"].values()
    assert entry["key"]["build"] == native_vit.build_id() and len(native_vit.build_id()) == 64
    assert entry["key"]["isa"] == native_vit.isa()

    def no_measuring(vit, rounds=2):
        raise AssertionError("calibrate ran although the choice is cached")

    monkeypatch.setattr(vit_mod, "_choices", {})               # "a restarted process"
    monkeypatch.setattr(vit_mod, "calibrate", no_measuring)
    vit = SparseViT(cfg).eval()
    again = vit_mod.backend_choice(vit)
    assert again.cached and (again.dense, again.sparse) == (first.dense, first.sparse)
    assert again.timings_ms == pytest.approx(first.timings_ms)
    assert vit_mod.native_on(vit) == first.sparse
    monkeypatch.setattr(vit_mod, "_choices", {})
    monkeypatch.setenv(backend_cache.ENV, "0")
    with pytest.raises(AssertionError, match="calibrate ran"):
        vit_mod.backend_choice(SparseViT(cfg).eval())
