"""End to end on KITTI-format data (slow): `taoflow demo --dataset traffic` (KITTI frames plus a road-sign set, 4
classes, deployed to a simulated Nano) and the kitti spec set on KITTI alone, with tiny specs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, TRAIN

pytestmark = pytest.mark.slow

TRAFFIC_MAP = {"car": "vehicle", "van": "vehicle", "truck": "vehicle", "vehicle": "vehicle",
               "pedestrian": "pedestrian", "person_sitting": "pedestrian", "cyclist": "bicycle",
               "bicycle": "bicycle", "road_sign": "road_sign"}
KITTI_MAP = {"car": "car", "van": "car", "pedestrian": "pedestrian", "person_sitting": "pedestrian",
             "cyclist": "cyclist"}


def tiny_specs(directory, mapping, epochs=2):
    """conftest's tiny specs with a traffic input (KITTI frames are 3.3:1) and the given class mapping."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = " ".join(f'target_class_mapping {{ key: "{k}" value: "{v}" }}' for k, v in sorted(mapping.items()))
    text = (TRAIN.replace('target_class_mapping { key: "lpd" value: "lpd" }', entries)
            .replace("output_width: 96 output_height: 96", "output_width: 192 output_height: 96"))
    train, retrain = directory / "train.txt", directory / "retrain.txt"
    train.write_text(text.replace("EPOCHS", str(epochs)).replace("type: REG", "type: L1 weight: 3e-4"))
    retrain.write_text(text.replace("EPOCHS", "1").replace("type: REG", "type: NO_REG"))
    return train, retrain


def test_traffic_demo_runs_multi_source_end_to_end_with_an_ap_per_class_and_deploys(tmp_path):
    train, retrain = tiny_specs(tmp_path / "specs", TRAFFIC_MAP)
    ws = tmp_path / "ws"
    code = ("import json, sys; from taoflow.demo import run_demo; "
            f"s = run_demo({str(ws)!r}, num_images=36, image_size=(414, 125), specs=({str(train)!r}, {str(retrain)!r}),"
            " map_floor=0.0, device_server='embedded', dataset='traffic', workers=2, progress=False); "
            "print('SUMMARY' + json.dumps(s))")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    summary = json.loads(run.stdout.split("SUMMARY", 1)[1])
    assert summary["gates_passed"] and summary["deployed_devices"] == ["sim-nano-01"]
    assert set(summary["ap"]) == {"bicycle", "pedestrian", "road_sign", "vehicle"}
    assert all(n["training"] > 0 and n["val"] > 0 for n in summary["classes"]["classes"].values())
    passport = json.loads((Path(summary["paths"]["report"]).parent / "passport.json").read_text())
    assert list(passport["stages"])[:4] == ["convert", "convert:road_signs", "merge", "split"]
    report = Path(summary["paths"]["report"]).read_text()
    assert "## AP per class" in report
    for cls in ("bicycle", "pedestrian", "road_sign", "vehicle"):
        assert f"| {cls} | " in report
    assert "mean of 4 class APs" in report
    # training read one TFRecords set per dataset: TAO's repeated data_sources
    spec = next((ws / "store" / "train").glob("*/experiment_spec.txt")).read_text()
    assert spec.count("\n  data_sources {") == 2 and "/records/road_signs/" in spec


def test_kitti_alone_trains_with_the_kitti_set_and_is_refused_by_the_traffic_set(tmp_path, prefect_home):
    from flows.train_ssd import train_ssd
    from taoflow.datasets.demo_traffic import generate_kitti
    from taoflow.errors import TaoflowError
    raw = tmp_path / "kitti"
    generate_kitti(raw, num_images=40, seed=2, image_size=(414, 125), progress=False)
    ws = tmp_path / "ws"
    traffic = tiny_specs(tmp_path / "traffic_specs", TRAFFIC_MAP)
    with pytest.raises(TaoflowError, match="class 'road_sign' has no training and no validation example"):
        train_ssd(dataset_kind="kitti", dataset_path=str(raw), spec_set="traffic", workspace=str(ws),
                  train_spec=str(traffic[0]), retrain_spec=str(traffic[1]), val_split=25, clearml=False)
    assert not (ws / "store" / "tfrecords").exists() and not (ws / "store" / "train").exists()
    kitti = tiny_specs(tmp_path / "kitti_specs", KITTI_MAP, epochs=1)
    result = train_ssd(dataset_kind="kitti", dataset_path=str(raw), spec_set="kitti", workspace=str(ws),
                       train_spec=str(kitti[0]), retrain_spec=str(kitti[1]), val_split=25, map_floor=0.0,
                       clearml=False)
    assert {k for k in result["passport"]["metrics"] if k.startswith("AP_")} == {"AP_car", "AP_cyclist",
                                                                                "AP_pedestrian"}
    assert result["gates_passed"] and Path(result["model"]).is_file()
