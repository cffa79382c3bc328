"""`ssd evaluate` and validation during training, with TAO's semantics (cv/ssd/scripts/evaluate.py).

Validation images come from the spec's validation_data_sources (raw KITTI, as TAO reads them), are resized to the
network input without keeping the aspect ratio, run through the model, decoded, put through the NMS plugin's
semantics (nms_config) and scored in network-input pixels by the AP evaluator (eval_config).
"""

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from ...errors import TaoflowError
from ...spec import load_experiment
from ...status import StatusLogger
from .ap import APEvaluator, format_table
from .box_coder import decode, encode, match
from .build import anchors_for, arch_from_spec
from .checkpoint import build_from_checkpoint, check_matches_spec, load_checkpoint
from .kitti_eval_data import load_kitti_eval_data, to_network_input
from .loss import ssd_loss
from ...contract.nms import eval_predictions, nms_plugin

log = logging.getLogger(__name__)
_VAL_CACHE = {}


def preprocess(image_bgr, channels, height, width, mean):
    """TAO SSD input: plain resize, BGR (or gray), minus the per-channel mean, CHW float32."""
    if channels == 1 and image_bgr.ndim == 3:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    img = cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    img = img[..., None] if img.ndim == 2 else img
    return (img - np.asarray(mean, np.float32)).transpose(2, 0, 1)


def read_image(path):
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as e:  # OpenCV 5 raises for a header over CV_IO_MAX_IMAGE_PIXELS
        raise TaoflowError(f"cannot read image {path}: {' '.join(str(e).split())}") from None
    if img is None:
        raise TaoflowError(f"cannot read image {path}")
    return img


@torch.no_grad()
def predict(model, images, anchors, variances):
    """Decoded boxes (B, A, 4) normalised and softmax scores (B, A, C+1), as numpy."""
    conf, loc = model(images)
    return decode(loc.float(), anchors, variances).cpu().numpy(), torch.softmax(conf.float(), -1).cpu().numpy()


def load_validation(spec, image_dir=None, label_dir=None):
    """All validation samples of the spec (or of an -i/-l override), images preprocessed once."""
    dc = spec.effective.dataset_config
    pairs = [(image_dir, label_dir)] if image_dir and label_dir else [
        (s.image_directory_path, s.label_directory_path) for s in dc.validation_data_sources
        if s.image_directory_path and s.label_directory_path]
    if not pairs:
        raise TaoflowError(f"{spec.path}: no validation_data_sources with image and label directories")
    c, h, w = arch_from_spec(spec)["input"]
    mean = spec.image_mean()
    key = (tuple(pairs), tuple(sorted(dc.target_class_mapping.items())), (c, h, w), tuple(mean))
    if key in _VAL_CACHE:
        return _VAL_CACHE[key]
    samples = []
    for img_dir, lbl_dir in pairs:
        _, s = load_kitti_eval_data(img_dir, lbl_dir, dict(dc.target_class_mapping))
        samples.extend(s)
    images = np.stack([preprocess(read_image(s.image_path), c, h, w, mean) for s in samples])
    _VAL_CACHE.clear()  # keep one validation set in memory
    _VAL_CACHE[key] = (samples, images)
    return samples, images


def evaluate_model(model, spec, anchors, device, samples=None, images=None, batch_size=None, table_digits=3):
    """AP per class, mAP and validation loss of a model on the spec's validation data."""
    if samples is None:
        samples, images = load_validation(spec)
    ec, nc, ssd = spec.effective.eval_config, spec.effective.nms_config, spec.ssd
    _, h, w = arch_from_spec(spec)["input"]
    batch_size = batch_size or ec.batch_size or 16
    evaluator = APEvaluator(len(spec.classes), ec.matching_iou_threshold, nc.confidence_threshold,
                            mode=ec.average_precision_mode, input_size=(w, h))
    was_training = model.training
    model.eval()
    val_losses = []
    for start in range(0, len(samples), batch_size):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device)
        with torch.no_grad():
            conf, loc = model(batch)
            boxes = decode(loc.float(), anchors, spec.variances).cpu().numpy()
            scores = torch.softmax(conf.float(), -1).cpu().numpy()
            val_losses.append(_validation_loss(conf, loc, samples[start:start + batch_size], anchors, spec, ssd))
        # Checkpoint evaluation in TAO uses TF's combined NMS: no per-class candidate cap, top_k kept.
        nms, keep = nms_plugin(boxes, scores, nc.confidence_threshold, nc.clustering_iou_threshold, None, nc.top_k)
        for i, sample in enumerate(samples[start:start + batch_size]):
            pb, ps, pl = eval_predictions(nms, keep, i, w, h)
            gb, gl, gd = to_network_input(sample, w, h)
            evaluator.update(pb, ps, pl, gb, gl, gd)
    model.train(was_training)
    result = evaluator.compute()
    aps = {name: float(result["ap"][i + 1]) for i, name in enumerate(spec.classes)}
    metrics = {f"AP_{name}": ap for name, ap in aps.items()}
    metrics["mAP"] = float(result["map"])
    metrics["validation_loss"] = float(np.mean(val_losses)) if val_losses else math.nan
    metrics["table"] = format_table(aps, metrics["mAP"], digits=table_digits)
    metrics["pr"] = {name: (result["precision"][i + 1], result["recall"][i + 1]) for i, name in enumerate(spec.classes)}
    return metrics


def _validation_loss(conf, loc, samples, anchors, spec, ssd):
    G = max(1, max(len(s.boxes) for s in samples))
    gt = torch.zeros(len(samples), G, 4, device=anchors.device)
    lab = torch.zeros(len(samples), G, dtype=torch.long, device=anchors.device)
    valid = torch.zeros(len(samples), G, dtype=torch.bool, device=anchors.device)
    for k, s in enumerate(samples):
        if len(s.boxes):
            b = np.asarray(s.boxes, np.float32) / np.array([s.width, s.height, s.width, s.height], np.float32)
            ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            n = int(ok.sum())
            gt[k, :n] = torch.from_numpy(np.clip(b[ok], 0, 1)).to(anchors.device)
            lab[k, :n] = torch.from_numpy(np.asarray(s.labels)[ok]).to(anchors.device)
            valid[k, :n] = True
    labels, matched = match(anchors, gt, lab, valid, ssd.pos_iou_thresh, ssd.neg_iou_thresh)
    loss, _, _ = ssd_loss(conf, loc, labels, encode(matched, anchors, spec.variances), ssd.neg_pos_ratio, ssd.alpha)
    return loss.item()


def validation_fn(model, spec, anchors, device):
    """Called by train() every validation_period_during_training epochs; prints TAO's table."""
    metrics = evaluate_model(model, spec, anchors, device, table_digits=5)  # TAO rounds to 5 during training
    print(metrics["table"])
    print(f"Validation loss: {metrics['validation_loss']}")
    return {k: v for k, v in metrics.items() if k not in ("table", "pr")}


def load_model_for(spec_path, model_path, task="evaluate"):
    spec = load_experiment(spec_path, task=task)
    state = load_checkpoint(model_path)
    arch = arch_from_spec(spec)
    check_matches_spec(state, arch, model_path)
    return spec, build_from_checkpoint(state).eval(), arch


def evaluate_cli(args):
    from .train import pick_device
    spec, model, arch = load_model_for(args.experiment_spec, args.model_path)
    device = pick_device(args.gpus, args.gpu_index)
    model.to(device)
    anchors = anchors_for(spec, arch["nlayers"]).to(device)
    status = StatusLogger(args.results_dir or str(Path(args.model_path).parent))
    status.write("Starting SSD evaluation.", status="STARTED")
    samples, images = load_validation(spec, args.image_dir, args.label_dir)
    metrics = evaluate_model(model, spec, anchors, device, samples, images, args.batch_size)
    print(metrics["table"])
    status.write("Evaluation finished successfully.", status="SUCCESS",
                 kpi={k: v for k, v in metrics.items() if k.startswith(("AP_", "mAP"))})
    return 0
