#!/usr/bin/env python3
"""SSD-ResNet18 300x300 training on 1, 2 and (where the machine has them) 4 GPUs, end to end through
`taoflow-ssd train --gpus N --use_amp` (the CLI, as users run it): images/s and the final mAP, against one GPU.

Data: generated CRPD images through the real data stage (convert -> split -> TFRecords); --images is chosen so that
every epoch is whole batches on every GPU count that runs (the default 12,800 generated images leave 9,216 training
images: 72 steps of 128 on one GPU, 36 on two, 18 on four), and the bench refuses counts that would leave a partial
batch. Each GPU count trains from scratch for --epochs epochs on specs/crpd/ssd_train_resnet18_crpd.txt with
batch_size_per_gpu --batch-size, validates once, after the last epoch, and checkpoints only then.

img/s: training images of an epoch / the median time of the steady epochs (status.json's time_per_epoch of epochs
2 .. E-1: epoch 1 compiles the step, epoch E validates). scaling = img_s_n / img_s_1. mAP: the CSV's, after epoch E.

Learning rate: taoflow applies TAO's rule (TAO's ssd/scripts/train.py: base_lr = max_learning_rate x hvd.size(),
min_learning_rate likewise, ceil(images / batch_size_per_gpu / GPUs) steps per epoch), so N GPUs train with an
N-times larger global batch and learning rate for 1/N as many steps (the linear scaling rule); map_n is measured
with that rule in effect, at the same number of epochs as map_1.

Prints each run's figures, then one line: gpus=N img_s_1=... img_s_n=... scaling=... map_1=... map_n=...
A machine with fewer GPUs than --gpus is told so and exits 2: no figure is made up.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.errors import TaoflowError  # noqa: E402
from taoflow.gpus import machine_gpus, training_placement  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "specs/crpd/ssd_train_resnet18_crpd.txt"
NAME = "bench/train_multi_gpu.py"


def fail(message, code=2):
    print(f"{NAME}: {message}", file=sys.stderr)
    sys.exit(code)


def gpu_counts(n):
    """The GPU counts to run: 1, then 2, 4, 8 ... up to n, and n itself."""
    counts = [1]
    while counts[-1] * 2 <= n:
        counts.append(counts[-1] * 2)
    return counts + ([n] if counts[-1] != n else [])


def check_gpus(n):
    """The machine has n GPUs for the ranks (the CLI's own check, taoflow.gpus.training_placement); else exit 2."""
    import torch
    if not torch.cuda.is_available():
        fail("needs CUDA GPUs; PyTorch sees none on this machine")
    try:
        if not training_placement(n):
            fail("no GPU is listed by $TAOFLOW_GPUS, CUDA_VISIBLE_DEVICES or nvidia-smi")
    except TaoflowError as e:
        fail(f"{e}: no {n}-GPU figure can be measured on this machine (--gpus {len(machine_gpus())} runs what it "
             f"has)")


def gpu_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        names = out.stdout.split("\n")
        return names[0].strip() if out.returncode == 0 and names[0].strip() else "unknown GPU"
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"


def write_spec(ws, batch_size, epochs):
    from taoflow.spec import load_experiment, render, rewrite_paths
    raw = load_experiment(SPEC).raw
    tc = raw.training_config
    tc.batch_size_per_gpu, tc.num_epochs, tc.checkpoint_interval = batch_size, epochs, epochs
    raw.eval_config.validation_period_during_training = epochs
    raw = rewrite_paths(raw, lambda _f, v: os.path.join(ws / "data", v))
    path = ws / "bench_multi_gpu_train.txt"
    path.write_text(render(raw))
    return path


def train_on(ws, spec, gpus, use_amp):
    """`taoflow-ssd train --gpus N` from scratch; returns (epoch times, final mAP, wall seconds)."""
    results = ws / f"results_{gpus}gpu"
    cmd = [sys.executable, "-m", "taoflow.backends.native", "train", "-e", str(spec), "-r", str(results),
           "--gpus", str(gpus)] + (["--use_amp"] if use_amp else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    print(f"--- {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    code = subprocess.run(cmd, env=env, cwd=REPO).returncode
    wall = time.perf_counter() - t0
    if code != 0:
        fail(f"taoflow-ssd train --gpus {gpus} failed (exit {code})", 1)
    times = [float(r["time_per_epoch"].rstrip("s")) for r in map(json.loads, (results / "status.json").open())
             if "time_per_epoch" in r]
    rows = list(csv.DictReader((results / "ssd_training_log_resnet18.csv").open()))
    return times, float(rows[-1]["mAP"]), wall


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=None,
                   help="the largest GPU count to run (default: 4 where the machine has 4 or more, else 2)")
    p.add_argument("--images", type=int, default=12800, help="images to generate (default 12800: 9216 to train)")
    p.add_argument("--batch-size", type=int, default=128, help="batch_size_per_gpu")
    p.add_argument("--epochs", type=int, default=10, help="epochs of every run (3 or more)")
    p.add_argument("--no-amp", action="store_true", help="train in float32 (default: --use_amp, bfloat16)")
    p.add_argument("--workspace", default=None)
    args = p.parse_args()
    if args.epochs < 3:
        fail("--epochs must be 3 or more (epoch 1 compiles, the last validates)")
    n = args.gpus if args.gpus is not None else (4 if len(machine_gpus()) >= 4 else 2)
    if n < 1:
        fail("--gpus must be 1 or more")
    check_gpus(n)
    counts = gpu_counts(n)

    from taoflow.demo import prepare_data_stage
    ws = Path(args.workspace or tempfile.mkdtemp(prefix="taoflow-bench-mgpu-"))
    t0 = time.perf_counter()
    train_images = prepare_data_stage(ws, num_images=args.images, workers=os.cpu_count(), progress=False)["images"]
    print(f"data stage: {args.images} generated images, {train_images} to train, in {time.perf_counter() - t0:.1f} s",
          flush=True)
    partial = [k for k in counts if train_images % (args.batch_size * k)]
    if partial:
        fail(f"{train_images} training images leave a partial batch of {args.batch_size} on {partial} GPU(s); "
             f"choose --images so that the training images are a multiple of {args.batch_size * counts[-1]}")
    spec = write_spec(ws, args.batch_size, args.epochs)

    machine = f"{len(machine_gpus())} x {gpu_name()}, {os.cpu_count()} CPU cores"
    figures = {}
    for k in counts:
        times, mean_ap, wall = train_on(ws, spec, k, not args.no_amp)
        steady = statistics.median(times[1:-1])
        figures[k] = (train_images / steady, mean_ap)
        print(f"{k} GPU{'s' if k > 1 else ''}: {train_images // (args.batch_size * k)} steps of "
              f"{args.batch_size} per GPU per epoch, epoch times {times} s, steady {figures[k][0]:.0f} img/s, "
              f"mAP {mean_ap:.4f} after {args.epochs} epochs ({wall:.0f} s wall, process start, decode and compile "
              f"included)", flush=True)
    print(f"machine: {machine}; batch {args.batch_size} per GPU, {'float32' if args.no_amp else 'bf16 autocast'}, "
          f"learning rate x GPUs (TAO's rule), {args.epochs} epochs of {train_images} images", flush=True)
    (img_1, map_1), (img_n, map_n) = figures[1], figures[counts[-1]]
    print(f"gpus={counts[-1]} img_s_1={img_1:.0f} img_s_n={img_n:.0f} scaling={img_n / img_1:.2f} "
          f"map_1={map_1:.4f} map_n={map_n:.4f}")


if __name__ == "__main__":
    main()
