"""Key masking and the parsers of what TAO writes."""

import json
import math

import pytest

from taoflow.backends.tao import MASK, mask_data, mask_secrets, parse_ap_table, parse_pruning_ratio, resolve_key
from taoflow.backends.tao.masking import secret_env_values
from taoflow.backends.tao.results import (checkpoints, dataset_records, failures, read_status, read_training_csv,
                                          training_csv)
from taoflow.errors import TaoflowError


def test_mask_secrets_everywhere_longest_first():
    text = "tao ssd train -k abc123 -e x; key=abc123abc123 nested abc"
    assert mask_secrets(text, ["abc123", "abc123abc123", "", None]) == "tao ssd train -k **** -e x; key=**** nested abc"
    assert mask_secrets(None, ["x"]) is None
    data = {"message": "bad key abc123", "kpi": [1, "abc123"], "abc123": ("t", 2.0)}
    assert mask_data(data, ["abc123"]) == {"message": f"bad key {MASK}", "kpi": [1, MASK], MASK: ("t", 2.0)}


def test_secret_env_values_skip_short_flags():
    env = {"CLEARML_API_SECRET_KEY": "0123456789abcdef", "NGC_API_KEY": "nvapi-long-key-value", "SOME_KEY_ON": "1",
           "TAO_MODEL_KEY": "k", "PATH": "/usr/bin:/bin-with-KEY"}
    assert sorted(secret_env_values(env)) == ["0123456789abcdef", "k", "nvapi-long-key-value"]


class _SecretStr:
    def get_secret_value(self):
        return "from-secretstr"


class _PrefectSecret:
    def get(self):
        return "from-prefect-block"


def test_resolve_key_sources():
    assert resolve_key(None, {"TAO_MODEL_KEY": "from-env"}) == "from-env"
    assert resolve_key(None, {}) is None
    assert resolve_key("", {"TAO_MODEL_KEY": ""}) is None
    assert resolve_key("given", {"TAO_MODEL_KEY": "from-env"}) == "given"
    assert resolve_key(_SecretStr(), {}) == "from-secretstr"
    assert resolve_key(_PrefectSecret(), {}) == "from-prefect-block"
    assert resolve_key(lambda: "from-callable", {}) == "from-callable"
    with pytest.raises(TaoflowError, match="must not contain quotes"):
        resolve_key("it's", {})


TABLE = """\
Epoch 80/80
*******************************
car           AP    0.1
*******************************
noise
*******************************
lpd           AP    0.812
yellow_double_lineAP    0.5
tram          AP    nan
xxxxxxxxxxxxxmAP    0.25
              mAP   0.522
*******************************
Validation loss: 3.2
"""


def test_ap_table_last_block_long_names_and_nan():
    ap, mean = parse_ap_table(TABLE)
    assert mean == 0.522
    assert ap["lpd"] == 0.812 and ap["yellow_double_line"] == 0.5 and ap["xxxxxxxxxxxxxm"] == 0.25
    assert math.isnan(ap["tram"])
    assert parse_ap_table("no table here") == ({}, None)


def test_pruning_ratio_from_log_or_kpi():
    log = "2025 [INFO] magnet_prune 211: Pruning ratio (pruned model / original model): 0.4321\n"
    assert parse_pruning_ratio(log) == 0.4321
    assert parse_pruning_ratio("", [{"kpi": {"pruning_ratio": 0.5}}]) == 0.5
    assert parse_pruning_ratio("", []) is None


def test_status_records_offset_torn_line_and_failures(tmp_path):
    path = tmp_path / "status.json"
    old = json.dumps({"status": "FAILURE", "message": "an earlier run"}) + "\n"
    path.write_text(old)
    offset = path.stat().st_size
    with open(path, "a") as f:
        f.write(json.dumps({"status": "STARTED", "message": "go"}) + "\n")
        f.write(json.dumps({"status": "SUCCESS", "message": "done"}) + "\n")
        f.write('{"status": "RUNN')  # killed mid-write
    records = read_status(path, offset)
    assert [r["status"] for r in records] == ["STARTED", "SUCCESS"] and failures(records) == []
    assert failures(read_status(path)) == [{"status": "FAILURE", "message": "an earlier run"}]
    path.write_text(json.dumps({"status": "FAILURE", "message": "rewritten"}) + "\n")  # shorter than offset
    assert failures(read_status(path, offset))[0]["message"] == "rewritten"
    assert read_status(tmp_path / "missing.json") == []


def test_checkpoints_csv_and_records(tmp_path):
    weights = tmp_path / "train/weights"
    weights.mkdir(parents=True)
    for name in ("ssd_resnet18_epoch_010.hdf5", "ssd_resnet18_epoch_002.hdf5", "ssd_resnet18_epoch_100.tlt",
                 "notes.txt"):
        (weights / name).write_bytes(b"")
    assert [p.name for p in checkpoints(tmp_path / "train")] == [
        "ssd_resnet18_epoch_002.hdf5", "ssd_resnet18_epoch_010.hdf5", "ssd_resnet18_epoch_100.tlt"]
    assert checkpoints(tmp_path / "nothing") == []
    (tmp_path / "train/ssd_training_log_resnet18.csv").write_text(
        "epoch,AP_lpd,loss,lr,mAP,validation_loss\n1,nan,12.5,0.001,,nan\n")
    rows = read_training_csv(training_csv(tmp_path / "train"))
    assert rows[0]["epoch"] == 1 and rows[0]["loss"] == 12.5 and rows[0]["mAP"] is None
    assert math.isnan(rows[0]["AP_lpd"])
    tf = tmp_path / "tfrecords"
    tf.mkdir()
    for name in ("crpd_train-fold-000-of-002-shard-00000-of-00002", "crpd_train-fold-000-of-002-shard-00001-of-00002",
                 "idx-crpd_train-fold-000-of-002-shard-00000-of-00002", "crpd_train_warning.json", "other"):
        (tf / name).write_bytes(b"")
    records, index, warning = dataset_records(tf / "crpd_train")
    assert [p.name[-14:] for p in records] == ["00000-of-00002", "00001-of-00002"] and len(index) == 1
    assert warning == tf / "crpd_train_warning.json"
