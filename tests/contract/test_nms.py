"""NMS with TensorRT NMS-plugin semantics, its output layout, and the parser of that layout."""


import numpy as np
import pytest

from taoflow.contract.nms import (
    eval_predictions,
    greedy_nms,
    iou_matrix,
    nms_plugin,
    parse_nms_output,
    valid_rows,
)


def decoded(boxes, class_scores):
    """One image: boxes [A, 4]; class_scores [A, C] for classes 1..C (background gets the rest)."""
    cls = np.asarray(class_scores, dtype=np.float32)
    background = np.clip(1.0 - cls.sum(axis=1, keepdims=True), 0.0, 1.0)
    return (np.asarray(boxes, dtype=np.float32)[None], np.concatenate([background, cls], axis=1)[None])


def close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=1e-6, atol=1e-6)


def rows(nms, keep_count, image=0):
    return valid_rows(nms, keep_count, image)


def test_overlapping_boxes_are_suppressed():
    # B overlaps A with IoU 0.2/0.25 = 0.8 > 0.5 -> suppressed; C is disjoint -> kept.
    a, b, c = [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.4], [0.6, 0.6, 1, 1]
    nms, keep = nms_plugin(*decoded([a, b, c], [[0.9], [0.8], [0.7]]), 0.1, 0.5, 10, 10)
    assert nms.shape == (1, 1, 10, 7) and nms.dtype == np.float32
    assert keep.shape == (1, 1, 1, 1) and keep.dtype == np.int32 and int(keep[0, 0, 0, 0]) == 2
    close(rows(nms, keep), [[0, 1, 0.9, *a], [0, 1, 0.7, *c]])


def test_iou_exactly_at_threshold_is_not_suppressed():
    # IoU([0,0,.5,.5], [0,0,.25,.5]) = 0.125 / 0.25 = 0.5 exactly in float32; the plugin suppresses only IoU > 0.5.
    boxes, scores = decoded([[0, 0, 0.5, 0.5], [0, 0, 0.25, 0.5]], [[0.9], [0.8]])
    assert int(nms_plugin(boxes, scores, 0.1, 0.5, 10, 10)[1].sum()) == 2
    assert int(nms_plugin(boxes, scores, 0.1, 0.49, 10, 10)[1].sum()) == 1


def test_classes_are_suppressed_independently():
    # The same two overlapping boxes score for class 1 and class 2: NMS runs per class, so each class keeps its
    # best box; rows are sorted by score across classes.
    a, b = [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.45]
    nms, keep = nms_plugin(*decoded([a, b], [[0.5, 0.3], [0.1, 0.4]]), 0.05, 0.5, 10, 10)
    close(rows(nms, keep), [[0, 1, 0.5, *a], [0, 2, 0.4, *b]])


def test_background_is_never_reported():
    boxes = np.array([[[0, 0, 1, 1]]], dtype=np.float32)
    scores = np.array([[[0.99, 0.01]]], dtype=np.float32)
    nms, keep = nms_plugin(boxes, scores, 0.001, 0.5, 10, 10)
    close(rows(nms, keep), [[0, 1, 0.01, 0, 0, 1, 1]])


def test_confidence_threshold_is_strict():
    # 0.5 is exact in float32; the plugin keeps only score > confidenceThreshold.
    boxes, scores = decoded([[0, 0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7]], [[0.5], [0.6]])
    nms, keep = nms_plugin(boxes, scores, 0.5, 0.5, 10, 10)
    close(rows(nms, keep), [[0, 1, 0.6, 0.5, 0.5, 0.7, 0.7]])


def test_top_k_limits_candidates_per_class_before_nms():
    # Five disjoint class-1 boxes; top_k = 3 lets only the best three into NMS.
    boxes = [[0.1 * i, 0, 0.1 * i + 0.05, 0.05] for i in range(5)]
    nms, keep = nms_plugin(*decoded(boxes, [[0.5], [0.9], [0.7], [0.8], [0.6]]), 0.1, 0.5, 3, 3)
    assert [r[2] for r in rows(nms, keep)] == pytest.approx([0.9, 0.8, 0.7])
    # With per-class top_k 2 and two classes, keep_top_k 2 takes the best two of the four survivors.
    two = [[0.9, 0.1], [0.2, 0.85], [0.3, 0.6], [0.1, 0.7]]
    nms, keep = nms_plugin(*decoded(boxes[:4], two), 0.05, 0.5, 2, 2)
    close([(r[1], r[2]) for r in rows(nms, keep)], [(1, 0.9), (2, 0.85)])


def test_top_k_is_applied_before_nms_not_after():
    # A (0.9) suppresses B (0.8); C (0.7) is disjoint. With top_k = 2 only A and B enter NMS, so C is lost even
    # though B was suppressed: the plugin takes topK candidates first, then runs NMS on them.
    a, b, c = [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.45], [0.6, 0.6, 1, 1]
    nms, keep = nms_plugin(*decoded([a, b, c], [[0.9], [0.8], [0.7]]), 0.1, 0.5, 2, 2)
    close(rows(nms, keep), [[0, 1, 0.9, *a]])


def test_no_top_k_lets_every_candidate_into_nms():
    # TAO's Keras path (combined_non_max_suppression): with top_k=None the disjoint C (0.7) survives even though
    # it ranks third behind A and the suppressed B; keep_top_k still caps the output.
    a, b, c = [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.45], [0.6, 0.6, 1, 1]
    boxes, scores = decoded([a, b, c], [[0.9], [0.8], [0.7]])
    close(rows(*nms_plugin(boxes, scores, 0.1, 0.5, None, 2)), [[0, 1, 0.9, *a], [0, 1, 0.7, *c]])
    assert int(nms_plugin(boxes, scores, 0.1, 0.5, None, 1)[1].sum()) == 1


def test_keep_top_k_truncates_overall():
    boxes = [[0.1 * i, 0, 0.1 * i + 0.05, 0.05] for i in range(4)]
    nms, keep = nms_plugin(*decoded(boxes, [[0.6], [0.9], [0.7], [0.8]]), 0.1, 0.5, 10, 2)
    assert nms.shape == (1, 1, 2, 7)
    assert [r[2] for r in rows(nms, keep)] == pytest.approx([0.9, 0.8])


def test_padding_rows_follow_the_plugin():
    # gatherTopDetections writes unused rows as [image_id, -1, 0, 0, 0, 0, 0].
    boxes, scores = decoded([[0, 0, 0.5, 0.5]], [[0.9]])
    boxes, scores = np.concatenate([boxes, boxes]), np.concatenate([scores, scores * 0])
    nms, keep = nms_plugin(boxes, scores, 0.1, 0.5, 4, 3)
    assert keep.ravel().tolist() == [1, 0]
    assert nms[0, 0, 1:].tolist() == [[0, -1, 0, 0, 0, 0, 0]] * 2
    assert nms[1, 0].tolist() == [[1, -1, 0, 0, 0, 0, 0]] * 3
    assert nms[0, 0, 0, :2].tolist() == [0, 1]


def test_output_corners_are_clipped_but_nms_uses_raw_boxes():
    # A = [-0.5, 0, 0.5, 0.5] and B = [0, 0, 0.5, 0.5]: raw IoU = 0.25 / 0.5 = 0.5, not > 0.6 -> both kept
    # (clipped, they would be identical). A is reported clipped to [0, 0, 0.5, 0.5].
    nms, keep = nms_plugin(*decoded([[-0.5, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]], [[0.9], [0.8]]), 0.1, 0.6, 10, 10)
    close(rows(nms, keep), [[0, 1, 0.9, 0, 0, 0.5, 0.5], [0, 1, 0.8, 0, 0, 0.5, 0.5]])


def test_ties_keep_anchor_then_class_order():
    # Equal scores: the stable radix sorts keep anchor order within a class and class order across classes.
    boxes = [[0.5, 0.5, 0.6, 0.6], [0, 0, 0.1, 0.1]]
    nms, keep = nms_plugin(*decoded(boxes, [[0.4, 0.4], [0.4, 0.4]]), 0.1, 0.5, 10, 10)
    got = [(r[1], r[3]) for r in rows(nms, keep)]
    close(got, [(1, 0.5), (1, 0.0), (2, 0.5), (2, 0.0)])


def test_iou_rules():
    # Touching boxes have IoU 0; swapped corners are put in order first; self-IoU is 1; zero-area boxes give 0.
    iou = iou_matrix([[0, 0, 0.5, 0.5]], [[0.5, 0, 1, 0.5], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]])
    close(iou, [[0, 1, 1, 0]])
    # IoU([0,0,.5,.5], [.25,0,.75,.5]) = 0.125 / 0.375 = 1/3; the matrix is symmetric.
    iou = iou_matrix([[0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5]], [[0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5]])
    close(iou, [[1, 1 / 3], [1 / 3, 1]])


def test_greedy_nms_suppressed_boxes_do_not_suppress():
    # A (rank 0) suppresses B (IoU 0.6 > 0.5); C overlaps B (IoU 0.6) but not A, and B is gone -> C kept.
    a, b, c = [0, 0, 0.5, 0.5], [0.125, 0, 0.625, 0.5], [0.25, 0, 0.75, 0.5]
    assert greedy_nms([a, b, c], 0.5).tolist() == [0, 2]
    assert greedy_nms([a, b, c], 0.5, max_keep=1).tolist() == [0]
    assert greedy_nms(np.zeros((0, 4)), 0.5).tolist() == []


def test_bad_arguments():
    boxes, scores = decoded([[0, 0, 1, 1]], [[0.9]])
    with pytest.raises(ValueError, match="writes no output"):
        nms_plugin(boxes, scores, 0.1, 0.5, 2, 3)
    with pytest.raises(ValueError, match="scores"):
        nms_plugin(boxes, scores[:, :, :1], 0.1, 0.5, 2, 2)


def test_full_size_inputs_keep_keep_top_k_in_score_order():
    # 11,658 anchors (resnet18 SSD at 300x300), 3 classes + background, TAO's topK 400 / keepTopK 200. (Its speed is
    # a benchmark's concern, not a test's: bench/detect.py measures the device's post-processing.)
    rng = np.random.default_rng(0)
    n_anchors = 11658
    centre, size = rng.random((1, n_anchors, 2)), rng.random((1, n_anchors, 2)) * 0.3
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=-1).astype(np.float32)
    logits = rng.normal(0, 2, (1, n_anchors, 4))
    scores = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    nms, keep = nms_plugin(boxes, scores, 0.01, 0.6, 400, 200)
    assert int(keep[0, 0, 0, 0]) == 200
    assert np.all(np.diff(nms[0, 0, :, 2]) <= 0)
    # TAO's Keras path on an untrained model: every anchor over 0.01 is a candidate of every class.
    flat = np.full_like(scores, 0.25)
    nms, keep = nms_plugin(boxes, flat, 0.01, 0.6, None, 200)
    assert int(keep[0, 0, 0, 0]) == 200


def test_parse_nms_output_scales_to_the_original_image():
    nms = np.zeros((2, 1, 3, 7), dtype=np.float32)
    nms[1, 0, 0] = [1, 2, 0.9, 0.1, 0.2, 0.5, 0.6]
    nms[1, 0, 1] = [1, 1, 0.3, 0.0, 0.0, 1.0, 1.0]
    nms[1, 0, 2] = [1, 1, 0.2, 0.0, 0.0, 1.0, 1.0]  # beyond keep_count: ignored
    keep = np.array([0, 2], dtype=np.int32).reshape(2, 1, 1, 1)
    dets = parse_nms_output(nms, keep, 1, 200, 100, ["car", "person"], 0.3)
    assert [d["label"] for d in dets] == ["person", "car"]  # 0.3 >= threshold 0.3 is kept, as in TAO
    assert dets[0]["confidence"] == pytest.approx(0.9)
    assert dets[0]["box"] == pytest.approx([20, 20, 100, 60])
    assert dets[1]["box"] == pytest.approx([0, 0, 200, 100])
    assert parse_nms_output(nms, keep, 1, 200, 100, ["car", "person"], 0.31)[0]["label"] == "person"
    assert len(parse_nms_output(nms, keep, 1, 200, 100, ["car", "person"], 0.31)) == 1
    assert parse_nms_output(nms, keep, 0, 200, 100, ["car", "person"], 0.0) == []


def test_parse_skips_labels_outside_the_class_list():
    nms = np.array([[[[0, 3, 0.9, 0, 0, 1, 1], [0, 1, 0.8, 0, 0, 1, 1]]]], dtype=np.float32)
    keep = np.array([[[[2]]]], dtype=np.int32)
    assert [d["label"] for d in parse_nms_output(nms, keep, 0, 10, 10, ["car", "person"], 0.1)] == ["car"]


def test_eval_predictions_in_network_pixels():
    nms = np.array([[[[0, 2, 0.75, 0.1, 0.2, 0.5, 0.6], [0, -1, 0, 0, 0, 0, 0]]]], dtype=np.float32)
    boxes, scores, labels = eval_predictions(nms, np.array([[[[1]]]], dtype=np.int32), 0, 300, 200)
    assert boxes.dtype == np.float32
    close(boxes, [[30, 40, 150, 120]])
    assert scores.tolist() == pytest.approx([0.75]) and labels.tolist() == [2]
