"""Inference outputs laid out as TAO's SSD `inference` writes them: KITTI label lines and annotated images.

Sources:
- `tao model ssd inference` (TF1: `nvidia_tao_tf1/cv/ssd/scripts/inference.py`, `cv/common/inferencer/inferencer.py`):
  `<results_dir>/labels/<stem>.txt` and `<results_dir>/images_annotated/<file name>` for every input image (an
  empty label file when nothing is detected); only detections with confidence >= the `-t` threshold (default 0.3)
  are written or drawn; a line is `<class> 0 0 0 x1 y1 x2 y2 0 0 0 0 0 0 0 <conf>` with `str()` of numpy float32
  values, boxes in original-image pixels, neither rounded nor clipped. Boxes are drawn in
  ['Black', 'Red', 'Blue', 'Gold', 'Purple'][class_id % 5] with a filled label pad and "<class>: <conf:.2f>".
- `tao deploy ssd inference` (NVIDIA/tao_deploy `nvidia_tao_deploy/inferencer/base_inferencer.py` draw_bbox) writes
  the same files but `<class> 0.00 0 0.00 {x1:.3f} {y1:.3f} {x2:.3f} {y2:.3f} 0.00 ... 0.00 {conf:.3f}` after rounding
  and clipping the corners in network-input pixels; `style="deploy"` formats a line that way (the rounding and
  clipping are the caller's).

Drawing uses OpenCV instead of PIL; the colours of class ids 1..4 are TAO's (red, blue, gold, purple), and further
classes get further distinct colours instead of TAO's cycle of five, which makes class 5 black and 6 red again.
"""

import zlib
from pathlib import Path

import cv2
import numpy as np

from ...errors import TaoflowError

LABELS_DIR = "labels"
ANNOTATED_DIR = "images_annotated"
# BGR. TAO's Red, Blue, Gold, Purple first, then distinct colours for more classes.
PALETTE = (
    (0, 0, 255), (255, 0, 0), (0, 215, 255), (128, 0, 128), (0, 160, 0), (255, 255, 0),
    (0, 140, 255), (255, 0, 255), (128, 128, 0), (42, 42, 165), (0, 255, 0), (128, 0, 0),
)
STYLES = ("model", "deploy")
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.4


def _f32(value):
    # TAO formats numpy float32 values with str(): the shortest text that reads back as the same float32.
    return str(np.float32(value))


def kitti_prediction_line(cls, box, conf, style="model"):
    """One KITTI prediction line (16 fields, no newline) for box (x1, y1, x2, y2) in original-image pixels."""
    x1, y1, x2, y2 = box
    if style == "model":
        return f"{cls} 0 0 0 {_f32(x1)} {_f32(y1)} {_f32(x2)} {_f32(y2)} 0 0 0 0 0 0 0 {_f32(conf)}"
    if style == "deploy":
        zeros = " ".join(["0.00"] * 7)
        return f"{cls} 0.00 0 0.00 {x1:.3f} {y1:.3f} {x2:.3f} {y2:.3f} {zeros} {float(conf):.3f}"
    raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")


def class_color(label, classes=None):
    """BGR colour of a class: by its id (position in `classes` + 1) when known, else by a hash of its name."""
    if classes is not None and label in classes:
        return PALETTE[list(classes).index(label) % len(PALETTE)]
    return PALETTE[zlib.crc32(str(label).encode("utf-8")) % len(PALETTE)]


def _text_color(bgr):
    # Dark text on light pads (gold, cyan, lime), white text elsewhere.
    b, g, r = bgr
    return (0, 0, 0) if 0.114 * b + 0.587 * g + 0.299 * r > 140 else (255, 255, 255)


def draw_detections(image_bgr, detections, classes=None, thickness=2):
    """Return a copy of the image with each detection's box and a "<class>: <conf:.2f>" pad at its top-left corner.

    detections: [{"label", "confidence", "box": [x1, y1, x2, y2]}] in the image's pixels (parse_nms_output).
    """
    image = np.asarray(image_bgr)
    if image.ndim == 2:
        out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        out = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim == 3 and image.shape[2] == 3:
        out = image.copy()
    else:
        raise ValueError(f"expected a grayscale, BGR or BGRA image, got shape {image.shape}")
    for det in detections:
        color = class_color(det["label"], classes)
        x1, y1, x2, y2 = (int(round(float(v))) for v in det["box"])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        text = f"{det['label']}: {float(det['confidence']):.2f}"
        (tw, th), baseline = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
        # Like TAO, the pad hangs down from the box's top-left corner, inside the box.
        cv2.rectangle(out, (x1, y1), (x1 + tw + 2, y1 + th + baseline + 2), color, cv2.FILLED)
        cv2.putText(out, text, (x1 + 1, y1 + th + 1), _FONT, _FONT_SCALE, _text_color(color), 1, cv2.LINE_AA)
    return out


def write_inference_outputs(results_dir, image_path, detections, image_bgr, classes=None, style="model"):
    """Write `labels/<stem>.txt` and `images_annotated/<file name>` for one image; return both paths.

    Every detection given is written and drawn: filter by the inference threshold first (parse_nms_output does).
    The label file is written even when empty, as TAO does.
    """
    results_dir, image_path = Path(results_dir), Path(image_path)
    labels_dir, annotated_dir = results_dir / LABELS_DIR, results_dir / ANNOTATED_DIR
    labels_dir.mkdir(parents=True, exist_ok=True)
    annotated_dir.mkdir(parents=True, exist_ok=True)

    label_path = labels_dir / f"{image_path.stem}.txt"
    lines = [kitti_prediction_line(d["label"], d["box"], d["confidence"], style) for d in detections]
    label_path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    annotated_path = annotated_dir / image_path.name
    if not cv2.imwrite(str(annotated_path), draw_detections(image_bgr, detections, classes)):
        raise TaoflowError("OpenCV could not write the annotated image (unsupported extension or unwritable "
                           "directory?)", path=annotated_path)
    return label_path, annotated_path
