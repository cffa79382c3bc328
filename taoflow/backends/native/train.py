"""`ssd train`: TAO's SSD training on PyTorch.

Same spec, same outputs as TAO 5 (cv/ssd/scripts/train.py): weights/ssd_<arch><n>_epoch_<NNN>.pth every
checkpoint_interval epochs, ssd_training_log_<arch><n>.csv (epoch, AP_<class>..., loss, lr, mAP, validation_loss;
NaN where not evaluated), status.json lines, validation every validation_period_during_training epochs. SGD with
momentum 0.9 (TAO's SSD ignores the spec's optimizer), soft-start/annealing learning rate updated per batch, the
spec's L1/L2 regulariser on conv kernels. `-m ckpt --initial_epoch N` resumes with optimizer state and the same
data order, so an interrupted run ends with the same weights as an uninterrupted one (bit-exact on CPU).

Several processes (`--gpus N`: cli.py starts one per GPU with RANK/WORLD_SIZE/LOCAL_RANK set, as torchrun would):
each rank trains on its own shard of every epoch (data.EpochSampler), the ranks' gradients are averaged before
each SGD step (step.average_gradients) and, as in TAO, the learning rate is scaled by the number of ranks
(max_learning_rate and min_learning_rate x N) and an epoch is ceil(images / batch_size_per_gpu / N) steps. Rank 0
alone validates, writes the CSV, status.json and checkpoints, and logs; the others wait for it at the end of each
epoch. A checkpoint records the number of ranks that wrote it: resuming with the same number continues its step
count; with another number the schedule restarts at (initial_epoch - 1) epochs of the new size, as TAO computes it.

Training data comes from TFRecords (`tfrecords_path`) or straight from KITTI folders (`image_directory_path` +
`label_directory_path`, TAO's `_seq`/`_qat` sample form); see data.py. early_stopping works as TAO's Keras callback
(monitor loss or validation_loss, min_delta, patience; the stopping epoch is checkpointed). Spec fields the native
backend cannot honour are refused (enable_qat, DSSD, other backbones, COCO) or, where they cannot change the model,
logged as ignored: taoflow.spec.experiment.check_native.
"""

import csv
import datetime
import logging
import math
import os
import time
from dataclasses import dataclass
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
from .data import EpochSampler, load_training_data, make_batch
from .launch import collective
from .loss import ssd_loss
from .step import TrainStep, compile_wanted, gradient_sync, make_optimizer, make_scaler

log = logging.getLogger(__name__)
CACHE_SCALE = 1.5  # cached images are 1.5x the network input: crops keep detail without holding full frames
# How long a rank waits in a collective (the others wait while rank 0 validates and writes a checkpoint) before the
# run fails instead of hanging; TAOFLOW_DIST_TIMEOUT_S changes it.
DIST_TIMEOUT_S = 1800


def pick_device(gpus=1, gpu_index=None):
    if torch.cuda.is_available() and gpus > 0:
        return torch.device(f"cuda:{(gpu_index or [0])[0]}")
    return torch.device("cpu")


def weights_name(spec, epoch):
    s = spec.ssd
    prefix = "dssd" if spec.is_dssd else "ssd"
    return f"{prefix}_{s.arch}{s.nlayers if s.arch in ('resnet', 'vgg', 'darknet') else ''}_epoch_{epoch:03d}.pth"


def distributed_context():
    """(rank, world_size, local_rank) of a multi-process run (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT as
    cli.py or torchrun set them), its process group initialised: NCCL on the GPU LOCAL_RANK of CUDA_VISIBLE_DEVICES,
    gloo on CPUs. (0, 1, 0) in a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("TAOFLOW_DIST_TIMEOUT_S", DIST_TIMEOUT_S)))
        with collective("joining the other ranks"):
            if torch.cuda.is_available():
                device = torch.device(f"cuda:{local_rank}")
                torch.cuda.set_device(device)
                dist.init_process_group("nccl", timeout=timeout, device_id=device)
            else:
                dist.init_process_group("gloo", timeout=timeout)
    return dist.get_rank(), world, local_rank


def train_step(model, optimizer, scaler, batch, anchors, spec, lr, use_amp, device, sync=None):
    """One optimisation step exactly as train() runs it on the CPU; returns the loss tensor (no host sync).
    sync: step.gradient_sync(world) of a multi-process run (None: one process)."""
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
    if sync is not None:
        sync([p for group in optimizer.param_groups for p in group["params"]])
    scaler.step(optimizer)
    scaler.update()
    return total.detach()


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


@dataclass
class TrainingRun:
    """What setup_training builds and every epoch uses."""
    spec: object
    results: Path
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    arch: dict
    anchors: torch.Tensor
    data: object  # data.DetectionCache
    sampler: EpochSampler
    optimizer: torch.optim.Optimizer
    scaler: object
    step_fn: object  # step.TrainStep on the device step, None on the CPU reference step
    use_amp: bool
    iters: int  # steps per epoch (every rank runs as many)
    total_steps: int
    csv_path: Path
    history: list
    status: StatusLogger
    stopper: "EarlyStopping"
    evaluate_fn: object = None
    max_iterations: int = None
    step: int = 0
    lr: float = 0.0
    last_ckpt: Path = None
    owns_process_group: bool = False

    @property
    def main_process(self):
        return self.rank == 0

    @property
    def done(self):
        return self.max_iterations is not None and self.step >= self.max_iterations


def train(spec_path, results_dir, resume_model=None, initial_epoch=1, gpus=1, gpu_index=None, use_amp=False,
          device=None, max_iterations=None, evaluate_fn=None):
    """Train per the spec; return a dict with the final checkpoint path and per-epoch metrics."""
    run = setup_training(spec_path, results_dir, resume_model, initial_epoch, gpus, gpu_index, use_amp, device,
                         max_iterations, evaluate_fn)
    for epoch in range(initial_epoch, run.spec.effective.training_config.num_epochs + 1):
        t_epoch = time.time()
        metrics = train_epoch(run, epoch)
        if end_of_epoch(run, epoch, metrics, t_epoch) or run.done:
            break
    run.status.write("Training finished successfully.", status="SUCCESS")
    if run.owns_process_group:  # after a failure the process just exits: cli.py ends the other ranks
        torch.distributed.destroy_process_group()
    return {"checkpoint": str(run.last_ckpt) if run.last_ckpt else None, "history": run.history, "steps": run.step,
            "stopped_early": run.stopper.stopped_epoch}


def setup_training(spec_path, results_dir, resume_model=None, initial_epoch=1, gpus=1, gpu_index=None,
                   use_amp=False, device=None, max_iterations=None, evaluate_fn=None):
    """Everything before the first epoch: spec, process group, model (fresh, pretrained or resumed), data, optimizer;
    the outputs (results_dir, status.json, experiment_spec.txt) only once all of it has loaded."""
    spec = load_experiment(spec_path, task="train")
    if initial_epoch < 1:
        raise TaoflowError(f"--initial_epoch must be 1 or more, got {initial_epoch}")
    owns_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _group_initialized()
    rank, world, local_rank = distributed_context()
    main_process = rank == 0
    for warning in check_native(spec, task="train"):
        if main_process:
            log.warning("%s", warning)
    results = Path(results_dir)
    tc = spec.effective.training_config
    seed = spec.effective.random_seed
    seed_everything(seed)
    if world > 1:
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device) if device else pick_device(gpus, gpu_index)

    model, arch, state = _load_model(spec, resume_model, initial_epoch, device, world)

    c, h, w = arch["input"]
    anchors = anchors_for(spec, arch["nlayers"]).to(device)
    t0 = time.time()
    # The ranks decode the same images at once: each takes its share of the CPUs.
    data = load_training_data(spec.effective.dataset_config, (round(h * CACHE_SCALE), round(w * CACHE_SCALE)), c,
                              workers=max(1, (os.cpu_count() or 1) // world))
    log.info("decoded %d training images in %.1f s", len(data), time.time() - t0)
    iters = iterations_per_epoch(len(data), tc.batch_size_per_gpu, world)
    start_step = 0
    if state is not None and initial_epoch > 1:
        start_step = _resume_step(state, initial_epoch, iters, world)
    # Outputs only now: a bad argument, checkpoint or training image above leaves results_dir untouched.
    if main_process:
        (results / "weights").mkdir(parents=True, exist_ok=True)
    status = StatusLogger(results if main_process else None, append=initial_epoch > 1)
    status.write("Starting SSD training.", status="STARTED")
    if device.type == "cuda":  # keep the decoded images on the GPU: batches are gathered and warped there
        data.images = data.images.to(device)

    params = [p for p in model.parameters() if p.requires_grad]
    # CUDA (or TAOFLOW_COMPILE=1) runs the device step of step.py: sync-free, static shapes, compiled, fused SGD.
    # CPU runs the reference train_step above unchanged, so CPU results and bit-exact resume stay as they were.
    device_step = device.type == "cuda" or compile_wanted(device)
    optimizer = make_optimizer(params, device) if device_step else torch.optim.SGD(params, lr=0.0, momentum=0.9)
    if state is not None and initial_epoch > 1:
        kernels = {k: optimizer.defaults.get(k) for k in ("fused", "foreach")}
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a checkpoint from another device keeps this device's SGD kernel
            group.update(kernels)
    scaler = make_scaler(device, use_amp)
    ssd_cfg = spec.ssd
    csv_path = results / f"ssd_training_log_{ssd_cfg.arch}{ssd_cfg.nlayers}.csv"
    if main_process:
        _write_text_atomic(results / "experiment_spec.txt", render(spec.raw))
    step_fn = None
    if device_step:
        step_fn = TrainStep(model, model, optimizer, scaler, anchors, spec, device, use_amp, tc.batch_size_per_gpu,
                            max((len(b) for b in data.boxes), default=1), sync=gradient_sync(world))
    return TrainingRun(spec=spec, results=results, rank=rank, world=world, device=device, model=model, arch=arch,
                       anchors=anchors, data=data, sampler=EpochSampler(len(data), seed, rank, world),
                       optimizer=optimizer, scaler=scaler, step_fn=step_fn, use_amp=use_amp, iters=iters,
                       total_steps=tc.num_epochs * iters,
                       csv_path=csv_path, history=_read_history(csv_path) if initial_epoch > 1 else [],
                       status=status, stopper=EarlyStopping(spec.effective), evaluate_fn=evaluate_fn,
                       max_iterations=max_iterations, step=start_step, owns_process_group=owns_group)


def train_epoch(run, epoch):
    """One epoch of this rank's shard; returns the epoch's metrics (loss averaged over steps and ranks, last lr)."""
    spec, device = run.spec, run.device
    tc = spec.effective.training_config
    run.model.train()
    _freeze_bn(run.model, spec)
    run.sampler.set_epoch(epoch)  # data order and augmentation depend only on seed, epoch (and rank)
    bs = tc.batch_size_per_gpu
    h, w = run.arch["input"][1:]
    mean = spec.image_mean()
    schedule = tc.learning_rate.soft_start_annealing_schedule
    sync = gradient_sync(run.world)
    losses = []
    for it in range(run.iters):
        if run.done:
            break
        idx = run.sampler.batch(it, bs)
        if len(idx) < 2:
            # BatchNorm cannot train on one image at the 1x1 maps (Keras would silently use zero variance);
            # a lone trailing image is skipped this epoch and lands in a full batch after the next shuffle.
            # Every rank's shard has the same length, so every rank skips it alike.
            break
        batch = make_batch(run.data, idx, run.sampler.rng, spec.effective.augmentation_config, (h, w), mean, device)
        # channels_last on the CPU too: oneDNN's convolutions run about 20 % faster per step in that layout
        # (bench/demo_cpu_step.py)
        batch = (batch[0].contiguous(memory_format=torch.channels_last),) + batch[1:]
        run.lr = soft_start_annealing_lr(run.step, run.total_steps, schedule, run.world)
        if run.step_fn is not None:
            total = run.step_fn(batch, run.lr)
        else:
            total = train_step(run.model, run.optimizer, run.scaler, batch, run.anchors, spec, run.lr, run.use_amp,
                               device, sync=sync)
        losses.append(total)
        run.step += 1
    losses = torch.stack(losses).tolist() if losses else []  # one host sync per epoch
    if run.world == 1:
        if any(not math.isfinite(v) for v in losses):
            raise TaoflowError(f"training diverged in epoch {epoch} (loss {losses}); lower max_learning_rate")
        loss = float(np.mean(losses)) if losses else math.nan
    else:
        loss, steps = _mean_over_ranks(losses, device)
        if steps and not math.isfinite(loss):  # every rank sees the same mean, so every rank stops here alike
            raise TaoflowError(f"training diverged in epoch {epoch} (loss {loss} averaged over {run.world} ranks); "
                               f"lower max_learning_rate")
    return {"epoch": epoch, "loss": loss, "lr": run.lr}


def end_of_epoch(run, epoch, metrics, t_epoch):
    """Rank 0 validates (when due), writes the CSV and the checkpoint (when due, or when stopping early); the other
    ranks wait for it, then all learn whether training stops. Returns True to stop. t_epoch: when the epoch began
    (status.json's time_per_epoch includes validation, as TAO's does)."""
    spec = run.spec
    tc = spec.effective.training_config
    period = spec.effective.eval_config.validation_period_during_training
    stop = False
    if run.main_process:
        if run.evaluate_fn is not None and period and epoch % period == 0:
            metrics.update(run.evaluate_fn(run.model, spec, run.anchors, run.device))
        stop = run.stopper.update(metrics)
        run.history.append(metrics)
        _write_csv(run.csv_path, run.history, spec.classes)
        if epoch % tc.checkpoint_interval == 0 or epoch == tc.num_epochs or stop:
            run.last_ckpt = run.results / "weights" / weights_name(spec, epoch)
            save_checkpoint(run.last_ckpt, run.model, run.arch, spec.classes, epoch=epoch, optimizer=run.optimizer,
                            global_step=run.step, spec_text=render(spec.raw), extra={"world_size": run.world})
    else:
        run.history.append(metrics)
    if run.world > 1:  # also the barrier: no rank starts the next epoch before rank 0 has validated and written
        flag = torch.tensor([int(stop)], device=run.device)
        with collective("waiting for rank 0's end of epoch"):
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item())
    elapsed = time.time() - t_epoch
    run.status.write("Training loop in progress", epoch=epoch, max_epoch=tc.num_epochs,
                     time_per_epoch=f"{elapsed:.2f}s", eta=f"{elapsed * (tc.num_epochs - epoch):.0f}s",
                     graphical={k: v for k, v in metrics.items() if k in ("loss", "mAP", "validation_loss")})
    log.info("epoch %d/%d loss %.4f lr %.2e %s(%.1f s)", epoch, tc.num_epochs, metrics["loss"], run.lr,
             f"mAP {metrics['mAP']:.4f} " if "mAP" in metrics else "", elapsed)
    if stop:
        log.info("early stopping: %s did not improve by more than %g for %d epoch(s); stopped after epoch %d",
                 run.stopper.monitor, run.stopper.min_delta, run.stopper.patience, epoch)
        run.status.write(f"Early stopping after epoch {epoch}: {run.stopper.monitor} stopped improving")
    return stop


def _load_model(spec, resume_model, initial_epoch, device, world):
    """(model on device, arch, checkpoint state or None): fresh, or from -m (pretrained, pruned or, with
    initial_epoch > 1, the training checkpoint to resume)."""
    model, arch = build_model(spec)
    state = None
    if resume_model:
        state = load_checkpoint(resume_model)
        check_matches_spec(state, arch, resume_model)
        model = build_from_checkpoint(state)  # keeps a pruned checkpoint's widths
        if initial_epoch > 1 and state.get("optimizer") is None:
            raise TaoflowError(f"{resume_model} has no optimizer state; resume needs a training checkpoint")
    elif initial_epoch > 1:
        raise TaoflowError("--initial_epoch > 1 needs -m with the checkpoint to resume from")
    model = model.to(device).to(memory_format=torch.channels_last)  # both CUDA and oneDNN prefer it
    _freeze(model, spec)
    if world > 1:  # every rank starts from rank 0's weights, as DDP and Horovod's broadcast make sure
        with collective("the broadcast of rank 0's weights"):
            for tensor in model.state_dict().values():
                torch.distributed.broadcast(tensor, 0)
    return model, arch, state


def _group_initialized():
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def _resume_step(state, initial_epoch, iters, world):
    """Where the learning-rate schedule resumes: the checkpoint's own step count when as many ranks wrote it as now
    resume it (an interrupted run then ends as an uninterrupted one); else TAO's init_step, (initial_epoch - 1)
    epochs of this run's size."""
    written_by = state.get("world_size") or 1  # checkpoints from before multi-GPU sharding: one process
    if written_by == world:
        return state.get("global_step") or 0
    log.info("resuming a checkpoint of %d rank(s) with %d: the learning rate schedule restarts at epoch %d's first "
             "step (%d steps of %d per epoch)", written_by, world, initial_epoch, (initial_epoch - 1) * iters, iters)
    return (initial_epoch - 1) * iters


def _mean_over_ranks(values, device):
    """(mean, count) of all ranks' values, on every rank (NaN when there are none)."""
    t = torch.tensor([sum(values), len(values)], dtype=torch.float64, device=device)
    with collective("the epoch's loss all-reduce"):
        torch.distributed.all_reduce(t)
        total, count = t.tolist()
    return (total / count if count else math.nan), int(count)


def _write_text_atomic(path, text):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
