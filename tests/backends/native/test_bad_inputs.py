"""taoflow-ssd on hostile inputs (issue 13): every bad argument or input file is one `error:` line naming it, exit 2,
and nothing is written (no status.json, no weights/, no results directory) before all of it has been checked.
Images and records are real files: a JPEG/PNG whose header claims 65000x65000 pixels (the SOF/IHDR of a small
valid file patched), a truncated JPEG, TFRecords written by the data stage."""

import shutil

import pytest

from taoflow.backends.native.build import build_model
from taoflow.backends.native.checkpoint import save_checkpoint
from taoflow.backends.native.data import load_kitti_folders, load_tfrecords
from taoflow.backends.native.evaluate import read_image
from taoflow.datasets.tfrecords import dataset_convert
from taoflow.errors import DataError, TaoflowError
from taoflow.spec import load_experiment, parse_dataset_export_text
from tests.datasets.hostile_images import write_huge_image

from .conftest import cli, write_spec

MAPPING = {"lpd": "lpd"}


def _copy_split(tiny_data, tmp_path):
    """A private copy of the tiny split (tests break files in it) and a spec whose validation data point there."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data / "split", root / "split")
    shutil.copytree(tiny_data / "tfrecords", root / "tfrecords")
    return root, write_spec(tmp_path / "spec.txt", root, epochs=2)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _one_error(out):
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    return errors[0]


def _checkpoint(spec_path, path, optimizer=False):
    import torch
    spec = load_experiment(spec_path)
    model, arch = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer else None
    save_checkpoint(path, model, arch, spec.classes, epoch=1, optimizer=opt, global_step=0)
    return path


# ------------------------------------------------------------------------ decoding names the file (data.py, evaluate)


def test_huge_header_in_tfrecords_names_record_file_and_frame(tiny_data, tmp_path):
    root, _ = _copy_split(tiny_data, tmp_path)
    image = next((root / "split/training/image").iterdir())
    write_huge_image(image)
    spec = parse_dataset_export_text(f"""kitti_config {{ root_directory_path: "{root / 'split/training'}"
        image_dir_name: "image" label_dir_name: "label" partition_mode: "random" num_partitions: 2 val_split: 0
        num_shards: 1 }} target_class_mapping {{ key: "lpd" value: "lpd" }}""")
    dataset_convert(spec, tmp_path / "rec" / "t", progress=False, max_side=None)  # written as TAO's converter would
    with pytest.raises(DataError) as err:
        load_tfrecords([str(tmp_path / "rec" / "t-*")], (64, 64), workers=1)
    assert err.value.path.startswith(str(tmp_path / "rec" / "t-fold-000"))
    assert f"image {'image/' + image.stem!r}" in err.value.message
    assert "OpenCV cannot decode it" in err.value.message and "CV_IO_MAX_IMAGE_PIXELS" in err.value.message


@pytest.mark.parametrize("name", ["a.jpg", "a.png"])
def test_huge_header_in_folders_names_the_image(tmp_path, name):
    from tests.conftest import write_text
    image = write_huge_image(tmp_path / "image" / name)
    write_text(tmp_path / "label" / "a.txt", "lpd 0 0 0 1 2 30 20 0 0 0 0 0 0 0\n")
    with pytest.raises(DataError, match="claims 65000x65000 pixels") as err:
        load_kitti_folders([(tmp_path / "image", tmp_path / "label")], MAPPING, (64, 64))
    assert err.value.path == str(image)
    with pytest.raises(TaoflowError, match=f"cannot read image {image}: .*CV_IO_MAX_IMAGE_PIXELS"):
        read_image(image)  # the evaluator's and inference's decoder


def test_undecodable_folder_image_names_the_file(tmp_path, monkeypatch):
    """An image whose header passes but whose data OpenCV refuses: the decode error names the image."""
    from taoflow.backends.native import data
    from tests.conftest import write_image, write_text
    image = write_image(tmp_path / "image" / "a.jpg", 40, 30)
    write_text(tmp_path / "label" / "a.txt", "")
    monkeypatch.setattr(data.cv2, "imdecode", lambda *a: None)
    with pytest.raises(DataError, match="cannot decode image: OpenCV cannot decode it") as err:
        load_kitti_folders([(tmp_path / "image", tmp_path / "label")], MAPPING, (64, 64))
    assert err.value.path == str(image)


# ------------------------------------------------------------------------------ train: validate, then write


def _break_train(case, root, spec, tmp_path):
    """Apply one breakage; return (extra argv, text the error must contain)."""
    ckpt = tmp_path / "ckpt.pth"
    if case == "missing_model":
        return ["-m", tmp_path / "nope.pth"], "model file not found"
    if case == "junk_model":
        (tmp_path / "junk.pth").write_bytes(b"not a model")
        return ["-m", tmp_path / "junk.pth"], "is not a taoflow checkpoint"
    if case == "mismatched_model":
        other = write_spec(tmp_path / "other.txt", root)
        other.write_text(other.read_text().replace("nlayers: 10", "nlayers: 18"))
        return ["-m", _checkpoint(other, ckpt)], "does not match the spec"
    if case == "resume_without_optimizer":
        return ["-m", _checkpoint(spec, ckpt), "--initial_epoch", "2"], "has no optimizer state"
    if case == "initial_epoch_zero":
        return ["--initial_epoch", "0"], "--initial_epoch must be between 1 and num_epochs (2)"
    if case == "initial_epoch_past_num_epochs":
        return ["-m", _checkpoint(spec, ckpt, optimizer=True), "--initial_epoch", "3"], "between 1 and num_epochs"
    if case == "resume_without_model":
        return ["--initial_epoch", "2"], "needs -m"
    if case == "arch_mismatch":
        return ["--arch", "dssd"], "--arch dssd does not match"
    if case == "negative_gpus":
        return ["--gpus", "-1"], "--gpus must be 0 or more"
    if case == "no_tfrecords":
        shutil.rmtree(root / "tfrecords")
        return [], "no TFRecord files match tfrecords_path"
    if case == "truncated_validation_image":
        image = sorted((root / "split/val/image").iterdir())[0]
        _truncate(image)
        return [], f"{image}: truncated or corrupt JPEG"
    if case == "huge_validation_image":
        image = sorted((root / "split/val/image").iterdir())[-1]
        write_huge_image(image)
        return [], f"{image}: image header claims 65000x65000"
    if case == "bad_validation_label":
        label = sorted((root / "split/val/label").iterdir())[0]
        label.write_text("lpd 0 x 0 1 2 30 20 0 0 0 0 0 0 0\n")
        return [], f"{label}:1: field 3 (occluded) must be an integer"
    raise AssertionError(case)


TRAIN_CASES = ["missing_model", "junk_model", "mismatched_model", "resume_without_optimizer", "initial_epoch_zero",
               "initial_epoch_past_num_epochs", "resume_without_model", "arch_mismatch", "negative_gpus",
               "no_tfrecords", "truncated_validation_image", "huge_validation_image", "bad_validation_label"]


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_refuses_bad_input_before_writing_anything(tiny_data, tmp_path, case):
    root, spec = _copy_split(tiny_data, tmp_path)
    extra, expect = _break_train(case, root, spec, tmp_path)
    results = tmp_path / "run"
    code, out = cli("train", "-e", spec, "-r", results, *extra)
    assert code == 2 and expect in _one_error(out), out
    assert not results.exists()


def test_train_results_dir_that_is_a_file(tiny_data, tmp_path):
    _, spec = _copy_split(tiny_data, tmp_path)
    (tmp_path / "run").write_text("a file")
    code, out = cli("train", "-e", spec, "-r", tmp_path / "run" / "sub")
    assert code == 2 and f"{tmp_path / 'run'} exists and is not a directory" in _one_error(out)
    assert (tmp_path / "run").read_text() == "a file"


def test_train_from_folders_with_a_huge_image_writes_nothing(tiny_data, tmp_path):
    root, spec = _copy_split(tiny_data, tmp_path)
    image = sorted((root / "split/training/image").iterdir())[0]
    write_huge_image(image)
    spec.write_text(spec.read_text().replace(
        f'tfrecords_path: "{root}/tfrecords/t-fold-000-of-002-shard-*"',
        f'image_directory_path: "{root}/split/training/image" label_directory_path: "{root}/split/training/label"'))
    code, out = cli("train", "-e", spec, "-r", tmp_path / "run")
    assert code == 2 and f"{image}: image header claims 65000x65000" in _one_error(out), out
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ the other tasks: validate, then write


def test_other_tasks_refuse_bad_input_before_writing(tiny_data, tmp_path):
    root, spec = _copy_split(tiny_data, tmp_path)
    ckpt = _checkpoint(spec, tmp_path / "models" / "m.pth")
    images = sorted((root / "split/val/image").iterdir())
    _truncate(images[0])
    before = sorted(p.name for p in (tmp_path / "models").iterdir())
    cases = [
        (["evaluate", "-e", spec, "-m", ckpt], f"{images[0]}: truncated or corrupt JPEG"),
        (["evaluate", "-e", spec, "-m", ckpt, "-i", root / "split/val/image"], "-i and -l go together"),
        (["evaluate", "-e", spec, "-m", ckpt, "-b", "0"], "--batch_size must be at least 1"),
        (["inference", "-e", spec, "-m", ckpt, "-i", root / "split/val/image", "-r", tmp_path / "inf"],
         f"{images[0]}: truncated or corrupt JPEG"),
        (["inference", "-e", spec, "-m", ckpt, "-i", images[1], "-r", tmp_path / "inf", "-t", "2"],
         "-t/--threshold must be between 0 and 1"),
        (["prune", "-m", ckpt, "-o", tmp_path / "models"], "is a directory; -o names the output file"),
        (["prune", "-m", tmp_path / "nope.pth", "-o", tmp_path / "p.pth"], "model file not found"),
        (["export", "-e", spec, "-m", ckpt, "-o", tmp_path / "models"], "is a directory; -o names the output file"),
        (["export", "-e", spec, "-m", ckpt, "-o", tmp_path / "m.onnx", "--batch_size", "0"],
         "--batch_size must be at least 1"),
    ]
    for argv, expect in cases:
        code, out = cli(*argv)
        assert code == 2 and expect in _one_error(out), (argv, out)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == before  # no status.json by the model
    assert not (tmp_path / "inf").exists() and not (tmp_path / "p.pth").exists()
    assert not (tmp_path / "m.onnx").exists()
