"""Preprocessing, NMS and the one NMS-layout parser, driven with synthetic arrays in TAO's exact layout.

The vectorised NMS, parser and preprocessing must give what the plain loops they replaced gave, bit for bit: those
loops are kept below as oracles (`reference_*`) and compared on random inputs built to hit ties (scores, IoU exactly
at the threshold, the top_k cut) and degenerate boxes.
"""

import json

import cv2
import numpy as np
import pytest
from agent_common import AgentError
from agent_infer import compare, decoded_to_nms, greedy_keep, greedy_nms, parse_nms, preprocess

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


# --- oracles: the one-by-one loops the vectorised code replaced, kept verbatim ----------------------------------

def reference_preprocess(image_bgr, input_spec):
    width, height = int(input_spec["width"]), int(input_spec["height"])
    resized = cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    if int(input_spec["channels"]) == 1:
        pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif input_spec.get("channel_order", "BGR") == "RGB":
        pixels = resized[:, :, ::-1]
    else:
        pixels = resized
    mean = np.asarray(input_spec["mean"], dtype=np.float32).reshape(1, 1, -1)
    chw = ((pixels.astype(np.float32) - mean) * np.float32(input_spec["scale"])).transpose(2, 0, 1)
    return np.ascontiguousarray(chw[None], dtype=np.float32)


def reference_iou_one_to_many(box, boxes):
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def reference_greedy_nms(boxes, scores, iou_threshold):
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        order = rest[reference_iou_one_to_many(boxes[best], boxes[rest]) <= iou_threshold]
    return keep


def reference_decoded_to_nms(boxes, scores, nms):
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    batch, keep_top_k = boxes.shape[0], int(nms["keep_top_k"])
    out = np.zeros((batch, 1, keep_top_k, 7), dtype=np.float32)
    out[:, 0, :, 1] = -1
    counts = np.zeros((batch, 1, 1, 1), dtype=np.int32)
    for n in range(batch):
        out[n, 0, :, 0] = n
        found = []
        for label in range(1, scores.shape[2]):
            cls = scores[n, :, label]
            candidates = np.nonzero(cls > nms["confidence_threshold"])[0]
            if candidates.size == 0:
                continue
            candidates = candidates[np.argsort(-cls[candidates], kind="stable")[:int(nms["top_k"])]]
            for i in reference_greedy_nms(boxes[n, candidates], cls[candidates], nms["iou_threshold"]):
                found.append((float(cls[candidates[i]]), label, boxes[n, candidates[i]]))
        found.sort(key=lambda item: -item[0])
        found = found[:keep_top_k]
        for row, (score, label, box) in enumerate(found):
            out[n, 0, row, 1:3] = (label, score)
            out[n, 0, row, 3:7] = box
        counts[n, 0, 0, 0] = len(found)
    return out, counts


def reference_parse_nms(nms_out, keep_count, image_index, labels, width, height):
    count = int(np.asarray(keep_count).reshape(-1)[image_index])
    detections = []
    for row in np.asarray(nms_out)[image_index, 0][:count]:
        label = int(round(float(row[1])))
        if label <= 0:
            continue
        if label >= len(labels):
            raise AgentError("NMS label id {} but the model has {} classes".format(label, len(labels) - 1))
        x1, y1, x2, y2 = np.clip(row[3:7].astype(np.float64), 0.0, 1.0)
        detections.append({"label": labels[label], "confidence": round(float(row[2]), 6),
                           "box": [round(x1 * width, 2), round(y1 * height, 2),
                                   round(x2 * width, 2), round(y2 * height, 2)]})
    return detections


# --- the vectorised code against the oracles ---------------------------------------------------------------------

def tie_prone_case(rng):
    """Decoded outputs on coarse grids: equal scores (also at the top_k cut and at the confidence threshold), IoUs
    exactly at the NMS threshold, degenerate and flipped boxes, and a few NaN scores and coordinates."""
    batch, anchors, classes = int(rng.integers(1, 3)), int(rng.integers(0, 70)), int(rng.integers(1, 4))
    boxes = rng.integers(0, 9, size=(batch, anchors, 4)).astype(np.float32) / 8
    flip = rng.random((batch, anchors)) < 0.8  # most boxes ordered, some flipped or empty
    lo, hi = np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])
    boxes[flip] = np.concatenate([lo, hi], axis=-1)[flip]
    scores = rng.integers(0, 9, size=(batch, anchors, classes + 1)).astype(np.float32) / 8
    if anchors and rng.random() < 0.3:
        scores[0, rng.integers(0, anchors), rng.integers(0, classes + 1)] = np.nan
        boxes[0, rng.integers(0, anchors), rng.integers(0, 4)] = np.nan
    nms = {"confidence_threshold": float(rng.choice([0.0, 0.25, 0.5])),
           "iou_threshold": float(rng.choice([0.0, 0.25, 0.5, 0.6, 1.0])),
           "top_k": int(rng.choice([1, 3, 10, 100])), "keep_top_k": int(rng.choice([1, 5, 50]))}
    return boxes, scores, nms


def test_decoded_to_nms_equals_the_one_by_one_loop_on_tie_prone_inputs():
    rng = np.random.default_rng(14)
    nonempty = 0
    for _ in range(400):
        boxes, scores, nms = tie_prone_case(rng)
        out, counts = decoded_to_nms(boxes, scores, nms)
        want_out, want_counts = reference_decoded_to_nms(boxes, scores, nms)
        np.testing.assert_array_equal(out, want_out, err_msg=repr(nms))
        np.testing.assert_array_equal(counts, want_counts)
        assert out.dtype == want_out.dtype and counts.dtype == want_counts.dtype
        nonempty += int(counts.sum() > 0)
    assert nonempty > 200  # the cases do exercise NMS, not only empty outputs


def test_greedy_nms_equals_the_one_by_one_loop_and_keeps_iou_at_the_threshold():
    rng = np.random.default_rng(7)
    for _ in range(300):
        boxes = rng.integers(0, 5, size=(int(rng.integers(0, 40)), 4)).astype(np.float32) / 4
        scores = rng.integers(0, 4, size=len(boxes)).astype(np.float32)
        threshold = float(rng.choice([0.0, 0.25, 0.5, 1 / 3]))
        assert greedy_nms(boxes, scores, threshold) == reference_greedy_nms(boxes, scores, threshold)
    # IoU exactly 0.5 is not > 0.5: both stay; equal scores rank by index
    pair = np.array([[0, 0, 1, 1], [0, 0, 0.5, 1]], np.float32)
    assert greedy_nms(pair, np.array([0.5, 0.5], np.float32), 0.5) == [0, 1]
    assert greedy_nms(pair, np.array([0.5, 0.5], np.float32), 0.49) == [0]
    assert greedy_nms(pair, np.array([0.4, 0.5], np.float32), 0.49) == [1]


def test_greedy_keep_in_blocks_up_to_a_limit_equals_the_loop_cut_at_that_limit():
    rng = np.random.default_rng(11)
    for _ in range(200):
        count = int(rng.integers(0, 300))
        boxes = rng.integers(0, 7, size=(count, 4)).astype(np.float32) / 6  # dense: many overlaps across blocks
        threshold = float(rng.choice([0.0, 0.25, 0.5]))
        limit = int(rng.integers(1, 320))
        want = reference_greedy_nms(boxes, np.arange(count, 0, -1).astype(np.float32), threshold)[:limit]
        assert greedy_keep(boxes, threshold, limit).tolist() == want


def test_a_suppressed_box_suppresses_nothing():
    # b overlaps a and c; a suppresses b, so c (disjoint from a) stays even though b would have suppressed it.
    a, b, c = [0, 0, 2, 2], [1, 0, 3, 2], [2, 0, 4, 2]
    boxes = np.array([a, b, c], np.float32) / 4
    assert greedy_nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.3) == [0, 2]


def test_parse_nms_equals_the_row_loop_and_filters_on_the_rounded_confidence():
    rng = np.random.default_rng(3)
    labels = ["background", "car", "plate", "sign"]
    for _ in range(200):
        rows = int(rng.integers(1, 30))
        out = np.zeros((2, 1, rows, 7), np.float32)
        out[:, 0, :, 1] = rng.choice([-1, 0, 1, 2, 3, 1.5, 2.5], size=(2, rows))
        out[:, 0, :, 2] = rng.random((2, rows)).astype(np.float32)
        out[:, 0, :, 3:7] = (rng.random((2, rows, 4)) * 1.2 - 0.1).astype(np.float32)
        counts = rng.integers(0, rows + 1, size=(2, 1, 1, 1)).astype(np.int32)
        width, height = int(rng.integers(1, 2000)), int(rng.integers(1, 2000))
        for image in (0, 1):
            got = parse_nms(out, counts, image, labels, width, height)
            want = reference_parse_nms(out, counts, image, labels, width, height)
            assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
            cut = float(rng.choice([0.0, 0.3, 0.5]))
            assert parse_nms(out, counts, image, labels, width, height, min_confidence=cut) == [
                d for d in want if d["confidence"] >= cut]


def test_parse_nms_rejects_a_label_that_is_not_a_number():
    out, counts = tao_nms([[(1, 0.9, 0, 0, 1, 1)]])
    out[0, 0, 0, 1] = np.nan
    with pytest.raises(AgentError, match="not a class number"):
        parse_nms(out, counts, 0, LABELS, 10, 10)


@pytest.mark.parametrize("spec", [
    SPEC,
    {**SPEC, "channel_order": "RGB", "mean": [1.5, 2.25, 3.0], "scale": 0.017},
    {**SPEC, "channels": 1, "mean": [117.3786], "scale": 1.0 / 255},
    {**SPEC, "width": 224, "height": 224},
])
def test_preprocess_equals_the_plain_expression_and_reuses_its_output(spec):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(37, 61, 3), dtype=np.uint8)
    first = preprocess(image, spec)
    np.testing.assert_array_equal(first, reference_preprocess(image, spec))
    other = rng.integers(0, 256, size=(48, 20, 3), dtype=np.uint8)
    again = preprocess(other, spec, out=first)
    assert again is first  # written in place
    np.testing.assert_array_equal(again, reference_preprocess(other, spec))
    wrong = np.zeros((1, 3, 2, 2), np.float32)
    assert preprocess(image, spec, out=wrong) is not wrong  # another shape: a new array, the old one untouched
    assert not wrong.any()
