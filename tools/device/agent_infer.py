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


def preprocess(image_bgr, input_spec):
    """One BGR uint8 image -> float32 [1, C, H, W] exactly as TAO SSD ("caffe" mode) expects.

    Plain resize (no letterbox), per-channel mean subtraction in the model's channel order, then `scale`
    (1.0 for TAO: no scaling).
    """
    if image_bgr is None or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise AgentError("expected a 3-channel BGR image")
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


def iou_one_to_many(box, boxes):
    """IoU of one [4] box with [M, 4] boxes, normalised coordinates (no +1 on widths, as the plugin does)."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def greedy_nms(boxes, scores, iou_threshold):
    """Indices kept, highest score first; a box with IoU > threshold to a kept one is suppressed."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[best], boxes[rest]) <= iou_threshold]
    return keep


def decoded_to_nms(boxes, scores, nms):
    """`decoded` outputs -> (NMS [N,1,K,7] float32, NMS_1 [N,1,1,1] int32) with K = nms['keep_top_k']."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise AgentError("decoded outputs must be boxes [N, A, 4] and scores [N, A, C+1]; got {} and {}".format(
            list(boxes.shape), list(scores.shape)))
    batch, keep_top_k = boxes.shape[0], int(nms["keep_top_k"])
    out = np.zeros((batch, 1, keep_top_k, 7), dtype=np.float32)
    out[:, 0, :, 1] = -1  # padding rows, as the plugin writes them
    counts = np.zeros((batch, 1, 1, 1), dtype=np.int32)
    for n in range(batch):
        out[n, 0, :, 0] = n
        found = []  # (score, label, box)
        for label in range(1, scores.shape[2]):
            cls = scores[n, :, label]
            candidates = np.nonzero(cls > nms["confidence_threshold"])[0]
            if candidates.size == 0:
                continue
            candidates = candidates[np.argsort(-cls[candidates], kind="stable")[:int(nms["top_k"])]]
            for i in greedy_nms(boxes[n, candidates], cls[candidates], nms["iou_threshold"]):
                found.append((float(cls[candidates[i]]), label, boxes[n, candidates[i]]))
        found.sort(key=lambda item: -item[0])  # stable: ties keep class then anchor order
        found = found[:keep_top_k]
        for row, (score, label, box) in enumerate(found):
            out[n, 0, row, 1:3] = (label, score)
            out[n, 0, row, 3:7] = box
        counts[n, 0, 0, 0] = len(found)
    return out, counts


def parse_nms(nms_out, keep_count, image_index, labels, width, height):
    """The one parser: rows of image `image_index` -> [{label, confidence, box (pixels of the original)}]."""
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
    detections = []
    for row in rows[:count]:
        label = int(round(float(row[1])))
        if label <= 0:  # background or padding
            continue
        if label >= len(labels):
            raise AgentError("NMS label id {} but the model has {} classes".format(label, len(labels) - 1))
        # The plugin can emit coordinates a hair outside [0, 1]; off-image pixels are of no use to anyone.
        x1, y1, x2, y2 = np.clip(row[3:7].astype(np.float64), 0.0, 1.0)
        detections.append({"label": labels[label], "confidence": round(float(row[2]), 6),
                           "box": [round(x1 * width, 2), round(y1 * height, 2),
                                   round(x2 * width, 2), round(y2 * height, 2)]})
    return detections


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
