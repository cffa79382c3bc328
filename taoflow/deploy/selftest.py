"""A tiny self-test model package in the `decoded` contract, whose detections are known in closed form.

Used by the tests and bench/fleet.py, and meant for `taoflow device doctor`: it proves a device's runtime,
preprocessing, NMS and parser end to end without a trained model. Built with the `onnx` helper API (no torch).

The network (input "Input" [N, 3, 64, 64], opset 13, IR 7 so onnxruntime 1.10 on Python 3.6 loads it):
  AveragePool 16x16/16 -> a 4x4 grid of cell means (after the caffe mean subtraction, BGR)
  Conv 1x1 -> per cell logits for (background, car, plate), twice: anchor set 0 with bias -4, set 1 with -5
  softmax -> scores [N, 32, 3];  boxes [N, 32, 4] are constants: set 0 = the grid cells, set 1 = the cells
  shrunk to 80 % around their centre (IoU 0.64 with their cell, so NMS at 0.6 suppresses them).
car logit = 0.05 * (B - R) + bias, plate logit = 0.05 * (R - B) + bias: a pure blue cell is a car with confidence
~1.0, a pure red cell a plate, a grey or black cell nothing above 0.05.
"""

import json
from pathlib import Path

import cv2
import numpy as np

from ..fsutil import atomic_dir

CLASSES = ["car", "plate"]
SIZE, GRID = 64, 4
MEAN = [103.939, 116.779, 123.68]
GAIN, BIASES = 0.05, (-4.0, -5.0)
BLUE, RED, GREY = (255, 0, 0), (0, 0, 255), (128, 128, 128)
# name -> (width, height, {(row, col): colour}); cells are in the 4x4 grid of the network input
SAMPLES = {
    "two_objects.png": (128, 96, {(1, 2): BLUE, (3, 0): RED}),
    "one_car.png": (96, 96, {(0, 0): BLUE}),
    "empty.png": (80, 60, {}),
}


def anchor_boxes():
    cells = []
    for scale in (1.0, 0.8):
        for r in range(GRID):
            for c in range(GRID):
                cx, cy, half = (c + 0.5) / GRID, (r + 0.5) / GRID, scale / (2 * GRID)
                cells.append([cx - half, cy - half, cx + half, cy + half])
    return np.asarray(cells, np.float32)


def build_model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((6, 3, 1, 1), np.float32)
    bias = np.zeros(6, np.float32)
    for s, b in enumerate(BIASES):  # rows (bg, car, plate) per anchor set; channels are B, G, R
        weights[3 * s + 1, :, 0, 0] = (GAIN, 0, -GAIN)
        weights[3 * s + 2, :, 0, 0] = (-GAIN, 0, GAIN)
        bias[3 * s + 1] = bias[3 * s + 2] = b
    anchors = GRID * GRID * 2
    inits = [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B"),
             numpy_helper.from_array(np.array([-1, 2, 3, GRID * GRID], np.int64), "shape4"),
             numpy_helper.from_array(np.array([-1, anchors, 3], np.int64), "shape3"),
             numpy_helper.from_array(anchor_boxes()[None], "anchors"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([anchors, 4], np.int64), "tail")]
    k = SIZE // GRID
    nodes = [
        helper.make_node("AveragePool", ["Input"], ["cells"], kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Conv", ["cells", "W", "B"], ["logits"]),
        helper.make_node("Reshape", ["logits", "shape4"], ["l4"]),
        helper.make_node("Transpose", ["l4"], ["lt"], perm=[0, 1, 3, 2]),
        helper.make_node("Reshape", ["lt", "shape3"], ["l3"]),
        helper.make_node("Softmax", ["l3"], ["scores"], axis=2),
        helper.make_node("Shape", ["Input"], ["in_shape"]),
        helper.make_node("Slice", ["in_shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "tail"], ["box_shape"], axis=0),
        helper.make_node("Expand", ["anchors", "box_shape"], ["boxes"]),
    ]
    graph = helper.make_graph(
        nodes, "taoflow_selftest",
        [helper.make_tensor_value_info("Input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", anchors, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", anchors, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="taoflow")
    model.ir_version = 7  # onnxruntime 1.10 (the last with Python 3.6 wheels) reads IR <= 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def cell_confidence(colour, bias=BIASES[0]):
    """Closed-form class scores of a uniformly coloured cell: softmax over (0, car, plate) logits."""
    x = np.asarray(colour, np.float64) - MEAN
    logits = np.array([0.0, GAIN * (x[0] - x[2]) + bias, GAIN * (x[2] - x[0]) + bias])
    e = np.exp(logits - logits.max())
    return e / e.sum()


def sample_image(width, height, cells):
    image = np.full((height, width, 3), GREY, np.uint8)
    for (r, c), colour in cells.items():
        x1, x2 = round(c * width / GRID), round((c + 1) * width / GRID)
        y1, y2 = round(r * height / GRID), round((r + 1) * height / GRID)
        image[y1:y2, x1:x2] = colour
    return image


def expected_detections():
    """Host detections in original-image pixels, computed in closed form (not by running the model)."""
    images = {}
    for name, (width, height, cells) in SAMPLES.items():
        dets = []
        for (r, c), colour in sorted(cells.items()):
            scores = cell_confidence(colour)
            label = int(np.argmax(scores[1:])) + 1
            dets.append({"label": CLASSES[label - 1], "confidence": round(float(scores[label]), 4),
                         "box": [c * width / GRID, r * height / GRID, (c + 1) * width / GRID,
                                 (r + 1) * height / GRID]})
        images[name] = dets
    return {"iou_threshold": 0.5, "score_threshold": 0.3, "images": images}


def model_json():
    return {
        "format": "taoflow-ssd/1", "model_file": "model.onnx", "arch": "selftest-grid4",
        "input": {"name": "Input", "layout": "NCHW", "channels": 3, "height": SIZE, "width": SIZE,
                  "channel_order": "BGR", "mean": MEAN, "scale": 1.0, "resize": "stretch", "dtype": "float32",
                  "dynamic_batch": True},
        "classes": CLASSES,
        "output": {"kind": "decoded", "boxes": "boxes", "scores": "scores"},
        "nms": {"confidence_threshold": 0.01, "iou_threshold": 0.6, "top_k": 200, "keep_top_k": 200},
        "precision": "fp16", "opset": 13, "source": {"selftest": True},
    }


def write_selftest_package(dest, replace=False, padding_bytes=0):
    """Write the self-test package to `dest` (atomically). `padding_bytes` adds an incompressible extra sample
    file, for upload and disk-space tests that need a package of a given size."""
    dest = Path(dest)
    with atomic_dir(dest, replace=replace) as tmp:
        (tmp / "model.onnx").write_bytes(build_model())
        (tmp / "model.json").write_text(json.dumps(model_json(), indent=2) + "\n", encoding="utf-8")
        (tmp / "labels.txt").write_text("\n".join(["background"] + CLASSES) + "\n", encoding="utf-8")
        samples = tmp / "samples"
        samples.mkdir()
        for name, (width, height, cells) in SAMPLES.items():
            if not cv2.imwrite(str(samples / name), sample_image(width, height, cells)):
                raise OSError(f"cannot write {samples / name}")
        (samples / "expected.json").write_text(json.dumps(expected_detections(), indent=2) + "\n",
                                               encoding="utf-8")
        if padding_bytes:
            (samples / "padding.bin").write_bytes(np.random.default_rng(0).bytes(padding_bytes))
        passport = {"format": "taoflow-passport/1", "stages": {"selftest": {"generator": __name__}}}
        (tmp / "passport.json").write_text(json.dumps(passport, indent=2) + "\n", encoding="utf-8")
    return dest
