"""`ssd train`: TAO's SSD training on PyTorch.

Same spec, same outputs as TAO 5 (cv/ssd/scripts/train.py): weights/ssd_<arch><n>_epoch_<NNN>.pth every
checkpoint_interval epochs, ssd_training_log_<arch><n>.csv (epoch, AP_<class>..., loss, lr, mAP, validation_loss;
NaN where not evaluated), status.json lines, validation every validation_period_during_training epochs. SGD with
momentum 0.9 (TAO's SSD ignores the spec's optimizer), soft-start/annealing learning rate updated per batch, the
spec's L1/L2 regulariser on conv kernels. `-m ckpt --initial_epoch N` resumes with optimizer state and the same
data order, so an interrupted run ends with the same weights as an uninterrupted one (bit-exact on CPU).

Training data comes from TFRecords (`tfrecords_path`) or straight from KITTI folders (`image_directory_path` +
`label_directory_path`, TAO's `_seq`/`_qat` sample form); see data.py. early_stopping works as TAO's Keras callback
(monitor loss or validation_loss, min_delta, patience; the stopping epoch is checkpointed). Spec fields the native
backend cannot honour are refused (enable_qat, DSSD, other backbones, COCO) or, where they cannot change the model,
logged as ignored: taoflow.spec.experiment.check_native.
"""

import csv
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ...errors import TaoflowError
from ...spec import load_experiment, render
from ...spec.experiment import check_native, early_stopping_monitor
from ...status import StatusLogger
from .box_coder import encode, match
from .build import anchors_for, build_model, iterations_per_epoch, regularization, soft_start_annealing_lr
from .checkpoint import build_from_checkpoint, check_matches_spec, load_checkpoint, save_checkpoint
from .data import load_training_data, make_batch
from .loss import ssd_loss
from .step import TrainStep, compile_wanted, make_optimizer, make_scaler

log = logging.getLogger(__name__)
CACHE_SCALE = 1.5  # cached images are 1.5x the network input: crops keep detail without holding full frames


def pick_device(gpus=1, gpu_index=None):
    if torch.cuda.is_available() and gpus > 0:
        return torch.device(f"cuda:{(gpu_index or [0])[0]}")
    return torch.device("cpu")


def weights_name(spec, epoch):
    s = spec.ssd
    prefix = "dssd" if spec.is_dssd else "ssd"
    return f"{prefix}_{s.arch}{s.nlayers if s.arch in ('resnet', 'vgg', 'darknet') else ''}_epoch_{epoch:03d}.pth"


def distributed_context():
    """(rank, world_size, local_rank) under torchrun, else (0, 1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def train_step(model, optimizer, scaler, batch, anchors, spec, lr, use_amp, device):
    """One optimisation step exactly as train() runs it; returns the loss tensor (no host sync)."""
    images, gt, labels, valid = batch
    ssd_cfg = spec.ssd
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.no_grad():
        target_labels, matched = match(anchors, gt, labels, valid, ssd_cfg.pos_iou_thresh, ssd_cfg.neg_iou_thresh)
        target_offsets = encode(matched, anchors, spec.variances)
    with torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
                        enabled=use_amp):
        conf, loc = model(images)
    loss, _, _ = ssd_loss(conf, loc, target_labels, target_offsets, ssd_cfg.neg_pos_ratio, ssd_cfg.alpha)
    tc = spec.effective.training_config
    reg = regularization(model, tc.regularizer.type, tc.regularizer.weight)
    total = loss + reg if reg is not None else loss
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    return total.detach()


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


def train(spec_path, results_dir, resume_model=None, initial_epoch=1, gpus=1, gpu_index=None, use_amp=False,
          device=None, max_iterations=None, evaluate_fn=None):
    """Train per the spec; return a dict with the final checkpoint path and per-epoch metrics."""
    spec = load_experiment(spec_path, task="train")
    for warning in check_native(spec, task="train"):
        log.warning("%s", warning)
    rank, world, local_rank = distributed_context()
    main_process = rank == 0
    results = Path(results_dir)
    if initial_epoch < 1:
        raise TaoflowError(f"--initial_epoch must be 1 or more, got {initial_epoch}")
    tc = spec.effective.training_config
    seed = spec.effective.random_seed
    seed_everything(seed)
    if world > 1:
        gpus = world
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    device = torch.device(device) if device else pick_device(gpus, gpu_index)

    model, arch = build_model(spec)
    optimizer_state, start_step = None, 0
    if resume_model:
        state = load_checkpoint(resume_model)
        check_matches_spec(state, arch, resume_model)
        model = build_from_checkpoint(state)  # keeps a pruned checkpoint's widths
        if initial_epoch > 1:
            optimizer_state, start_step = state.get("optimizer"), state.get("global_step") or 0
            if optimizer_state is None:
                raise TaoflowError(f"{resume_model} has no optimizer state; resume needs a training checkpoint")
    elif initial_epoch > 1:
        raise TaoflowError("--initial_epoch > 1 needs -m with the checkpoint to resume from")
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    _freeze(model, spec)

    c, h, w = arch["input"]
    anchors = anchors_for(spec, arch["nlayers"]).to(device)
    t0 = time.time()
    data = load_training_data(spec.effective.dataset_config, (round(h * CACHE_SCALE), round(w * CACHE_SCALE)), c)
    log.info("decoded %d training images in %.1f s", len(data), time.time() - t0)
    # Outputs only now: a bad argument, checkpoint or training image above leaves results_dir untouched.
    (results / "weights").mkdir(parents=True, exist_ok=True)
    status = StatusLogger(results if main_process else None, append=initial_epoch > 1)
    status.write("Starting SSD training.", status="STARTED")
    if device.type == "cuda":  # keep the decoded images on the GPU: batches are gathered and warped there
        data.images = data.images.to(device)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)

    params = [p for p in model.parameters() if p.requires_grad]
    # CUDA (or TAOFLOW_COMPILE=1) runs the device step of step.py: sync-free, static shapes, compiled, fused SGD.
    # CPU runs the reference train_step below unchanged, so CPU results and bit-exact resume stay as they were.
    device_step = device.type == "cuda" or compile_wanted(device, world)
    optimizer = make_optimizer(params, device) if device_step else torch.optim.SGD(params, lr=0.0, momentum=0.9)
    if optimizer_state is not None:
        kernels = {k: optimizer.defaults.get(k) for k in ("fused", "foreach")}
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:  # a checkpoint from another device keeps this device's SGD kernel
            group.update(kernels)
    scaler = make_scaler(device, use_amp)
    iters = iterations_per_epoch(len(data), tc.batch_size_per_gpu, gpus)
    total_steps = tc.num_epochs * iters
    schedule = tc.learning_rate.soft_start_annealing_schedule
    mean = spec.image_mean()
    ssd_cfg = spec.ssd
    csv_path = results / f"ssd_training_log_{ssd_cfg.arch}{ssd_cfg.nlayers}.csv"
    history = _read_history(csv_path) if initial_epoch > 1 else []
    if main_process:
        (results / "experiment_spec.txt").write_text(render(spec.raw))

    step_fn = TrainStep(net, model, optimizer, scaler, anchors, spec, device, use_amp, tc.batch_size_per_gpu,
                        max((len(b) for b in data.boxes), default=1), world=world) if device_step else None
    step, last_ckpt, lr = start_step, None, 0.0
    period = spec.effective.eval_config.validation_period_during_training
    stopper = EarlyStopping(spec.effective)
    for epoch in range(initial_epoch, tc.num_epochs + 1):
        model.train()
        _freeze_bn(model, spec)
        epoch_rng = np.random.default_rng([seed, epoch])  # data order and augmentation depend only on seed+epoch
        order = epoch_rng.permutation(len(data))
        t_epoch, losses = time.time(), []
        per_step = tc.batch_size_per_gpu * world
        for it in range(iters):
            if max_iterations is not None and step >= max_iterations:
                break
            # Each rank takes its own slice of the same global batch, so world size changes nothing but speed.
            idx = order[it * per_step:(it + 1) * per_step][rank::world]
            if len(idx) < 2:
                # BatchNorm cannot train on one image at the 1x1 maps (Keras would silently use zero variance);
                # a lone trailing image is skipped this epoch and lands in a full batch after the next shuffle.
                break
            batch = make_batch(data, idx, epoch_rng, spec.effective.augmentation_config, (h, w), mean, device)
            if device.type == "cuda":
                batch = (batch[0].contiguous(memory_format=torch.channels_last),) + batch[1:]
            lr = soft_start_annealing_lr(step, total_steps, schedule, gpus)
            if step_fn is not None:
                total = step_fn(batch, lr)
            else:
                total = train_step(net, optimizer, scaler, batch, anchors, spec, lr, use_amp, device)
            losses.append(total)
            step += 1
        losses = torch.stack(losses).tolist() if losses else []  # one host sync per epoch
        if any(not math.isfinite(v) for v in losses):
            raise TaoflowError(f"training diverged in epoch {epoch} (loss {losses}); lower max_learning_rate")
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else math.nan, "lr": lr}
        if main_process and evaluate_fn is not None and period and epoch % period == 0:
            metrics.update(evaluate_fn(model, spec, anchors, device))
        history.append(metrics)
        stop = stopper.update(metrics) if main_process else False
        if world > 1:  # rank 0 decides (it alone validates), so every rank leaves the loop together
            flag = torch.tensor([int(stop)], device=device if device.type == "cuda" else "cpu")
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item())
        if main_process:
            _write_csv(csv_path, history, spec.classes)
        if main_process and (epoch % tc.checkpoint_interval == 0 or epoch == tc.num_epochs or stop):
            last_ckpt = results / "weights" / weights_name(spec, epoch)
            save_checkpoint(last_ckpt, model, arch, spec.classes, epoch=epoch, optimizer=optimizer,
                            global_step=step, spec_text=render(spec.raw))
        elapsed = time.time() - t_epoch
        status.write("Training loop in progress", epoch=epoch, max_epoch=tc.num_epochs,
                     time_per_epoch=f"{elapsed:.2f}s", eta=f"{elapsed * (tc.num_epochs - epoch):.0f}s",
                     graphical={k: v for k, v in metrics.items() if k in ("loss", "mAP", "validation_loss")})
        log.info("epoch %d/%d loss %.4f lr %.2e %s(%.1f s)", epoch, tc.num_epochs, metrics["loss"], lr,
                 f"mAP {metrics['mAP']:.4f} " if "mAP" in metrics else "", elapsed)
        if world > 1:
            torch.distributed.barrier()
        if stop:
            log.info("early stopping: %s did not improve by more than %g for %d epoch(s); stopped after epoch %d",
                     stopper.monitor, stopper.min_delta, stopper.patience, epoch)
            status.write(f"Early stopping after epoch {epoch}: {stopper.monitor} stopped improving")
            break
        if max_iterations is not None and step >= max_iterations:
            break
    status.write("Training finished successfully.", status="SUCCESS")
    return {"checkpoint": str(last_ckpt) if last_ckpt else None, "history": history, "steps": step,
            "stopped_early": stopper.stopped_epoch}


class EarlyStopping:
    """TAO's training_config.early_stopping, as the Keras callback TAO adds: after each epoch, the monitored value
    improves when it is below the best so far by more than min_delta; after `patience` epochs in a row without
    improvement training stops. An epoch without the value (validation_loss on an epoch that was not validated)
    is skipped, as Keras skips it with a warning."""

    def __init__(self, effective):
        self.monitor = early_stopping_monitor(effective)
        es = effective.training_config.early_stopping
        self.min_delta, self.patience = abs(es.min_delta), es.patience
        self.best, self.wait, self.stopped_epoch = math.inf, 0, None

    def update(self, metrics):
        if self.monitor is None:
            return False
        current = metrics.get(self.monitor)
        if current is None or not math.isfinite(current):
            log.debug("early stopping: no %s after epoch %s", self.monitor, metrics.get("epoch"))
            return False
        if current + self.min_delta < self.best:
            self.best, self.wait = current, 0
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = metrics.get("epoch")
            return True
        return False


def _freeze(model, spec):
    """freeze_blocks: 0 = conv1, 1..4 = ResNet blocks (TAO's numbering); frozen layers get no gradient."""
    for b in spec.ssd.freeze_blocks:
        mods = [model.conv1, model.bn_conv1] if b == 0 else [m for n, m in model.blocks.items()
                                                              if n.startswith(f"block_{b}")]
        for m in mods:
            for p in m.parameters():
                p.requires_grad_(False)
    if spec.ssd.freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for p in m.parameters():
                    p.requires_grad_(False)


def _freeze_bn(model, spec):
    if spec.ssd.freeze_bn:  # frozen BN also keeps its running statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()


def _write_csv(path, history, classes):
    cols = ["epoch"] + sorted([f"AP_{c}" for c in classes] + ["loss", "lr", "mAP", "validation_loss"])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(cols)
        for row in history:
            writer.writerow([row.get(col, math.nan) for col in cols])
    os.replace(tmp, path)


def _read_history(path):
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items() if v not in ("", "nan")} for r in rows]
