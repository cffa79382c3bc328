"""taoflow.runs without Prefect and without training: the passport with its metrics, the run folder
(passport.json + report.md, written atomically), the tracking record of an earlier run, and RunTracking's rule that a
task is made only for a run that did something (the real ClearML SDK, offline, where one is made)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from taoflow import gates
from taoflow import pipeline as P
from taoflow import runs
from taoflow.store import Store
from tests.clearml_offline import offline_clearml, session_contents  # noqa: F401 (fixture)

STAGES = ("convert", "split", "tfrecords", "train", "evaluate", "prune", "retrain", "evaluate_retrained", "export")
HISTORY = [{"epoch": 1, "loss": 2.0, "mAP": float("nan")}, {"epoch": 2, "loss": 1.0, "mAP": 0.5}]
METRICS = {"AP_lpd": 0.5, "AP_plate": 0.25, "mAP": 0.375}


def _produce(name):
    def produce(tmp, _key):
        if name in ("train", "retrain"):
            return {"history": HISTORY, "checkpoint": "results/weights/ssd_resnet10_epoch_002.pth"}
        if name.startswith("evaluate"):  # a figure beside AP and mAP, which the passport does not keep
            return {"metrics": dict(METRICS, recall_lpd=0.75)}
        if name == "split":
            return {"counts": {"training": 8, "val": 2}}
        if name == "export":
            (tmp / "model.onnx").write_bytes(b"an exported model")
            return {"files": {"onnx": "model.onnx"}}
        return {}
    return produce


def build_stages(store, variant="a"):
    """Every stage of a train-ssd run as committed store outputs: computed the first time, cached after that."""
    return {name: P.run_stage(store, name, {"stage": name, "variant": variant}, _produce(name)) for name in STAGES}


@pytest.fixture
def ws(tmp_path):
    return tmp_path / "ws"


def report_of(tmp_path, passed=True, cached=False):
    """A report as runs.stage_report returns it: real pictures, gates from taoflow.gates."""
    folder = tmp_path / "report"
    folder.mkdir(exist_ok=True)
    images = {}
    for name in ("curves", "detections"):
        images[name] = str(folder / f"{name}.png")
        cv2.imwrite(images[name], np.full((16, 24, 3), 90, np.uint8))
    # no "pr": TAO's evaluate writes no PR curves, and stage_report keeps only the pictures it drew
    checks = [gates.map_floor(METRICS["mAP"], 0.3 if passed else 0.9, per_class={"lpd": 0.5, "plate": 0.25}),
              {"name": "export parity", "passed": True, "skipped": True, "detail": "not checked: encrypted"}]
    rows = [{"model": "retrained", "params": None, "gflops": None, "cpu_latency_ms": None, **METRICS}]
    return {"rows": rows, "gates": checks, "images": images, "path": str(folder), "inference": "inference",
            "cached": cached, "key": "report-key"}


# -- passport and run folder -------------------------------------------------------------------------------------------
def test_model_passport_chains_every_stage_and_keeps_the_final_ap_and_map(ws):
    stages = build_stages(Store(ws))
    passport = runs.model_passport(stages)
    assert list(passport["stages"]) == list(STAGES)
    assert passport["stages"] == {name: s.key for name, s in stages.items()}
    assert passport["metrics"] == METRICS
    assert passport["id"] == P.passport(list(stages.values()), names=list(stages))["id"]
    assert runs.run_dir_of(ws, passport) == ws / "runs" / passport["id"]
    assert runs.model_passport(build_stages(Store(ws), variant="b"))["id"] != passport["id"]


def test_write_run_writes_the_passport_and_a_report_naming_gates_and_model(ws, tmp_path):
    passport = runs.model_passport(build_stages(Store(ws)))
    run_dir = runs.run_dir_of(ws, passport)
    model = tmp_path / "store" / "model.onnx"
    report = report_of(tmp_path, passed=False)
    markdown = runs.write_run(run_dir, passport, report, model)
    assert json.loads((run_dir / runs.PASSPORT_FILE).read_text()) == passport
    assert (run_dir / runs.REPORT_FILE).read_text() == markdown
    assert f"Passport `{passport['id']}`" in markdown
    assert "| mAP floor | **no** | mAP 0.3750 vs floor 0.9" in markdown
    assert "| export parity | yes | not checked: encrypted |" in markdown
    assert f"- exported model: `{model}`" in markdown
    assert f"- curves: `{report['images']['curves']}`" in markdown
    assert f"- inference: `{Path(report['path']) / 'inference'}`" in markdown
    assert all(f"| {name} | `{key}` |" in markdown for name, key in passport["stages"].items())


def test_write_run_replaces_its_files_atomically(ws, tmp_path):
    passport = runs.model_passport(build_stages(Store(ws)))
    run_dir = runs.run_dir_of(ws, passport)
    runs.write_run(run_dir, passport, report_of(tmp_path), tmp_path / "model.onnx")
    first = (run_dir / runs.PASSPORT_FILE).read_text()
    with open(run_dir / runs.PASSPORT_FILE) as reader:  # a reader of the old file, e.g. a deploy in progress
        runs.write_run(run_dir, dict(passport, tracking={"clearml_task": "t-2"}), report_of(tmp_path, passed=False),
                       tmp_path / "model.onnx")
        assert reader.read() == first  # a new file was renamed into place; the old one was not rewritten
    assert json.loads((run_dir / runs.PASSPORT_FILE).read_text())["tracking"] == {"clearml_task": "t-2"}
    assert "| mAP floor | **no** |" in (run_dir / runs.REPORT_FILE).read_text()
    assert sorted(p.name for p in run_dir.iterdir()) == [runs.PASSPORT_FILE, runs.REPORT_FILE]  # no temp files


@pytest.mark.parametrize("content, expected", [
    ('{"id": "p", "tracking": {"clearml_task": "offline-1"}}', {"clearml_task": "offline-1"}),
    (None, None),  # no earlier run
    ('{"id": "p", "tracking": {"clearml_ta', None),  # torn by a crash
    (b"\xff\xfe not text", None),
    ('["a", "list"]', None),
    ('{"id": "p"}', None),
    ('{"id": "p", "tracking": "offline-1"}', None),
    ('{"id": "p", "tracking": {"clearml_task": 7}}', None),
])
def test_recorded_tracking_reads_an_earlier_runs_task_or_nothing(tmp_path, content, expected):
    path = tmp_path / runs.PASSPORT_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert runs.recorded_tracking(path) == expected


# -- RunTracking -------------------------------------------------------------------------------------------------------
def earlier_run(ws, task="offline-earlier"):
    """A first run that computed every stage and recorded its task; returns a re-run's (cached) stages and
    passport."""
    store = Store(ws)
    passport = runs.model_passport(build_stages(store))
    run_dir = runs.run_dir_of(ws, passport)
    run_dir.mkdir(parents=True)
    (run_dir / runs.PASSPORT_FILE).write_text(json.dumps(dict(passport, tracking={"clearml_task": task})))
    stages = build_stages(store)
    assert all(s.cached for s in stages.values())
    return stages, runs.model_passport(stages)


def tracking(ws, enabled):
    return runs.RunTracking(ws, P.RunConfig(workspace=str(ws)), "native", enabled=enabled)


def test_disabled_tracking_makes_no_task_and_links_the_task_of_the_reused_export(ws, tmp_path):
    stages, passport = earlier_run(ws)
    t = tracking(ws, enabled=False)
    t.start(stages, report_of(tmp_path, cached=False), passport)
    assert passport["tracking"] == {"clearml_task": "offline-earlier"}
    t.log(stages, report_of(tmp_path), passport, runs.run_dir_of(ws, passport), tmp_path / "model.onnx")
    t.failed()
    assert t.tracker is None and not (ws / "clearml").exists()
    assert t.close() == {"clearml_session": None, "clearml_task": "offline-earlier"}


def test_disabled_tracking_of_a_new_model_records_no_task(ws, tmp_path):
    stages = build_stages(Store(ws))
    passport = runs.model_passport(stages)
    t = tracking(ws, enabled=False)
    t.start(stages, report_of(tmp_path), passport)
    assert "tracking" not in passport and t.tracker is None
    assert t.close() == {"clearml_task": None}
    assert not (ws / "clearml").exists()


@pytest.mark.usefixtures("offline_clearml")
def test_a_fully_reused_run_makes_no_task_even_with_tracking_on(ws, tmp_path):
    stages, passport = earlier_run(ws)
    t = tracking(ws, enabled=True)
    t.start(stages, report_of(tmp_path, cached=True), passport)
    assert t.tracker is None and not (ws / "clearml").exists()
    assert passport["tracking"] == {"clearml_task": "offline-earlier"}
    assert t.close()["clearml_task"] == "offline-earlier"


@pytest.mark.usefixtures("offline_clearml")
def test_a_new_report_on_a_reused_export_is_a_new_task_linking_the_models_task(ws, tmp_path):
    stages, passport = earlier_run(ws)
    report = report_of(tmp_path, passed=False, cached=False)  # e.g. another mAP floor: only the report is new
    t = tracking(ws, enabled=True)
    t.start(stages, report, passport)
    assert t.tracker is not None and passport["tracking"] == {"clearml_task": "offline-earlier"}
    run_dir = runs.run_dir_of(ws, passport)
    runs.write_run(run_dir, passport, report, P.exported_model_of(stages["export"]))
    t.log(stages, report, passport, run_dir, P.exported_model_of(stages["export"]))
    closed = t.close()
    assert closed["clearml_task"] == "offline-earlier" and Path(closed["clearml_session"]).is_file()
    names, task, _ = session_contents(closed["clearml_session"])
    assert task["hyperparams"]["model"]["produced_by_task"]["value"] == "offline-earlier"
    assert not any(n.endswith("model.onnx") for n in names)  # the model stays with the task that made it
    assert any(n.endswith("report.md") for n in names)


@pytest.mark.usefixtures("offline_clearml")
def test_a_run_that_made_the_model_tracks_params_specs_history_and_the_model(ws, tmp_path):
    stages = build_stages(Store(ws))
    passport = runs.model_passport(stages)
    report = report_of(tmp_path)
    t = tracking(ws, enabled=True)
    t.start(stages, report, passport)
    assert passport["tracking"] == {"clearml_task": t.tracker.task_id}
    run_dir = runs.run_dir_of(ws, passport)
    runs.write_run(run_dir, passport, report, P.exported_model_of(stages["export"]))
    t.log(stages, report, passport, run_dir, P.exported_model_of(stages["export"]))
    closed = t.close()
    assert closed["clearml_task"] == passport["tracking"]["clearml_task"]
    names, task, events = session_contents(closed["clearml_session"])
    assert task["hyperparams"]["run"]["spec_set"]["value"] == "demo_cpu"
    assert "workspace" not in task["hyperparams"]["run"]  # a path of this machine, not a parameter
    spec_texts = {k for k in task["hyperparams"]["spec"] if k.endswith("/text")}
    assert spec_texts == {"tfrecords/text", "train/text", "retrain/text"}
    assert all(any(n.endswith(f"{a}.json") for n in names) for a in ("passport", "model_passport"))
    assert any(n.endswith("model.onnx") for n in names) and any(n.endswith("report.md") for n in names)
    losses = {(e["metric"], e["iter"]) for e in events if e.get("type") == "training_stats_scalar"
              and e["metric"].endswith("/loss")}
    assert losses == {("train/loss", 1), ("train/loss", 2), ("retrain/loss", 1), ("retrain/loss", 2)}


@pytest.mark.usefixtures("offline_clearml")
def test_a_failed_run_is_tracked_with_its_parameters(ws):
    t = tracking(ws, enabled=True)
    t.failed()
    [session] = (ws / "clearml" / "cache" / "offline").glob("*.zip")
    _, task, _ = session_contents(session)
    assert task["hyperparams"]["run"]["prune_threshold"]["value"] == "0.1"
