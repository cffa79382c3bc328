"""Anchor boxes exactly as TAO's AnchorBoxes layer and SSDInputEncoder make them (cv/ssd/layers/anchor_box_layer.py).

For layer k with scale s_k: size = min(H, W); aspect ratio 1 gives an s_k*size square (and, with two_boxes_for_ar1,
a sqrt(s_k*s_{k+1})*size square); other ratios give w = s_k*size*sqrt(ar), h = s_k*size/sqrt(ar). Centres sit on a
grid with step = image / feature map (or the spec's steps) starting at offset*step (offset 0.5 by default). Order is
(row, column, box) flattened, matching the heads' Permute+Reshape; coordinates are corners normalised to [0, 1].
"""

import numpy as np


def boxes_per_layer(aspect_ratios, two_boxes_for_ar1):
    return [len(ars) + (1 if two_boxes_for_ar1 and any(a == 1 for a in ars) else 0) for ars in aspect_ratios]


def _pair(value, default):
    if value is None:
        return default, default
    if isinstance(value, (list, tuple)):
        return float(value[0]), float(value[1])
    return float(value), float(value)


def layer_anchors(img_h, img_w, fmap_h, fmap_w, aspect_ratios, this_scale, next_scale, two_boxes_for_ar1,
                  step=None, offset=None, clip_boxes=False):
    size = min(img_h, img_w)
    wh = []
    for ar in aspect_ratios:
        if ar == 1:
            wh.append((this_scale * size, this_scale * size))
            if two_boxes_for_ar1:
                s = np.sqrt(this_scale * next_scale) * size
                wh.append((s, s))
        else:
            wh.append((this_scale * size * np.sqrt(ar), this_scale * size / np.sqrt(ar)))
    wh = np.array(wh, dtype=np.float64)
    step_h, step_w = _pair(step, None)
    if step_h is None:
        step_h, step_w = img_h / fmap_h, img_w / fmap_w
    off_h, off_w = _pair(offset, 0.5)
    cy = np.linspace(off_h * step_h, (off_h + fmap_h - 1) * step_h, fmap_h)
    cx = np.linspace(off_w * step_w, (off_w + fmap_w - 1) * step_w, fmap_w)
    cx_grid, cy_grid = np.meshgrid(cx, cy)
    n = len(wh)
    boxes = np.empty((fmap_h, fmap_w, n, 4))
    boxes[..., 0] = cx_grid[..., None] - wh[:, 0] / 2
    boxes[..., 1] = cy_grid[..., None] - wh[:, 1] / 2
    boxes[..., 2] = cx_grid[..., None] + wh[:, 0] / 2
    boxes[..., 3] = cy_grid[..., None] + wh[:, 1] / 2
    if clip_boxes:  # TAO clips to [0, size-1] in pixels before normalising
        boxes[..., [0, 2]] = np.where(boxes[..., [0, 2]] >= img_w, img_w - 1, np.maximum(boxes[..., [0, 2]], 0))
        boxes[..., [1, 3]] = np.where(boxes[..., [1, 3]] >= img_h, img_h - 1, np.maximum(boxes[..., [1, 3]], 0))
    boxes[..., [0, 2]] /= img_w
    boxes[..., [1, 3]] /= img_h
    return boxes.reshape(-1, 4)


def generate_anchors(img_h, img_w, fmap_sizes, aspect_ratios, scales, two_boxes_for_ar1, steps=None, offsets=None,
                     clip_boxes=False):
    """All anchors, (A, 4) float32 corners normalised to the network input."""
    per_layer = []
    for k, (fh, fw) in enumerate(fmap_sizes):
        per_layer.append(layer_anchors(img_h, img_w, fh, fw, aspect_ratios[k], scales[k], scales[k + 1],
                                       two_boxes_for_ar1, None if steps is None else steps[k],
                                       None if offsets is None else offsets[k], clip_boxes))
    return np.concatenate(per_layer).astype(np.float32)
