import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO, all_file_bytes, write_specs

NGC_KEY = "nvapi-PLANTED-ngc-key-0123456789abcdef"
CLEARML_SECRET = "PLANTED-clearml-secret-fedcba9876543210"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_home, raw_crpd):
    """Run the flow twice on the same inputs, with secrets in the environment that must never leak."""
    from flows.train_ssd import train_ssd
    ws = tmp_path_factory.mktemp("ws")
    train, retrain = write_specs(ws / "specs")
    os.environ["NGC_API_KEY"], os.environ["CLEARML_API_SECRET_KEY"] = NGC_KEY, CLEARML_SECRET
    try:
        kwargs = dict(dataset_path=str(raw_crpd), workspace=str(ws), train_spec=str(train),
                      retrain_spec=str(retrain), map_floor=0.0)
        first = train_ssd(**kwargs)
        second = train_ssd(**kwargs)
    finally:
        os.environ.pop("NGC_API_KEY")
        os.environ.pop("CLEARML_API_SECRET_KEY")
    return ws, first, second


def test_first_run_computes_every_stage_and_rerun_computes_none(runs):
    _, first, second = runs
    assert list(first["stages"]) == ["convert", "split", "tfrecords", "train", "evaluate", "prune", "retrain",
                                     "evaluate_retrained", "export"]
    assert not any(s["cached"] for s in first["stages"].values())
    assert all(s["cached"] for s in second["stages"].values())
    assert first["passport"] == second["passport"]
    assert Path(first["model"]).is_file() and first["gates_passed"]


def test_a_reused_run_adds_no_clearml_task_and_links_the_one_that_made_the_model(runs):
    ws, first, second = runs
    assert first["clearml_task"] and second["clearml_task"] == first["clearml_task"]
    assert second["clearml_session"] == first["clearml_session"]
    assert len(list((ws / "clearml" / "cache" / "offline").glob("*.zip"))) == 1
    passport = json.loads((Path(first["run_dir"]) / "passport.json").read_text())
    assert passport["tracking"] == {"clearml_task": first["clearml_task"]}


def test_passport_chains_stage_keys_and_report_has_tables(runs):
    ws, first, _ = runs
    passport = json.loads((Path(first["run_dir"]) / "passport.json").read_text())
    assert list(passport["stages"]) == list(first["stages"])
    assert passport["stages"]["export"] == first["stages"]["export"]["key"]
    report = Path(first["report"]).read_text()
    assert "| unpruned |" in report and "| retrained |" in report and passport["id"] in report
    assert "| export parity | yes |" in report
    store_outputs = [p for p in (ws / "store" / "export").iterdir() if not p.name.startswith(".")]
    assert len(store_outputs) == 1
    assert (store_outputs[0] / "model.onnx").stat().st_mode & 0o222 == 0  # immutable: no write bits


def test_clearml_offline_session_holds_params_scalars_passport_and_model(runs):
    _, first, _ = runs
    with zipfile.ZipFile(first["clearml_session"]) as z:
        names = z.namelist()
        task = json.loads(z.read("task.json"))
        # each line of metrics.jsonl is a batch (a JSON list) of reported events
        metrics = [event for line in z.read("metrics.jsonl").decode().splitlines() if line.strip()
                   for event in json.loads(line)]
    assert any(n.endswith("passport.json") for n in names) and any(n.endswith("model.onnx") for n in names)
    params = json.dumps(task)
    assert "prune_threshold" in params and "soft_start_annealing_schedule" in params
    scalars = [m for m in metrics if m.get("type") == "training_stats_scalar"]
    epochs = {(m["metric"], m["iter"]) for m in scalars if m["metric"] == "train/loss"}
    assert len(epochs) == 2  # one point per epoch


def test_planted_secrets_appear_nowhere(runs, prefect_home):
    ws, first, second = runs
    blobs = [json.dumps(first).encode(), json.dumps(second).encode()]
    blobs += [data for root in (ws, prefect_home) for _, data in all_file_bytes(root)]
    for secret in (NGC_KEY, CLEARML_SECRET):
        assert not any(secret.encode() in b for b in blobs), secret


def test_failing_gate_stops_deploy_with_the_reason_in_the_report(runs, raw_crpd):
    from flows.train_ssd import train_ssd
    ws, first, _ = runs
    summary = train_ssd(dataset_path=str(raw_crpd), workspace=str(ws), train_spec=str(ws / "specs/train.txt"),
                        retrain_spec=str(ws / "specs/retrain.txt"), map_floor=0.99,
                        deploy_inventory=str(ws / "fleet.toml"))  # never read: the gate stops the run first
    assert not summary["gates_passed"] and summary["deployed"] is None
    assert "| mAP floor | **no** |" in Path(summary["report"]).read_text()
    assert all(s["cached"] for s in summary["stages"].values())  # only the gate changed: nothing retrained
    assert Path(summary["model"]).is_file()  # artifacts are kept
    # a new report is tracked as a new ClearML task, which links the model's task instead of copying the model
    assert summary["clearml_session"] != first["clearml_session"] and summary["clearml_task"] == first["clearml_task"]
    with zipfile.ZipFile(summary["clearml_session"]) as z:
        assert not any(n.endswith("model.onnx") for n in z.namelist())
        assert first["clearml_task"] in z.read("task.json").decode()


@pytest.mark.slow
def test_killed_flow_resumes_training_and_reuses_finished_stages(tmp_path, prefect_home, raw_crpd):
    train, retrain = write_specs(tmp_path / "specs", epochs=6)
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from flows.train_ssd import train_ssd; "
            f"train_ssd(dataset_path={str(raw_crpd)!r}, workspace={str(tmp_path)!r}, train_spec={str(train)!r}, "
            f"retrain_spec={str(retrain)!r}, map_floor=0.0, clearml=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "store" / "train").glob(".work-*/results/weights/*_002.pth")):
        time.sleep(0.2)
        assert proc.poll() is None, "the flow ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the flow and its temporary Prefect server
    proc.wait()
    assert not [p for p in (tmp_path / "store" / "train").iterdir() if not p.name.startswith(".")]

    from flows.train_ssd import train_ssd
    summary = train_ssd(dataset_path=str(raw_crpd), workspace=str(tmp_path), train_spec=str(train),
                        retrain_spec=str(retrain), map_floor=0.0, clearml=False)
    stages = summary["stages"]
    assert stages["convert"]["cached"] and stages["split"]["cached"] and stages["tfrecords"]["cached"]
    meta = json.loads((tmp_path / "store" / "train" / stages["train"]["key"] / ".meta.json").read_text())
    assert meta["resumed_from_epoch"] >= 3  # epochs 1-2 (at least) were not trained again


def test_gates_pass_then_the_model_deploys_to_a_simulated_nano(runs, raw_crpd):
    from flows.train_ssd import train_ssd
    from taoflow.deploy import fleet_status, load_inventory
    from taoflow.deploy.simulator import SimulatedNano
    ws, first, _ = runs
    with SimulatedNano(ws) as nano:
        inventory = nano.start()
        summary = train_ssd(dataset_path=str(raw_crpd), workspace=str(ws), train_spec=str(ws / "specs/train.txt"),
                            retrain_spec=str(ws / "specs/retrain.txt"), map_floor=0.0,
                            deploy_inventory=str(inventory), model_name="lpd-test", clearml=False)
        assert summary["gates_passed"] and summary["deployed"]["ok"], summary["deployed"]
        [device] = summary["deployed"]["devices"]
        assert device["status"] == "deployed" and device["current"] == device["version"]
        status = fleet_status(load_inventory(inventory).devices, "lpd-test")
        assert json.dumps(status, default=str).count(first["passport"]["id"]) >= 1  # the device knows its passport
        # the no-regression gate reads the deployed model's mAP from the device's passport
        from flows.train_ssd import against_fleet
        deployed_map = first["passport"]["metrics"]["mAP"]
        same = against_fleet.fn(str(inventory), None, "lpd-test", deployed_map, 0.02)
        worse = against_fleet.fn(str(inventory), None, "lpd-test", deployed_map - 0.05, 0.02)
        other = against_fleet.fn(str(inventory), None, "another-model", 0.1, 0.02)
    assert same["passed"] and f"{deployed_map:.4f}" in same["detail"]
    assert not worse["passed"] and "max drop 0.02" in worse["detail"]
    assert other["passed"] and "no deployed model" in other["detail"]
