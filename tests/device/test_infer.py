"""Preprocessing, NMS and the one NMS-layout parser, driven with synthetic arrays in TAO's exact layout."""

import numpy as np
import pytest
from agent_common import AgentError
from agent_infer import compare, decoded_to_nms, greedy_nms, parse_nms, preprocess

LABELS = ["background", "car", "plate"]
SPEC = {"name": "Input", "channels": 3, "height": 4, "width": 6, "channel_order": "BGR",
        "mean": [103.939, 116.779, 123.68], "scale": 1.0}
NMS = {"confidence_threshold": 0.01, "iou_threshold": 0.6, "top_k": 200, "keep_top_k": 10}


def tao_nms(rows, keep_top_k=5, batch=1):
    """An NMS_TRT output as the plugin writes it: [N,1,K,7] float32 padded with label -1, NMS_1 int32."""
    out = np.zeros((batch, 1, keep_top_k, 7), np.float32)
    out[:, 0, :, 1] = -1
    counts = np.zeros((batch, 1, 1, 1), np.int32)
    for n, image_rows in enumerate(rows):
        for i, row in enumerate(image_rows):
            out[n, 0, i] = [n, *row]
        counts[n, 0, 0, 0] = len(image_rows)
        out[n, 0, :, 0] = n
    return out, counts


def test_preprocess_is_tao_caffe_mode():
    image = np.zeros((8, 12, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # B, G, R
    x = preprocess(image, SPEC)
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(x[0, :, 0, 0], [10 - 103.939, 20 - 116.779, 30 - 123.68], rtol=1e-6)


def test_preprocess_stretches_without_letterbox_and_honours_rgb_scale_and_gray():
    image = np.zeros((10, 40, 3), np.uint8)
    image[:, :20] = (255, 0, 0)  # left half blue
    x = preprocess(image, {**SPEC, "mean": [0, 0, 0]})
    assert x[0, 0, :, :3].min() == 255 and x[0, 0, :, 3:].max() == 0  # the half maps to exactly 3 of 6 columns
    rgb = preprocess(image, {**SPEC, "channel_order": "RGB", "mean": [1, 2, 3], "scale": 0.5})
    np.testing.assert_allclose(rgb[0, :, 0, 0], [(0 - 1) * 0.5, (0 - 2) * 0.5, (255 - 3) * 0.5])
    gray = preprocess(image, {**SPEC, "channels": 1, "mean": [117.3786]})
    assert gray.shape == (1, 1, 4, 6)
    np.testing.assert_allclose(gray[0, 0, 0, 0], round(0.114 * 255) - 117.3786, atol=1)


def test_preprocess_rejects_non_bgr_input():
    with pytest.raises(AgentError):
        preprocess(np.zeros((4, 4), np.uint8), SPEC)


def test_parse_nms_reads_tao_rows_in_original_pixels():
    out, counts = tao_nms([[(1, 0.9, 0.1, 0.2, 0.5, 0.6), (2, 0.8, 0.5, 0.5, 1.0, 1.0)]])
    dets = parse_nms(out, counts, 0, LABELS, width=200, height=100)
    assert dets == [{"label": "car", "confidence": 0.9, "box": [20.0, 20.0, 100.0, 60.0]},
                    {"label": "plate", "confidence": 0.8, "box": [100.0, 50.0, 200.0, 100.0]}]


def test_parse_nms_uses_keep_count_skips_background_and_clips():
    out, counts = tao_nms([[(0, 0.99, 0, 0, 1, 1), (1, 0.7, -0.01, 0.2, 1.02, 0.4), (2, 0.6, 0, 0, 0.1, 0.1)]])
    counts[0, 0, 0, 0] = 2  # the third row is beyond NMS_1: ignored even though it looks valid
    dets = parse_nms(out, counts, 0, LABELS, width=100, height=100)
    assert dets == [{"label": "car", "confidence": 0.7, "box": [0.0, 20.0, 100.0, 40.0]}]


def test_parse_nms_selects_the_image_of_a_batch():
    out, counts = tao_nms([[(1, 0.9, 0, 0, 0.5, 0.5)], [], [(2, 0.5, 0.5, 0.5, 1, 1)]], batch=3)
    assert parse_nms(out, counts, 1, LABELS, 10, 10) == []
    assert parse_nms(out, counts, 2, LABELS, 10, 10)[0]["label"] == "plate"


@pytest.mark.parametrize("mutate, message", [
    (lambda o, c: (o.reshape(1, 5, 7), c), "must be"),
    (lambda o, c: (o, c.astype(np.float32)), "NMS_1"),
    (lambda o, c: (o, np.full_like(c, 6)), "says 6 detections"),
    (lambda o, c: (np.where(np.arange(7) == 1, 7.0, o).astype(np.float32), c), "label id 7"),
])
def test_parse_nms_rejects_malformed_outputs(mutate, message):
    out, counts = tao_nms([[(1, 0.9, 0, 0, 1, 1)]])
    with pytest.raises(AgentError, match=message):
        parse_nms(*mutate(out, counts), 0, LABELS, 10, 10)


def test_decoded_to_nms_writes_the_plugin_layout():
    boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.45, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2]]],
                     np.float32)
    scores = np.array([[[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0, 0.7], [0.995, 0.005, 0.0]]], np.float32)
    out, counts = decoded_to_nms(boxes, scores, NMS)
    assert out.shape == (1, 1, 10, 7) and out.dtype == np.float32
    assert counts.shape == (1, 1, 1, 1) and counts.dtype == np.int32 and counts[0, 0, 0, 0] == 2
    # anchor 1 overlaps anchor 0 with IoU 0.9 > 0.6: suppressed; anchor 3 scores 0.005 <= 0.01: dropped
    np.testing.assert_allclose(out[0, 0, 0], [0, 1, 0.9, 0, 0, 0.5, 0.5])
    np.testing.assert_allclose(out[0, 0, 1], [0, 2, 0.7, 0.5, 0.5, 1, 1])
    assert (out[0, 0, 2:, 1] == -1).all() and (out[0, 0, 2:, 2] == 0).all()
    assert parse_nms(out, counts, 0, LABELS, 100, 100)[1] == {"label": "plate", "confidence": 0.7,
                                                              "box": [50.0, 50.0, 100.0, 100.0]}


def test_decoded_to_nms_is_per_class_and_caps_top_k_and_keep_top_k():
    # Same box for both classes: per-class NMS keeps one of each.
    boxes = np.tile(np.array([0.1, 0.1, 0.4, 0.4], np.float32), (1, 2, 1))
    scores = np.array([[[0.0, 0.6, 0.4], [0.0, 0.5, 0.5]]], np.float32)
    out, counts = decoded_to_nms(boxes, scores, NMS)
    assert counts[0, 0, 0, 0] == 2 and sorted(out[0, 0, :2, 1]) == [1, 2]
    # 12 disjoint boxes of one class: top_k 5 before NMS, keep_top_k 3 after, highest first
    xs = np.arange(12, dtype=np.float32) / 12
    many = np.stack([xs, xs * 0, xs + 0.05, xs * 0 + 0.05], axis=1)[None]
    sc = np.stack([np.zeros(12), np.linspace(0.2, 0.9, 12), np.zeros(12)], axis=1)[None].astype(np.float32)
    out, counts = decoded_to_nms(many, sc, {**NMS, "top_k": 5, "keep_top_k": 3})
    assert counts[0, 0, 0, 0] == 3 and out.shape[2] == 3
    np.testing.assert_allclose(out[0, 0, :, 2], sc[0, [11, 10, 9], 1], rtol=1e-6)


def test_decoded_to_nms_rejects_wrong_shapes():
    with pytest.raises(AgentError, match="boxes"):
        decoded_to_nms(np.zeros((1, 4, 5)), np.zeros((1, 4, 3)), NMS)


def test_greedy_nms_threshold_is_strictly_greater():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 0.6, 1]], np.float32)  # IoU exactly 0.6
    assert greedy_nms(boxes, np.array([0.9, 0.8], np.float32), 0.6) == [0, 1]
    assert greedy_nms(boxes, np.array([0.9, 0.8], np.float32), 0.59) == [0]


def det(label, conf, box):
    return {"label": label, "confidence": conf, "box": box}


def test_compare_follows_the_package_rule():
    expected = [det("car", 0.9, [0, 0, 10, 10]), det("plate", 0.2, [50, 50, 60, 60])]
    ok = compare(expected, [det("car", 0.8, [1, 0, 10, 10]), det("car", 0.35, [80, 80, 90, 90])], 0.5, 0.3)
    assert ok["missing"] == [] and ok["extra"] == []  # 0.35 is not above 0.3 + 0.1
    shifted = compare(expected, [det("car", 0.8, [6, 0, 16, 10])], 0.5, 0.3)
    assert shifted["missing"] == [expected[0]] and shifted["extra"] == [det("car", 0.8, [6, 0, 16, 10])]
    wrong_label = compare(expected, [det("plate", 0.9, [0, 0, 10, 10])], 0.5, 0.3)
    assert len(wrong_label["missing"]) == 1 and len(wrong_label["extra"]) == 1
    # a device detection matching a low-confidence expected one is not "extra"
    low = compare(expected, [det("car", 0.9, [0, 0, 10, 10]), det("plate", 0.6, [50, 50, 60, 60])], 0.5, 0.3)
    assert low["missing"] == [] and low["extra"] == []
