"""Preprocessing, NMS and the one parser of TAO's NMS output layout, shared by every runtime on the device.

Both output kinds of docs/model-package.md end in the same place: a `tao_nms` engine emits the NMS plugin's
layout itself, and a `decoded` model's boxes/scores go through `decoded_to_nms` below, which writes exactly that
layout. `parse_nms` then turns it into detections in original-image pixels, so the TensorRT and ONNX Runtime
paths cannot drift apart in how they read results.

TAO NMS layout (NMS_TRT / NMSDynamic_TRT, isNormalized=1, shareLocation=1):
  NMS    float32 [N, 1, keep_top_k, 7], rows [image_id, label, confidence, xmin, ymin, xmax, ymax] in [0, 1]
  NMS_1  int32   [N, 1, 1, 1], the number of valid rows per image; the plugin pads the rest with label -1.
"""

import cv2
import numpy as np

from agent_common import AgentError


def preprocess(image_bgr, input_spec, out=None):
    """One BGR uint8 image -> float32 [1, C, H, W] exactly as TAO SSD ("caffe" mode) expects.

    Plain resize (no letterbox), per-channel mean subtraction in the model's channel order, then `scale`
    (1.0 for TAO: no scaling). `out`, the array an earlier call returned, is written over when its shape fits
    (the detect loop keeps one per frame in flight instead of allocating one per frame).
    """
    if image_bgr is None or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise AgentError("expected a 3-channel BGR image")
    width, height = int(input_spec["width"]), int(input_spec["height"])
    resized = cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    if int(input_spec["channels"]) == 1:
        planes = [cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)]
    elif input_spec.get("channel_order", "BGR") == "RGB":
        planes = [resized[:, :, 2], resized[:, :, 1], resized[:, :, 0]]
    else:
        planes = [resized[:, :, 0], resized[:, :, 1], resized[:, :, 2]]
    shape = (1, len(planes), height, width)
    if out is None or out.shape != shape or out.dtype != np.float32 or not out.flags["C_CONTIGUOUS"]:
        out = np.empty(shape, np.float32)
    mean = np.asarray(input_spec["mean"], dtype=np.float32).reshape(-1)
    scale = np.float32(input_spec["scale"])
    for c, plane in enumerate(planes):
        # dtype pins the float32 loop: numpy 1.19 would otherwise pick float16 for uint8 - float32 scalar.
        np.subtract(plane, mean[c], out=out[0, c], dtype=np.float32)
        if scale != 1:  # x * 1 is x: skipping it changes no bit
            np.multiply(out[0, c], scale, out=out[0, c])
    return out


def _suppression_matrix(rows, cols, iou_threshold):
    """[J, I] bool: IoU(rows[j], cols[i]) > iou_threshold in the sense of the one-box-against-the-rest loop
    (tests/device/test_infer.py keeps it): normalised float32 boxes, no +1 on widths (as the plugin), IoU 0 where
    the union is not positive, and "suppress" meaning "not iou <= threshold". Row j holds, bit for bit, what that
    loop computes for box rows[j]: the same float32 operations in the same order (max, min, a product of two sides
    and the sum of two areas do not depend on operand order), done in place on three J x I buffers."""
    rx1, ry1, rx2, ry2 = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    cx1, cy1, cx2, cy2 = cols[:, 0], cols[:, 1], cols[:, 2], cols[:, 3]
    a = np.maximum.outer(rx1, cx1)
    b = np.maximum.outer(ry1, cy1)
    inter = np.minimum.outer(rx2, cx2)
    inter -= a
    np.clip(inter, 0, None, out=inter)
    np.minimum.outer(ry2, cy2, out=a)
    a -= b
    np.clip(a, 0, None, out=a)
    inter *= a
    union = np.add.outer((rx2 - rx1) * (ry2 - ry1), (cx2 - cx1) * (cy2 - cy1), out=b)
    union -= inter
    ratio = np.maximum(union, 1e-12, out=a)
    np.divide(inter, ratio, out=ratio)
    suppress = ~(ratio <= iou_threshold)
    positive = union > 0
    if (np.zeros(1, np.float32) <= iou_threshold)[0]:  # where the union is not positive the loop compares 0.0
        suppress &= positive
    else:
        suppress |= ~positive
    return suppress


NMS_MIN_BLOCK = 32  # candidates examined at least per step of greedy_keep


def greedy_keep(ranked_boxes, iou_threshold, limit=None):
    """Positions kept by greedy NMS of boxes already in rank order (best first): a box whose IoU with a kept,
    better-ranked box is > iou_threshold is suppressed. At most `limit`, best first.

    The result of the one-by-one loop (pick the best left, drop what it overlaps, repeat), in blocks of rank order:
    a block first loses what the boxes kept so far suppress (one matrix), then is walked through in order, and
    within it only boxes that overlap another one can suppress anything. A block is as long as the boxes still
    wanted, so that with few suppressions the first `limit` candidates are the only ones compared.
    """
    count = len(ranked_boxes)
    limit = count if limit is None else max(0, min(int(limit), count))
    kept = []
    start, found = 0, 0
    while start < count and found < limit:
        stop = min(count, start + max(limit - found, NMS_MIN_BLOCK))
        block = ranked_boxes[start:stop]
        if found:
            alive = ~_suppression_matrix(ranked_boxes[np.concatenate(kept)], block, iou_threshold).any(axis=0)
        else:
            alive = np.ones(stop - start, dtype=bool)
        inner = _suppression_matrix(block, block, iou_threshold)
        # Rows with an overlap besides the box itself: the only ones that can suppress a later box.
        for j in np.flatnonzero(alive & (np.count_nonzero(inner, axis=1) > inner.diagonal())).tolist():
            if alive[j]:
                alive[j + 1:] &= ~inner[j, j + 1:]
        kept.append(start + np.flatnonzero(alive))
        found += kept[-1].size
        start = stop
    return np.concatenate(kept)[:limit] if kept else np.zeros(0, dtype=np.intp)


def greedy_nms(boxes, scores, iou_threshold):
    """Indices kept, highest score first (ties in index order); IoU > threshold to a kept one suppresses."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return order[greedy_keep(np.asarray(boxes)[order], iou_threshold)].tolist()


def rank_top_k(anchors, values, top_k):
    """The first `top_k` of `anchors` by descending value, ties in anchor order: the plugin's stable sort cut at
    top_k (`sorted(...)[:top_k]`), without sorting every candidate: a partition finds the top_k-th value first."""
    if 0 < top_k < anchors.size:
        cut = np.partition(values, anchors.size - top_k)[anchors.size - top_k]  # the top_k-th largest
        above = np.flatnonzero(values > cut)
        ties = np.flatnonzero(values == cut)[:top_k - above.size]
        pick = np.sort(np.concatenate([above, ties]))  # back in anchor order, so the stable sort breaks ties alike
        anchors, values = anchors[pick], values[pick]
    return anchors[np.argsort(-values, kind="stable")[:top_k]]


def decoded_to_nms(boxes, scores, nms):
    """`decoded` outputs -> (NMS [N,1,K,7] float32, NMS_1 [N,1,1,1] int32) with K = nms['keep_top_k'].

    Per image and class: candidates scoring > confidence_threshold, the best top_k of them, greedy NMS; then the
    survivors of all classes by score (stable: ties keep class, then rank order), the first keep_top_k.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise AgentError("decoded outputs must be boxes [N, A, 4] and scores [N, A, C+1]; got {} and {}".format(
            list(boxes.shape), list(scores.shape)))
    batch, keep_top_k, top_k = boxes.shape[0], int(nms["keep_top_k"]), int(nms["top_k"])
    threshold, iou_threshold = nms["confidence_threshold"], nms["iou_threshold"]
    out = np.zeros((batch, 1, keep_top_k, 7), dtype=np.float32)
    out[:, 0, :, 0] = np.arange(batch, dtype=np.float32)[:, None]
    out[:, 0, :, 1] = -1  # padding rows, as the plugin writes them
    counts = np.zeros((batch, 1, 1, 1), dtype=np.int32)
    for n in range(batch):
        kept_scores, kept_labels, kept_anchors = [], [], []
        for label in range(1, scores.shape[2]):
            cls = scores[n, :, label]
            anchors = np.flatnonzero(cls > threshold)
            if anchors.size == 0:
                continue
            anchors = rank_top_k(anchors, cls[anchors], top_k)
            # A class's survivors past keep_top_k rank below keep_top_k of its own: never among the first overall.
            anchors = anchors[greedy_keep(boxes[n, anchors], iou_threshold, keep_top_k)]
            kept_scores.append(cls[anchors])
            kept_labels.append(np.full(anchors.size, label, dtype=np.float32))
            kept_anchors.append(anchors)
        if not kept_scores:
            continue
        found = np.concatenate(kept_scores)
        order = np.argsort(-found, kind="stable")[:keep_top_k]
        rows = out[n, 0, :order.size]
        rows[:, 1] = np.concatenate(kept_labels)[order]
        rows[:, 2] = found[order]
        rows[:, 3:7] = boxes[n, np.concatenate(kept_anchors)[order]]
        counts[n, 0, 0, 0] = order.size
    return out, counts


def parse_nms(nms_out, keep_count, image_index, labels, width, height, min_confidence=None):
    """The one parser: rows of image `image_index` -> [{label, confidence, box (pixels of the original)}], the
    confidence rounded to 6 decimals and the box to 2; with min_confidence, only rows whose (rounded)
    confidence is at least that."""
    nms_out = np.asarray(nms_out)
    keep_count = np.asarray(keep_count)
    if nms_out.ndim != 4 or nms_out.shape[1] != 1 or nms_out.shape[3] != 7:
        raise AgentError("NMS output must be [N, 1, keep_top_k, 7]; got {}".format(list(nms_out.shape)))
    if keep_count.size != nms_out.shape[0] or not np.issubdtype(keep_count.dtype, np.integer):
        raise AgentError("NMS_1 must be one integer count per image; got {} {}".format(
            keep_count.dtype, list(keep_count.shape)))
    count = int(keep_count.reshape(-1)[image_index])
    rows = nms_out[image_index, 0]
    if not 0 <= count <= rows.shape[0]:
        raise AgentError("NMS_1 says {} detections but NMS holds {} rows".format(count, rows.shape[0]))
    rows = rows[:count]
    label_values = rows[:, 1].astype(np.float64)
    if not np.isfinite(label_values).all():
        raise AgentError("NMS label id {} is not a class number".format(
            label_values[~np.isfinite(label_values)][0]))
    ids = np.round(label_values)  # half to even, as round() does
    real = ids > 0  # the rest is background or padding
    bad = np.flatnonzero(real & (ids >= len(labels)))
    if bad.size:
        raise AgentError("NMS label id {} but the model has {} classes".format(int(ids[bad[0]]), len(labels) - 1))
    confidences = [round(c, 6) for c in rows[:, 2].astype(np.float64).tolist()]
    if min_confidence is not None:
        real &= np.array([c >= min_confidence for c in confidences], dtype=bool).reshape(-1)
    picked = np.flatnonzero(real)
    # The plugin can emit coordinates a hair outside [0, 1]; off-image pixels are of no use to anyone.
    corners = np.clip(rows[picked, 3:7].astype(np.float64), 0.0, 1.0)
    pixels = np.round(corners * np.array([width, height, width, height], dtype=np.float64), 2).tolist()
    names = ids[picked].astype(np.intp).tolist()
    return [{"label": labels[name], "confidence": confidences[i], "box": box}
            for i, name, box in zip(picked.tolist(), names, pixels)]


def box_iou(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def compare(expected, found, iou_threshold, score_threshold):
    """The rule of docs/model-package.md: every expected detection above score_threshold is matched by a device
    detection of the same label with IoU >= iou_threshold, and no unmatched device detection scores above
    score_threshold + 0.1. Greedy, highest expected confidence first, each device detection used once."""
    used = set()
    missing = []
    for exp in sorted(expected, key=lambda d: -d["confidence"]):
        best, best_iou = None, iou_threshold
        for i, det in enumerate(found):
            if i in used or det["label"] != exp["label"]:
                continue
            iou = box_iou(exp["box"], det["box"])
            if iou >= best_iou:
                best, best_iou = i, iou
        if best is not None:
            used.add(best)
        elif exp["confidence"] > score_threshold:
            missing.append(exp)
    extra = [d for i, d in enumerate(found) if i not in used and d["confidence"] > score_threshold + 0.1]
    return {"missing": missing, "extra": extra, "matched": len(used)}


class OnnxRuntimeModel(object):
    """ONNX Runtime (CPU) for devices without TensorRT; `decoded` packages only (TAO's NMS is a TRT plugin)."""

    name = "onnxruntime"

    def __init__(self, model_path, meta):
        import onnxruntime
        if meta["output"]["kind"] != "decoded":
            raise AgentError("output kind {} needs TensorRT (its NMS is a TensorRT plugin)".format(
                meta["output"]["kind"]))
        self.version = onnxruntime.__version__
        options = onnxruntime.SessionOptions()
        # The smoke test runs next to the device's live application: ONNX Runtime's idle worker threads would
        # otherwise busy-wait through every preprocessing and NMS step, taking CPU the camera pipeline needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types per version
            raise AgentError("onnxruntime cannot load the model: {}".format(str(e).splitlines()[0]),
                             model_path) from None
        self.input_name = meta["input"]["name"]
        names = [i.name for i in self.session.get_inputs()]
        if self.input_name not in names:
            raise AgentError("model has no input {!r} (inputs: {})".format(self.input_name, names), model_path)
        self.outputs = [meta["output"]["boxes"], meta["output"]["scores"]]
        self.nms = meta["nms"]

    def infer(self, batch):
        return self.postprocess(self.run_raw(batch))

    def run_raw(self, batch):
        """The graph alone: decoded boxes and scores (`detect` times it apart from the NMS)."""
        return self.session.run(self.outputs, {self.input_name: batch})

    def postprocess(self, raw):
        """NMS on the host CPU into TAO's NMS-plugin layout."""
        boxes, scores = raw
        return decoded_to_nms(boxes, scores, self.nms)

    def close(self):
        self.session = None
