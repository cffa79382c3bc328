import io
import json

import pytest

from taoflow.errors import TaoflowError
from taoflow.watch import Watcher, changes, fingerprint, listing, watch


def test_watcher_waits_for_the_folder_to_settle_then_triggers_once():
    w = Watcher(last_triggered="old", settle=30)
    assert not w.observe("a", 0)      # new data seen
    assert not w.observe("b", 10)     # still being copied: the clock restarts
    assert not w.observe("b", 39)
    assert w.observe("b", 40)         # unchanged for 30 s
    w.last_triggered = "b"
    assert not w.observe("b", 100)    # handed over already
    assert not Watcher("same", 0).observe("same", 0)


def test_listing_skips_dot_files_and_changes_counts(tmp_path):
    (tmp_path / "train/images").mkdir(parents=True)
    (tmp_path / "train/images/a.jpg").write_bytes(b"1")
    (tmp_path / "train/.b.jpg.part").write_bytes(b"partial")
    first = listing(tmp_path)
    assert list(first) == ["train/images/a.jpg"]
    (tmp_path / "train/images/a.jpg").write_bytes(b"22")
    (tmp_path / "train/images/c.jpg").write_bytes(b"3")
    assert changes(first, listing(tmp_path)) == (1, 1, 0)
    with pytest.raises(TaoflowError, match="not found"):
        listing(tmp_path / "missing")


def test_watch_once_starts_a_run_only_for_new_data_and_remembers_it(tmp_path):
    data, state = tmp_path / "crpd", tmp_path / "state.json"
    (data / "train/images").mkdir(parents=True)
    (data / "train/images/a.jpg").write_bytes(b"1")
    started = []

    def start(deployment, params):
        started.append((deployment, params))
        return f"run-{len(started)}"

    def once():
        out = io.StringIO()
        watch(data, "train-ssd/crpd", state_file=state, once=True, parameters={"map_floor": 0.9}, start=start,
              out=out)
        return out.getvalue()

    assert "started train-ssd/crpd flow run run-1" in once()
    assert started == [("train-ssd/crpd", {"map_floor": 0.9, "dataset_path": str(data.resolve())})]
    assert "no new data" in once() and len(started) == 1  # a restarted watcher does not re-trigger
    (data / "train/images/b.jpg").write_bytes(b"2")
    assert "1 added, 0 changed, 0 removed" in once() and len(started) == 2
    assert json.loads(state.read_text())["fingerprint"] == fingerprint(listing(data))
