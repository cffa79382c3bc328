"""Ground-truth matching, box encoding and decoding with TAO's SSD semantics (cv/ssd/box_coder/ssd_input_encoder.py).

Matching per image: (1) greedy bipartite: repeatedly take the highest remaining (GT, anchor) IoU so every GT box
owns its best anchor; (2) 'multi': every other anchor whose best IoU with any GT is >= pos_iou_thresh takes that GT;
(3) anchors still unmatched whose best IoU is >= neg_iou_thresh become neutral (ignored by the loss); the rest are
background. Offsets are centroid deltas over anchor size and variances, log size ratios over variances.
Everything is batched torch so it runs on the training device; GT boxes are normalised corners.
"""

import torch

IGNORE = -1  # label for neutral anchors
# Largest log size ratio decode accepts (torchvision's bbox_xform_clip): untrained or fp16 outputs can otherwise
# overflow exp() into inf boxes that poison NMS.
MAX_LOG_RATIO = 4.135166556742356  # log(1000 / 16)


def box_iou(a, b):
    """IoU of (..., N, 4) and (..., M, 4) corner boxes -> (..., N, M)."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter).clamp(min=1e-12)


def match(anchors, gt_boxes, gt_labels, gt_valid, pos_iou_thresh=0.5, neg_iou_thresh=0.5):
    """anchors (A,4); gt_boxes (B,G,4); gt_labels (B,G) 1-based; gt_valid (B,G) bool.

    Returns labels (B,A) with 0 background, IGNORE neutral, else the class id; and matched GT boxes (B,A,4).
    """
    B, G = gt_labels.shape
    A = anchors.shape[0]
    iou = box_iou(gt_boxes, anchors.expand(B, A, 4))  # (B, G, A)
    iou = torch.where(gt_valid[..., None], iou, torch.full_like(iou, -1.0))
    owner = torch.full((B, A), -1, dtype=torch.long, device=anchors.device)
    greedy = iou.clone()
    batch = torch.arange(B, device=anchors.device)
    n_gt = gt_valid.sum(1)
    for step in range(G):  # greedy bipartite matching, one GT per image per step
        best = greedy.reshape(B, -1).argmax(1)
        g, a = best // A, best % A
        take = step < n_gt
        owner[batch[take], a[take]] = g[take]
        greedy[batch[take], g[take], :] = -2.0  # this GT is done
        greedy[batch[take], :, a[take]] = -2.0  # this anchor is taken
    return finish_matching(iou, owner, gt_labels, gt_boxes, pos_iou_thresh, neg_iou_thresh)


def finish_matching(iou, owner, gt_labels, gt_boxes, pos_iou_thresh, neg_iou_thresh):
    """After bipartite matching (`owner`: matched GT per anchor, -1 none): TAO's multi matching and neutral test.
    TAO zeroes the columns of bipartite-matched anchors first. Returns (labels, matched GT boxes) per anchor."""
    B, G, A = iou.shape
    taken = owner >= 0
    rest = iou.masked_fill(taken[:, None, :], 0.0)
    best_iou, best_gt = rest.max(1) if G else (torch.zeros(B, A, device=iou.device),) * 2
    multi = (~taken) & (best_iou >= pos_iou_thresh)
    owner = torch.where(multi, best_gt.long(), owner)
    positive = owner >= 0
    safe_owner = owner.clamp(min=0)
    labels = torch.where(positive, torch.gather(gt_labels, 1, safe_owner), torch.zeros_like(owner))
    neutral = (~positive) & (best_iou >= neg_iou_thresh)
    labels = labels.masked_fill(neutral, IGNORE)
    matched = torch.gather(gt_boxes, 1, safe_owner[..., None].expand(B, A, 4))
    return labels, matched


def _centroids(boxes):
    wh = boxes[..., 2:] - boxes[..., :2]
    return boxes[..., :2] + wh / 2, wh


def encode(matched, anchors, variances):
    """Offsets of matched GT boxes relative to anchors (TAO 'centroids' coding)."""
    v = torch.as_tensor(variances, dtype=matched.dtype, device=matched.device)
    gc, gwh = _centroids(matched)
    ac, awh = _centroids(anchors)
    gwh = gwh.clamp(min=1e-8)  # background rows hold arbitrary boxes; keep log finite
    return torch.cat([(gc - ac) / awh / v[:2], torch.log(gwh / awh) / v[2:]], -1)


def decode(offsets, anchors, variances):
    """Inverse of encode: (B,A,4) offsets -> (B,A,4) normalised corners. Export-safe ops only."""
    v = variances if torch.is_tensor(variances) else torch.as_tensor(variances, dtype=offsets.dtype,
                                                                      device=offsets.device)
    ac, awh = _centroids(anchors)
    c = offsets[..., :2] * v[:2] * awh + ac
    wh = torch.exp((offsets[..., 2:] * v[2:]).clamp(max=MAX_LOG_RATIO)) * awh
    return torch.cat([c - wh / 2, c + wh / 2], -1)
