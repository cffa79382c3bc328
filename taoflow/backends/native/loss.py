"""TAO's SSD loss (cv/ssd/architecture/ssd_loss.py).

Softmax cross-entropy on positives plus the hardest negatives, chosen over the whole batch: keep
min(neg_pos_ratio * n_positive, number of negatives) negatives with the largest loss. Smooth-L1 on the offsets of
positives, weighted by alpha. Total = (classification + alpha * localisation) / max(1, n_positive), which is what
TAO's per-image losses average to. Neutral anchors (label -1) contribute nothing.
"""

import torch
import torch.nn.functional as F


def ssd_loss(conf_logits, loc_pred, labels, loc_target, neg_pos_ratio=3.0, alpha=1.0):
    """Return (total, classification, localisation) scalars."""
    positives = labels > 0
    negatives = labels == 0
    ce = F.cross_entropy(conf_logits.float().reshape(-1, conf_logits.shape[-1]), labels.clamp(min=0).reshape(-1),
                         reduction="none").reshape(labels.shape)
    n_pos = positives.sum()
    pos_cls = (ce * positives).sum()
    neg_ce = (ce * negatives).reshape(-1)
    n_neg = min(int(neg_pos_ratio * n_pos.item()), int((neg_ce > 0).sum().item()))
    neg_cls = torch.topk(neg_ce, n_neg, sorted=False).values.sum() if n_neg > 0 else ce.new_zeros(())
    diff = (loc_pred.float() - loc_target).abs()
    smooth_l1 = torch.where(diff < 1.0, 0.5 * diff ** 2, diff - 0.5).sum(-1)
    loc = (smooth_l1 * positives).sum()
    norm = n_pos.clamp(min=1).float()
    cls = (pos_cls + neg_cls) / norm
    loc = loc / norm
    return cls + alpha * loc, cls, loc
