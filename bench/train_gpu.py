#!/usr/bin/env python3
"""SSD-ResNet18 300x300 training throughput on one GPU: end to end vs the model-only ceiling, in one run.

End to end = what `taoflow-ssd train` runs per step: batch assembly from the decoded-once, GPU-resident image cache
(view sampling, crop/zoom/flip/resize on the GPU), anchor matching and encoding, forward, TAO's SSD loss, the
regulariser, backward, SGD. The ceiling runs the same `train_step` (same model, batch size, precision, matching and
loss) on one resident batch, so the ratio isolates the input pipeline. Data: generated CRPD images through the real
data stage (convert -> split -> TFRecords). Ends with one line: train_img_s=... ceiling_img_s=... ratio=...
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

from taoflow.backends.native.build import anchors_for, build_model, soft_start_annealing_lr  # noqa: E402
from taoflow.backends.native.data import load_tfrecords, make_batch  # noqa: E402
from taoflow.backends.native.train import CACHE_SCALE, train_step  # noqa: E402
from taoflow.demo import prepare_data_stage  # noqa: E402
from taoflow.spec import load_experiment, render, rewrite_paths  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def timed(fn, steps, sync):
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--workspace", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/train_gpu.py needs a CUDA GPU")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    ws = Path(args.workspace or tempfile.mkdtemp(prefix="taoflow-bench-"))
    t0 = time.perf_counter()
    prepare_data_stage(ws, num_images=args.images, workers=os.cpu_count(), progress=False)
    print(f"data stage for {args.images} generated images: {time.perf_counter() - t0:.1f} s", flush=True)

    spec_path = REPO / "specs/crpd/ssd_train_resnet18_crpd.txt"
    raw = load_experiment(spec_path).raw
    raw.training_config.batch_size_per_gpu = args.batch_size
    run_spec = ws / "bench_train.txt"
    run_spec.write_text(render(rewrite_paths(raw, lambda _f, v: os.path.join(ws / "data", v))))
    spec = load_experiment(run_spec)
    model, arch = build_model(spec)
    model = model.to(device).to(memory_format=torch.channels_last)
    c, h, w = arch["input"]
    anchors = anchors_for(spec, arch["nlayers"]).to(device)
    t0 = time.perf_counter()
    cache = load_tfrecords([spec.effective.dataset_config.data_sources[0].tfrecords_path],
                           (round(h * CACHE_SCALE), round(w * CACHE_SCALE)), c)
    cache.images = cache.images.to(device)
    print(f"decoded {len(cache)} images once in {time.perf_counter() - t0:.1f} s "
          f"({cache.images.numel() / 2 ** 30:.2f} GiB resident on the GPU)", flush=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    use_amp = not args.no_amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    rng = np.random.default_rng(0)
    aug, mean, bs = spec.effective.augmentation_config, spec.image_mean(), args.batch_size
    sched = spec.effective.training_config.learning_rate.soft_start_annealing_schedule
    state = {"step": 0}

    def end_to_end():
        idx = rng.integers(0, len(cache), bs)
        batch = make_batch(cache, idx, rng, aug, (h, w), mean, device)
        batch = (batch[0].contiguous(memory_format=torch.channels_last),) + batch[1:]
        lr = soft_start_annealing_lr(state["step"], 10_000, sched)
        train_step(model, optimizer, scaler, batch, anchors, spec, lr, use_amp, device)
        state["step"] += 1

    resident = make_batch(cache, np.arange(bs) % len(cache), rng, aug, (h, w), mean, device)
    resident = (resident[0].contiguous(memory_format=torch.channels_last),) + resident[1:]

    def ceiling():
        train_step(model, optimizer, scaler, resident, anchors, spec, 1e-3, use_amp, device)

    model.train()
    sync = torch.cuda.synchronize
    timed(end_to_end, args.warmup, sync)
    timed(ceiling, args.warmup, sync)
    e2e = timed(end_to_end, args.steps, sync)
    ceil = timed(ceiling, args.steps, sync)
    e2e_ips, ceil_ips = args.steps * bs / e2e, args.steps * bs / ceil
    print(f"GPU: {torch.cuda.get_device_name()}, batch {bs}, {'fp16 AMP' if use_amp else 'fp32'}, channels_last")
    print(f"end to end: {e2e_ips:.0f} img/s; model-only ceiling: {ceil_ips:.0f} img/s; ratio {e2e_ips / ceil_ips:.2f} "
          "(targets: ratio >= 0.5 and >= 2000 img/s)")
    print(f"train_img_s={e2e_ips:.0f} ceiling_img_s={ceil_ips:.0f} ratio={e2e_ips / ceil_ips:.2f}")


if __name__ == "__main__":
    main()
