"""Architecture, anchors, matching, loss and learning rate against TAO's definitions."""

import math

import numpy as np
import pytest
import torch

from taoflow.backends.native.anchors import boxes_per_layer, generate_anchors, layer_anchors
from taoflow.backends.native.box_coder import IGNORE, decode, encode, match
from taoflow.backends.native.build import soft_start_annealing_lr
from taoflow.backends.native.loss import ssd_loss
from taoflow.backends.native.model import SSD, default_widths, feature_map_sizes
from taoflow.spec.protos import ssd_experiment_pb2

ARS = [[1.0, 2.0, 0.5, 3.0, 1 / 3]] * 6
SCALES = [0.05, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85]


def test_resnet18_300_has_taos_maps_and_11658_anchors():
    sizes = feature_map_sizes(18, 300, 300)
    assert sizes == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (2, 2)]
    nb = boxes_per_layer(ARS, True)
    assert nb == [6] * 6
    assert generate_anchors(300, 300, sizes, ARS, SCALES, True).shape == (11658, 4)
    model = SSD(18, 2, nb).eval()
    conf, loc = model(torch.zeros(1, 3, 300, 300))
    assert conf.shape == (1, 11658, 2) and loc.shape == (1, 11658, 4)
    params = sum(p.numel() for p in model.parameters())
    assert 13.0e6 < params < 13.4e6  # 13.3 M for TAO's SSD-ResNet18 at 300x300


def test_anchor_formulas_by_hand():
    # 2x2 map on a 100x100 image, scale 0.2 (next 0.3), ars [1, 2], two boxes for ar 1: 3 boxes per cell.
    a = layer_anchors(100, 100, 2, 2, [1.0, 2.0], 0.2, 0.3, True)
    assert a.shape == (12, 4)
    # first cell centre (25, 25): ar 1 -> 20x20, second ar1 box sqrt(0.2*0.3)*100 = 24.4949, ar 2 -> 28.284 x 14.142
    np.testing.assert_allclose(a[0], [0.15, 0.15, 0.35, 0.35], atol=1e-6)
    s = math.sqrt(0.06) * 100 / 2
    np.testing.assert_allclose(a[1], [(25 - s) / 100, (25 - s) / 100, (25 + s) / 100, (25 + s) / 100], atol=1e-6)
    w, h = 20 * math.sqrt(2) / 2, 20 / math.sqrt(2) / 2
    np.testing.assert_allclose(a[2], [(25 - w) / 100, (25 - h) / 100, (25 + w) / 100, (25 + h) / 100], atol=1e-6)
    # order is (row, column, box): index 3 is the second cell of the first row, centre (75, 25)
    np.testing.assert_allclose(a[3], [0.65, 0.15, 0.85, 0.35], atol=1e-6)


def test_pruned_widths_rebuild_the_same_shapes():
    widths = default_widths(10)
    widths["block_3a_conv_1"] = 40
    widths["block_2a_conv_2"] = 24  # also the tap feeding the first heads
    model = SSD(10, 3, [6] * 6, widths=widths).eval()
    assert model.current_widths() == widths
    conf, _ = model(torch.zeros(2, 3, 96, 96))
    assert conf.shape[0] == 2 and conf.shape[2] == 3


def test_matching_gives_every_gt_its_best_anchor_then_thresholds():
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.4, 0.4], [0.6, 0.0, 1.0, 0.4]])
    # GT 0 overlaps anchor 0 (IoU 0.64) and anchor 2 (IoU 0.64 too? no: 0.16/0.25); GT 1 is tiny, IoU < 0.5
    gt = torch.tensor([[[0.0, 0.0, 0.45, 0.45], [0.9, 0.9, 1.0, 1.0]]])
    labels, matched = match(anchors, gt, torch.tensor([[1, 2]]), torch.tensor([[True, True]]), 0.5, 0.5)
    assert labels[0, 0] == 1 and labels[0, 1] == 2  # bipartite: even an IoU-0.04 GT owns its best anchor
    assert labels[0, 2] == 1  # multi: IoU(gt0, anchor2) = 0.16/0.2025 = 0.79 >= 0.5
    assert labels[0, 3] == 0
    torch.testing.assert_close(matched[0, 1], gt[0, 1])
    # neutral zone: best IoU between neg and pos thresholds is ignored
    labels, _ = match(anchors, gt[:, :1], torch.tensor([[1]]), torch.tensor([[True]]), 0.9, 0.5)
    assert labels[0, 2] == IGNORE


def test_encode_decode_round_trip():
    anchors = torch.tensor([[0.1, 0.1, 0.3, 0.4], [0.5, 0.2, 0.9, 0.6]])
    boxes = torch.tensor([[[0.12, 0.08, 0.35, 0.41], [0.45, 0.25, 0.95, 0.55]]])
    v = [0.1, 0.1, 0.2, 0.2]
    torch.testing.assert_close(decode(encode(boxes, anchors, v), anchors, v), boxes, atol=1e-6, rtol=0)


def test_loss_mines_three_negatives_per_positive():
    labels = torch.zeros(1, 10, dtype=torch.long)
    labels[0, 0] = 1
    labels[0, 1] = IGNORE
    logits = torch.zeros(1, 10, 2)
    logits[0, 2:, 1] = torch.arange(8, dtype=torch.float)  # negatives with rising loss
    loc = torch.zeros(1, 10, 4)
    total, cls, _ = ssd_loss(logits, loc, labels, torch.zeros(1, 10, 4))
    ce = torch.nn.functional.cross_entropy(logits[0], labels[0].clamp(min=0), reduction="none")
    expected = ce[0] + ce[2:].topk(3).values.sum()  # the 3 hardest negatives; the neutral anchor never counts
    torch.testing.assert_close(cls, expected)
    assert total == cls


def test_soft_start_annealing_schedule():
    s = ssd_experiment_pb2.SoftStartAnnealingScheduleConfig(min_learning_rate=1e-4, max_learning_rate=1e-2,
                                                            soft_start=0.2, annealing=0.8)
    assert soft_start_annealing_lr(0, 100, s) == pytest.approx(1e-4)
    assert soft_start_annealing_lr(10, 100, s) == pytest.approx(1e-3)  # halfway in log space
    assert soft_start_annealing_lr(50, 100, s) == pytest.approx(1e-2)
    assert soft_start_annealing_lr(90, 100, s) == pytest.approx(1e-3)
    assert soft_start_annealing_lr(50, 100, s, num_gpus=2) == pytest.approx(2e-2)  # TAO scales by GPU count
