"""Inference outputs as TAO writes them: KITTI prediction lines, annotated images, the results_dir layout."""

import cv2
import numpy as np
import pytest

from taoflow.backends.native.predictions import (
    PALETTE,
    class_color,
    draw_detections,
    kitti_prediction_line,
    write_inference_outputs,
)

DETS = [
    {"label": "car", "confidence": 0.87654321, "box": [10.5, 20.25, 100.123456, 50]},
    {"label": "person", "confidence": 0.5, "box": [120, 10, 150, 70]},
]


def test_kitti_line_like_tao_model_inference():
    # inferencer.py: str() of float32 values, 16 fields, zeros written as "0".
    line = kitti_prediction_line("car", [10.5, 20.25, 100.123456, 50], 0.87654321)
    assert line == "car 0 0 0 10.5 20.25 100.12346 50.0 0 0 0 0 0 0 0 0.8765432"
    assert len(line.split()) == 16


def test_kitti_line_like_tao_deploy():
    line = kitti_prediction_line("car", [10.5, 20.25, 100.123456, 50], 0.87654321, style="deploy")
    assert line == "car 0.00 0 0.00 10.500 20.250 100.123 50.000 0.00 0.00 0.00 0.00 0.00 0.00 0.00 0.877"
    with pytest.raises(ValueError, match="style"):
        kitti_prediction_line("car", [0, 0, 1, 1], 0.5, style="coco")


def test_class_colors():
    classes = ["car", "person", "sign", "truck", "bus"]
    # TAO's red, blue, gold, purple for ids 1..4, then a colour TAO does not repeat.
    assert [class_color(c, classes) for c in classes[:4]] == [(0, 0, 255), (255, 0, 0), (0, 215, 255), (128, 0, 128)]
    assert len({class_color(c, classes) for c in classes}) == 5
    assert class_color("unknown") in PALETTE
    assert class_color("unknown") == class_color("unknown")  # stable without a class list


def test_draw_detections_returns_a_new_image():
    image = np.full((80, 160, 3), 255, np.uint8)
    out = draw_detections(image, DETS, classes=["car", "person"])
    assert out is not image and out.shape == image.shape
    assert (image == 255).all()  # the input is untouched
    assert tuple(out[45, 10]) == (0, 0, 255)  # left edge of the car box, below the label pad: red
    assert tuple(out[60, 150]) == (255, 0, 0)  # right edge of the person box: blue
    assert tuple(out[75, 5]) == (255, 255, 255)  # outside every box


def test_draw_detections_accepts_grayscale():
    out = draw_detections(np.zeros((40, 40), np.uint8), [{"label": "car", "confidence": 0.9, "box": [5, 5, 30, 30]}])
    assert out.shape == (40, 40, 3)


def test_write_inference_outputs(tmp_path):
    image = np.full((80, 160, 3), 200, np.uint8)
    label_path, annotated_path = write_inference_outputs(tmp_path / "results", tmp_path / "in" / "frame_01.PNG",
                                                         DETS, image, classes=["car", "person"])
    assert label_path == tmp_path / "results" / "labels" / "frame_01.txt"
    assert annotated_path == tmp_path / "results" / "images_annotated" / "frame_01.PNG"
    assert label_path.read_text().splitlines() == [
        "car 0 0 0 10.5 20.25 100.12346 50.0 0 0 0 0 0 0 0 0.8765432",
        "person 0 0 0 120.0 10.0 150.0 70.0 0 0 0 0 0 0 0 0.5",
    ]
    written = cv2.imread(str(annotated_path))
    assert written.shape == image.shape
    assert annotated_path.read_bytes().startswith(b"\x89PNG")


def test_write_inference_outputs_without_detections(tmp_path):
    # TAO writes an (empty) label file and the unannotated image for every input image.
    image = np.full((20, 30, 3), 50, np.uint8)
    label_path, annotated_path = write_inference_outputs(tmp_path, "x/photo.jpg", [], image)
    assert label_path.read_text() == ""
    assert cv2.imread(str(annotated_path)).shape == (20, 30, 3)
