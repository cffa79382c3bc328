"""Native training straight from KITTI folders (TAO's `_seq`/`_qat` sample specs), spec fields the native backend
refuses or ignores, and early stopping."""

import logging
import math

import numpy as np
import pytest

from taoflow.backends.native.data import load_kitti_folders, load_tfrecords
from taoflow.backends.native.train import EarlyStopping, train
from taoflow.datasets.tfrecords import dataset_convert
from taoflow.errors import DataError, SpecError
from taoflow.spec import load_experiment, parse_dataset_export_text, parse_experiment_text
from taoflow.spec.experiment import check_native
from tests.backends.native.conftest import cli, write_spec
from tests.datasets.kitti_samples import TAO_SAMPLE_MAPPING, write_kitti_frames

# TAO's raw-KITTI-source sample spec, field for field as NVIDIA/tao_tutorials ships it
# (notebooks/tao_launcher_starter_kit/ssd/specs/ssd_train_resnet18_kitti_seq.txt; the `_qat` variant differs by
# enable_qat: true and n_workers: 8). Only the /workspace/tao-experiments/data paths are rewritten by the tests.
TAO_SEQ_SPEC = """random_seed: 42
ssd_config {
  aspect_ratios_global: "[1.0, 2.0, 0.5, 3.0, 1.0/3.0]"
  scales: "[0.05, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85]"
  two_boxes_for_ar1: true
  clip_boxes: false
  variances: "[0.1, 0.1, 0.2, 0.2]"
  arch: "resnet"
  nlayers: 18
  freeze_bn: false
  freeze_blocks: 0
}
training_config {
  batch_size_per_gpu: 16
  num_epochs: 80
  enable_qat: false
  learning_rate {
  soft_start_annealing_schedule {
    min_learning_rate: 5e-5
    max_learning_rate: 2e-2
    soft_start: 0.15
    annealing: 0.8
    }
  }
  regularizer {
    type: L1
    weight: 3e-5
  }
}
eval_config {
  validation_period_during_training: 10
  average_precision_mode: SAMPLE
  batch_size: 16
  matching_iou_threshold: 0.5
}
nms_config {
  confidence_threshold: 0.01
  clustering_iou_threshold: 0.6
  top_k: 200
}
augmentation_config {
    output_width: 300
    output_height: 300
    output_channel: 3
}
dataset_config {
  data_sources: {
    label_directory_path: "/workspace/tao-experiments/data/kitti_split/training/label"
    image_directory_path: "/workspace/tao-experiments/data/kitti_split/training/image"
  }
  include_difficult_in_training: true
  target_class_mapping {
      key: "car"
      value: "car"
  }
  target_class_mapping {
      key: "pedestrian"
      value: "pedestrian"
  }
  target_class_mapping {
      key: "cyclist"
      value: "cyclist"
  }
  target_class_mapping {
      key: "van"
      value: "car"
  }
  target_class_mapping {
      key: "person_sitting"
      value: "pedestrian"
  }
  validation_data_sources: {
    image_directory_path: "/workspace/tao-experiments/data/kitti_split/val/image"
    label_directory_path: "/workspace/tao-experiments/data/kitti_split/val/label"
  }
}
"""
TAO_QAT_SPEC = TAO_SEQ_SPEC.replace("enable_qat: false", "enable_qat: true").replace(
    "    weight: 3e-5\n  }\n}", "    weight: 3e-5\n  }\n  n_workers: 8\n}")


@pytest.fixture(scope="module")
def kitti_split(tmp_path_factory):
    """KITTI as published (1242x375 PNGs, 9 classes), laid out as TAO's kitti_split/{training,val}/{image,label}."""
    root = tmp_path_factory.mktemp("kitti") / "kitti_split"
    write_kitti_frames(root / "training/image", root / "training/label", 6, seed=1)
    write_kitti_frames(root / "val/image", root / "val/label", 2, seed=2)
    return root


def tao_spec(path, text, root, **replace):
    text = text.replace("/workspace/tao-experiments/data/kitti_split", str(root))
    for old, new in replace.items():
        text = text.replace(old, new)
    path.write_text(text)
    return path


def test_tao_seq_sample_spec_trains_one_epoch_natively(kitti_split, tmp_path):
    # 1 epoch instead of 80, validated after it (instead of every 10th) so that the raw-KITTI
    # validation_data_sources are read too.
    spec = tao_spec(tmp_path / "ssd_train_resnet18_kitti_seq.txt", TAO_SEQ_SPEC, kitti_split,
                    **{"num_epochs: 80": "num_epochs: 1",
                       "validation_period_during_training: 10": "validation_period_during_training: 1"})
    code, out = cli("train", "-e", spec, "-r", tmp_path / "run")
    assert code == 0, out
    assert (tmp_path / "run/weights/ssd_resnet18_epoch_001.pth").is_file()
    log = (tmp_path / "run/ssd_training_log_resnet18.csv").read_text().splitlines()
    assert log[0] == "epoch,AP_car,AP_cyclist,AP_pedestrian,loss,lr,mAP,validation_loss"
    row = dict(zip(log[0].split(","), map(float, log[1].split(","))))
    assert row["epoch"] == 1 and math.isfinite(row["loss"])  # a real loss from the 6 PNG frames
    assert math.isfinite(row["validation_loss"]) and 0 <= row["mAP"] <= 1  # validated on the 2 PNG val frames
    assert "mAP" in out and "Validation loss" in out


def test_tao_qat_sample_spec_is_refused_with_file_line(kitti_split, tmp_path):
    spec = tao_spec(tmp_path / "ssd_train_resnet18_kitti_qat.txt", TAO_QAT_SPEC, kitti_split)
    code, out = cli("train", "-e", spec, "-r", tmp_path / "run")
    assert code == 2 and "Traceback" not in out
    [error] = [line for line in out.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {spec}:16:3: training_config.enable_qat: the native backend does not do "
                            "quantization-aware training")
    assert 'backend="tao"' in error
    assert not (tmp_path / "run" / "weights").exists() or not any((tmp_path / "run" / "weights").iterdir())


def test_folders_give_the_same_training_data_as_tfrecords(kitti_split, tmp_path):
    """The same KITTI folder read directly and through TAO's TFRecords: identical boxes, classes, difficult flags
    and decoded images, frame for frame."""
    export = parse_dataset_export_text(f"""kitti_config {{ root_directory_path: "{kitti_split / 'training'}"
        image_dir_name: "image" label_dir_name: "label" image_extension: ".png" partition_mode: "random"
        num_partitions: 2 val_split: 0 num_shards: 2 }}
        """ + "".join(f'target_class_mapping {{ key: "{k}" value: "{v}" }}\n' for k, v in TAO_SAMPLE_MAPPING.items()))
    dataset_convert(export, tmp_path / "tfr" / "t", progress=False)
    for include_difficult in (True, False):
        records = load_tfrecords([str(tmp_path / "tfr" / "t-fold-*")], (60, 90), 3, include_difficult, workers=1)
        folders = load_kitti_folders([(kitti_split / "training/image", kitti_split / "training/label")],
                                     TAO_SAMPLE_MAPPING, (60, 90), 3, include_difficult, workers=1)
        assert len(folders) == len(records) == 6
        by_stem = {frame.split("/")[-1]: i for i, frame in enumerate(records.ids)}
        for j, path in enumerate(folders.ids):
            i = by_stem[path.rsplit("/", 1)[-1].split(".")[0]]
            np.testing.assert_allclose(folders.boxes[j], records.boxes[i], atol=1e-6)
            assert folders.labels[j].tolist() == records.labels[i].tolist()
            assert folders.difficult[j].tolist() == records.difficult[i].tolist()
            assert np.array_equal(folders.images[j].numpy(), records.images[i].numpy())
        assert any(len(b) for b in folders.boxes)
        assert include_difficult or not any(d.any() for d in folders.difficult)


def test_folders_with_mixed_extensions_and_clear_errors(tmp_path):
    from tests.conftest import write_image, write_text
    images, labels = tmp_path / "image", tmp_path / "label"
    line = "Car 0.00 0 0.00 {} 1.00 {} 20.00 0 0 0 0 0 0 0\n"
    for name, (x1, x2) in {"a.png": (2, 30), "b.JPG": (0, 80), "c.jpeg": (-5, 10)}.items():
        write_image(images / name, 80, 40)
        write_text(labels / f"{name.split('.')[0]}.txt", line.format(x1, x2) + "Tram 0 0 0 1 1 5 5 0 0 0 0 0 0 0\n")
    cache = load_kitti_folders([(images, labels)], {"car": "car"}, (32, 48), workers=1)
    assert [p.rsplit("/", 1)[1] for p in cache.ids] == ["a.png", "b.JPG", "c.jpeg"]
    np.testing.assert_allclose(np.concatenate(cache.boxes), [[2 / 80, 1 / 40, 30 / 80, 20 / 40],
                                                             [0, 1 / 40, 1, 20 / 40], [0, 1 / 40, 10 / 80, 20 / 40]])
    assert [lab.tolist() for lab in cache.labels] == [[1], [1], [1]]  # tram unmapped: skipped as TAO does
    assert tuple(cache.images.shape) == (3, 3, 32, 48)
    write_text(labels / "b.txt", "Car 0 0 0 1 1\n")
    with pytest.raises(DataError, match=r"b.txt:1: expected at least 9"):
        load_kitti_folders([(images, labels)], {"car": "car"}, (32, 48), workers=1)
    (labels / "b.txt").unlink()
    with pytest.raises(DataError, match=r"b.JPG: image has no label file"):
        load_kitti_folders([(images, labels)], {"car": "car"}, (32, 48), workers=1)
    with pytest.raises(DataError, match="training image directory not found"):
        load_kitti_folders([(tmp_path / "nope", labels)], {"car": "car"}, (32, 48), workers=1)


# ----------------------------------------------------------------------------------- fields native cannot honour

BASE = TAO_SEQ_SPEC.replace("/workspace/tao-experiments/data/kitti_split", "/data")


@pytest.mark.parametrize("old,new,line,match", [
    ("enable_qat: false", "enable_qat: true", 16, "training_config.enable_qat: the native backend does not do "
                                                  "quantization-aware training; use the TAO backend"),
    ("ssd_config {", "dssd_config {\n  pred_num_channels: 512", 2, "dssd_config: the native backend builds SSD, "
                                                                    "not DSSD"),
    ('arch: "resnet"', 'arch: "mobilenet_v2"', 8, "ssd_config.arch: the native backend builds resnet 10, 18, 34, "
                                                  "50; the spec asks for mobilenet_v2"),
    ("nlayers: 18", "nlayers: 101", 8, "the spec asks for resnet101"),
    ("include_difficult_in_training: true", 'type: "coco"', 51, "dataset_config.type: the native backend reads "
                                                               "KITTI"),
    ("  include_difficult_in_training: true", '  data_sources { tfrecords_path: "/data/t-*" }', 47,
     "dataset_config.data_sources: mixes tfrecords_path sources with image/label directory sources"),
])
def test_fields_that_would_change_the_model_are_refused(old, new, line, match):
    text = BASE.replace(old, new)
    assert text != BASE
    spec = parse_experiment_text(text, task="train", path="spec.txt")
    with pytest.raises(SpecError, match=match) as exc:
        check_native(spec, task="train")
    assert exc.value.line == line and str(exc.value).startswith(f"spec.txt:{line}:")


def test_harmless_fields_are_named_in_warnings():
    text = TAO_QAT_SPEC.replace("/workspace/tao-experiments/data/kitti_split", "/data").replace(
        "enable_qat: true", "enable_qat: false\n  optimizer { adam { epsilon: 1e-7 } }\n"
        "  visualizer { enabled: true }\n  model_ema: true\n  pretrain_model_path: \"/x.hdf5\"").replace(
        "  data_sources: {\n", "  data_sources: {\n    root_path: \"/data\"\n")
    spec = parse_experiment_text(text, task="train", path="s.txt")
    warnings = check_native(spec, task="train")
    assert [w.split(": ")[1] for w in warnings] == [
        "dataset_config.data_sources.root_path", "training_config.optimizer", "training_config.model_ema",
        "training_config.pretrain_model_path", "training_config.n_workers", "training_config.visualizer"]
    assert all("ignored" in w for w in warnings)
    assert warnings[1].startswith("s.txt:17: training_config.optimizer: ignored: SSD training uses SGD")
    assert check_native(parse_experiment_text(BASE, task="train"), task="train") == []
    # The shipped specs ask for nothing the native backend would drop.
    from pathlib import Path
    for path in sorted(Path(__file__).resolve().parents[3].glob("specs/*/ssd_*train*.txt")):
        assert check_native(load_experiment(path, task="train"), task="train") == [], path


def test_warnings_reach_the_training_log(tiny_data, tmp_path, caplog):
    spec = write_spec(tmp_path / "spec.txt", tiny_data, epochs=1)
    spec.write_text(spec.read_text().replace("checkpoint_interval: 1", "checkpoint_interval: 1\n  n_workers: 4"))
    with caplog.at_level(logging.WARNING, logger="taoflow.backends.native.train"):
        train(spec, tmp_path / "run", device="cpu", max_iterations=1)
    assert "training_config.n_workers: ignored" in caplog.text and f"{spec}:" in caplog.text


# ------------------------------------------------------------------------------------------------ early stopping

def _stopper(text):
    return EarlyStopping(parse_experiment_text(BASE.replace("  regularizer {", text + "\n  regularizer {"),
                                               task="any").effective)


def test_early_stopping_follows_keras():
    es = _stopper("early_stopping { monitor: \"loss\" min_delta: 0.1 patience: 2 }")
    seq = [1.0, 0.95, 0.85, 0.84, 0.80]  # 0.95 and 0.84 and 0.80 do not beat the best by more than 0.1
    assert [es.update({"epoch": i + 1, "loss": v}) for i, v in enumerate(seq)] == [False, False, False, False, True]
    assert es.stopped_epoch == 5
    es = _stopper("early_stopping { monitor: \"val_loss\" patience: 1 }")
    assert es.monitor == "validation_loss"
    assert es.update({"epoch": 1, "loss": 1.0}) is False  # not validated this epoch: skipped
    assert es.update({"epoch": 2, "validation_loss": 1.0}) is False
    assert es.update({"epoch": 3, "validation_loss": 1.0}) is True  # no improvement, patience 1
    assert _stopper("").update({"epoch": 1, "loss": 1.0}) is False


def test_validation_loss_monitor_needs_validation_every_epoch():
    text = BASE.replace("  regularizer {", "  early_stopping { monitor: \"validation_loss\" patience: 1 }\n"
                                           "  regularizer {")
    with pytest.raises(SpecError, match="validation_period_during_training: 1"):
        parse_experiment_text(text, task="train")
    parse_experiment_text(text.replace("validation_period_during_training: 10",
                                       "validation_period_during_training: 1"), task="train")


def test_training_stops_early_and_checkpoints_that_epoch(tiny_data, tmp_path):
    spec = write_spec(tmp_path / "spec.txt", tiny_data, epochs=4)
    spec.write_text(spec.read_text().replace("checkpoint_interval: 1", "checkpoint_interval: 3\n"
                                             "  early_stopping { monitor: \"loss\" min_delta: 1000 patience: 1 }"))
    result = train(spec, tmp_path / "run", device="cpu")
    assert result["stopped_early"] == 2 and [h["epoch"] for h in result["history"]] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run/weights").iterdir()) == ["ssd_resnet10_epoch_002.pth"]


@pytest.mark.parametrize("task", ["evaluate", "inference", "export"])
def test_other_tasks_refuse_before_any_work(tmp_path, task):
    spec = tmp_path / "spec.txt"
    spec.write_text(BASE.replace('arch: "resnet"', 'arch: "darknet"'))
    argv = {"evaluate": ["evaluate", "-e", spec, "-m", tmp_path / "m.pth"],
            "inference": ["inference", "-e", spec, "-m", tmp_path / "m.pth", "-i", tmp_path, "-r", tmp_path / "r"],
            "export": ["export", "-e", spec, "-m", tmp_path / "m.pth", "-o", tmp_path / "m.onnx"]}[task]
    code, out = cli(*argv)
    assert code == 2 and "Traceback" not in out
    [error] = [line for line in out.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {spec}:8:3: ssd_config.arch: the native backend builds resnet")
    assert not (tmp_path / "r").exists() and not (tmp_path / "m.onnx").exists()


def test_evaluate_names_visualize_pr_curve_as_ignored(tmp_path, caplog):
    spec = tmp_path / "spec.txt"
    spec.write_text(BASE.replace("matching_iou_threshold: 0.5",
                                 "matching_iou_threshold: 0.5\n  visualize_pr_curve: true"))
    code, out = cli("evaluate", "-e", spec, "-m", tmp_path / "missing.pth")
    assert code == 2 and "model file not found" in out  # the warning came first, then the real problem
    assert f"[WARNING] taoflow.backends.native: {spec}:35: eval_config.visualize_pr_curve: ignored" in out


def test_export_takes_infer_nms_score_bits_for_the_nms_plugin():
    """The plugin graph passes it as NMSDynamic_TRT's scoreBits, as TAO's exporter does: not a field to warn about."""
    spec = parse_experiment_text(BASE.replace("top_k: 200", "top_k: 200\n  infer_nms_score_bits: 12"), task="export",
                                 path="e.txt")
    assert check_native(spec, task="export") == []
    assert check_native(spec, task="train") == []
