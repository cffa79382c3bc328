"""Average precision exactly as TAO's SSD `evaluate` and training-time validation compute it.

Sources (NVIDIA/tao_tensorflow1_backend, TAO 5):
- `nvidia_tao_tf1/cv/ssd/scripts/evaluate.py` (and `ssd/callbacks/detection_metric_callback_bg.py` during training):
  predictions with confidence `> confidence_threshold` are kept, their corners are rounded with numpy's `round()`
  (half to even) and clipped to [0, output_width] / [0, output_height]; mAP is the mean over the object classes
  (background excluded); the table is printed with `"{:<14}{:<6}{}"` and values rounded to 3 digits (5 during
  training).
- `nvidia_tao_tf1/cv/common/evaluator/ap_evaluator.py` (`_per_img_match`, `_calc_ap`, `__voc_ap`): per image and
  class, predictions in descending confidence are matched to the *still unmatched* ground truth with the highest
  IoU, a match needing IoU >= matching_iou_threshold. A match with a difficult ground truth (KITTI occlusion != 0)
  consumes that ground truth but counts neither TP nor FP, so a second detection of the same difficult object is an
  FP; unmatched difficult ground truths are not false negatives. Then, per class over all images, precision and
  recall are accumulated in descending confidence; SAMPLE = 11-point VOC2007, INTEGRATE = VOC2010+ area under the
  monotone precision envelope.

A class without any ground truth has recall 0 everywhere, so its AP is 0 (with or without predictions), and TAO
still averages it into the mAP. Boxes are (xmin, ymin, xmax, ymax) in network-input pixels (the image resized to
output_width x output_height); see `kitti_eval_data.to_network_input` for the ground-truth side.

TAO sorts with numpy's quicksort, so the order of equal confidences is unspecified there; here it is stable (the
order in which predictions were given, images in `update` order), which makes results reproducible.
"""

import numpy as np

AP_MODES = ("SAMPLE", "INTEGRATE")
TABLE_RULE = "*" * 31
NUM_RECALL_POINTS = 11  # VOC2007, fixed in TAO's evaluate.py


def _mode_name(mode):
    # The spec gives eval_config.average_precision_mode as an enum name or its number (SAMPLE=0, INTEGRATE=1).
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool) and 0 <= mode < len(AP_MODES):
        return AP_MODES[mode]
    if isinstance(mode, str) and mode.upper() in AP_MODES:
        return mode.upper()
    raise ValueError(f"average precision mode must be one of {', '.join(AP_MODES)} (or 0/1), got {mode!r}")


def _as_boxes(boxes, what):
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what} must have shape [K, 4], got {arr.shape}")
    return arr


def _as_vector(values, n, what, dtype):
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} entries for {n} boxes")
    return arr


def iou_one_to_many(box, boxes):
    """IoU of one box with each row of `boxes`, TAO's formula: no +1, no corner reordering (ap_evaluator.batch_iou).

    A zero union gives NaN, as in TAO, and NaN never reaches the matching threshold.
    """
    inter_w = np.maximum(0.0, np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]))
    inter_h = np.maximum(0.0, np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]))
    inter = inter_w * inter_h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area + areas - inter)


class APEvaluator:
    """Accumulate per-image predictions and ground truth, then compute TAO's per-class AP and mAP.

    n_classes counts the object classes only; labels are 1-based class ids (1..n_classes), 0 being TAO's
    background. input_size=(output_width, output_height) enables TAO's clipping of the rounded prediction corners;
    without it the corners are only rounded.
    """

    def __init__(self, n_classes, matching_iou_threshold=0.5, confidence_threshold=0.01, mode="SAMPLE",
                 input_size=None):
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes!r}")
        # evaluate.py: an unset (0) eval_config.matching_iou_threshold means 0.5.
        matching_iou_threshold = float(matching_iou_threshold) or 0.5
        if not 0.0 < matching_iou_threshold <= 1.0:
            raise ValueError(f"matching_iou_threshold must be in (0, 1], got {matching_iou_threshold!r}")
        self.n_classes = int(n_classes)
        self.matching_iou_threshold = float(matching_iou_threshold)
        self.confidence_threshold = float(confidence_threshold)
        self.mode = _mode_name(mode)
        self.input_size = None if input_size is None else (float(input_size[0]), float(input_size[1]))
        self.n_images = 0
        # Per class: confidences and TP flags of the predictions that count, and the non-difficult GT count.
        self._scores = [[] for _ in range(self.n_classes + 1)]
        self._is_tp = [[] for _ in range(self.n_classes + 1)]
        self._n_gt = np.zeros(self.n_classes + 1, dtype=np.int64)

    def _check_labels(self, labels, what):
        bad = labels[(labels < 1) | (labels > self.n_classes)]
        if bad.size:
            raise ValueError(f"{what} must be class ids in 1..{self.n_classes}, got {int(bad[0])}")

    def prepare_predictions(self, pred_boxes, pred_scores, pred_labels):
        """Apply evaluate.py's filter (confidence > threshold), rounding and clipping; return the three arrays."""
        boxes = _as_boxes(pred_boxes, "pred_boxes")
        scores = _as_vector(pred_scores, len(boxes), "pred_scores", np.float64)
        labels = _as_vector(pred_labels, len(boxes), "pred_labels", np.int64)
        keep = scores > self.confidence_threshold
        boxes, scores, labels = np.round(boxes[keep]), scores[keep], labels[keep]
        if self.input_size is not None:
            width, height = self.input_size
            boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, width)
            boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, height)
        return boxes, scores, labels

    def update(self, pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, gt_difficult=None):
        """Add one image: predictions [P,4]/[P]/[P] and ground truth [G,4]/[G]/[G] (difficult: bool, default none)."""
        boxes, scores, labels = self.prepare_predictions(pred_boxes, pred_scores, pred_labels)
        gt_boxes = _as_boxes(gt_boxes, "gt_boxes")
        gt_labels = _as_vector(gt_labels, len(gt_boxes), "gt_labels", np.int64)
        if gt_difficult is None:
            gt_difficult = np.zeros(len(gt_boxes), dtype=bool)
        gt_difficult = _as_vector(gt_difficult, len(gt_boxes), "gt_difficult", bool)
        self._check_labels(labels, "pred_labels")
        self._check_labels(gt_labels, "gt_labels")
        self.n_images += 1

        for cls in range(1, self.n_classes + 1):
            in_cls = labels == cls
            gt_in_cls = gt_labels == cls
            self._match_class(boxes[in_cls], scores[in_cls], gt_boxes[gt_in_cls], gt_difficult[gt_in_cls], cls)

    def _match_class(self, boxes, scores, gt_boxes, difficult, cls):
        # ap_evaluator._per_img_match, one class of one image. `unmatched` is 1.0 for a GT still available.
        unmatched = np.ones(len(gt_boxes))
        for i in np.argsort(-scores, kind="stable"):
            if len(gt_boxes) == 0:
                self._add(cls, scores[i], False)
                continue
            overlaps = iou_one_to_many(boxes[i], gt_boxes) * unmatched
            if np.max(overlaps) >= self.matching_iou_threshold:
                best = int(np.argmax(overlaps))
                unmatched[best] = 0.0
                if not difficult[best]:
                    self._add(cls, scores[i], True)
                # A difficult match is dropped: not a TP, not an FP, absent from the PR curve.
            else:
                self._add(cls, scores[i], False)
        # Every non-difficult GT counts towards recall (TAO appends the unmatched ones as FN entries).
        self._n_gt[cls] += int(np.count_nonzero(~difficult))

    def _add(self, cls, score, is_tp):
        self._scores[cls].append(float(score))
        self._is_tp[cls].append(bool(is_tp))

    def compute(self):
        """Return {"ap": {id: AP}, "map": mAP, "precision": {id: array}, "recall": {id: array}, "n_gt": {id: n},
        "n_images": n}. precision/recall have one entry per counted prediction, in descending confidence."""
        result = {"ap": {}, "precision": {}, "recall": {}, "n_gt": {}, "n_images": self.n_images}
        for cls in range(1, self.n_classes + 1):
            precision, recall = self._pr_curve(cls)
            result["precision"][cls] = precision
            result["recall"][cls] = recall
            result["n_gt"][cls] = int(self._n_gt[cls])
            result["ap"][cls] = average_precision(precision, recall, self.mode)
        # evaluate.py: np.mean(average_precisions[1:]) over every object class, AP 0 included.
        result["map"] = float(np.mean([result["ap"][c] for c in range(1, self.n_classes + 1)]))
        return result

    def _pr_curve(self, cls):
        scores = np.asarray(self._scores[cls], dtype=np.float64)
        is_tp = np.asarray(self._is_tp[cls], dtype=bool)
        order = np.argsort(-scores, kind="stable")
        tp = np.cumsum(is_tp[order]).astype(np.float64)
        fp = np.cumsum(~is_tp[order]).astype(np.float64)
        # Same divisions as _calc_ap (float(TP) / (TP + FP), float(TP) / npos), so the values are bit-identical.
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        npos = float(self._n_gt[cls])
        recall = tp / npos if npos > 0 else np.zeros_like(tp)
        return precision, recall


def average_precision(precision, recall, mode="SAMPLE"):
    """AP of one class from its precision/recall points (ap_evaluator.__voc_ap)."""
    mode = _mode_name(mode)
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    if mode == "SAMPLE":
        # Max precision at recall >= t for 11 equidistant t, summed in TAO's order.
        ap = 0.0
        for t in np.linspace(0.0, 1.0, NUM_RECALL_POINTS):
            at_least = recall >= t
            p = np.max(precision[at_least]) if np.any(at_least) else 0.0
            ap = ap + p / float(NUM_RECALL_POINTS)
        return float(ap)
    # INTEGRATE: sentinels (0, 0) and (1, 0), monotone envelope from the right, sum of recall steps x precision.
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def format_table(ap_by_name, map_value, digits=3):
    """TAO's AP table: 31 '*', one `{name:<14}{'AP':<6}{AP}` line per class, the mAP line, 31 '*'.

    digits=3 is `ssd evaluate` (evaluate.py); training-time validation prints digits=5. Values are rounded with
    numpy's round, as TAO rounds numpy floats.
    """
    def rounded(value):
        return float(np.round(np.float64(value), digits))

    lines = [TABLE_RULE]
    lines += [f"{name:<14}{'AP':<6}{rounded(ap)}" for name, ap in ap_by_name.items()]
    lines.append(f"{'':<14}{'mAP':<6}{rounded(map_value)}")
    lines.append(TABLE_RULE)
    return "\n".join(lines)
