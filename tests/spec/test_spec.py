import subprocess
import sys
from pathlib import Path

import pytest

from taoflow.errors import SpecError
from taoflow.spec import load_dataset_export, load_experiment, parse_experiment_text, render, rewrite_paths
from taoflow.spec.checks import literal_numbers
from taoflow.spec.protos import ssd_experiment_pb2

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*/*.txt"))
TRAIN = (REPO / "specs/crpd/ssd_train_resnet18_crpd.txt").read_text()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_specs_parse(path):
    if "tfrecords" in path.name:
        spec = load_dataset_export(path)
        # CRPD's JPEGs, KITTI's PNGs; traffic merges datasets of either kind, so it names none (every image)
        expected = {"crpd": ".jpg", "kitti": ".png", "traffic": ""}[path.parent.name]
        assert spec.kitti.val_split == 0 and spec.kitti.image_extension == expected
    else:
        spec = load_experiment(path, task="train")
        assert spec.ssd.arch == "resnet" and len(spec.aspect_ratios) == 6 and len(spec.scales) == 7
        # the glob must not match the warning json or idx files written next to the records
        assert spec.raw.dataset_config.data_sources[0].tfrecords_path.endswith("-fold-000-of-002-shard-*")


def test_shipped_specs_cover_crpd_variants_and_traffic():
    crpd = load_experiment(REPO / "specs/crpd/ssd_train_resnet18_crpd.txt")
    assert crpd.classes == ["lpd"]
    types = load_experiment(REPO / "specs/crpd/ssd_train_resnet18_crpd_plate_type.txt")
    assert types.classes == ["blue", "white", "yellow_double", "yellow_single"]
    traffic = load_experiment(REPO / "specs/traffic/ssd_train_resnet18_traffic.txt")
    assert traffic.classes == ["bicycle", "pedestrian", "road_sign", "vehicle"]
    retrain = load_experiment(REPO / "specs/crpd/ssd_retrain_resnet18_crpd.txt")
    assert retrain.raw.training_config.batch_size_per_gpu == 32
    assert retrain.raw.training_config.regularizer.type == ssd_experiment_pb2.RegularizerConfig.NO_REG


def line_of(text, needle):
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("old, new, message", [
    ("nlayers: 18", "nlayer: 18", "has no field named \"nlayer\". (did you mean 'nlayers'?)"),
    ("output_width: 300", 'output_width: "wide"', "Couldn't parse integer"),
    ("top_k: 200", "top_k: -3", "Value out of range: -3"),
    ("two_boxes_for_ar1: true", "two_boxes_for_ar1: maybe", 'Expected "true" or "false"'),
    ("average_precision_mode: SAMPLE", "average_precision_mode: AREA", "has no value named AREA"),
])
def test_unknown_field_and_wrong_type_name_file_line(tmp_path, old, new, message):
    path = tmp_path / "bad.txt"
    path.write_text(TRAIN.replace(old, new))
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    assert str(err.value).startswith(f"{path}:{line_of(TRAIN, old)}:")
    assert message in str(err.value)


@pytest.mark.parametrize("old, new, message", [
    ("output_width: 300", "output_width: 32", "augmentation_config.output_width: must be > 32, got 32"),
    ("output_channel: 3", "output_channel: 4", "output_channel: must be 1 or 3"),
    ("soft_start: 0.15", "soft_start: 1.5", "soft_start: must be in (0, 1), got 1.5"),
    ("confidence_threshold: 0.01", "confidence_threshold: 1.2", "confidence_threshold: must be in (0, 1)"),
    ('arch: "resnet"', 'arch: "resnot"', "unknown arch 'resnot'"),
    ("nlayers: 18", "nlayers: 19", "resnet needs nlayers in 10, 18, 34, 50, 101"),
    ('"[0.1, 0.1, 0.2, 0.2]"', '"[0.1, 0.1, 0.2]"', "variances: must be 4 numbers > 0"),
    ('scales: "[0.05', 'scales: "[__import__(\'os\'), 0.05', "not a list of numbers"),
    ("weight: 3e-05", "weight: 3", "regularizer.weight: must be in (0, 1), got 3"),
    ("top_k: 200", "top_k: 0", "nms_config.top_k: must be > 0"),
])
def test_out_of_range_values_name_file_line(tmp_path, old, new, message):
    path = tmp_path / "bad.txt"
    path.write_text(TRAIN.replace(old, new))
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    assert str(err.value).startswith(f"{path}:{line_of(TRAIN, old)}:"), str(err.value)
    assert message in str(err.value)


def test_all_problems_reported_together():
    text = TRAIN.replace("output_width: 300", "output_width: 10").replace("top_k: 200", "top_k: 0")
    with pytest.raises(SpecError) as err:
        parse_experiment_text(text, task="train", path="s.txt")
    msg = str(err.value)
    assert msg.startswith(f"s.txt:{line_of(TRAIN, 'top_k')}:") and f"s.txt:{line_of(TRAIN, 'output_width')}:" in msg


def test_missing_blocks_for_task():
    no_train = TRAIN[:TRAIN.index("training_config {")] + TRAIN[TRAIN.index("eval_config {"):]
    with pytest.raises(SpecError, match="training_config: missing"):
        parse_experiment_text(no_train, task="train")
    assert parse_experiment_text(no_train, task="evaluate").classes == ["lpd"]


def test_tao_defaults_apply_to_effective_copy_only():
    spec = parse_experiment_text(TRAIN, task="train")
    assert spec.raw.ssd_config.neg_pos_ratio == 0 and spec.ssd.neg_pos_ratio == 3.0
    assert spec.effective.augmentation_config.zoom_out_max_scale == 4.0
    assert spec.effective.training_config.checkpoint_interval == 1
    assert spec.image_mean() == [103.939, 116.779, 123.68]
    assert spec.aspect_ratios[0] == pytest.approx([1.0, 2.0, 0.5, 3.0, 1 / 3])


def test_dssd_config_is_read_like_tao():
    spec = parse_experiment_text(TRAIN.replace("ssd_config {", "dssd_config {"), task="train")
    assert spec.is_dssd and spec.effective.ssd_config.nlayers == 18


def test_render_round_trips_and_rewrites_only_paths():
    spec = parse_experiment_text(TRAIN, task="train")
    moved = rewrite_paths(spec.raw, lambda field, value: "/abs/" + value)
    again = parse_experiment_text(render(moved), task="train")
    assert again.raw.dataset_config.data_sources[0].tfrecords_path.startswith("/abs/crpd/tfrecords/")
    assert again.raw.dataset_config.validation_data_sources[0].image_directory_path == "/abs/crpd/split/val/image"
    again.raw.dataset_config.data_sources[0].tfrecords_path = spec.raw.dataset_config.data_sources[0].tfrecords_path
    again.raw.dataset_config.validation_data_sources[0].CopyFrom(spec.raw.dataset_config.validation_data_sources[0])
    assert again.raw == spec.raw  # nothing but paths changed


def test_literal_numbers_accepts_tao_expressions_only():
    assert literal_numbers("[1.0, 2.0, 1.0/3.0, -2*0.5]") == pytest.approx([1, 2, 1 / 3, -1])
    assert literal_numbers("[[1, 2], (3, 4)]") == [[1, 2], [3, 4]]
    for bad in ("__import__('os').system('true')", "[1, x]", "[1/0]", "lambda: 1"):
        with pytest.raises(ValueError):
            literal_numbers(bad)


def test_generated_protobuf_modules_are_current():
    out = subprocess.run([sys.executable, str(REPO / "tools/gen_protos.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_spec_check_reports_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text(TRAIN.replace("nlayers: 18", "nlayers: 19"))
    from taoflow.spec.cli import run_check

    class Args:
        specs = [str(REPO / "specs/crpd/ssd_train_resnet18_crpd.txt"), str(bad)]
        task = "train"
    assert run_check(Args) == 2  # bad input, as for every taoflow command
