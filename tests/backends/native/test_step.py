"""The device training step (step.py) computes what the reference step computes, without host synchronisation."""

import copy

import numpy as np
import pytest
import torch

from taoflow.backends.native import step as S
from taoflow.backends.native.box_coder import match
from taoflow.backends.native.build import anchors_for, build_model
from taoflow.backends.native.loss import ssd_loss
from taoflow.backends.native.train import train_step
from taoflow.spec import parse_experiment_text

from .conftest import TINY_SPEC


def _random_gt(rng, B, G):
    xy = rng.uniform(0, 0.8, (B, G, 2))
    wh = rng.uniform(0.02, 0.3, (B, G, 2))
    gt = torch.tensor(np.concatenate([xy, np.minimum(xy + wh, 1.0)], -1), dtype=torch.float32)
    n = rng.integers(0, G + 1, B)
    valid = torch.tensor(np.arange(G)[None] < n[:, None])
    labels = torch.tensor(rng.integers(1, 3, (B, G))) * valid
    return gt, labels, valid


@pytest.mark.parametrize("seed", range(3))
def test_static_matching_equals_tao_matching_with_padding(seed):
    rng = np.random.default_rng(seed)
    anchors = torch.tensor(np.concatenate([rng.uniform(0, 0.7, (300, 2)), rng.uniform(0, 0.7, (300, 2)) + 0.05], -1),
                           dtype=torch.float32)
    anchors[:, 2:] = torch.maximum(anchors[:, 2:], anchors[:, :2] + 0.05)
    gt, labels, valid = _random_gt(rng, 6, 5)
    ref_labels, ref_matched = match(anchors, gt, labels, valid, 0.5, 0.4)
    pad = lambda t, shape: torch.cat([t, torch.zeros(shape, dtype=t.dtype)], 1)  # noqa: E731
    got_labels, got_matched = S.match_static(anchors, pad(gt, (6, 3, 4)), pad(labels, (6, 3)), pad(valid, (6, 3)),
                                             0.5, 0.4)
    assert torch.equal(ref_labels, got_labels)
    assert torch.equal(ref_matched[ref_labels > 0], got_matched[got_labels > 0])


def test_static_loss_equals_tao_loss():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(4, 500, 3)), dtype=torch.float32)
    loc = torch.tensor(rng.normal(size=(4, 500, 4)), dtype=torch.float32)
    target = torch.tensor(rng.normal(size=(4, 500, 4)), dtype=torch.float32)
    for labels in (torch.tensor(rng.integers(-1, 3, (4, 500))), torch.zeros(4, 500, dtype=torch.long)):
        for ratio in (3.0, 2.5, 1000.0):
            ref = ssd_loss(logits, loc, labels, target, ratio, 1.0)
            got = S.ssd_loss_static(logits, loc, labels, target, ratio, 1.0)
            for r, g in zip(ref, got):
                torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_device_step_on_cpu_tracks_the_reference_step(tiny_data):
    from taoflow.backends.native.data import load_tfrecords, make_batch
    spec = parse_experiment_text(TINY_SPEC.format(epochs=1, data=tiny_data))
    torch.manual_seed(0)
    model, arch = build_model(spec)
    anchors = anchors_for(spec, arch["nlayers"])
    cache = load_tfrecords([spec.effective.dataset_config.data_sources[0].tfrecords_path], (96, 96))
    rng = np.random.default_rng(0)
    batch = make_batch(cache, np.arange(4), rng, spec.effective.augmentation_config, (96, 96), spec.image_mean(),
                       torch.device("cpu"))
    ref_model, dev_model = model, copy.deepcopy(model)
    cpu = torch.device("cpu")
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.0, momentum=0.9)
    dev_opt = S.make_optimizer(dev_model.parameters(), cpu)
    scaler = S.make_scaler(cpu, False)
    step = S.TrainStep(dev_model, dev_model, dev_opt, scaler, anchors, spec, cpu, False, 4,
                       max(len(b) for b in cache.boxes) + 2)
    assert not step.compiled  # never compiled on CPU unless asked (TAOFLOW_COMPILE=1)
    for _ in range(2):
        ref = train_step(ref_model, ref_opt, scaler, batch, anchors, spec, 1e-3, False, cpu)
        got = step(batch, 1e-3)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ref_model.parameters(), dev_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compile_choice(monkeypatch):
    monkeypatch.delenv("TAOFLOW_COMPILE", raising=False)
    assert not S.compile_wanted(torch.device("cpu"))
    assert S.compile_wanted(torch.device("cuda"))
    monkeypatch.setenv("TAOFLOW_COMPILE", "0")
    assert not S.compile_wanted(torch.device("cuda"))
    monkeypatch.setenv("TAOFLOW_COMPILE", "1")
    assert S.compile_wanted(torch.device("cpu"))
