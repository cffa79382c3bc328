"""TAO's AP semantics (ap_evaluator.py + evaluate.py) on hand-computed cases.

Every expected number is derived by hand in the comments: P = precision, R = recall after each counted prediction
in descending confidence. SAMPLE = sum over t in {0, 0.1, ..., 1} of max(P[R >= t]) / 11; INTEGRATE = area under
the precision envelope with sentinels (R=0, P=0) and (R=1, P=0).
"""

import numpy as np
import pytest

from taoflow.backends.native.ap import APEvaluator, average_precision, format_table

A = [0, 0, 10, 10]
B = [20, 20, 30, 30]
FAR = [50, 50, 60, 60]
NONE = np.zeros((0, 4))


def evaluate(images, n_classes=1, mode="SAMPLE", **kwargs):
    """images: [(pred_boxes, scores, labels, gt_boxes, gt_labels, gt_difficult or None)]."""
    ev = APEvaluator(n_classes, mode=mode, **kwargs)
    for image in images:
        ev.update(*image)
    return ev.compute()


def both_modes(images, **kwargs):
    return evaluate(images, mode="SAMPLE", **kwargs), evaluate(images, mode="INTEGRATE", **kwargs)


def test_perfect_detector():
    # Two images, each prediction exactly on its GT: P = [1, 1], R = [0.5, 1] -> every sample point 1 -> AP 1;
    # envelope 1 over the whole recall range -> INTEGRATE 1.
    images = [([A], [0.9], [1], [A], [1], None), ([B], [0.8], [1], [B], [1], None)]
    sample, integrate = both_modes(images)
    assert sample["ap"][1] == pytest.approx(1.0)
    assert integrate["ap"][1] == pytest.approx(1.0)
    assert sample["map"] == pytest.approx(1.0)
    np.testing.assert_allclose(sample["precision"][1], [1.0, 1.0])
    np.testing.assert_allclose(sample["recall"][1], [0.5, 1.0])
    assert sample["n_gt"][1] == 2 and sample["n_images"] == 2


def test_single_fp_ranked_above_the_only_tp():
    # FP (0.9) then TP (0.8), one GT: P = [0, 0.5], R = [0, 1].
    # SAMPLE: t = 0 -> max(0, 0.5) = 0.5; t > 0 -> only R = 1 -> 0.5; 11 x 0.5 / 11 = 0.5.
    # INTEGRATE: envelope 0.5 on (0, 1] -> 0.5.
    images = [([FAR, A], [0.9, 0.8], [1, 1], [A], [1], None)]
    sample, integrate = both_modes(images)
    assert sample["ap"][1] == pytest.approx(0.5)
    assert integrate["ap"][1] == pytest.approx(0.5)


def test_fp_between_two_tps_separates_sample_and_integrate():
    # TP (0.9), FP (0.8), TP (0.7), two GTs: P = [1, 1/2, 2/3], R = [1/2, 1/2, 1].
    # SAMPLE: t in 0..0.5 (6 points) -> 1; t in 0.6..1 (5 points) -> 2/3; (6 + 10/3) / 11 = 28/33 = 0.848484...
    # INTEGRATE: envelope 1 on (0, 0.5], 2/3 on (0.5, 1]: 0.5 x 1 + 0.5 x 2/3 = 5/6 = 0.833333...
    images = [([A, FAR, B], [0.9, 0.8, 0.7], [1, 1, 1], [A, B], [1, 1], None)]
    sample, integrate = both_modes(images)
    assert sample["ap"][1] == pytest.approx(28 / 33)
    assert integrate["ap"][1] == pytest.approx(5 / 6)
    np.testing.assert_allclose(sample["precision"][1], [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(sample["recall"][1], [0.5, 0.5, 1.0])


def test_duplicate_detection_is_a_false_positive():
    # Image 1: GT A detected twice (0.9, 0.8); image 2: GT B detected once (0.7).
    # The second detection of A finds A already matched and nothing else >= 0.5 -> FP.
    # Order TP, FP, TP: same curve as above -> SAMPLE 28/33, INTEGRATE 5/6.
    images = [([A, A], [0.9, 0.8], [1, 1], [A], [1], None), ([B], [0.7], [1], [B], [1], None)]
    sample, integrate = both_modes(images)
    assert sample["ap"][1] == pytest.approx(28 / 33)
    assert integrate["ap"][1] == pytest.approx(5 / 6)


def test_second_detection_takes_the_next_best_unmatched_gt():
    # G1 = A, G2 = [0, 0, 10, 12]. Both predictions are A: IoU(A, G1) = 1, IoU(A, G2) = 100/120 = 0.833.
    # The first takes G1; TAO then matches the second to the best *unmatched* GT, G2 (0.833 >= 0.5) -> TP.
    # P = [1, 1], R = [0.5, 1] -> AP 1 (a VOC-style "best GT already taken" rule would give an FP instead).
    g2 = [0, 0, 10, 12]
    result = evaluate([([A, A], [0.9, 0.8], [1, 1], [A, g2], [1, 1], None)])
    assert result["ap"][1] == pytest.approx(1.0)


def test_difficult_gt_matched_is_ignored():
    # GT A normal, GT B difficult. Detection of B (0.9) is neither TP nor FP; detection of A (0.8) is TP.
    # Counted: P = [1], R = [1] (n_gt = 1) -> AP 1. Counting the B detection as FP would give 0.5.
    result = evaluate([([B, A], [0.9, 0.8], [1, 1], [A, B], [1, 1], [False, True])])
    assert result["ap"][1] == pytest.approx(1.0)
    assert result["n_gt"][1] == 1
    np.testing.assert_allclose(result["precision"][1], [1.0])


def test_difficult_gt_unmatched_is_not_a_false_negative():
    # GT A normal, GT B difficult, only A detected: R = [1] (B does not count) -> AP 1.
    # Counting B as FN would give R = [0.5] and SAMPLE 6/11.
    result = evaluate([([A], [0.8], [1], [A, B], [1, 1], [False, True])])
    assert result["ap"][1] == pytest.approx(1.0)


def test_second_detection_of_a_difficult_gt_is_a_false_positive():
    # TAO consumes a difficult GT on its first match, so a duplicate of it is an FP (VOC would ignore it too).
    # B difficult: 0.9 -> ignored, 0.85 -> FP (B taken, IoU with A is 0), A: 0.8 -> TP.
    # Counted: FP, TP -> P = [0, 0.5], R = [0, 1] -> SAMPLE 0.5, INTEGRATE 0.5.
    images = [([B, B, A], [0.9, 0.85, 0.8], [1, 1, 1], [A, B], [1, 1], [False, True])]
    sample, integrate = both_modes(images)
    assert sample["ap"][1] == pytest.approx(0.5)
    assert integrate["ap"][1] == pytest.approx(0.5)


def test_empty_images():
    # Image 1: GT A found at 0.8 (TP). Image 2: no GT, one prediction at 0.9 (FP). Image 3: nothing at all.
    # FP, TP -> P = [0, 0.5], R = [0, 1] -> 0.5 in both modes; image 3 changes nothing.
    images = [([A], [0.8], [1], [A], [1], None), ([FAR], [0.9], [1], NONE, [], None), (NONE, [], [], NONE, [], None)]
    sample, integrate = both_modes(images)
    assert sample["ap"][1] == pytest.approx(0.5)
    assert integrate["ap"][1] == pytest.approx(0.5)
    assert sample["n_images"] == 3


def test_only_empty_images_give_zero():
    # No GT anywhere: recall is 0 at every point -> AP 0, with or without predictions.
    for images in ([(NONE, [], [], NONE, [], None)], [([A], [0.9], [1], NONE, [], None)]):
        sample, integrate = both_modes(images)
        assert sample["ap"][1] == 0.0 and integrate["ap"][1] == 0.0


def test_class_without_predictions_or_gt_counts_in_map():
    # Class 1 perfect (AP 1). Class 2 has a GT but no prediction (AP 0). Class 3 has neither (AP 0).
    # TAO's mAP is the plain mean over all object classes: (1 + 0 + 0) / 3 = 1/3.
    result = evaluate([([A], [0.9], [1], [A, B], [1, 2], None)], n_classes=3)
    assert result["ap"] == pytest.approx({1: 1.0, 2: 0.0, 3: 0.0})
    assert result["map"] == pytest.approx(1 / 3)
    assert len(result["precision"][2]) == 0 and result["n_gt"][2] == 1 and result["n_gt"][3] == 0


def test_class_with_predictions_but_no_gt_is_zero():
    # Class 2 only has a prediction: one FP, R = 0 -> AP 0. Class 1 perfect -> mAP = 0.5.
    result = evaluate([([A, B], [0.9, 0.9], [1, 2], [A], [1], None)], n_classes=2)
    assert result["ap"][2] == 0.0
    assert result["map"] == pytest.approx(0.5)


def test_confidence_threshold_is_strict():
    # evaluate.py keeps confidence > threshold. A TP at exactly 0.5 is dropped -> R = 0 -> AP 0.
    assert evaluate([([A], [0.5], [1], [A], [1], None)], confidence_threshold=0.5)["ap"][1] == 0.0
    # Just above the threshold it counts -> AP 1.
    assert evaluate([([A], [0.5001], [1], [A], [1], None)], confidence_threshold=0.5)["ap"][1] == pytest.approx(1.0)
    # An FP at the threshold is dropped entirely: the counted curve is the TP alone, P = [1].
    result = evaluate([([FAR, A], [0.5, 0.7], [1, 1], [A], [1], None)], confidence_threshold=0.5)
    np.testing.assert_allclose(result["precision"][1], [1.0])


def test_dropped_prediction_does_not_consume_a_gt():
    # Threshold 0.5: the 0.4 detection of A is dropped before matching, so the 0.6 one still matches A.
    # TP only -> AP 1.
    result = evaluate([([A, A], [0.4, 0.6], [1, 1], [A], [1], None)], confidence_threshold=0.5)
    assert result["ap"][1] == pytest.approx(1.0)


def test_ordering_is_by_confidence_across_images():
    # Image 1: TP at 0.5. Image 2: TP at 0.9 and FP at 0.7. Global order TP(0.9), FP(0.7), TP(0.5):
    # P = [1, 1/2, 2/3], R = [1/2, 1/2, 1] -> SAMPLE 28/33, INTEGRATE 5/6. Image order would give AP 1.
    images = [([A], [0.5], [1], [A], [1], None), ([B, FAR], [0.9, 0.7], [1, 1], [B], [1], None)]
    sample, integrate = both_modes(images)
    assert sample["ap"][1] == pytest.approx(28 / 33)
    assert integrate["ap"][1] == pytest.approx(5 / 6)


def test_iou_exactly_at_threshold_matches():
    # GT A (area 100); prediction [0, 0, 5, 10]: intersection 50, union 100 -> IoU 0.5 >= 0.5 -> TP, AP 1.
    assert evaluate([([[0, 0, 5, 10]], [0.9], [1], [A], [1], None)])["ap"][1] == pytest.approx(1.0)
    # [0, 0, 4, 10]: IoU 40/100 = 0.4 -> FP, AP 0.
    assert evaluate([([[0, 0, 4, 10]], [0.9], [1], [A], [1], None)])["ap"][1] == 0.0


def test_prediction_corners_are_rounded_half_to_even():
    # xmax 4.5 rounds to 4 (numpy, half to even) -> IoU 0.4 -> FP; 5.5 rounds to 6 -> IoU 0.6 -> TP.
    assert evaluate([([[0, 0, 4.5, 10]], [0.9], [1], [A], [1], None)])["ap"][1] == 0.0
    assert evaluate([([[0, 0, 5.5, 10]], [0.9], [1], [A], [1], None)])["ap"][1] == pytest.approx(1.0)


def test_prediction_corners_are_clipped_to_the_input_size():
    # Prediction [-10, 0, 10, 10] vs GT A at matching threshold 0.6: unclipped IoU = 100/200 = 0.5 -> FP;
    # clipped to the 20x20 input it is A itself -> IoU 1 -> TP.
    image = ([[-10, 0, 10, 10]], [0.9], [1], [A], [1], None)
    assert evaluate([image], matching_iou_threshold=0.6)["ap"][1] == 0.0
    assert evaluate([image], matching_iou_threshold=0.6, input_size=(20, 20))["ap"][1] == pytest.approx(1.0)


def test_classes_are_matched_separately():
    # A prediction of class 2 on a class-1 GT is an FP for class 2 and leaves class 1 with an FN.
    result = evaluate([([A], [0.9], [2], [A], [1], None)], n_classes=2)
    assert result["ap"] == {1: 0.0, 2: 0.0}


def test_average_precision_direct():
    # One TP at R = 0.5 then nothing: SAMPLE -> t in 0..0.5 (6 points) give 1 -> 6/11; INTEGRATE -> 0.5.
    assert average_precision([1.0], [0.5], "SAMPLE") == pytest.approx(6 / 11)
    assert average_precision([1.0], [0.5], "INTEGRATE") == pytest.approx(0.5)
    # Spec enum numbers work too (SAMPLE = 0, INTEGRATE = 1).
    assert average_precision([1.0], [0.5], 1) == pytest.approx(0.5)


def test_bad_inputs_are_refused():
    ev = APEvaluator(2)
    with pytest.raises(ValueError, match="1..2"):
        ev.update([A], [0.9], [3], [A], [1])
    with pytest.raises(ValueError, match="shape"):
        ev.update([[0, 0, 1]], [0.9], [1], [A], [1])
    with pytest.raises(ValueError, match="entries"):
        ev.update([A], [0.9, 0.8], [1], [A], [1])
    with pytest.raises(ValueError, match="mode"):
        APEvaluator(1, mode="VOC")
    with pytest.raises(ValueError, match="matching_iou_threshold"):
        APEvaluator(1, matching_iou_threshold=1.5)
    # An unset spec value (0) means 0.5, as in evaluate.py.
    assert APEvaluator(1, matching_iou_threshold=0).matching_iou_threshold == 0.5


def test_format_table_matches_tao_evaluate():
    # evaluate.py: "{:<14}{:<6}{}" with round(x, 3); 28/33 = 0.848484..., mAP (28/33 + 0)/2 = 0.424242...
    table = format_table({"car": 28 / 33, "pedestrian": 0.0}, 14 / 33)
    assert table == (
        "*******************************\n"
        "car           AP    0.848\n"
        "pedestrian    AP    0.0\n"
        "              mAP   0.424\n"
        "*******************************"
    )
    # Training-time validation rounds to 5 digits.
    assert format_table({"car": 28 / 33}, 28 / 33, digits=5).splitlines()[1] == "car           AP    0.84848"
