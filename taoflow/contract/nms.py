"""Post-processing of taoflow's `decoded` model output into TAO's NMS plugin layout, and parsing of that layout.

The semantics are those of TensorRT's `NMS_TRT` / `NMSDynamic_TRT` plugin as TAO's SSD export configures it
(shareLocation=1, backgroundLabelId=0, isNormalized=1; `TF1:nvidia_tao_tf1/cv/ssd/export/onnx_exporter.py`), read
from NVIDIA/TensorRT `plugin/common/kernels/`:
- `sortScoresPerClass.cu`: background scores are dropped; a score is a candidate only if `score > confidenceThreshold`
  (strictly); candidates are sorted per class in descending score (a stable radix sort: ties keep anchor order).
- `allClassNMS.cu`: the first `topK` candidates of each class go through greedy NMS; a box is suppressed when its
  IoU with a kept, higher-ranked box is `> nmsThreshold` (strictly). IoU is computed on the unclipped decoded boxes,
  corners first put in min/max order, without the +1 of un-normalised boxes; touching boxes have IoU 0.
- `sortScoresPerImage.cu` + `gatherTopDetections.cu`: the survivors of all classes are sorted by score (stable, so
  ties keep class order, then per-class order) and the first `keepTopK` become rows
  `[image_id, label, confidence, xmin, ymin, xmax, ymax]` with the corners clipped to [0, 1]; unused rows are
  `[image_id, -1, 0, 0, 0, 0, 0]` and `keep_count` holds the number of valid rows. The plugin writes nothing when
  keepTopK > topK, so that is refused here.

Which top_k to pass:
- A TensorRT engine (`tao deploy`, DeepStream, taoflow's device agent): TAO's exporter sets topK = 2 x
  nms_config.top_k and keepTopK = nms_config.top_k (`onnx_exporter.py`).
- A Keras checkpoint (TAO's training-time validation, and `evaluate` / `inference` of an .hdf5): TAO decodes with
  `ssd/box_coder/output_decoder_layer.py`, i.e. `tf.image.combined_non_max_suppression` with
  max_output_size_per_class = max_total_size = nms_config.top_k: every candidate over the threshold enters NMS.
  That is top_k=None here with keep_top_k = nms_config.top_k (keeping the first top_k survivors of each class
  and then the best top_k overall is the same as keeping the best top_k of all survivors).

Scores and IoU are float32, as on the GPU; an IoU within one float32 ulp of the threshold may still round
differently there.

The plugin node itself (`plugin_attributes`, `attribute_problems`): TAO's SSD exporter
(`nvidia_tao_tf1/cv/ssd/export/onnx_exporter.py`) appends `NMSDynamic_TRT` named "NMS" with inputs
[anchor_data, loc_data, conf_data] and inputOrder [1, 2, 0] (loc, conf, prior), shareLocation 1,
varianceEncodedInTarget 0, backgroundLabelId 0, codeType 1 (CENTER_SIZE), confSigmoid 0 (conf_data is already a
softmax), isNormalized 1, numClasses = classes + 1, confidenceThreshold / nmsThreshold from nms_config, topK =
2 x top_k, keepTopK = top_k, scoreBits = infer_nms_score_bits. Its inputs (nmsPlugin.cpp, configurePlugin of the
dynamic plugin): loc_data [N, A*4, 1, 1], conf_data [N, A*C, 1, 1], anchor_data [N, 2, A*4, 1] (the prior corners,
then the variances repeated per prior); the batch of its outputs is that of its first input. Outputs NMS
[N, 1, keepTopK, 7] and NMS_1 [N, 1, 1, 1]: the plugin declares both kFLOAT (getOutputDataType: "keepCount: use
kFLOAT instead as they have same sizeof(type)"), so NMS_1 carries int32 bits in a float32 tensor; readers take it
as int32 (DeepStream's NvDsInferParseCustomNMSTLT reads `int*`, TAO Deploy allocates NMS_1 as np.int32), and the
ONNX graph must declare it FLOAT, as TAO's does: the ONNX parser sets each network output to its declared type, and
an INT32 declaration would convert the bits as a value.
"""

import numpy as np

NMS_ROW = 7  # image_id, label, confidence, xmin, ymin, xmax, ymax
NMS_BLOCK = 256  # candidates examined per vectorised step of greedy_nms


def _corners(boxes):
    """(x1, y1, x2, y2) float32 columns with each pair put in min/max order, as jaccardOverlap does first."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return (np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
            np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3]))


def iou_matrix(boxes_a, boxes_b):
    """IoU [Ka, Kb] of normalised (xmin, ymin, xmax, ymax) boxes by allClassNMS's jaccardOverlap rules."""
    ax1, ay1, ax2, ay2 = (c[:, None] for c in _corners(boxes_a))
    bx1, by1, bx2, by2 = (c[None, :] for c in _corners(boxes_b))
    # Clipping each side at 0 makes the product 0 exactly when the plugin finds no overlap (touching included).
    inter = np.maximum(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), np.float32(0))
    inter *= np.maximum(np.minimum(ay2, by2) - np.maximum(ay1, by1), np.float32(0))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    # Without overlap the plugin returns 0 without dividing; elsewhere union >= inter > 0.
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def greedy_nms(boxes, iou_threshold, max_keep=None):
    """Indices of `boxes` (already in rank order) kept by greedy NMS, suppressing at IoU > iou_threshold.

    The result is that of the one-by-one greedy loop; candidates are examined in blocks so that a block is first
    checked against every box kept so far in one step, and only the survivors are walked through in order.
    Stops after max_keep boxes: the rest could only rank below them.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    threshold = np.float32(iou_threshold)
    limit = len(boxes) if max_keep is None else min(int(max_keep), len(boxes))
    kept = []
    for start in range(0, len(boxes), NMS_BLOCK):
        if len(kept) >= limit:
            break
        index = np.arange(start, min(start + NMS_BLOCK, len(boxes)))
        if kept:
            index = index[~np.any(iou_matrix(boxes[kept], boxes[index]) > threshold, axis=0)]
        # Among the block's survivors, walk in rank order; a kept box suppresses the later ones it overlaps.
        suppresses = iou_matrix(boxes[index], boxes[index]) > threshold
        alive = np.ones(len(index), dtype=bool)
        for i in range(len(index)):
            if not alive[i]:
                continue
            kept.append(int(index[i]))
            if len(kept) >= limit:
                break
            alive[i + 1:] &= ~suppresses[i, i + 1:]
    return np.asarray(kept, dtype=np.int64)


def _class_candidates(scores, confidence_threshold, top_k):
    """Anchor indices with score > threshold, best first (ties by anchor index), at most top_k (None: all)."""
    idx = np.flatnonzero(scores > np.float32(confidence_threshold))
    if top_k is not None and idx.size > top_k:
        # Cut to the top_k-th score first (keeping its ties) so the stable sort below stays small.
        kth = np.partition(scores[idx], idx.size - top_k)[idx.size - top_k]
        idx = idx[scores[idx] >= kth]
    ranked = idx[np.argsort(-scores[idx], kind="stable")]
    return ranked if top_k is None else ranked[:top_k]


def nms_plugin(boxes, scores, confidence_threshold, iou_threshold, top_k, keep_top_k):
    """Run TAO's NMS on decoded output: boxes [N, A, 4] normalised xyxy, scores [N, A, C+1] with background at 0.

    Returns (nms float32 [N, 1, keep_top_k, 7], keep_count int32 [N, 1, 1, 1]). top_k is the per-class candidate
    count before NMS (the plugin's topK; None: no limit, TAO's Keras path), keep_top_k the detections kept per
    image (keepTopK). See the module docstring for the values TAO uses.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise ValueError(f"boxes must have shape [N, A, 4], got {boxes.shape}")
    if scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2] or scores.shape[2] < 2:
        raise ValueError(f"scores must have shape [N, A, C+1] with C >= 1 matching boxes {boxes.shape}, "
                         f"got {scores.shape}")
    keep_top_k = int(keep_top_k)
    if keep_top_k < 1 or (top_k is not None and int(top_k) < 1):
        raise ValueError(f"top_k and keep_top_k must be positive, got {top_k} and {keep_top_k}")
    if top_k is not None and keep_top_k > int(top_k):
        raise ValueError(f"keep_top_k ({keep_top_k}) > top_k ({top_k}): TensorRT's NMS plugin writes no output then")
    top_k = None if top_k is None else int(top_k)

    n_images, _, n_labels = scores.shape
    nms = np.zeros((n_images, 1, keep_top_k, NMS_ROW), dtype=np.float32)
    nms[:, 0, :, 0] = np.arange(n_images, dtype=np.float32)[:, None]
    nms[:, 0, :, 1] = -1.0
    keep_count = np.zeros((n_images, 1, 1, 1), dtype=np.int32)

    for n in range(n_images):
        kept_anchor, kept_label, kept_score = [], [], []
        for label in range(1, n_labels):  # label 0 is the background
            cls_scores = scores[n, :, label]
            ranked = _class_candidates(cls_scores, confidence_threshold, top_k)
            # More than keep_top_k survivors of one class could never make the image's best keep_top_k.
            survivors = ranked[greedy_nms(boxes[n, ranked], iou_threshold, max_keep=keep_top_k)]
            kept_anchor.append(survivors)
            kept_label.append(np.full(len(survivors), label, dtype=np.int64))
            kept_score.append(cls_scores[survivors])
        anchor = np.concatenate(kept_anchor)
        label = np.concatenate(kept_label)
        score = np.concatenate(kept_score)
        order = np.argsort(-score, kind="stable")[:keep_top_k]
        k = len(order)
        rows = nms[n, 0, :k]
        rows[:, 1] = label[order]
        rows[:, 2] = score[order]
        rows[:, 3:7] = np.clip(boxes[n, anchor[order]], 0.0, 1.0)
        keep_count[n, 0, 0, 0] = k
    return nms, keep_count


def valid_rows(nms, keep_count, image_index):
    """The keep_count valid rows [k, 7] of one image (TAO: det_out[idx].reshape(-1, 7)[:k])."""
    nms = np.asarray(nms)
    k = int(np.asarray(keep_count).reshape(-1)[image_index])
    return nms[image_index].reshape(-1, NMS_ROW)[:k]


def eval_predictions(nms, keep_count, image_index, input_width, input_height):
    """(boxes [k,4], scores [k], labels [k]) of one image in network-input pixels, for the AP evaluator.

    The multiplication stays in float32 like TAO's trt_output_process_fn (evaluate.py), so the rounding that the
    evaluator applies next sees the same values.
    """
    det = valid_rows(nms, keep_count, image_index).astype(np.float32)
    scale = np.array([input_width, input_height, input_width, input_height], dtype=np.float32)
    return det[:, 3:7] * scale, det[:, 2].copy(), det[:, 1].astype(np.int64)


def parse_nms_output(nms, keep_count, image_index, width, height, classes, threshold):
    """Detections of one image as [{"label", "confidence", "box": [x1, y1, x2, y2]}] in original-image pixels.

    width/height are the original image size (plain resize, so x scales by width and y by height). Detections with
    confidence >= threshold are kept, as TAO's inferencer skips only `confidence < threshold`; labels outside
    1..len(classes) are skipped like TAO deploy's draw_bbox does. Rows stay in the plugin's order (best first).
    """
    detections = []
    for row in valid_rows(nms, keep_count, image_index):
        label = int(row[1])
        confidence = float(row[2])
        if confidence < threshold or not 1 <= label <= len(classes):
            continue
        x1, y1, x2, y2 = (float(v) for v in row[3:7])
        detections.append({
            "label": classes[label - 1],
            "confidence": confidence,
            "box": [x1 * width, y1 * height, x2 * width, y2 * height],
        })
    return detections


# -- the NMS plugin node -----------------------------------------------------------------------------------------
NMS_PLUGIN = "NMSDynamic_TRT"  # TAO 5's ONNX SSD export; NMS_TRT is its implicit-batch twin (TAO 3/4 UFF)
NMS_PLUGIN_NODE = "NMS"
NMS_OUTPUTS = ("NMS", "NMS_1")  # detections, keep count
PLUGIN_INPUTS = ("anchor_data", "loc_data", "conf_data")  # TAO's names and order
# TensorRT's creator fields (nmsPlugin.cpp, NMSBasePluginCreator) and the ONNX attribute type each needs.
PLUGIN_FIELD_TYPES = {"shareLocation": int, "varianceEncodedInTarget": int, "backgroundLabelId": int,
                      "numClasses": int, "topK": int, "keepTopK": int, "confidenceThreshold": float,
                      "nmsThreshold": float, "inputOrder": list, "confSigmoid": int, "isNormalized": int,
                      "codeType": int, "scoreBits": int, "isBatchAgnostic": int}
# What TAO's SSD export fixes, and what the reference semantics above (and the host's decoding of the plugin's
# inputs) implement; a graph with other values is not TAO's layout.
TAO_FIXED_ATTRIBUTES = {"shareLocation": 1, "varianceEncodedInTarget": 0, "backgroundLabelId": 0, "codeType": 1,
                        "confSigmoid": 0, "isNormalized": 1, "inputOrder": [1, 2, 0]}


def plugin_attributes(nms, num_classes, score_bits=0):
    """The NMS plugin node's attributes for model.json `nms` settings (confidence_threshold, iou_threshold, top_k
    = the plugin's topK, keep_top_k) and `num_classes` object classes (+1 for the background)."""
    return dict(TAO_FIXED_ATTRIBUTES, numClasses=int(num_classes) + 1,
                confidenceThreshold=float(nms["confidence_threshold"]), nmsThreshold=float(nms["iou_threshold"]),
                topK=int(nms["top_k"]), keepTopK=int(nms["keep_top_k"]), scoreBits=int(score_bits))


def attribute_problems(attrs, nms, num_classes):
    """How a plugin node's attributes differ from TAO's layout and from the `nms` settings ([] when they agree).

    Thresholds are compared as float32, the type TensorRT reads them in. Attribute types are checked too: the
    ONNX parser passes an attribute in its own type, and the creator asserts kINT32 / kFLOAT32 per field."""
    problems = []
    for name, value in sorted(attrs.items()):
        want = PLUGIN_FIELD_TYPES.get(name)
        if want is None:
            problems.append(f"{name}: not a field of {NMS_PLUGIN} (the parser ignores it)")
        elif want is list:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
                problems.append(f"{name}: must be a list of integers, got {value!r}")
        elif want is float and not isinstance(value, float) or want is int and not (
                isinstance(value, int) and not isinstance(value, bool)):
            problems.append(f"{name}: must be {'a float' if want is float else 'an integer'}, got {value!r}")
    expected = plugin_attributes(nms, num_classes, attrs.get("scoreBits", 0))
    for name, want in expected.items():
        have = attrs.get(name)
        if isinstance(want, float):
            same = isinstance(have, (int, float)) and np.float32(have) == np.float32(want)
        else:
            same = (list(have) if isinstance(have, (list, tuple)) else have) == want
        if not same:
            problems.append(f"{name} is {have!r}, expected {want!r}")
    if "keepTopK" in attrs and "topK" in attrs and attrs["keepTopK"] > attrs["topK"]:
        problems.append(f"keepTopK {attrs['keepTopK']} > topK {attrs['topK']}: the plugin writes no output then")
    return problems
