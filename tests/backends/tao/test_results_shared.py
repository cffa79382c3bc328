"""The backend-neutral results (taoflow.backends.results): the native adapters, evaluate's table vs kpi, result_dict,
masking whole results, and which status.json records and output files count as this run's."""

import json
import math
from pathlib import Path

from taoflow.backends import results as R
from taoflow.backends.tao import MASK, mask_data, secrets_to_mask
from taoflow.backends.tao.executor import _Outputs, status_since

TABLE = "*******************************\nlpd           AP    0.812\n              mAP   0.812\n" \
        "*******************************\n"


def test_evaluate_prefers_the_full_precision_kpi_that_matches_the_table():
    kpi = [{"status": "SUCCESS", "kpi": {"AP_lpd": 0.81234567, "mAP": 0.81234567}}]
    assert R.evaluate_values(TABLE, kpi) == ({"lpd": 0.81234567}, 0.81234567)
    other = [{"kpi": {"AP_lpd": 0.5, "mAP": 0.5}}]  # not what was printed: the table wins
    assert R.evaluate_values(TABLE, other) == ({"lpd": 0.812}, 0.812)
    assert R.evaluate_values(TABLE, []) == ({"lpd": 0.812}, 0.812)
    assert R.evaluate_values("", kpi) == ({"lpd": 0.81234567}, 0.81234567)
    nan = [{"kpi": {"AP_lpd": float("nan"), "mAP": float("nan")}}]
    ap, mean = R.evaluate_values(TABLE.replace("0.812", "nan"), nan)
    assert math.isnan(ap["lpd"]) and math.isnan(mean)


def native_train_dir(root):
    weights = root / "weights"
    weights.mkdir(parents=True)
    for epoch in (2, 1, 10):
        (weights / f"ssd_resnet10_epoch_{epoch:03d}.pth").write_bytes(b"")
    (root / "ssd_training_log_resnet10.csv").write_text("epoch,AP_lpd,loss,lr,mAP,validation_loss\n"
                                                         "1,0.5,2.0,0.005,0.5,1.5\n")
    (root / "status.json").write_text(json.dumps({"status": "STARTED"}) + "\n" + json.dumps({"status": "SUCCESS"}))
    return root


def test_native_adapters(tmp_path):
    train = R.train_result(native_train_dir(tmp_path / "train"))
    assert [p.name for p in train.checkpoints][-1] == "ssd_resnet10_epoch_010.pth"
    assert train.last_checkpoint.name == "ssd_resnet10_epoch_010.pth" and train.command is None
    assert train.history == [{"epoch": 1, "AP_lpd": 0.5, "loss": 2.0, "lr": 0.005, "mAP": 0.5,
                              "validation_loss": 1.5}]
    assert [r["status"] for r in train.status] == ["STARTED", "SUCCESS"]

    metrics = {"AP_lpd": 0.75, "mAP": 0.75, "validation_loss": 1.0, "table": "..."}
    assert R.evaluate_result(metrics=metrics) == R.EvaluateResult(ap={"lpd": 0.75}, map=0.75)

    report = {"output": str(tmp_path / "pruned.pth"), "ratio": 0.6, "params_before": 10, "params_after": 6}
    assert R.prune_result(report) == R.PruneResult(output=tmp_path / "pruned.pth", ratio=0.6, param_count=6)
    (tmp_path / "pruned.pth").write_bytes(b"")
    (tmp_path / "status.json").write_text(json.dumps({"kpi": {"pruning_ratio": 0.6, "param_count": 6}}))
    assert R.prune_result(output=tmp_path / "pruned.pth", results_dir=tmp_path) == R.PruneResult(
        status=[{"kpi": {"pruning_ratio": 0.6, "param_count": 6}}], output=tmp_path / "pruned.pth", ratio=0.6,
        param_count=6)

    (tmp_path / "labels").mkdir()
    four = R.inference_result(labels_dir=tmp_path / "labels", images_dir=tmp_path / "missing")
    assert four.labels_dir == tmp_path / "labels" and four.images_dir is None

    export = tmp_path / "export"
    export.mkdir()
    for name in ("model.onnx", "model.json", "labels.txt"):
        (export / name).write_text("x")
    written = {"onnx": str(export / "model.onnx"), "model_json": str(export / "model.json")}
    result = R.export_result(written=written)
    assert result == R.export_result(export / "model.onnx")
    assert (result.model_file, result.model_json, result.labels) == (export / "model.onnx", export / "model.json",
                                                                     export / "labels.txt")
    assert result.nvinfer_config is None and result.cal_cache is None


def test_result_dict_and_masking_whole_results(tmp_path):
    result = R.TrainResult(command=f"tao model ssd train -k {MASK}", results_dir=tmp_path / "secret-run",
                           checkpoints=[tmp_path / "secret-run/weights/e_001.pth"],
                           history=[{"epoch": 1, "mAP": float("nan")}], status=[{"message": "key secret-run"}])
    data = R.result_dict(result)
    assert data["type"] == "TrainResult" and data["history"] == [{"epoch": 1, "mAP": None}]
    assert data["checkpoints"] == [str(tmp_path / "secret-run/weights/e_001.pth")]
    json.dumps(data)
    masked = mask_data(result, ["secret-run"])
    assert isinstance(masked, R.TrainResult) and masked.results_dir == tmp_path / MASK
    assert masked.checkpoints == [tmp_path / MASK / "weights/e_001.pth"] and masked.status[0]["message"] == "key ****"
    assert result.results_dir == tmp_path / "secret-run"  # a copy: the original is untouched
    assert mask_data(result, []) is result
    env = {"TAO_MODEL_KEY": "k-from-env", "CLEARML_API_SECRET_KEY": "0123456789abcdef", "SOME_KEY_ON": "1"}
    assert sorted(secrets_to_mask(None, env)) == ["0123456789abcdef", "k-from-env"]
    assert "given-key" in secrets_to_mask("given-key", env)


def test_status_records_of_this_run(tmp_path):
    path = tmp_path / "status.json"
    assert status_since(path, None) == []
    path.write_text(json.dumps({"status": "FAILURE", "message": "earlier"}) + "\n")
    before = path.read_bytes()
    with open(path, "a") as f:
        f.write(json.dumps({"status": "SUCCESS"}) + "\n")
    assert status_since(path, before) == [{"status": "SUCCESS"}]
    # replaced by a new run, in place and longer than before: all of it is this run's
    path.write_text(json.dumps({"status": "STARTED", "message": "a much longer first record"}) + "\n"
                    + json.dumps({"status": "SUCCESS"}) + "\n")
    assert [r["status"] for r in status_since(path, before)] == ["STARTED", "SUCCESS"]


def test_outputs_name_only_files_this_run_wrote(tmp_path):
    stale, fresh, rewritten = tmp_path / "pruned", tmp_path / "pruned.pth", tmp_path / "labels.txt"
    stale.write_bytes(b"earlier run")
    rewritten.write_text("background\n")
    outputs = _Outputs([stale, fresh, rewritten, tmp_path / "never"])
    fresh.write_bytes(b"this run")
    tmp = tmp_path / ".labels.tmp"
    tmp.write_text("background\nlpd\n")
    tmp.replace(rewritten)  # atomic replace, as the native backend writes
    assert outputs.first_fresh([stale, fresh]) == fresh
    assert outputs.fresh(rewritten) == rewritten and outputs.fresh(stale) is None
    assert outputs.fresh(tmp_path / "never") is None and outputs.fresh(None) is None
    assert outputs.first_fresh([stale]) is None
    assert isinstance(outputs.fresh(fresh), Path)
