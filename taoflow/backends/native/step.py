"""The per-step work of `ssd train` (matching, encoding, forward, TAO's SSD loss, regulariser, backward, SGD), in two
forms that compute the same thing:

- the reference step (`train.train_step`): data-dependent shapes (hard-negative count read on the host, ground-truth
  padding per batch). CPU training runs it unchanged, so CPU results (and bit-exact resume) are what they were.
- the device step (`match_static`, `ssd_loss_static`, `TrainStep`): no host synchronisation and static shapes
  (ground truth padded to the dataset's largest box count, hard negatives chosen by sorting instead of a top-k of
  host-known size), so the host can assemble the next batch while the GPU runs this one, and the whole step (model,
  matching, encoding, loss, regulariser) compiles to one graph for forward and one for backward. SGD is PyTorch's
  fused kernel; mixed precision is bfloat16 where the GPU has it (no loss scaling, so nothing to check per step).

Compilation: `TAOFLOW_COMPILE` = auto (default: compile on CUDA, one process or one per GPU; never on CPU, where
compiling takes minutes and a training run of the demo's size would not recover it), 1 (always, CPU included), 0
(never). The
compiled step is captured in CUDA graphs (mode reduce-overhead; `TAOFLOW_CUDA_GRAPHS=0` turns that off): on an H200
at batch 128 the step's kernel launches otherwise cost more host time than the GPU needs to run them (SSD-ResNet18
300x300: 3,900 img/s compiled without graphs, 5,900 with; bench/train_gpu.py). A batch of another size (the last,
partial batch of an epoch) runs the same device step uncompiled rather than compiling a second graph.

Several GPUs (`--gpus N`, one process per GPU): data parallel as DDP computes it, each rank's gradients averaged over
the ranks before every SGD step, but with one flat all-reduce after the backward pass (average_gradients) instead
of DDP's per-bucket hooks inside it. The compiled, CUDA-graphed step stays exactly the single-GPU one (DDP's hooks
would split it into a graph per bucket). The price is no overlap with the backward pass: SSD-ResNet18's 13.2 M
float32 gradients are 53 MB, well under a millisecond at NVLink bandwidth against a step of about 20 ms (batch 128
on an H200), a few milliseconds over PCIe. It is issued on the current stream: no host synchronisation.
"""

import logging
import os
import warnings

import torch
import torch.nn.functional as F

from .box_coder import box_iou, encode, finish_matching
from .build import regularization

log = logging.getLogger(__name__)
# Inductor's note that it split the softmax reduction of the 2-class cross-entropy: not actionable, printed per graph.
warnings.filterwarnings("ignore", message=r"(?s)\s*Online softmax is disabled")


def match_static(anchors, gt_boxes, gt_labels, gt_valid, pos_iou_thresh=0.5, neg_iou_thresh=0.5):
    """box_coder.match without host synchronisation (same results): the greedy bipartite step masks taken GT rows
    and anchor columns instead of indexing with boolean masks, so the shapes never depend on the data."""
    B, G = gt_labels.shape
    A = anchors.shape[0]
    iou = box_iou(gt_boxes, anchors.expand(B, A, 4))  # (B, G, A)
    iou = torch.where(gt_valid[..., None], iou, torch.full_like(iou, -1.0))
    batch = torch.arange(B, device=anchors.device)
    n_gt = gt_valid.sum(1)
    owner = torch.full((B, A), -1, dtype=torch.long, device=anchors.device)
    row_done = torch.zeros((B, G), dtype=torch.bool, device=anchors.device)
    col_done = torch.zeros((B, A), dtype=torch.bool, device=anchors.device)
    for step in range(G):  # one GT per image per step, highest remaining IoU first
        greedy = iou.masked_fill(row_done[..., None] | col_done[:, None, :], -2.0)
        best = greedy.reshape(B, -1).argmax(1)
        g, a = best // A, best % A
        take = step < n_gt
        owner[batch, a] = torch.where(take, g, owner[batch, a])
        row_done[batch, g] = row_done[batch, g] | take
        col_done[batch, a] = col_done[batch, a] | take
    return finish_matching(iou, owner, gt_labels, gt_boxes, pos_iou_thresh, neg_iou_thresh)


def ssd_loss_static(conf_logits, loc_pred, labels, loc_target, neg_pos_ratio=3.0, alpha=1.0):
    """loss.ssd_loss without host synchronisation: the hardest min(neg_pos_ratio * n_pos, n_negative) negatives are
    the first ones of the descending sort, counted on the device. Returns (total, classification, localisation)."""
    positives = labels > 0
    negatives = labels == 0
    ce = F.cross_entropy(conf_logits.float().reshape(-1, conf_logits.shape[-1]), labels.clamp(min=0).reshape(-1),
                         reduction="none").reshape(labels.shape)
    n_pos = positives.sum()
    pos_cls = (ce * positives).sum()
    neg_ce = (ce * negatives).reshape(-1)
    n_neg = torch.minimum((n_pos.double() * neg_pos_ratio).floor().long(), (neg_ce > 0).sum())
    ranked = torch.sort(neg_ce, descending=True).values
    neg_cls = (ranked * (torch.arange(ranked.numel(), device=ranked.device) < n_neg)).sum()
    diff = (loc_pred.float() - loc_target).abs()
    smooth_l1 = torch.where(diff < 1.0, 0.5 * diff ** 2, diff - 0.5).sum(-1)
    loc = (smooth_l1 * positives).sum()
    norm = n_pos.clamp(min=1).float()
    cls = (pos_cls + neg_cls) / norm
    loc = loc / norm
    return cls + alpha * loc, cls, loc


def amp_dtype(device):
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def compile_wanted(device):
    choice = os.environ.get("TAOFLOW_COMPILE", "auto").strip().lower()
    if choice in ("1", "true", "yes", "on"):
        return True
    if choice in ("0", "false", "no", "off"):
        return False
    return device.type == "cuda"


def cuda_graphs_wanted(device):
    return device.type == "cuda" and os.environ.get("TAOFLOW_CUDA_GRAPHS", "1").strip().lower() not in (
        "0", "false", "no", "off")


def compile_mode(device, cuda_graphs=None):
    """torch.compile mode of the training step (the benchmark's ceiling uses the same)."""
    graphs = cuda_graphs_wanted(device) if cuda_graphs is None else cuda_graphs
    return "reduce-overhead" if graphs and device.type == "cuda" else None


def make_optimizer(params, device):
    """SGD with momentum 0.9, TAO's SSD optimiser; the fused kernel on CUDA (one launch for every parameter)."""
    return torch.optim.SGD(params, lr=0.0, momentum=0.9, **({"fused": True} if device.type == "cuda" else {}))


def average_gradients(params, world):
    """Every rank's gradients replaced by their mean over the `world` ranks of the default process group: one flat
    all-reduce per dtype (a parameter without a gradient counts as zeros, so every rank sends the same layout).
    The mean is copied back into each gradient tensor, which keeps its parameter's memory format (channels_last
    kernels on CUDA): fused SGD refuses gradients whose strides differ from their parameter's."""
    import torch.distributed as dist
    groups = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    for group in groups.values():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for p, g in zip(group, grads):
            g.copy_(flat[offset:offset + g.numel()].view(g.shape))
            p.grad = g
            offset += g.numel()


def gradient_sync(world):
    """What a training step calls between backward and the SGD step: None in one process, else the all-reduce."""
    if world <= 1:
        return None
    from .launch import collective

    def sync(params):
        with collective("the gradient all-reduce"):
            average_gradients(params, world)
    return sync


def make_scaler(device, use_amp):
    """Loss scaling only where autocast runs in float16 (bfloat16 has float32's range)."""
    return torch.amp.GradScaler("cuda", enabled=use_amp and device.type == "cuda"
                                and amp_dtype(device) == torch.float16)


class TrainStep:
    """One optimisation step on the training device: step(batch, lr) -> loss tensor (not synchronised).

    net: the module to run; model: the bare model (regulariser); batch_size: the full batch (other sizes run
    uncompiled); max_boxes: the most boxes any training image has; sync: gradient_sync(world), called with the
    optimised parameters between backward and the SGD step (None: one process)."""

    def __init__(self, net, model, optimizer, scaler, anchors, spec, device, use_amp, batch_size, max_boxes,
                 compile=None, cuda_graphs=None, sync=None):
        self.net, self.model, self.optimizer, self.scaler = net, model, optimizer, scaler
        self.sync, self.params = sync, [p for group in optimizer.param_groups for p in group["params"]]
        self.anchors, self.spec, self.device, self.use_amp = anchors, spec, device, use_amp
        self.batch_size, self.max_boxes = batch_size, max(1, int(max_boxes))
        ssd = spec.ssd
        tc = spec.effective.training_config
        self.cfg = (ssd.pos_iou_thresh, ssd.neg_iou_thresh, ssd.neg_pos_ratio, ssd.alpha, tuple(spec.variances),
                    tc.regularizer.type, tc.regularizer.weight)
        self.dtype = amp_dtype(device)
        self.compiled = compile_wanted(device) if compile is None else compile
        self.cuda_graphs = self.compiled and compile_mode(device, cuda_graphs) is not None
        self._fn = self._loss
        if self.compiled:
            mode = compile_mode(device, cuda_graphs)
            self._fn = torch.compile(self._loss, dynamic=False, mode=mode)
            log.info("compiling the training step (%s) for batches of %d", mode or "default mode", batch_size)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # the step's shapes are fixed: pick the fastest conv kernels once

    def _loss(self, images, gt, labels, valid):
        pos, neg, ratio, alpha, variances, reg_type, reg_weight = self.cfg
        with torch.no_grad():
            target_labels, matched = match_static(self.anchors, gt, labels, valid, pos, neg)
            target_offsets = encode(matched, self.anchors, variances)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.use_amp):
            conf, loc = self.net(images)
        loss, _, _ = ssd_loss_static(conf, loc, target_labels, target_offsets, ratio, alpha)
        reg = regularization(self.model, reg_type, reg_weight)
        return loss + reg if reg is not None else loss

    def pad(self, batch):
        images, gt, labels, valid = batch
        extra = self.max_boxes - gt.shape[1]
        if extra > 0:
            gt, labels, valid = F.pad(gt, (0, 0, 0, extra)), F.pad(labels, (0, extra)), F.pad(valid, (0, extra))
        if self.device.type == "cuda" and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, gt, labels, valid

    def __call__(self, batch, lr):
        images, gt, labels, valid = self.pad(batch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        graphed = self.cuda_graphs and images.shape[0] == self.batch_size
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        total = (self._fn if images.shape[0] == self.batch_size else self._loss)(images, gt, labels, valid)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.sync is not None:
            self.sync(self.params)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # A CUDA-graph output is overwritten by the next replay: keep a copy.
        return total.detach().clone() if graphed else total.detach()
