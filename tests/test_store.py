"""Workspace integrity: damaged metadata is rebuilt or ignored (never a JSONDecodeError), two datasets keep their own
lineage, what killed runs left behind is cleaned by the next run of that stage, and a live writer is left alone."""

import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from taoflow.datasets.demo import generate_crpd
from taoflow.fsutil import tree_digest
from taoflow.pipeline import LINEAGE_DIR, RunConfig, stage_convert, stage_split
from taoflow.store import HashCache, Store
from tests.forking import FORK


def dataset(root, seed, n=6):
    generate_crpd(root, num_images=n, image_size=(96, 72), seed=seed, split_fractions=(1.0, 0.0, 0.0),
                  progress=False)
    return root


def add_image(raw, name):
    src = sorted((raw / "train/images").iterdir())[0]
    shutil.copy(src, raw / "train/images" / f"{name}.jpg")
    shutil.copy(raw / "train/labels" / f"{src.stem}.txt", raw / "train/labels" / f"{name}.txt")


@pytest.fixture
def ws(tmp_path):
    raw_a, raw_b = dataset(tmp_path / "raw_a", 1), dataset(tmp_path / "raw_b", 2)
    cfg = {name: RunConfig(workspace=str(tmp_path / "ws"), dataset_path=str(raw), workers=1)
           for name, raw in (("a", raw_a), ("b", raw_b))}
    return Store(tmp_path / "ws"), cfg, {"a": raw_a, "b": raw_b}


def lineage_files(store):
    return sorted((store.root / "convert" / LINEAGE_DIR).glob("*.json"))


def test_two_datasets_on_one_workspace_keep_their_own_lineage(ws):
    store, cfg, raw = ws
    first_a, first_b = stage_convert(store, cfg["a"]), stage_convert(store, cfg["b"])
    assert len(lineage_files(store)) == 2
    add_image(raw["a"], "new_a")
    add_image(raw["b"], "new_b")
    second_a, second_b = stage_convert(store, cfg["a"]), stage_convert(store, cfg["b"])
    # each continues from its own previous conversion, converting only its new image
    assert (second_a.meta["previous"], second_a.meta["images_converted"]) == (first_a.key, 1)
    assert (second_b.meta["previous"], second_b.meta["images_converted"]) == (first_b.key, 1)
    records = {json.loads(p.read_text())["dataset"]: json.loads(p.read_text())["key"] for p in lineage_files(store)}
    assert records == {str(raw["a"].resolve()): second_a.key, str(raw["b"].resolve()): second_b.key}


def _convert_in_child(workspace, raw, ready, go):
    ready.set()
    go.wait(30)
    stage_convert(Store(workspace), RunConfig(workspace=workspace, dataset_path=raw, workers=1))


def test_concurrent_runs_on_two_datasets_both_record_their_lineage(ws):
    store, cfg, raw = ws
    ctx = FORK
    go = ctx.Event()
    children = []
    for name in ("a", "b"):
        ready = ctx.Event()
        child = ctx.Process(target=_convert_in_child, args=(cfg[name].workspace, str(raw[name]), ready, go))
        child.start()
        ready.wait(30)
        children.append(child)
    go.set()
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    assert len(lineage_files(store)) == 2
    assert stage_convert(store, cfg["a"]).cached and stage_convert(store, cfg["b"]).cached


@pytest.mark.parametrize("damage", ["", "{\"abc", "[1, 2]", "\x00\x00\x00"])
def test_damaged_lineage_and_legacy_index_are_ignored_with_a_warning(ws, caplog, damage):
    store, cfg, raw = ws
    first = stage_convert(store, cfg["a"])
    (lineage,) = lineage_files(store)
    lineage.write_text(damage)  # what a kill during a plain write left
    (store.root / "convert" / "index.json").write_text(damage)  # the file earlier versions wrote
    add_image(raw["a"], "new")
    with caplog.at_level(logging.WARNING, logger="taoflow"):
        second = stage_convert(store, cfg["a"])
    # no lineage to continue from: a full conversion, correct, and the record is rewritten whole
    assert second.key != first.key and second.meta["images_converted"] == 7 and "previous" not in second.meta
    if damage not in ("[1, 2]",):
        assert "damaged conversion lineage" in caplog.text
    assert json.loads(lineage.read_text())["key"] == second.key
    assert stage_convert(store, cfg["a"]).cached


def test_legacy_index_json_is_still_read(ws):
    store, cfg, raw = ws
    first = stage_convert(store, cfg["a"])
    (lineage,) = lineage_files(store)
    (store.root / "convert" / "index.json").write_text(json.dumps({lineage.stem: {"key": first.key}}))
    lineage.unlink()
    add_image(raw["a"], "new")
    assert stage_convert(store, cfg["a"]).meta["previous"] == first.key


def test_damaged_store_output_is_computed_again(ws, caplog):
    store, cfg, _ = ws
    convert = stage_convert(store, cfg["a"])
    split = stage_split(store, cfg["a"], convert)
    meta = Path(split.path) / ".meta.json"
    meta.chmod(0o644)
    meta.write_text('{"counts": ')  # truncated
    with caplog.at_level(logging.WARNING, logger="taoflow"):
        again = stage_split(store, cfg["a"], convert)
    assert not again.cached and again.key == split.key and again.meta["counts"] == split.meta["counts"]
    assert "is damaged" in caplog.text
    assert stage_split(store, cfg["a"], convert).cached


def test_a_damaged_manifest_means_a_full_conversion(ws):
    store, cfg, raw = ws
    first = stage_convert(store, cfg["a"])
    manifest = Path(first.path) / "manifest.json"
    manifest.chmod(0o644)
    manifest.write_text("")
    add_image(raw["a"], "new")
    second = stage_convert(store, cfg["a"])
    assert second.meta["images_converted"] == 7 and "previous" not in second.meta


def _fake_tmp(stage_dir, name, age=0.0):
    d = stage_dir / name
    (d / "out").mkdir(parents=True)
    f = d / "out" / "half.txt"
    f.write_text("half of an output")
    f.chmod(0o444)
    (d / "out").chmod(0o555)  # even read-only leftovers go
    if age:
        old = time.time() - age
        os.utime(d, (old, old))
    return d


def test_stale_temp_dirs_are_cleaned_by_the_next_run_of_the_stage(ws):
    store, cfg, _ = ws
    convert = stage_convert(store, cfg["a"])
    stage_dir = store.root / "split"
    stage_dir.mkdir(parents=True, exist_ok=True)
    stale = [_fake_tmp(stage_dir, ".tmp-0123456789abcdef01234567-abc_123x"),  # a killed run of another key
             _fake_tmp(stage_dir, ".tmp-oldrun9", age=3 * 24 * 3600)]  # an unkeyed one, days old
    recent_unkeyed = _fake_tmp(stage_dir, ".tmp-recent9")
    live = _fake_tmp(stage_dir, ".tmp-fedcba9876543210fedcba98-live_123")
    old_file = stage_dir / ".index.json.tmp-123-abcd"
    old_file.write_text("")
    os.utime(old_file, (time.time() - 7200, time.time() - 7200))
    other_stage = _fake_tmp(store.root / "train", ".tmp-0123456789abcdef01234567-zzzzzzzz")
    with store.lock("split", "fedcba9876543210fedcba98"):  # another process computing that key right now
        stage_split(store, cfg["a"], convert)
    assert [p.exists() for p in stale] == [False, False] and not old_file.exists()
    assert live.exists() and recent_unkeyed.exists() and other_stage.exists()  # live, unknown, not this stage


def test_a_killed_run_of_the_same_key_is_cleaned_and_redone(ws):
    store, cfg, _ = ws
    convert = stage_convert(store, cfg["a"])
    split = stage_split(store, cfg["a"], convert)
    _make_writable_tree(Path(split.path))
    shutil.rmtree(split.path)
    leftover = _fake_tmp(store.root / "split", f".tmp-{split.key}-killed01")
    again = stage_split(store, cfg["a"], convert)
    assert not again.cached and not leftover.exists()
    assert sorted(p.name for p in (store.root / "split").iterdir() if p.name.startswith(".tmp-")) == []


def _make_writable_tree(root):
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.mark.parametrize("content", ["", "[]", '{"x": 5}', "{trunc", '"text"'])
def test_damaged_hash_cache_is_ignored(tmp_path, content):
    path = tmp_path / ".hash-cache.json"
    path.write_text(content)
    cache = HashCache(path)
    f = tmp_path / "a.txt"
    f.write_text("data")
    assert cache.sha256(f) == cache.sha256(f) and (cache.hits, cache.misses) == (1, 1)
    cache.save()
    assert list(json.loads(path.read_text())) == [str(f.resolve())]
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_store_never_changes_the_mode_of_linked_user_images(ws):
    store, cfg, raw = ws
    images = sorted((raw["a"] / "train/images").iterdir())
    for image in images:
        image.chmod(0o444)  # the user's read-only images: the store links them and must leave them read-only
    before = {p: p.stat().st_mode for p in images}
    digest = tree_digest(raw["a"])
    convert = stage_convert(store, cfg["a"])
    meta = Path(convert.path) / ".meta.json"
    meta.chmod(0o644)
    meta.write_text("")  # damaged: the next run replaces the directory (making it writable to delete it)
    stage_convert(store, cfg["a"])
    assert {p: p.stat().st_mode for p in images} == before and tree_digest(raw["a"]) == digest


@pytest.mark.parametrize("kind", ["flock", "file"])
def test_stages_leave_a_store_that_passes_the_integrity_check(ws, monkeypatch, kind):
    monkeypatch.setenv("TAOFLOW_STORE_LOCK", kind)
    store, cfg, raw = ws
    store = Store(cfg["a"].workspace)
    convert = stage_convert(store, cfg["a"])
    split = stage_split(store, cfg["a"], convert)
    assert store.lock_mode == kind
    assert store.check() == []
    files = json.loads((Path(split.path) / ".files.json").read_text())
    assert files and all(Path(split.path, rel).stat().st_size == size for rel, size in files.items())
    assert not (Path(split.path).stat().st_mode & 0o022)  # readable by the other machines' workers, not writable
    add_image(raw["a"], "new_a")
    assert not stage_convert(store, cfg["a"]).cached
    assert store.check() == []
