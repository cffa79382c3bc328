#!/usr/bin/env python3
"""What pruning buys on the demo model: GFLOPs, parameters, mAP and ONNX Runtime latency before and after.

Runs the real chain on generated CRPD data: train (specs/demo/ssd_train_resnet10_demo_cpu.txt with a longer
schedule so L1 has time to shrink the filters the network does not need) -> prune with TAO's min_weight criterion
-> retrain (the demo retrain spec) -> export both models to ONNX and time them in ONNX Runtime on the CPU, one
thread, batch 1, in the same run. Uses a GPU for training when there is one. Ends with one line:
flops_ratio=... map_drop=... ort_speedup=...   (targets: flops_ratio >= 2, map_drop <= 0.01, ort_speedup >= 1.5)
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
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from taoflow.backends.native.build import anchors_for  # noqa: E402
from taoflow.backends.native.checkpoint import build_from_checkpoint, load_checkpoint  # noqa: E402
from taoflow.backends.native.evaluate import evaluate_model, load_model_for  # noqa: E402
from taoflow.backends.native.export import export_onnx  # noqa: E402
from taoflow.backends.native.prune import prune_checkpoint  # noqa: E402
from taoflow.backends.native.train import train  # noqa: E402
from taoflow.demo import prepare_data_stage  # noqa: E402
from taoflow.spec import load_experiment, render, rewrite_paths  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def gflops(model, c, h, w):
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, c, h, w))
    return counter.get_total_flops() / 2 / 1e9  # multiply-accumulates, as detector papers count "FLOPs"


def ort_latency_ms(path, shape, runs):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # an edge CPU core, and a stable measurement
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(0, 50, shape).astype(np.float32)
    for _ in range(5):
        sess.run(None, {"Input": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"Input": x})
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def render_spec(name, ws, out, **fields):
    raw = load_experiment(REPO / "specs/demo" / name, task="train").raw
    for path, value in fields.items():
        obj = raw
        *parents, leaf = path.split(".")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, value)
    out.write_text(render(rewrite_paths(raw, lambda _f, v: os.path.join(ws / "data", v))))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--retrain-epochs", type=int, default=10)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--pth", type=float, default=0.3, help="pruning threshold (-pth)")
    p.add_argument("--eq", default="intersection", help="equalization criterion (-eq)")
    p.add_argument("--runs", type=int, default=50, help="timed ONNX Runtime runs per model")
    p.add_argument("--workspace", default=None)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ws = Path(args.workspace or tempfile.mkdtemp(prefix="taoflow-prune-"))
    prepare_data_stage(ws, num_images=args.images, workers=os.cpu_count(), progress=False)
    size = {"augmentation_config.output_width": args.size, "augmentation_config.output_height": args.size}
    train_spec = render_spec("ssd_train_resnet10_demo_cpu.txt", ws, ws / "train.txt", **size,
                             **{"training_config.num_epochs": args.epochs, "training_config.batch_size_per_gpu": 16,
                                "training_config.learning_rate.soft_start_annealing_schedule.max_learning_rate": 0.01,
                                "eval_config.validation_period_during_training": args.epochs})
    retrain_spec = render_spec("ssd_retrain_resnet10_demo_cpu.txt", ws, ws / "retrain.txt", **size,
                               **{"training_config.num_epochs": args.retrain_epochs,
                                  "training_config.batch_size_per_gpu": 16,
                                  "eval_config.validation_period_during_training": args.retrain_epochs})
    t0 = time.perf_counter()
    base = train(train_spec, ws / "train", device=device)["checkpoint"]
    pruned = ws / "pruned.pth"
    report = prune_checkpoint(base, pruned, threshold=args.pth, equalization=args.eq)
    retrained = train(retrain_spec, ws / "retrain", resume_model=pruned, device=device)["checkpoint"]
    print(f"train + prune + retrain on {device}: {time.perf_counter() - t0:.0f} s", flush=True)

    rows = {}
    for name, spec_path, ckpt in (("unpruned", train_spec, base), ("pruned+retrained", retrain_spec, retrained)):
        spec, model, arch = load_model_for(spec_path, ckpt)
        c, h, w = arch["input"]
        m = evaluate_model(model.to(device), spec, anchors_for(spec, arch["nlayers"]).to(device), device)["mAP"]
        onnx_path = ws / name / "model.onnx"
        export_onnx(spec_path, ckpt, onnx_path)
        cpu_model = build_from_checkpoint(load_checkpoint(ckpt))
        rows[name] = {"gflops": gflops(cpu_model, c, h, w), "params": sum(t.numel() for t in cpu_model.parameters()),
                      "map": m, "ort_ms": ort_latency_ms(onnx_path, (1, c, h, w), args.runs)}
    a, b = rows["unpruned"], rows["pruned+retrained"]
    print(f"{'model':<18}{'GFLOPs':>9}{'params':>12}{'mAP':>8}{'ORT ms':>9}")
    for name, r in rows.items():
        print(f"{name:<18}{r['gflops']:>9.3f}{r['params']:>12,}{r['map']:>8.4f}{r['ort_ms']:>9.2f}")
    print(f"pruning -pth {args.pth} -eq {args.eq}: parameter ratio {report['ratio']:.3f}")
    flops_ratio, map_drop, speedup = a["gflops"] / b["gflops"], a["map"] - b["map"], a["ort_ms"] / b["ort_ms"]
    print(f"flops_ratio={flops_ratio:.2f} map_drop={map_drop:.4f} ort_speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
