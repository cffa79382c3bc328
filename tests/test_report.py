"""taoflow.report: the pictures (training curves, detection grid) as files OpenCV reads back, and the markdown a
person reads first (gates, models, AP per class, passport)."""

import math

import cv2
import numpy as np
import pytest

from taoflow import report as R

NAN = math.nan


def history(map_cells):
    """Training CSV rows with these mAP cells (NAN: an epoch without validation; "absent": no mAP column)."""
    rows = []
    for epoch, cell in enumerate(map_cells, 1):
        row = {"epoch": epoch, "loss": 2.0 / epoch}
        if cell != "absent":
            row["mAP"] = cell
        rows.append(row)
    return rows


def read_png(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"OpenCV cannot read {path}"
    return image


# -- training curves ---------------------------------------------------------------------------------------------------
def test_training_curves_with_unmeasured_epochs_is_a_picture_opencv_reads(tmp_path):
    out = R.training_curves({"train": history([NAN, 0.25, NAN, 0.5]), "retrain": history([NAN, 0.5, 0.625])},
                            tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    image = read_png(out)
    assert image.shape[1] > image.shape[0] and len(np.unique(image.reshape(-1, 3), axis=0)) > 2  # two drawn panels


@pytest.mark.filterwarnings("ignore:No artists with labels found")  # the all-NaN panel
def test_nan_map_cells_are_drawn_as_not_measured(tmp_path):
    # an epoch without validation is left out of the mAP curve, exactly as if its row had no mAP at all
    with_nan = R.training_curves({"train": history([NAN, 0.25, NAN, 0.5])}, tmp_path / "nan.png")
    absent = R.training_curves({"train": history(["absent", 0.25, "absent", 0.5])}, tmp_path / "absent.png")
    unmeasured = R.training_curves({"train": history([NAN, NAN, NAN, NAN])}, tmp_path / "unmeasured.png")
    assert with_nan.read_bytes() == absent.read_bytes()
    assert with_nan.read_bytes() != unmeasured.read_bytes()  # the measured points are drawn
    read_png(unmeasured)  # a run without any validation still gets its loss curve


def test_empty_map_cells_are_drawn_as_nan_cells_are(tmp_path):
    with_nan = R.training_curves({"train": history([NAN, 0.25, NAN, 0.5])}, tmp_path / "nan.png")
    with_none = R.training_curves({"train": history([None, 0.25, None, 0.5])}, tmp_path / "none.png")
    assert with_none.read_bytes() == with_nan.read_bytes()


# -- detection grid ----------------------------------------------------------------------------------------------------
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]  # BGR


def annotated_images(folder, sizes=((64, 48), (100, 30), (20, 80), (320, 240), (33, 33))):
    """Uniformly coloured PNGs of different sizes (colours survive resizing and PNG exactly)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ((w, h), color) in enumerate(zip(sizes, COLORS)):
        path = folder / f"{i:06d}.png"
        cv2.imwrite(str(path), np.full((h, w, 3), color, np.uint8))
        paths.append(path)
    return paths


def test_detection_grid_tiles_images_in_order_and_pads_the_last_row(tmp_path):
    images = annotated_images(tmp_path / "images_annotated")
    broken = tmp_path / "images_annotated" / "broken.png"
    broken.write_bytes(b"not an image")  # skipped, as a half-written file would be
    out = R.detection_grid(images[:2] + [broken] + images[2:], tmp_path / "grid.png", cols=4, cell=(32, 24))
    grid = read_png(out)
    assert grid.shape == (2 * 24, 4 * 32, 3)
    tiles = [grid[r * 24:(r + 1) * 24, c * 32:(c + 1) * 32] for r in range(2) for c in range(4)]
    for tile, color in zip(tiles, COLORS):
        assert (tile == color).all()
    assert all((tile == 0).all() for tile in tiles[len(COLORS):])  # black padding after the fifth image


def test_detection_grid_of_no_readable_image_writes_nothing(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"")
    assert R.detection_grid([broken, tmp_path / "missing.jpg"], tmp_path / "grid.png") is None
    assert R.detection_grid([], tmp_path / "grid.png") is None
    assert not (tmp_path / "grid.png").exists()


# -- markdown ----------------------------------------------------------------------------------------------------------
PASSPORT = {"format": "taoflow-passport/1", "id": "0123456789abcdef", "stages": {"train": "k-train", "export": "k-exp"}}
ROWS = [
    {"model": "unpruned", "params": 1234567, "gflops": 0.5, "cpu_latency_ms": 12.34, "mAP": 0.75, "AP_lpd": 0.8,
     "AP_plate": 0.7},
    {"model": "pruned", "params": 654321, "gflops": 0.25, "cpu_latency_ms": 6.0, "mAP": NAN},  # not evaluated
    {"model": "retrained", "params": None, "gflops": None, "cpu_latency_ms": None, "mAP": 0.45, "AP_lpd": 0.9,
     "AP_plate": 0.0},  # a TAO model: the host cannot load it
]
GATES = [{"name": "mAP floor", "passed": True, "detail": "mAP 0.4500 vs floor 0.3"},
         {"name": "export parity", "passed": False, "detail": "max score difference 0.2"}]
COUNTS = {"classes": {"lpd": {"training": 10, "val": 3}, "plate": {"training": 4, "val": 0},
                      "sign": {"training": 2, "val": 0}},
          "unmapped": {"dontcare": 5, "truck": 1}}


def test_summary_markdown_has_gates_models_classes_passport_and_files():
    md = R.summary_markdown(PASSPORT, ROWS, GATES, {"exported model": "/store/export/k/model.onnx", "pr": None},
                            class_counts=COUNTS)
    lines = md.splitlines()
    assert lines[0] == "# train-ssd report" and "Passport `0123456789abcdef`" in lines
    assert "| mAP floor | yes | mAP 0.4500 vs floor 0.3 |" in lines
    assert "| export parity | **no** | max score difference 0.2 |" in lines
    assert "| model | params | GFLOPs | mAP | AP lpd | AP plate | CPU ms |" in lines
    assert "| unpruned | 1,234,567 | 0.500 | 0.7500 | 0.8000 | 0.7000 | 12.3 |" in lines
    assert "| retrained | n/a | n/a | 0.4500 | 0.9000 | 0.0000 | n/a |" in lines
    assert "| pruned | 654,321 | 0.250 | nan | nan | nan | 6.0 |" in lines
    assert "## AP per class" in lines
    assert "| train | `k-train` |" in lines and "| export | `k-exp` |" in lines
    assert "- exported model: `/store/export/k/model.onnx`" in lines and not any(ln.startswith("- pr") for ln in lines)
    assert md.endswith("\n")


def test_per_class_markdown_shows_each_class_with_its_objects_and_ap():
    lines = R.per_class_markdown(ROWS, COUNTS)
    assert lines[:4] == ["## AP per class", "", "| class | training objects | val objects | AP unpruned | "
                         "AP retrained |", "|---|---|---|---|---|"]
    assert "| lpd | 10 | 3 | 0.8000 | 0.9000 |" in lines
    assert "| plate | 4 | 0 | 0.7000 | 0.0000 |" in lines  # no validation object: AP 0 after retraining
    assert "| sign | 2 | 0 | n/a | n/a |" in lines  # a class no model was evaluated on
    assert any("dropped" in ln and ln.endswith("dontcare 5, truck 1") for ln in lines)
    assert lines[-1] == ""


def test_per_class_markdown_without_counts_or_classes():
    lines = R.per_class_markdown(ROWS)
    assert "| lpd | n/a | n/a | 0.8000 | 0.9000 |" in lines and not any("dropped" in ln for ln in lines)
    assert R.per_class_markdown([{"model": "pruned", "mAP": NAN}]) == []
