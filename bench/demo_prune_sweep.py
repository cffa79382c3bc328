#!/usr/bin/env python3
"""Sweep of the CPU demo's pruning recipe (specs/demo): regulariser, epochs, prune threshold and criterion, retraining
epochs and learning rate, each over training seeds and torch thread counts, on the demo data.

A plan (JSON) lists jobs; each job trains once with the demo's training spec and its overrides, measures the prune
ratio curve (parameters and GFLOPs kept, for every -pth of a grid and each -eq criterion), then for each of its
retraining variants prunes (a fixed -pth, or the smallest -pth of the grid that keeps at most `target` of both
parameters and GFLOPs) and retrains with the demo's retraining spec and its overrides, validating every epoch. Jobs
run in parallel, each pinned to its own cores (taskset) with as many torch threads, so a job runs as the demo runs on
a 2-core machine (or on one core: threads 1). Results land in <out>/<job>/result.json as each step finishes and in
<out>/results.json at the end, so a run cut off by --deadline keeps what it measured. Without --plan the demo's own
recipe (specs/demo as they are, taoflow.demo.DEMO_PRUNE) runs over training seeds at 2 threads and 1.

Prints one line per retraining, then one per recipe (training overrides and retraining variant) over its runs:
recipe=... runs=N map_min=... map_mean=... params_ratio_max=... gflops_ratio_max=...

Plan format: {"data_seed": 0, "num_images": 400, "jobs": [{"name": "l1_2e-3_e5_s42_t2", "threads": 2, "seed": 42,
"train": {"regularizer": "L1", "weight": 0.002, "epochs": 5, "max_lr": 0.005}, "retrains": [{"eq": "intersection",
"pth": 0.3, "epochs": 3, "max_lr": 0.005}, {"eq": "union", "target": 0.5}]}]}
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
TRAIN_SPEC = REPO / "specs/demo/ssd_train_resnet10_demo_cpu.txt"
RETRAIN_SPEC = REPO / "specs/demo/ssd_retrain_resnet10_demo_cpu.txt"
PTH_GRID = tuple(round(0.05 * i, 2) for i in range(1, 13))  # 0.05 .. 0.6
CRITERIA = ("intersection", "union")


def write_spec(src, dst, data_root, seed, overrides, validate_every=None):
    from taoflow.spec import load_experiment, render, rewrite_paths
    raw = load_experiment(src).raw
    tc = raw.training_config
    raw.random_seed = seed
    epochs = overrides.get("epochs", tc.num_epochs)
    tc.num_epochs = epochs
    tc.checkpoint_interval = epochs
    raw.eval_config.validation_period_during_training = validate_every or epochs
    schedule = tc.learning_rate.soft_start_annealing_schedule
    if "max_lr" in overrides:
        schedule.max_learning_rate = overrides["max_lr"]
    if "annealing" in overrides:
        schedule.annealing = overrides["annealing"]
    if "regularizer" in overrides:
        tc.regularizer.type = {"NO_REG": 0, "L1": 1, "L2": 2}[overrides["regularizer"]]
    if "weight" in overrides:
        tc.regularizer.weight = overrides["weight"]
    Path(dst).write_text(render(rewrite_paths(raw, lambda _f, v: os.path.join(data_root, v))))


def model_size(model, input_shape):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2e9


def ratio_curve(checkpoint):
    """{criterion: {pth: [params_ratio, gflops_ratio]}} of pruning this checkpoint (TAO's defaults otherwise)."""
    from taoflow.backends.native.checkpoint import build_from_checkpoint, load_checkpoint
    from taoflow.backends.native.prune import prune_model
    state = load_checkpoint(checkpoint)
    shape = state["arch"]["input"]
    params, gflops = model_size(build_from_checkpoint(state), shape)
    curve = {}
    for eq in CRITERIA:
        curve[eq] = {}
        for pth in PTH_GRID:
            model = build_from_checkpoint(state)
            prune_model(model, shape, pth, "max", eq)
            p, g = model_size(model, shape)
            curve[eq][str(pth)] = [round(p / params, 4), round(g / gflops, 4)]
    return {"params": params, "gflops": gflops, "curve": curve}


def run_job(job, workspace, out):
    import torch
    torch.set_num_threads(job["threads"])
    from taoflow.backends.native.evaluate import validation_fn
    from taoflow.backends.native.prune import prune_checkpoint
    from taoflow.backends.native.train import train
    from taoflow.fsutil import write_text_atomic
    d = Path(out) / job["name"]
    d.mkdir(parents=True, exist_ok=True)
    data_root = Path(workspace) / "data"
    result = {"job": job, "threads_seen": torch.get_num_threads(), "retrains": []}
    save = lambda: write_text_atomic(d / "result.json", json.dumps(result, indent=1))  # noqa: E731
    spec = d / "train.txt"
    write_spec(TRAIN_SPEC, spec, data_root, job["seed"], job.get("train", {}))
    t0 = time.time()
    trained = train(spec, d / "train", device="cpu", evaluate_fn=validation_fn)
    result.update(train_s=round(time.time() - t0, 1), train_map=trained["history"][-1].get("mAP"),
                  train_loss=trained["history"][-1].get("loss"))
    save()
    result.update(ratio_curve(trained["checkpoint"]))
    save()
    for i, variant in enumerate(job.get("retrains", [])):
        eq = variant.get("eq", "intersection")
        pth = variant.get("pth")
        if pth is None:  # the smallest -pth that keeps at most `target` of both parameters and GFLOPs
            fits = [float(p) for p, r in result["curve"][eq].items() if max(r) <= variant["target"]]
            if not fits:
                result["retrains"].append({"variant": variant, "skipped": "no -pth of the grid reaches the target"})
                save()
                continue
            pth = min(fits)
        pruned = d / f"pruned_{i}.pth"
        report = prune_checkpoint(trained["checkpoint"], pruned, threshold=pth, equalization=eq)
        rspec = d / f"retrain_{i}.txt"
        write_spec(RETRAIN_SPEC, rspec, data_root, job["seed"], variant, validate_every=1)
        t0 = time.time()
        retrained = train(rspec, d / f"retrain_{i}", resume_model=str(pruned), device="cpu",
                          evaluate_fn=validation_fn)
        from taoflow.backends.native.checkpoint import build_from_checkpoint, load_checkpoint
        state = load_checkpoint(retrained["checkpoint"])
        p, g = model_size(build_from_checkpoint(state), state["arch"]["input"])
        result["retrains"].append({
            "variant": variant, "eq": eq, "pth": pth, "retrain_s": round(time.time() - t0, 1),
            "params_ratio": round(p / result["params"], 4), "gflops_ratio": round(g / result["gflops"], 4),
            "maps": [h.get("mAP") for h in retrained["history"]], "map": retrained["history"][-1].get("mAP"),
            "kept": {k: v for k, v in report["layers"].items() if v[0] != v[1]}})
        save()


def run_plan(plan, workspace, out, cores, deadline):
    from taoflow.demo import prepare_data_stage
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    prepare_data_stage(workspace, num_images=plan.get("num_images", 400), seed=plan.get("data_seed", 0),
                       progress=False)
    print(f"data ready in {time.time() - t_start:.0f} s", flush=True)
    free, queue, running = list(cores), list(plan["jobs"]), {}
    while queue or running:
        for proc, (job, taken, log) in list(running.items()):
            if proc.poll() is not None:
                free += taken
                log.close()
                del running[proc]
                print(f"{job['name']} exited {proc.returncode} at {time.time() - t_start:.0f} s", flush=True)
        while queue and len(free) >= queue[0]["threads"]:
            job = queue.pop(0)
            taken, free = free[:job["threads"]], free[job["threads"]:]
            env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), MKL_NUM_THREADS=str(job["threads"]),
                       CUDA_VISIBLE_DEVICES="")
            log = open(out / f"{job['name']}.log", "w")
            cmd = ["taskset", "-c", ",".join(map(str, taken)), sys.executable, __file__, "--job", json.dumps(job),
                   "--workspace", str(workspace), "--out", str(out)]
            running[subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)] = (job, taken, log)
        if time.time() - t_start > deadline:
            print(f"deadline ({deadline} s): stopping {len(running)} jobs, {len(queue)} never started", flush=True)
            for proc in running:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            break
        time.sleep(1)
    results = []
    for job in plan["jobs"]:
        f = out / job["name"] / "result.json"
        if f.is_file():
            results.append(json.loads(f.read_text()))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for log in out.glob("*.log"):
            tar.add(log, arcname=log.name)
    for r in results:
        print_result(r)
    print_recipes(results)


def default_plan(cores):
    """The demo's own recipe over training seeds: a job per 2 cores (the last two at 1 thread, on 1 core each)."""
    from taoflow.demo import DEMO_PRUNE
    variant = {"eq": DEMO_PRUNE["prune_criterion"], "pth": DEMO_PRUNE["prune_threshold"]}
    pairs = max(1, len(cores) // 2)
    seeds = [42] + list(range(1, pairs))
    jobs = [{"name": f"demo_s{s}_t2", "threads": 2, "seed": s, "retrains": [variant]}
            for s in seeds[:max(1, pairs - 1)]]
    if pairs > 1:  # the last pair of cores: seeds 42 and 1 again, one thread each
        jobs += [{"name": f"demo_s{s}_t1", "threads": 1, "seed": s, "retrains": [variant]} for s in (42, 1)]
    return {"data_seed": 0, "num_images": 400, "jobs": sorted(jobs, key=lambda j: j["threads"])}


def print_recipes(results):
    groups = {}
    for r in results:
        train = ",".join(f"{k}:{v}" for k, v in sorted(r["job"].get("train", {}).items())) or "demo"
        for v in r.get("retrains", []):
            if "skipped" in v:
                continue
            key = f"{train}|{v['eq']},pth:{v['pth']},epochs:{v['variant'].get('epochs', 3)}"
            groups.setdefault(key, []).append(v)
    for key, runs in groups.items():
        maps = [v["map"] for v in runs]
        print(f"recipe={key} runs={len(runs)} map_min={min(maps):.4f} map_mean={sum(maps) / len(maps):.4f} "
              f"params_ratio_max={max(v['params_ratio'] for v in runs):.4f} "
              f"gflops_ratio_max={max(v['gflops_ratio'] for v in runs):.4f}")


def print_result(r):
    head = f"{r['job']['name']}: train_map={r.get('train_map')} train_s={r.get('train_s')}"
    if not r.get("retrains"):
        print(head)
    for v in r.get("retrains", []):
        if "skipped" in v:
            print(f"{head} {v['variant']}: skipped ({v['skipped']})")
            continue
        maps = " ".join(f"{m:.3f}" for m in v["maps"] if m is not None)
        print(f"{head} {v['eq']} pth={v['pth']} ep={v['variant'].get('epochs', 3)} "
              f"params_ratio={v['params_ratio']} gflops_ratio={v['gflops_ratio']} map={v['map']:.4f} ({maps}) "
              f"retrain_s={v['retrain_s']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", help="plan JSON file (default: the demo's own recipe over seeds and thread counts)")
    ap.add_argument("--job", help=argparse.SUPPRESS)  # one job, as the plan runs it in a child process
    ap.add_argument("--workspace", required=True, help="demo data workspace (generated when missing)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cores", default=f"0-{(os.cpu_count() or 1) - 1}", help="cores to use, e.g. 0-15")
    ap.add_argument("--deadline", type=float, default=540, help="seconds after which running jobs are stopped")
    ap.add_argument("--show", action="store_true", help="print an earlier run's results.json (--out) and exit")
    args = ap.parse_args()
    if args.show:
        results = json.loads((Path(args.out) / "results.json").read_text())
        for r in results:
            print_result(r)
        print_recipes(results)
        return
    if args.job:
        run_job(json.loads(args.job), args.workspace, args.out)
        return
    lo, _, hi = args.cores.partition("-")
    cores = list(range(int(lo), int(hi or lo) + 1))
    plan = json.loads(Path(args.plan).read_text()) if args.plan else default_plan(cores)
    run_plan(plan, Path(args.workspace), Path(args.out), cores, args.deadline)


if __name__ == "__main__":
    main()
