"""TAO's raw-KITTI validation loader (detection_data_sequence.py semantics) and its network-input ground truth."""

import numpy as np
import pytest

from taoflow.backends.native.kitti_eval_data import (
    EvalSample,
    class_ids,
    load_kitti_eval_data,
    parse_eval_label,
    to_network_input,
)
from taoflow.errors import DataError
from tests.conftest import write_image, write_text

MAPPING = {"Car": "car", "van": "car", "pedestrian": "Pedestrian", "cyclist": "cyclist"}
LABEL = (
    "Car 0.00 0 -1.57 10.00 10.00 40.00 30.00 1.50 1.60 3.90 1.00 1.50 10.00 -1.50\n"
    "\n"
    "Pedestrian 0.10 1 0.20 50.00 5.00 60.00 40.00 1.70 0.60 0.80 2.00 1.60 8.00 0.10\n"
    "DontCare -1 -1 -10 70.00 10.00 90.00 20.00 -1 -1 -1 -1000 -1000 -1000 -10\n"
    "VAN 0 -1 0 1.5 2.5 3.5 4.5 0\n"  # 9 tokens are enough; occlusion -1 is != 0 -> difficult
)


def make_source(tmp_path, files):
    """files: {image name: label text or None (no label file)} -> (image_dir, label_dir)."""
    image_dir, label_dir = tmp_path / "image", tmp_path / "label"
    image_dir.mkdir(exist_ok=True)
    label_dir.mkdir(exist_ok=True)
    for name, label in files.items():
        write_image(image_dir / name, 100, 60)
        if label is not None:
            write_text(label_dir / f"{name.rsplit('.', 1)[0]}.txt", label)
    return image_dir, label_dir


def test_class_ids_lowercase_and_sort():
    classes, ids = class_ids(MAPPING)
    assert classes == ["car", "cyclist", "pedestrian"]
    assert ids == {"car": 1, "van": 1, "pedestrian": 3, "cyclist": 2}


def test_parse_label_maps_classes_and_difficult(tmp_path):
    _, ids = class_ids(MAPPING)
    boxes, labels, difficult = parse_eval_label(write_text(tmp_path / "a.txt", LABEL), ids)
    assert boxes.dtype == np.float64
    assert boxes.tolist() == [[10, 10, 40, 30], [50, 5, 60, 40], [1.5, 2.5, 3.5, 4.5]]
    assert labels.tolist() == [1, 3, 1]  # DontCare is unmapped -> skipped
    assert difficult.tolist() == [False, True, True]


def test_empty_label_file(tmp_path):
    boxes, labels, difficult = parse_eval_label(write_text(tmp_path / "a.txt", ""), {"car": 1})
    assert boxes.shape == (0, 4) and labels.shape == (0,) and difficult.shape == (0,)


@pytest.mark.parametrize("line, message", [
    ("car 0 0 0 1 2 3", "at least 9"),
    ("car 0 0.0 0 1 2 3 4 0", "occluded"),
    ("car 0 0 0 1 two 3 4 0", "bbox_top"),
    ("car 0 0 0 1 2 3 nan 0", "bbox_bottom"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = write_text(tmp_path / "a.txt", f"car 0 0 0 1 2 3 4 0\n{line}\n")
    with pytest.raises(DataError, match=message) as exc:
        parse_eval_label(path, {"car": 1})
    assert exc.value.path == str(path) and exc.value.line == 2


def test_unmapped_class_is_not_parsed(tmp_path):
    # TAO skips an unmapped class before reading numbers, so bad numbers there are not an error.
    path = write_text(tmp_path / "a.txt", "truck 0 x 0 a b c d e\n")
    assert parse_eval_label(path, {"car": 1})[0].shape == (0, 4)


def test_load_lists_sorted_images_with_sizes(tmp_path):
    files = {"b.PNG": LABEL, "a.jpg": "", "c.jpeg": "car 0 0 0 1 2 3 4 0\n"}
    image_dir, label_dir = make_source(tmp_path, files)
    write_text(image_dir / "notes.txt", "not an image")
    write_text(image_dir / ".hidden.jpg", "AppleDouble junk")
    classes, samples = load_kitti_eval_data(image_dir, label_dir, MAPPING)
    assert classes == ["car", "cyclist", "pedestrian"]
    assert [s.image_path.name for s in samples] == ["a.jpg", "b.PNG", "c.jpeg"]
    assert [s.label_path.name for s in samples] == ["a.txt", "b.txt", "c.txt"]
    assert all((s.width, s.height) == (100, 60) for s in samples)
    assert samples[0].boxes.shape == (0, 4)
    assert samples[1].labels.tolist() == [1, 3, 1]


def test_missing_label_file(tmp_path):
    image_dir, label_dir = make_source(tmp_path, {"a.jpg": "", "b.jpg": None})
    with pytest.raises(DataError, match="no label file") as exc:
        load_kitti_eval_data(image_dir, label_dir, MAPPING)
    assert exc.value.path == str(image_dir / "b.jpg")
    # TAO's behaviour on request: the image is left out.
    _, samples = load_kitti_eval_data(image_dir, label_dir, MAPPING, missing_labels="skip")
    assert [s.image_path.name for s in samples] == ["a.jpg"]


def test_empty_or_missing_directories(tmp_path):
    image_dir, label_dir = make_source(tmp_path, {})
    with pytest.raises(DataError, match="no images"):
        load_kitti_eval_data(image_dir, label_dir, MAPPING)
    with pytest.raises(DataError, match="image directory not found"):
        load_kitti_eval_data(tmp_path / "nope", label_dir, MAPPING)
    with pytest.raises(DataError, match="label directory not found"):
        load_kitti_eval_data(image_dir, tmp_path / "nope", MAPPING)
    with pytest.raises(DataError, match="target_class_mapping"):
        load_kitti_eval_data(image_dir, label_dir, {})


def test_corrupt_image_is_a_data_error(tmp_path):
    image_dir, label_dir = make_source(tmp_path, {"a.jpg": ""})
    (image_dir / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="not a JPEG or PNG"):
        load_kitti_eval_data(image_dir, label_dir, MAPPING)


def sample(boxes, width=100, height=60, difficult=None):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult)
    return EvalSample(None, None, width, height, boxes, np.ones(len(boxes), np.int64), difficult)


def test_to_network_input_scales_rounds_clips_and_filters():
    # 100x60 image -> 50x30 input, scale 0.5 on both axes.
    s = sample([
        [10, 10, 41, 31],     # -> 5, 5, 20.5 -> 20 (half to even), 15.5 -> 16 (half to even)
        [90, 50, 100, 60],    # -> 45, 25, 50 -> clipped to W-1 = 49, 30 -> clipped to H-1 = 29
        [10, 10, 10.5, 20],   # -> x 5 .. 5.25 -> 5: zero width -> dropped
        [-8, -4, 20, 20],     # -> -4 -> clipped to 0, -2 -> 0
    ], difficult=[False, True, False, True])
    boxes, labels, difficult = to_network_input(s, 50, 30)
    assert boxes.tolist() == [[5, 5, 20, 16], [45, 25, 49, 29], [0, 0, 10, 10]]
    assert labels.tolist() == [1, 1, 1]
    assert difficult.tolist() == [False, True, True]  # difficult boxes stay for evaluation


def test_to_network_input_of_an_empty_image():
    boxes, labels, difficult = to_network_input(sample([]), 300, 300)
    assert boxes.shape == (0, 4) and labels.shape == (0,) and difficult.shape == (0,)
