#!/usr/bin/env python3
"""Where the CPU demo's training time goes, and what would make it faster: per step of the demo spec (SSD-ResNet10,
224x224, batch 4), the batch assembly (make_batch: crops, flips, resize) and the optimisation step as `ssd train`
runs it on the CPU (train.train_step), then the same step with the model and input in channels_last memory format,
and optionally under torch.compile (step.TrainStep, what TAOFLOW_COMPILE=1 runs; its compile time is reported
apart). Variants are timed interleaved, in rounds, so that load from other processes hits them alike. Ends with:
batch_ms=... step_ms=... channels_last_ms=... [compiled_ms=... compile_s=...] threads=N
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from taoflow.backends.native.build import anchors_for, build_model  # noqa: E402
from taoflow.backends.native.data import EpochSampler, load_training_data, make_batch  # noqa: E402
from taoflow.backends.native.train import CACHE_SCALE, train_step  # noqa: E402
from taoflow.demo import prepare_data_stage  # noqa: E402
from taoflow.spec import load_experiment, render, rewrite_paths  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def demo_spec(ws, name="ssd_train_resnet10_demo_cpu.txt"):
    raw = load_experiment(REPO / "specs/demo" / name, task="train").raw
    path = Path(ws) / name
    path.write_text(render(rewrite_paths(raw, lambda _f, v: os.path.join(Path(ws) / "data", v))))
    return load_experiment(path, task="train")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", help="a demo workspace with data/ (default: a temporary one, generated)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time the compiled step (compiles for minutes)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ws = Path(args.workspace or tempfile.mkdtemp(prefix="demo_step_"))
    if not (ws / "data" / "crpd" / "tfrecords").is_dir():
        prepare_data_stage(ws, num_images=400, progress=False)
    spec = demo_spec(ws)
    device = torch.device("cpu")
    tc, aug = spec.effective.training_config, spec.effective.augmentation_config
    c, h, w = aug.output_channel, aug.output_height, aug.output_width
    data = load_training_data(spec.effective.dataset_config, (round(h * CACHE_SCALE), round(w * CACHE_SCALE)), c)
    sampler = EpochSampler(len(data), 0, 0, 1)
    sampler.set_epoch(1)
    anchors = anchors_for(spec, spec.ssd.nlayers)
    bs, mean = tc.batch_size_per_gpu, spec.image_mean()
    batches = [make_batch(data, sampler.batch(i, bs), sampler.rng, aug, (h, w), mean, device)
               for i in range(args.steps)]

    def eager(channels_last):
        torch.manual_seed(0)
        model, _ = build_model(spec)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", enabled=False)

        def run(batch):
            if channels_last:
                batch = (batch[0].contiguous(memory_format=torch.channels_last),) + batch[1:]
            train_step(model, opt, scaler, batch, anchors, spec, 1e-3, False, device)
        return run

    variants = {"step": eager(False), "channels_last": eager(True)}
    compile_s = None
    if args.compile:
        os.environ["TAOFLOW_COMPILE"] = "1"
        from taoflow.backends.native.step import TrainStep, make_optimizer, make_scaler
        torch.manual_seed(0)
        model, _ = build_model(spec)
        opt = make_optimizer(list(model.parameters()), device)
        step = TrainStep(model, model, opt, make_scaler(device, False), anchors, spec, device, False, bs,
                         max((len(b) for b in data.boxes), default=1))
        t0 = time.perf_counter()
        step(batches[0], 1e-3)
        step(batches[1], 1e-3)
        compile_s = time.perf_counter() - t0
        variants["compiled"] = lambda batch: step(batch, 1e-3)

    times = {k: [] for k in ["batch"] + list(variants)}
    for fn in variants.values():  # warm-up (oneDNN picks its kernels on the first calls)
        fn(batches[0])
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for i in range(args.steps):
            make_batch(data, sampler.batch(i, bs), sampler.rng, aug, (h, w), mean, device)
        times["batch"].append((time.perf_counter() - t0) / args.steps)
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for b in batches:
                fn(b)
            times[name].append((time.perf_counter() - t0) / args.steps)
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    line = f"batch_ms={ms['batch']:.1f} step_ms={ms['step']:.1f} channels_last_ms={ms['channels_last']:.1f}"
    if args.compile:
        line += f" compiled_ms={ms['compiled']:.1f} compile_s={compile_s:.0f}"
    print(line + f" threads={args.threads} steps_per_epoch={-(-len(data) // bs)}")


if __name__ == "__main__":
    main()
