"""taoflow.tracking with the real ClearML SDK offline: what a session zip holds, that secrets of the environment
reach none of its files, and how taoflow decides between offline and a server."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from taoflow.tracking import Tracker, offline_session, server_configured
from tests.clearml_offline import PLANTED, all_bytes, offline_clearml, session_contents  # noqa: F401 (fixture)

HISTORY = [{"epoch": 1, "loss": 2.5, "lr": 0.005, "mAP": math.nan},
           {"epoch": 2, "loss": 1.25, "lr": 0.004, "mAP": 0.375},
           {"epoch": 3, "loss": 0.75, "lr": None, "mAP": math.nan}]


def tracked_run(workspace, tmp_path):
    """One task as a train-ssd run makes it: parameters, a training history, a passport, an image, the model."""
    tracker = Tracker(workspace, "taoflow-tests", "unit run", tags=["demo_cpu", "native"])
    tracker.params("run", {"seed": 42, "spec_set": "demo_cpu", "prune_threshold": 0.1})
    tracker.params("spec/train", {"file": "specs/train.txt", "text": "training_config { num_epochs: 3 }"})
    tracker.scalars("train", "train", HISTORY)
    passport = {"format": "taoflow-passport/1", "id": "0123456789abcdef", "stages": {"train": "k1"}}
    tracker.artifact("passport", passport)
    png = tmp_path / "training_curves.png"
    cv2.imwrite(str(png), np.full((20, 30, 3), 200, np.uint8))
    tracker.image("report", png)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"an exported model")
    tracker.model(str(model), "ssd-demo_cpu", passport)
    return tracker, tracker.close()


@pytest.mark.usefixtures("offline_clearml")
def test_an_offline_session_holds_the_params_scalars_and_artifacts_it_was_given(tmp_path):
    ws = tmp_path / "ws"
    tracker, session = tracked_run(ws, tmp_path)
    assert tracker.offline and tracker.record() == {"clearml_task": tracker.task_id}
    assert session == offline_session(ws, tracker.task_id) and Path(session).is_file()
    assert Path(session).parent == (ws / "clearml" / "cache" / "offline").resolve()
    names, task, events = session_contents(session)
    assert task["id"] == tracker.task_id and task["name"] == "unit run"
    assert sorted(task["tags"]) == ["demo_cpu", "native"]
    params = {section: {k: v["value"] for k, v in values.items()} for section, values in task["hyperparams"].items()}
    assert params["run"] == {"seed": "42", "spec_set": "demo_cpu", "prune_threshold": "0.1"}
    assert params["spec"]["train/text"] == "training_config { num_epochs: 3 }"  # ClearML nests "a/b" sections
    scalars = {(e["metric"], e["variant"], e["iter"], e["value"]) for e in events
               if e.get("type") == "training_stats_scalar"}
    # every measured value at its epoch; NaN (not measured) and None cells are not reported
    assert scalars == {("train/loss", "train", 1, 2.5), ("train/loss", "train", 2, 1.25),
                       ("train/loss", "train", 3, 0.75), ("train/lr", "train", 1, 0.005),
                       ("train/lr", "train", 2, 0.004), ("train/mAP", "train", 2, 0.375)}
    assert any(n.endswith("passport.json") for n in names) and any(n.endswith("model.onnx") for n in names)
    assert any(n.endswith("model_passport.json") for n in names)
    assert any(e.get("type") == "training_debug_image" and e["metric"] == "report" for e in events)


@pytest.mark.usefixtures("offline_clearml")
def test_planted_secrets_reach_no_file_of_the_workspace_and_no_output(tmp_path, capfd):
    ws = tmp_path / "ws"
    _, session = tracked_run(ws, tmp_path)
    out, err = capfd.readouterr()
    files = dict(all_bytes(ws))
    assert Path(session) in files
    for name, secret in PLANTED.items():
        assert secret not in out + err, name
        leaked = [str(p) for p, data in files.items() if secret.encode() in data]
        assert leaked == [], name


@pytest.mark.usefixtures("offline_clearml")
def test_the_offline_config_keeps_environment_and_code_diff_out_of_the_session(tmp_path):
    ws = tmp_path / "ws"
    tracker, session = tracked_run(ws, tmp_path)
    conf = (ws / "clearml" / "clearml.conf").read_text()
    assert "log_os_environments: []" in conf and "store_uncommitted_code_diff: false" in conf
    _, task, _ = session_contents(session)
    assert task["script"]["diff"] == ""
    assert "Environment" not in task["hyperparams"]


@pytest.mark.parametrize("host, conf_text, expected", [
    (None, None, False),  # no clearml.conf
    (None, "sdk { development { report_use_subprocess: false } }", False),  # taoflow's own offline config
    (None, "api { api_server: https://api.clearml.example }", True),
    ("https://api.clearml.example", None, True),
])
def test_server_configured_by_api_host_or_a_clearml_conf_naming_a_server(tmp_path, monkeypatch, host, conf_text,
                                                                         expected):
    conf = tmp_path / "clearml.conf"
    if conf_text is not None:
        conf.write_text(conf_text)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(conf))
    if host:
        monkeypatch.setenv("CLEARML_API_HOST", host)
    else:
        monkeypatch.delenv("CLEARML_API_HOST", raising=False)
    assert server_configured() is expected


def test_offline_session_is_the_zip_of_a_task_recorded_in_this_workspace(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    assert offline_session(ws, "offline-abc") is None
    zip_path = ws / "clearml" / "cache" / "offline" / "offline-abc.zip"
    zip_path.parent.mkdir(parents=True)
    zip_path.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive
    monkeypatch.chdir(tmp_path)
    assert offline_session("ws", "offline-abc") == str(zip_path.resolve())
    assert offline_session(ws, "offline-other") is None
