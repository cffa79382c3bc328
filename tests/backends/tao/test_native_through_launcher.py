"""Acceptance (issue 4): taoflow's native backend standing in for TAO's `ssd`, run through the REAL nvidia-tao
launcher with TAO_DOCKER_DISABLE=1, gives the same results as calling the native backend directly.

A test-only PATH holds an `ssd` script that execs this interpreter's `python -m taoflow.backends.native` (by its
absolute path: the launcher runs `ssd` through its own shell, with its own venv nowhere near taoflow). The chain
dataset_convert -> train -> evaluate -> prune -> retrain -> inference -> export runs through TaoExecutor on the TAO 5
command surface (`tao model ssd ...`, nvidia-tao 6.26.3) and, step for step, directly through `python -m
taoflow.backends.native` with the same arguments; training is deterministic on CPU, so checkpoints must be equal
tensor for tensor, and every parsed result equal. The TAO 3/4 surface (`tao ssd ...`, nvidia-tao 4.0.1) then runs
evaluate and inference (its -o/-l layout) on the same model. A planted model key is then searched for in everything
taoflow wrote or returned.
"""

import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from taoflow.backends import results as shared
from taoflow.backends.tao import (MASK, TAO4, TAO5, DatasetConvertRequest, EvaluateRequest, ExportRequest,
                                  InferenceRequest, PruneRequest, TaoConfig, TaoExecutor, TrainRequest, mask_data,
                                  result_dict)

from .conftest import minimal_path, write_executable

pytestmark = pytest.mark.slow

KEY = "nvtao-PLANTED-key-5c1e7a93d2"
# The same process settings for both ways of running the native backend: CPU, two threads (bit-exact training).
NATIVE_ENV = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"}
PRUNE = dict(equalization_criterion="intersection", pruning_threshold=0.9)  # a 2-epoch model: prune hard
THRESHOLD = 0.1

EXPERIMENT = """
random_seed: 7
ssd_config {{
  aspect_ratios_global: "[1.0, 2.0, 0.5, 3.0, 1.0/3.0]"
  scales: "[0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95]"
  two_boxes_for_ar1: true
  variances: "[0.1, 0.1, 0.2, 0.2]"
  arch: "resnet"
  nlayers: 10
}}
training_config {{
  batch_size_per_gpu: 4
  num_epochs: {epochs}
  learning_rate {{ soft_start_annealing_schedule {{ min_learning_rate: 1e-4 max_learning_rate: 0.005 soft_start: 0.2
                                                     annealing: 0.7 }} }}
  regularizer {{ type: L1 weight: 3e-4 }}
  checkpoint_interval: 1
}}
eval_config {{ validation_period_during_training: 1 average_precision_mode: SAMPLE batch_size: 8 }}
nms_config {{ confidence_threshold: 0.01 clustering_iou_threshold: 0.6 top_k: 50 }}
augmentation_config {{ output_width: 96 output_height: 96 output_channel: 3 }}
dataset_config {{
  data_sources {{ tfrecords_path: "{tfrecords}-fold-000-of-002-shard-*" }}
  target_class_mapping {{ key: "lpd" value: "lpd" }}
  validation_data_sources {{ image_directory_path: "{data}/split/val/image"
                             label_directory_path: "{data}/split/val/label" }}
}}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """16 synthetic CRPD images through the real data stage (KITTI, 75/25 split) and a dataset_convert spec."""
    from taoflow.datasets.crpd import convert_crpd
    from taoflow.datasets.demo import generate_crpd
    from taoflow.datasets.split import split_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_crpd(root / "raw", num_images=16, image_size=(160, 120), seed=5, split_fractions=(1.0, 0.0, 0.0),
                  progress=False)
    convert_crpd(root / "raw", root / "kitti", progress=False)
    split_dataset(root / "kitti/train/image", root / "kitti/train/label", root / "split", val_split=25,
                  progress=False)
    (root / "convert.txt").write_text(f"""kitti_config {{
  root_directory_path: "{root / 'split/training'}"
  image_dir_name: "image" label_dir_name: "label" image_extension: ".jpg"
  partition_mode: "random" num_partitions: 2 val_split: 0 num_shards: 2
}}
target_class_mapping {{ key: "lpd" value: "lpd" }}
""")
    return root


def specs(data, out):
    """train (2 epochs) and retrain (1 epoch) specs reading the TFRecords written under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, epochs in (("train", 2), ("retrain", 1)):
        found[name] = out / f"{name}.txt"
        found[name].write_text(EXPERIMENT.format(epochs=epochs, data=data, tfrecords=out / "tfrecords/t"))
    return found


@pytest.fixture
def native_ssd(tmp_path):
    """(bin dir holding `ssd`, file recording each call's arguments): the native entrypoint under TAO's name."""
    bin_dir, record = tmp_path / "native-bin", tmp_path / "ssd-calls.txt"  # the record is outside the run dir
    write_executable(bin_dir / "ssd", f"""#!/bin/sh
printf '%s\\n' "$*" >> {shlex.quote(str(record))}
exec {shlex.quote(sys.executable)} -m taoflow.backends.native "$@"
""")
    return bin_dir, record


def direct(*argv, env):
    """`ssd <argv>` run directly on the native backend (no launcher); returns its output."""
    proc = subprocess.run([sys.executable, "-m", "taoflow.backends.native", *map(str, argv)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def tensors(path):
    import torch
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state


def assert_same_checkpoint(a, b):
    import torch
    sa, sb = tensors(a), tensors(b)
    assert sa["arch"] == sb["arch"] and sa["classes"] == sb["classes"] and sa["epoch"] == sb["epoch"]
    assert sa["model"].keys() == sb["model"].keys()
    different = [k for k in sa["model"] if not torch.equal(sa["model"][k], sb["model"][k])]
    assert different == [], f"{a} and {b} differ in {different[:5]}"


def same_rows(a, b):
    def norm(rows):
        return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    return norm(a) == norm(b)


def label_files(directory):
    return {p.name: p.read_text() for p in sorted(Path(directory).iterdir())}


def test_native_chain_through_the_real_launcher_equals_direct(tiny, native_ssd, tao_launchers, tmp_path, home,
                                                             monkeypatch, capfd):
    bin_dir, record = native_ssd
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{minimal_path()}")
    for name, value in NATIVE_ENV.items():
        monkeypatch.setenv(name, value)
    env = dict(os.environ)
    run_dir, direct_dir = tmp_path / "run", tmp_path / "direct"
    lines = []

    def executor(generation, where):
        return TaoExecutor(where, TaoConfig(launcher=tao_launchers[generation], docker_disabled=True, key=KEY))

    # -- through the launcher (TAO 5 surface) -------------------------------------------------------------------
    ex = executor(TAO5, run_dir)
    assert ex.launcher_info().generation == TAO5
    spec = specs(tiny, run_dir)
    via = {}
    via["convert"] = ex.run(DatasetConvertRequest(spec=tiny / "convert.txt", output_prefix=run_dir / "tfrecords/t",
                                                  results_dir=run_dir / "convert"), on_line=lines.append)
    via["train"] = ex.run(TrainRequest(spec=spec["train"], results_dir=run_dir / "train"), on_line=lines.append)
    trained = via["train"].last_checkpoint
    via["evaluate"] = ex.run(EvaluateRequest(model=trained, spec=spec["train"], results_dir=run_dir / "evaluate"),
                             on_line=lines.append)
    via["prune"] = ex.run(PruneRequest(model=trained, output=run_dir / "prune/pruned", results_dir=run_dir / "prune",
                                       **PRUNE), on_line=lines.append)
    via["retrain"] = ex.run(TrainRequest(spec=spec["retrain"], results_dir=run_dir / "retrain",
                                         resume_model=via["prune"].output), on_line=lines.append)
    best = via["retrain"].last_checkpoint
    via["inference"] = ex.run(InferenceRequest(model=best, spec=spec["retrain"], image_dir=tiny / "split/val/image",
                                               results_dir=run_dir / "inference", threshold=THRESHOLD),
                              on_line=lines.append)
    via["export"] = ex.run(ExportRequest(model=best, output=run_dir / "export/model.onnx", spec=spec["retrain"],
                                         gen_ds_config=True, data_type="fp16"), on_line=lines.append)

    # -- the same steps directly on the native backend ---------------------------------------------------------
    dspec = specs(tiny, direct_dir)
    d = direct_dir
    direct("dataset_convert", "-d", tiny / "convert.txt", "-o", d / "tfrecords/t", "-r", d / "convert", env=env)
    ref = {"convert": shared.dataset_convert_result(d / "tfrecords/t", d / "convert")}
    direct("train", "-e", dspec["train"], "-r", d / "train", "-k", KEY, env=env)
    ref["train"] = shared.train_result(d / "train")
    out = direct("evaluate", "-e", dspec["train"], "-m", ref["train"].last_checkpoint, "-r", d / "evaluate", "-k", KEY,
                 env=env)
    ref["evaluate"] = shared.evaluate_result(out, d / "evaluate")
    out = direct("prune", "-m", ref["train"].last_checkpoint, "-o", d / "prune/pruned", "--results_dir", d / "prune",
                 "-eq", PRUNE["equalization_criterion"], "-pth", PRUNE["pruning_threshold"], "-k", KEY, env=env)
    ref["prune"] = shared.prune_result(output=d / "prune/pruned.pth", text=out, results_dir=d / "prune")
    direct("train", "-e", dspec["retrain"], "-r", d / "retrain", "-m", ref["prune"].output, "-k", KEY, env=env)
    ref["retrain"] = shared.train_result(d / "retrain")
    direct("inference", "-e", dspec["retrain"], "-m", ref["retrain"].last_checkpoint, "-i", tiny / "split/val/image",
           "-r", d / "inference", "-t", THRESHOLD, "-k", KEY, env=env)
    ref["inference"] = shared.inference_result(d / "inference")
    direct("export", "-e", dspec["retrain"], "-m", ref["retrain"].last_checkpoint, "-o", d / "export/model.onnx",
           "--data_type", "fp16", "--gen_ds_config", "-k", KEY, env=env)
    ref["export"] = shared.export_result(d / "export/model.onnx")

    # -- same results ------------------------------------------------------------------------------------------
    assert [type(r) for r in via.values()] == [type(r) for r in ref.values()]
    a, b = via["convert"], ref["convert"]
    assert [p.name for p in a.records] == [p.name for p in b.records] and len(a.records) == 2
    assert [p.read_bytes() for p in a.records] == [p.read_bytes() for p in b.records]
    assert [p.name for p in a.index_files] == [p.name for p in b.index_files]

    for step in ("train", "retrain"):
        a, b = via[step], ref[step]
        assert [p.name for p in a.checkpoints] == [p.name for p in b.checkpoints]
        assert all(p.suffix == ".pth" and p.parent.name == "weights" for p in a.checkpoints)
        for pa, pb in zip(a.checkpoints, b.checkpoints):
            assert_same_checkpoint(pa, pb)
        assert same_rows(a.history, b.history) and len(a.history) == (2 if step == "train" else 1)
        assert [r["status"] for r in a.status] == [r["status"] for r in b.status]
        assert a.status[0]["status"] == "STARTED" and a.status[-1]["status"] == "SUCCESS"
        assert a.csv_file.name == b.csv_file.name == "ssd_training_log_resnet10.csv"
    assert via["train"].last_checkpoint.name == "ssd_resnet10_epoch_002.pth"

    a, b = via["evaluate"], ref["evaluate"]
    assert a.ap == b.ap and a.map == b.map and set(a.ap) == {"lpd"}
    assert f"mAP   {round(a.map, 3)}" in a.log.read_text()  # the printed table agrees with the full-precision kpi

    a, b = via["prune"], ref["prune"]
    assert a.output == run_dir / "prune/pruned.pth" and b.output.name == "pruned.pth"  # native's suffix, not .hdf5
    assert not (run_dir / "prune/pruned.hdf5").exists()
    assert a.ratio == b.ratio and a.param_count == b.param_count and a.ratio < 1
    assert_same_checkpoint(a.output, b.output)
    widths = tensors(a.output)["arch"]["widths"]
    assert widths == tensors(b.output)["arch"]["widths"] and widths != tensors(trained)["arch"]["widths"]

    a, b = via["inference"], ref["inference"]
    assert a.labels_dir == run_dir / "inference/labels" and a.images_dir == run_dir / "inference/images_annotated"
    labels = label_files(a.labels_dir)
    assert labels == label_files(b.labels_dir) and len(labels) == 4
    assert sorted(p.name for p in a.images_dir.iterdir()) == sorted(p.name for p in b.images_dir.iterdir())

    a, b = via["export"], ref["export"]
    assert a.model_file == run_dir / "export/model.onnx" and a.model_json == run_dir / "export/model.json"
    ja, jb = json.loads(a.model_json.read_text()), json.loads(b.model_json.read_text())
    for name in ("classes", "input", "output", "nms", "arch", "num_anchors", "precision", "opset"):
        assert ja[name] == jb[name], name
    assert ja["classes"] == ["lpd"] and ja["input"]["height"] == ja["input"]["width"] == 96
    assert a.labels.read_text() == b.labels.read_text() == "background\nlpd\n"
    assert a.nvinfer_config.read_text() == b.nvinfer_config.read_text()
    assert a.model_file.read_bytes() == b.model_file.read_bytes()
    assert a.cal_cache is None and a.cal_data_file is None and a.engine is None

    # -- TAO 3/4 surface (`tao ssd ...`, nvidia-tao 4.0.1) on the same model --------------------------------------
    ex4 = executor(TAO4, tmp_path / "run4")
    assert ex4.launcher_info().generation == TAO4
    via4 = {"evaluate": ex4.run(EvaluateRequest(model=trained, spec=spec["train"],
                                                results_dir=tmp_path / "run4/evaluate"), on_line=lines.append),
            "inference": ex4.run(InferenceRequest(model=best, spec=spec["retrain"], image_dir=tiny / "split/val/image",
                                                  results_dir=tmp_path / "run4/inference", threshold=THRESHOLD),
                                 on_line=lines.append)}
    assert shlex.split(via4["evaluate"].command)[1:3] == ["ssd", "evaluate"]
    assert shlex.split(via["evaluate"].command)[1:4] == ["model", "ssd", "evaluate"]
    assert via4["evaluate"].ap == via["evaluate"].ap and via4["evaluate"].map == via["evaluate"].map
    assert label_files(via4["inference"].labels_dir) == labels  # -l <results>/labels, -o <results>/images_annotated

    # -- the key: given to the task on every call but dataset_convert, and nowhere taoflow writes or returns ------
    calls = record.read_text().splitlines()
    assert len(calls) == len(via) + len(via4)
    assert [c.split()[0] for c in calls] == ["dataset_convert", "train", "evaluate", "prune", "train", "inference",
                                             "export", "evaluate", "inference"]
    assert all(f"-k {KEY}" in c for c in calls[1:]) and KEY not in calls[0]
    everything = {**via, **{f"tao4-{k}": v for k, v in via4.items()}}
    captured = capfd.readouterr()
    texts = {"stdout": captured.out, "stderr": captured.err, "on_line": "\n".join(lines),
             "repr": repr(everything), "json": json.dumps({k: result_dict(v) for k, v in everything.items()}),
             "asdict": json.dumps({k: dataclasses.asdict(v) for k, v in everything.items()}, default=str)}
    scanned = 0
    for root in (run_dir, tmp_path / "run4", home):
        for path in root.rglob("*"):
            if path.is_file():
                texts[str(path)] = path.read_bytes().decode("latin-1")
                scanned += 1
    assert [name for name, text in texts.items() if KEY in text] == []
    step_files = {p.name for p in (run_dir / "tao").glob("*/*")}
    assert {"command.txt", "mounts.json", "spec.txt", "launcher.log"} <= step_files and scanned > 50
    assert len(list(run_dir.rglob("status.json"))) >= 5
    assert all(f"-k {MASK}" in r.command for name, r in everything.items() if name != "convert")
    assert f"-k {MASK}" in (run_dir / "tao/02-train/command.txt").read_text()
    assert f"-k {MASK}" in (run_dir / "tao/02-train/launcher.log").read_text()
    # mask_data is what flows use on what they publish: it takes whole results
    masked = mask_data(via["prune"], [KEY, "pruned.pth"])
    assert masked.output == run_dir / "prune" / MASK and masked.ratio == via["prune"].ratio
