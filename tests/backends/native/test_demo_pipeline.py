"""Acceptance (slow, ~5.5 min on 2 cores): the CPU demo specs run train -> evaluate -> prune -> retrain -> evaluate ->
export on the generated CRPD data and reach mAP >= 0.85 (class lpd, SAMPLE) after retraining."""

import json
import os
import re

import pytest

from taoflow.demo import prepare_data_stage
from taoflow.spec import load_experiment, render, rewrite_paths

from .conftest import cli
from ...spec.test_spec import REPO

pytestmark = pytest.mark.slow


def table_map(output):
    return float(re.findall(r"^ {14}mAP {3}([0-9.]+)$", output, re.M)[-1])


def test_cpu_demo_chain_reaches_map_085(tmp_path):
    prepare_data_stage(tmp_path, num_images=400, progress=False)
    specs, epochs = {}, {}
    for kind in ("train", "retrain"):
        raw = load_experiment(REPO / f"specs/demo/ssd_{kind}_resnet10_demo_cpu.txt").raw
        epochs[kind] = raw.training_config.num_epochs
        specs[kind] = tmp_path / f"{kind}.txt"
        specs[kind].write_text(render(rewrite_paths(raw, lambda _f, v: os.path.join(tmp_path / "data", v))))
    code, out = cli("train", "-e", specs["train"], "-r", tmp_path / "train", "-k", "demo")
    assert code == 0, out
    trained = tmp_path / f"train/weights/ssd_resnet10_epoch_{epochs['train']:03d}.pth"
    code, out = cli("evaluate", "-e", specs["train"], "-m", trained)
    assert code == 0 and table_map(out) > 0.5, out
    code, out = cli("prune", "-m", trained, "-o", tmp_path / "pruned.pth", "-pth", "0.1", "-eq", "intersection")
    assert code == 0, out
    code, out = cli("train", "-e", specs["retrain"], "-r", tmp_path / "retrain", "-m", tmp_path / "pruned.pth")
    assert code == 0, out
    retrained = tmp_path / f"retrain/weights/ssd_resnet10_epoch_{epochs['retrain']:03d}.pth"
    code, out = cli("evaluate", "-e", specs["retrain"], "-m", retrained)
    assert code == 0
    assert table_map(out) >= 0.85, out
    code, out = cli("export", "-e", specs["retrain"], "-m", retrained, "-o", tmp_path / "export/model.onnx",
                    "--data_type", "fp16", "--gen_ds_config")
    assert code == 0, out
    assert json.loads((tmp_path / "export/model.json").read_text())["arch"] == "resnet10"
