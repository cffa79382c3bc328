"""Raw KITTI ground truth for validation, `evaluate` and training from folders, read the way TAO's SSD data sequence
reads it.

Sources (NVIDIA/tao_tensorflow1_backend, TAO 5):
- `nvidia_tao_tf1/cv/common/dataio/detection_data_sequence.py` and `ssd/builders/data_sequence.py`: classes are
  `sorted({value.lower()})` of target_class_mapping with ids 1..N; keys are lowercased; a label file is
  `<label_dir>/<image stem>.txt`; a line with fewer than 9 tokens is ignored; token 0 (lowercased) must be a mapping
  key or the line is skipped; difficult = `int(token 2) != 0` (occlusion); the box is tokens 4..7 in pixels.
- Validation resize (`ssd/builders/data_generator/object_detection_2d_geometric_ops.py`, `Resize`): the box is
  scaled to output_width x output_height and rounded with numpy (half to even); then `SSDDataSequence.
  _filter_invalid_labels` clips x to [0, W-1], y to [0, H-1] and drops boxes whose width or height is <= 1e-3.
  Difficult boxes are kept for evaluation (only training may drop them). That is `to_network_input`.

Deliberate differences, all louder than TAO and never changing a metric TAO would compute:
- TAO matches image extensions case-sensitively (.jpg .jpeg .png, also .bmp .gif) and silently skips an image whose
  label file is missing; here .jpg/.jpeg/.png match in any case (like taoflow's converters) and a missing label
  file is a DataError unless missing_labels="skip".
- TAO crashes with a bare ValueError on a bad occlusion or coordinate token; here it is a DataError with file:line.
- TAO silently ignores non-empty lines with 1 to 8 tokens; here they are a DataError (a truncated label line).
- Every image gets the data stage's header check (taoflow.datasets.images.image_size: a JPEG or PNG, not
  truncated, at most MAX_IMAGE_SIDE pixels a side), so a file OpenCV would fail on later is a DataError naming it
  before any work.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...datasets import images as imgs
from ...datasets.kitti import parse_number, read_text_lines
from ...errors import DataError

MIN_TOKENS = 9  # TAO reads tokens 0, 2 and 4..7 and needs at least 9 of them
MIN_BOX_SIZE = 1e-3  # SSDDataSequence._filter_invalid_labels
MISSING_LABEL_CHOICES = ("error", "skip")


@dataclass
class EvalSample:
    """One validation image: ground truth in original-image pixels."""

    image_path: Path
    label_path: Path
    width: int
    height: int
    # float64 [K, 4] xmin, ymin, xmax, ymax: TAO parses to float64 and rounds after scaling, where a float32 copy
    # could flip a half-pixel rounding.
    boxes: np.ndarray
    labels: np.ndarray  # int64 [K], 1-based class ids
    difficult: np.ndarray  # bool [K], occlusion != 0


def class_ids(target_class_mapping):
    """(classes, {source name: class id}) with TAO's lowercasing and sorting; ids are 1-based."""
    if not target_class_mapping:
        raise DataError("target_class_mapping is empty: no class to evaluate")
    classes = sorted({str(v).lower() for v in target_class_mapping.values()})
    ids = {c: i + 1 for i, c in enumerate(classes)}
    return classes, {str(k).lower(): ids[str(v).lower()] for k, v in target_class_mapping.items()}


def parse_eval_label(label_path, source_to_id):
    """Return (boxes float64 [K,4], labels int64 [K], difficult bool [K]) of one KITTI label file."""
    boxes, labels, difficult = [], [], []
    for lineno, text in read_text_lines(label_path):
        tokens = text.split()
        if not tokens:
            continue
        if len(tokens) < MIN_TOKENS:
            raise DataError(f"expected at least {MIN_TOKENS} space-separated KITTI fields, found {len(tokens)}",
                            path=label_path, line=lineno)
        class_id = source_to_id.get(tokens[0].lower())
        if class_id is None:
            continue  # TAO skips unmapped classes before reading any number
        try:
            occlusion = int(tokens[2])  # TAO uses int(), so "0.0" is not an occlusion value
        except ValueError:
            raise DataError(f"field 3 (occluded) must be an integer, got {tokens[2]!r}",
                            path=label_path, line=lineno) from None
        names = ("bbox_left", "bbox_top", "bbox_right", "bbox_bottom")
        box = [parse_number(tok, f"field {i + 5} ({name})", label_path, lineno)
               for i, (tok, name) in enumerate(zip(tokens[4:8], names))]
        boxes.append(box)
        labels.append(class_id)
        difficult.append(occlusion != 0)
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
            np.asarray(difficult, dtype=bool))


def list_eval_images(image_dir, what="validation"):
    """Image paths of a directory, sorted by name; DataError when the directory is missing or has no image."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"{what} image directory not found", path=image_dir)
    # Two files with one stem (a.jpg, a.png) both stay, each evaluated against a.txt, as in TAO.
    paths = sorted(p for p in image_dir.iterdir()
                   if p.is_file() and not p.name.startswith(".") and imgs.is_image_name(p.name))
    if not paths:
        raise DataError(f"no images ({', '.join(imgs.IMAGE_EXTENSIONS)}, any case) in the {what} image directory",
                        path=image_dir)
    return paths


def load_kitti_eval_data(image_dir, label_dir, target_class_mapping, missing_labels="error", what="validation"):
    """Return (classes, [EvalSample]) for one data source (image_directory_path, label_directory_path).

    what ("validation" or "training") names the source in errors.
    """
    if missing_labels not in MISSING_LABEL_CHOICES:
        raise ValueError(f"missing_labels must be one of {', '.join(MISSING_LABEL_CHOICES)}, got {missing_labels!r}")
    classes, source_to_id = class_ids(target_class_mapping)
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise DataError(f"{what} label directory not found", path=label_dir)
    samples = []
    for image_path in list_eval_images(image_dir, what):
        label_path = label_dir / f"{image_path.stem}{imgs.LABEL_EXTENSION}"
        if not label_path.is_file():
            if missing_labels == "skip":
                continue  # TAO's _add_source keeps only images with a label file
            raise DataError(f"image has no label file (expected {label_path})", path=image_path)
        width, height = imgs.image_size(image_path, imgs.MAX_IMAGE_SIDE)
        boxes, labels, difficult = parse_eval_label(label_path, source_to_id)
        samples.append(EvalSample(image_path, label_path, width, height, boxes, labels, difficult))
    if not samples:
        raise DataError(f"no {what} image has a label file", path=image_dir)
    return classes, samples


def to_network_input(sample, output_width, output_height):
    """Ground truth of a sample in network-input pixels as TAO evaluates it: (boxes float64 [M,4], labels, difficult).

    Scale and round like Resize, clip to [0, W-1] x [0, H-1], drop boxes with width or height <= 1e-3.
    """
    boxes = np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = np.round(boxes[:, [0, 2]] * (output_width / sample.width))
    boxes[:, [1, 3]] = np.round(boxes[:, [1, 3]] * (output_height / sample.height))
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, output_width - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, output_height - 1)
    keep = (boxes[:, 2] - boxes[:, 0] > MIN_BOX_SIZE) & (boxes[:, 3] - boxes[:, 1] > MIN_BOX_SIZE)
    return boxes[keep], np.asarray(sample.labels)[keep], np.asarray(sample.difficult, dtype=bool)[keep]
