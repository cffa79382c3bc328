"""The whole SSD pipeline through the REAL `tao` launcher (TAO_DOCKER_DISABLE=1) for both command surfaces, with
the `ssd` stand-in on a test-only PATH recording what the launcher actually ran."""

import dataclasses
import json
from pathlib import Path
import os
import shlex

import pytest

from taoflow.backends.tao import (MASK, TAO4, TAO5, DatasetConvertRequest, EvaluateRequest, ExportRequest,
                                  GenTrtEngineRequest, InferenceRequest, PruneRequest, TaoConfig, TaoExecutor,
                                  TaoPreflightError, TaoRunError, TrainRequest)
from taoflow.errors import OutputExistsError, TaoflowError

from .conftest import KEY, SPECS, minimal_path, write_executable

pytestmark = pytest.mark.slow
CLEARML = "clearml-secret-0f3a9c77"


@pytest.fixture
def setup(tao_launchers, standin_bin, tmp_path, home, monkeypatch):
    """(make_executor, data_root, record file): data under a directory with a space, to exercise the escaping."""
    data_root = tmp_path / "data root"
    for sub in ("crpd/split/training/image", "crpd/split/training/label", "crpd/split/val/image",
                "crpd/split/val/label", "crpd/test_images", "models"):
        (data_root / sub).mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (data_root / "crpd/test_images" / name).write_bytes(b"jpeg")
    (data_root / "models/resnet18.hdf5").write_bytes(b"pretrained")
    record = tmp_path / "argv.jsonl"  # outside the run directory
    monkeypatch.setenv("PATH", f"{standin_bin}{os.pathsep}{minimal_path()}")

    def make(generation, run_dir, **env):
        env = {"STANDIN_RECORD": str(record), "STANDIN_GENERATION": generation, "CLEARML_API_SECRET_KEY": CLEARML,
               "CLEARML_OFFLINE_MODE": "1", **env}
        return TaoExecutor(run_dir, TaoConfig(launcher=tao_launchers[generation], docker_disabled=True, env=env,
                                              key=KEY if generation == TAO4 else None))
    return make, data_root, record


def recorded(record):
    return [json.loads(line)["argv"] for line in record.read_text().splitlines()]


def run_pipeline(ex, generation, data_root, run_dir, lines):
    train_spec, retrain_spec = SPECS / "ssd_train_resnet18_crpd.txt", SPECS / "ssd_retrain_resnet18_crpd.txt"
    common = dict(on_line=lines.append)
    results = {}
    results["convert"] = ex.run(DatasetConvertRequest(spec=SPECS / "ssd_tfrecords_crpd.txt", data_root=data_root,
                                                      output_prefix=data_root / "crpd/tfrecords/crpd_train",
                                                      results_dir=run_dir / "convert"), **common)
    results["train"] = ex.run(TrainRequest(spec=train_spec, results_dir=run_dir / "train", data_root=data_root,
                                           resume_model=data_root / "models/resnet18.hdf5"), **common)
    results["evaluate"] = ex.run(EvaluateRequest(model=results["train"].last_checkpoint, spec=train_spec,
                                                 results_dir=run_dir / "evaluate", data_root=data_root), **common)
    pruned = "pruned" if generation == TAO5 else "pruned.tlt"
    results["prune"] = ex.run(PruneRequest(model=results["train"].last_checkpoint, output=run_dir / "prune" / pruned,
                                           results_dir=run_dir / "prune", equalization_criterion="intersection",
                                           pruning_threshold=0.1), **common)
    results["retrain"] = ex.run(TrainRequest(spec=retrain_spec, results_dir=run_dir / "retrain", data_root=data_root,
                                             resume_model=results["prune"].output), **common)
    best = results["retrain"].last_checkpoint
    results["inference"] = ex.run(InferenceRequest(model=best, spec=retrain_spec, data_root=data_root,
                                                   image_dir=data_root / "crpd/test_images",
                                                   results_dir=run_dir / "inference", threshold=0.3), **common)
    suffix = ".onnx" if generation == TAO5 else ".etlt"
    results["export"] = ex.run(ExportRequest(model=best, output=run_dir / "export" / f"model{suffix}",
                                             spec=retrain_spec, data_root=data_root, gen_ds_config=True,
                                             data_type="int8", cal_image_dir=data_root / "crpd/test_images",
                                             cal_cache_file=run_dir / "export/cal.bin", batches=1, batch_size=1),
                               **common)
    if generation == TAO5:
        results["engine"] = ex.run(GenTrtEngineRequest(model=results["export"].model_file, spec=retrain_spec,
                                                       data_root=data_root, results_dir=run_dir / "engine",
                                                       engine_file=run_dir / "engine/model.engine",
                                                       data_type="fp16"), **common)
    return results


@pytest.mark.parametrize("generation", [TAO5, TAO4])
def test_pipeline_through_the_real_launcher(setup, tmp_path, home, capfd, generation, monkeypatch):
    make, data_root, record = setup
    if generation == TAO5:
        monkeypatch.setenv("TAO_MODEL_KEY", KEY)  # TAO 4 gets it from TaoConfig(key=...)
    run_dir = tmp_path / "run"
    lines = []
    results = run_pipeline(make(generation, run_dir), generation, data_root, run_dir, lines)

    # the launcher ran exactly the argv taoflow built (the key at -k), step by step
    calls = recorded(record)
    assert len(calls) == len(results)
    prefix_len = 3 if generation == TAO5 else 2
    for call, result in zip(calls, results.values()):
        assert [MASK if a == KEY else a for a in call] == shlex.split(result.command)[prefix_len:]
    assert calls[0][0] == "dataset_convert" and "-k" not in calls[0]
    assert all(call[call.index("-k") + 1] == KEY for call in calls[1:])
    if generation == TAO5:
        assert calls[-1][:1] == ["gen_trt_engine"]
        assert shlex.split(results["engine"].command)[1:4] == ["deploy", "ssd", "gen_trt_engine"]
    # paths with a space crossed the launcher's shell intact; the spec TAO read names absolute paths
    assert f"{data_root}/crpd/tfrecords/crpd_train" in calls[0]
    spec_seen = calls[1][calls[1].index("-e") + 1]
    assert f'"{data_root}/crpd/tfrecords/crpd_train-fold-000-of-002-shard-*"' in open(spec_seen).read()

    ext = ".hdf5" if generation == TAO5 else ".tlt"
    assert [p.name for p in results["convert"].records] == ["crpd_train-fold-000-of-002-shard-00000-of-00001"]
    assert len(results["convert"].index_files) == 1
    train = results["train"]
    assert [p.name for p in train.checkpoints] == [f"ssd_resnet18_epoch_00{i}{ext}" for i in (1, 2)]
    assert train.history[1] == {"epoch": 2, "AP_lpd": 0.75, "loss": 8.25, "lr": 0.002, "mAP": 0.75,
                                     "validation_loss": 7.5}
    assert [r["status"] for r in train.status] == ["STARTED", "RUNNING", "RUNNING", "SUCCESS"]
    assert results["evaluate"].ap == {"lpd": 0.812, "yellow_double_line": 0.5} and results["evaluate"].map == 0.656
    prune = results["prune"]
    assert prune.output == run_dir / "prune" / ("pruned.hdf5" if generation == TAO5 else "pruned.tlt")
    assert prune.ratio == 0.4321 and prune.output.is_file()
    assert results["retrain"].checkpoints[-1].suffix == ext
    inference = results["inference"]
    assert sorted(p.name for p in inference.labels_dir.iterdir()) == ["a.txt", "b.txt"]
    assert inference.images_dir == run_dir / "inference/images_annotated"
    export = results["export"]
    assert export.model_file.suffix == (".onnx" if generation == TAO5 else ".etlt")
    assert export.labels.read_text() == "background\nlpd\n" and export.nvinfer_config.is_file()
    assert export.cal_cache == run_dir / "export/cal.bin"
    if generation == TAO5:
        assert results["engine"].engine == run_dir / "engine/model.engine"

    # the planted key is nowhere taoflow writes or returns, though the stand-in printed it on every call
    out, err = capfd.readouterr()
    texts = {"stdout": out, "stderr": err, "on_line": "\n".join(lines),
             "results": json.dumps({k: dataclasses.asdict(v) for k, v in results.items()}, default=str),
             "repr": repr(results)}
    for path in run_dir.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    assert [name for name, text in texts.items() if KEY in text] == []
    # ClearML credentials reach the task, and are written nowhere in the run: the step's mounts.json masks them
    assert [name for name, text in texts.items() if CLEARML in text] == []
    kept = json.loads((run_dir / "tao/02-train/mounts.json").read_text())
    assert {"variable": "CLEARML_API_SECRET_KEY", "value": MASK} in kept["Envs"]
    log = (run_dir / "tao/02-train/launcher.log").read_text()
    assert "ssd stand-in invoked: ssd train -e" in log and f"-k {MASK}" in log
    assert f"clearml: CLEARML_API_SECRET_KEY={MASK}" in log and "clearml: CLEARML_OFFLINE_MODE=1" in log
    assert "TAOFLOW_EXIT" not in log
    assert not (home / ".tao_mounts.json").exists()
    assert sorted(p.name for p in (run_dir / "tao").iterdir())[:2] == ["01-dataset_convert", "02-train"]


def test_task_failure_is_caught_though_the_launcher_exits_0(setup, tmp_path):
    make, data_root, _ = setup
    ex = make(TAO5, tmp_path / "run", STANDIN_FAIL="train:exit")
    with pytest.raises(TaoRunError) as err:
        ex.run(TrainRequest(spec=SPECS / "ssd_train_resnet18_crpd.txt", results_dir=tmp_path / "run/train",
                            data_root=data_root))
    assert err.value.task_exit_code == 3 and err.value.task == "train" and err.value.exit_code == 1  # the run failed
    text = str(err.value)
    assert "TAO train failed: `ssd train` exited with status 3" in text
    assert "RuntimeError: stand-in crash" in text and f"log: {tmp_path}/run/tao/01-train/launcher.log" in text


def test_failure_record_in_status_json(setup, tmp_path):
    make, data_root, _ = setup
    model = data_root / "models/resnet18.hdf5"
    ex = make(TAO4, tmp_path / "run", STANDIN_FAIL="evaluate:status")
    with pytest.raises(TaoRunError, match="status.json records FAILURE: stand-in failure: bad spec") as err:
        ex.run(EvaluateRequest(model=model, spec=SPECS / "ssd_train_resnet18_crpd.txt", data_root=data_root,
                               results_dir=tmp_path / "run/eval"))
    assert KEY not in str(err.value) and f"-k {MASK}" in str(err.value)


def test_export_refuses_to_overwrite_unless_replace(setup, tmp_path):
    make, data_root, _ = setup
    ex = make(TAO5, tmp_path / "run")
    out = tmp_path / "run/export/model.onnx"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"old")
    req = ExportRequest(model=data_root / "models/resnet18.hdf5", output=out)
    with pytest.raises(OutputExistsError, match="replace=True"):
        ex.run(req)
    (out.parent / "labels.txt").write_text("background\nstale\n")  # an earlier export's; not this run's
    result = ex.run(dataclasses.replace(req, replace=True))
    assert result.model_file.read_bytes() == b"model" and result.labels is None and result.model_json is None


def test_wrong_generation_override_is_reported(setup, tmp_path):
    make, data_root, _ = setup
    ex = make(TAO5, tmp_path / "run")
    ex.config.generation = "tao4"  # `tao ssd ...` on a launcher that only knows `tao model ssd ...`
    with pytest.raises(TaoPreflightError, match="has no `tao ssd` task"):
        ex.run(EvaluateRequest(model=data_root / "models/resnet18.hdf5", data_root=data_root,
                               spec=SPECS / "ssd_train_resnet18_crpd.txt"))


def test_launcher_that_runs_nothing_is_an_error(setup, tmp_path, tao_launchers):
    # e.g. a launcher printing its usage for a task it does not know, and exiting 0 as nvidia-tao does
    make, data_root, record = setup
    wrapper = write_executable(tmp_path / "bin/tao", f"""#!/bin/sh
if [ "$1" = info ]; then exec "{tao_launchers[TAO5]}" info; fi
echo "usage: tao [-h] {{list,stop,info,dataset,deploy,model}} ..."
""")
    ex = make(TAO5, tmp_path / "run")
    ex.config.launcher = str(wrapper)
    with pytest.raises(TaoRunError, match="the launcher did not run the task") as err:
        ex.run(EvaluateRequest(model=data_root / "models/resnet18.hdf5", data_root=data_root,
                               spec=SPECS / "ssd_train_resnet18_crpd.txt"))
    assert "usage: tao" in str(err.value) and not record.exists()


def test_missing_input_is_reported_before_launching(setup, tmp_path):
    make, data_root, record = setup
    with pytest.raises(TaoflowError, match="evaluate: model not found"):
        make(TAO5, tmp_path / "run").run(EvaluateRequest(model=data_root / "nope.hdf5",
                                                         spec=SPECS / "ssd_train_resnet18_crpd.txt"))
    assert not record.exists()


@pytest.mark.parametrize("generation, suffix", [(TAO5, ".onnx"), (TAO4, ".etlt")])
def test_the_flow_executors_export_is_described_for_deploy(setup, tmp_path, tao_launchers, generation, suffix):
    """TAO writes the model and the DeepStream files; taoflow adds the model.json the deploy stage packages."""
    from taoflow.backends.tao.flow_executor import TaoFlowExecutor

    from taoflow.spec import load_experiment, render, rewrite_paths

    make, data_root, _ = setup
    config = make(generation, tmp_path / "run").config
    spec = tmp_path / "spec.txt"  # absolute paths, as the flow renders them
    raw = load_experiment(SPECS / "ssd_retrain_resnet18_crpd.txt", task="any").raw
    spec.write_text(render(rewrite_paths(raw, lambda _field, value: str(data_root / value))))
    written = TaoFlowExecutor(config).export(spec, data_root / "models/resnet18.hdf5",
                                             tmp_path / "run/export/model.onnx", "fp16").files
    model = Path(written["onnx" if suffix == ".onnx" else "etlt"])
    assert model.suffix == suffix and Path(written["labels"]).read_text() == "background\nlpd\n"
    meta = json.loads(Path(written["model_json"]).read_text())
    assert meta["model_file"] == model.name and meta["output"] == {"kind": "tao_nms"}
    assert meta["precision"] == "fp16" and meta["classes"] == ["lpd"]
    assert meta["source"]["checkpoint"] == str(data_root / "models/resnet18.hdf5")
