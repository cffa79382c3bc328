#!/usr/bin/env python3
"""SSD-ResNet18 300x300 training throughput on one GPU: end to end vs the hardware's model-only ceiling, in one run.

End to end = what `taoflow-ssd train` runs per step (step.TrainStep, compiled as train() compiles it on CUDA): batch
assembly from the decoded-once, GPU-resident image cache (crop windows drawn on the host, vectorised; pixels
cropped, zoomed, flipped and resized on the GPU), anchor matching and encoding, forward, TAO's SSD loss, the
regulariser, backward, fused SGD, with no host synchronisation.
The ceiling is what the hardware does with the same model alone: a second instance of the same network, compiled the
same way (CUDA graphs included), forward + backward + the same SGD with a trivial loss (mean of the outputs), same
batch size, precision (bfloat16 autocast) and memory format, on one resident batch. Both are timed twice,
interleaved; the best of each is kept. Then a real `taoflow-ssd train` (the CLI, as users run it, --use_amp) trains
on the same data for --cli-epochs epochs; its steady-state epoch (the fastest after the first, which compiles) gives
cli_epoch_img_s. Data: generated CRPD images through the real data stage (convert -> split -> TFRecords). Ends with
one line: train_img_s=... ceiling_img_s=... ratio=... cli_epoch_img_s=...
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from taoflow.backends.native.build import anchors_for, build_model, soft_start_annealing_lr  # noqa: E402
from taoflow.backends.native.data import load_tfrecords, make_batch  # noqa: E402
from taoflow.backends.native.step import TrainStep, amp_dtype, compile_mode, make_optimizer, make_scaler  # noqa: E402
from taoflow.backends.native.train import CACHE_SCALE  # noqa: E402
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


def cli_epochs(ws, raw, bs, epochs, use_amp):
    """Run `taoflow-ssd train` for `epochs` epochs; return (images per epoch, [seconds per epoch])."""
    raw.training_config.batch_size_per_gpu = bs
    raw.training_config.num_epochs = epochs
    raw.training_config.checkpoint_interval = epochs
    raw.eval_config.validation_period_during_training = 0
    spec = ws / "bench_cli_train.txt"
    spec.write_text(render(raw))
    results = ws / "cli_results"
    cmd = [sys.executable, "-m", "taoflow.backends.native", "train", "-e", str(spec), "-r", str(results)]
    cmd += ["--use_amp"] if use_amp else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    times = [float(r["time_per_epoch"].rstrip("s")) for r in map(json.loads, (results / "status.json").open())
             if "time_per_epoch" in r]
    return times, wall


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--cli-epochs", type=int, default=3, help="epochs of the CLI run (0: skip it)")
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
    raw = rewrite_paths(raw, lambda _f, v: os.path.join(ws / "data", v))
    run_spec = ws / "bench_train.txt"
    run_spec.write_text(render(raw))
    spec = load_experiment(run_spec)
    use_amp, bs = not args.no_amp, args.batch_size
    c, h, w = build_model(spec)[1]["input"]
    anchors = anchors_for(spec, build_model(spec)[1]["nlayers"]).to(device)
    t0 = time.perf_counter()
    cache = load_tfrecords([spec.effective.dataset_config.data_sources[0].tfrecords_path],
                           (round(h * CACHE_SCALE), round(w * CACHE_SCALE)), c)
    cache.images = cache.images.to(device)
    print(f"decoded {len(cache)} images once in {time.perf_counter() - t0:.1f} s "
          f"({cache.images.numel() / 2 ** 30:.2f} GiB resident on the GPU)", flush=True)

    def fresh_model():
        torch.manual_seed(0)
        return build_model(spec)[0].to(device).to(memory_format=torch.channels_last).train()

    # End to end: train()'s step on train()'s batches.
    model = fresh_model()
    optimizer = make_optimizer(model.parameters(), device)
    stepper = TrainStep(model, model, optimizer, make_scaler(device, use_amp), anchors, spec, device, use_amp, bs,
                        max(len(b) for b in cache.boxes))
    rng = np.random.default_rng(0)
    aug, mean = spec.effective.augmentation_config, spec.image_mean()
    sched = spec.effective.training_config.learning_rate.soft_start_annealing_schedule
    state = {"step": 0, "losses": []}

    def end_to_end():
        idx = rng.integers(0, len(cache), bs)
        batch = make_batch(cache, idx, rng, aug, (h, w), mean, device)
        lr = soft_start_annealing_lr(state["step"], 10_000, sched)
        state["losses"].append(stepper(batch, lr))
        state["step"] += 1

    # Ceiling: the same network alone, compiled, trivial loss, same SGD, batch, precision and memory format.
    ceil_model = fresh_model()
    ceil_opt = make_optimizer(ceil_model.parameters(), device)
    dtype = amp_dtype(device)

    def model_only(images):
        with torch.autocast("cuda", dtype=dtype, enabled=use_amp):
            conf, loc = ceil_model(images)
        return conf.float().mean() + loc.float().mean()
    mode = compile_mode(device)
    model_only = torch.compile(model_only, dynamic=False, mode=mode)
    resident = make_batch(cache, np.arange(bs) % len(cache), rng, aug, (h, w), mean, device)[0]
    resident = resident.contiguous(memory_format=torch.channels_last)

    def ceiling():
        if mode:
            torch.compiler.cudagraph_mark_step_begin()
        for group in ceil_opt.param_groups:
            group["lr"] = 1e-4
        loss = model_only(resident)
        ceil_opt.zero_grad(set_to_none=True)
        loss.backward()
        ceil_opt.step()

    sync = torch.cuda.synchronize
    t0 = time.perf_counter()
    timed(end_to_end, args.warmup, sync)
    print(f"end-to-end step compiled and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    timed(ceiling, args.warmup, sync)
    print(f"model-only step compiled and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
    e2e, ceil = [], []
    for _ in range(2):
        e2e.append(args.steps * bs / timed(end_to_end, args.steps, sync))
        ceil.append(args.steps * bs / timed(ceiling, args.steps, sync))
    losses = torch.stack(state["losses"]).float().cpu()
    assert torch.isfinite(losses).all(), "end-to-end training diverged"
    e2e_ips, ceil_ips = max(e2e), max(ceil)
    print(f"GPU: {torch.cuda.get_device_name()}, batch {bs}, {dtype if use_amp else 'fp32'} autocast, channels_last, "
          f"torch.compile mode {mode or 'default'}; "
          f"end to end {[round(v) for v in e2e]} img/s, ceiling {[round(v) for v in ceil]} img/s; "
          f"loss {losses[:5].mean():.3f} -> {losses[-5:].mean():.3f}", flush=True)
    cli_ips = float("nan")
    if args.cli_epochs:
        per_epoch = len(cache)
        del stepper, model, optimizer, ceil_model, ceil_opt, cache
        torch.cuda.empty_cache()
        times, wall = cli_epochs(ws, raw, bs, args.cli_epochs, use_amp)
        steady = min(times[1:]) if len(times) > 1 else times[0]
        cli_ips = per_epoch / steady
        print(f"taoflow-ssd train --use_amp: {len(times)} epochs of {per_epoch} images in {wall:.1f} s wall "
              f"(process start, decode and compile included); epoch times {times} s; steady epoch "
              f"{cli_ips:.0f} img/s", flush=True)
    print(f"train_img_s={e2e_ips:.0f} ceiling_img_s={ceil_ips:.0f} ratio={e2e_ips / ceil_ips:.2f} "
          f"cli_epoch_img_s={cli_ips:.0f}")


if __name__ == "__main__":
    main()
