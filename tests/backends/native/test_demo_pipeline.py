"""Acceptance (slow, about 2 min on 2 quiet cores): the CPU demo specs run train -> evaluate -> prune (the demo's -pth
and -eq) -> retrain -> evaluate -> export on the generated CRPD data; the prune keeps at most 60 % of the parameters
and GFLOPs, and the retrained model reaches mAP >= 0.85 (class lpd, SAMPLE)."""

import json
import os
import re

import pytest

from taoflow.backends.native.executor import NativeExecutor
from taoflow.demo import DEMO_PRUNE, prepare_data_stage
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
    code, out = cli("prune", "-m", trained, "-o", tmp_path / "pruned.pth", "-pth", str(DEMO_PRUNE["prune_threshold"]),
                    "-eq", DEMO_PRUNE["prune_criterion"])
    assert code == 0, out
    # the demo's L1 regulariser and prune threshold make pruning remove filters (the report's model table)
    before, after = (NativeExecutor().model_stats(m, runs=1) for m in (trained, tmp_path / "pruned.pth"))
    assert after["params"] <= 0.6 * before["params"] and after["gflops"] <= 0.6 * before["gflops"], (before, after)
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
