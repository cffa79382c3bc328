"""Test stand-in for TAO's `ssd` executable: records its argv and writes the files TAO's task would write.

The TAO backend tests put a copy of this script on a test-only PATH as `ssd`; the real `tao` launcher, run with
TAO_DOCKER_DISABLE=1, then executes `ssd <task> <args>` through its shell. Controlled by environment variables:
  STANDIN_RECORD      file to append one JSON line {"argv": [...]} per call to (kept outside the run directory)
  STANDIN_GENERATION  tao4 (.tlt checkpoints, -o/-l inference) or tao5 (.hdf5, -r inference, prune forces .hdf5)
  STANDIN_FAIL        "<task>:exit" exits 3 like a crash; "<task>:status" writes a FAILURE record and exits 0, as
                      TAO's scripts do when they catch SystemExit
It prints its whole command line, key included, so the tests can prove taoflow masks it.
"""

import json
import os
import sys
from pathlib import Path

FLAGS = {"-v", "--verbose", "--gen_ds_config", "--use_multiprocessing", "--use_amp", "-s", "--force_ptq"}
LISTS = {"-el", "--excluded_layers", "--gpu_index"}


def parse(args):
    opts, i = {}, 0
    while i < len(args):
        name = args[i]
        if name in FLAGS:
            opts[name] = True
            i += 1
        elif name in LISTS:
            j = i + 1
            while j < len(args) and not args[j].startswith("-"):
                j += 1
            opts[name] = args[i + 1:j]
            i = j
        else:
            opts[name] = args[i + 1]
            i += 2
    return opts


def status(results_dir, state, message, **extra):
    if not results_dir:
        return
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(results_dir) / "status.json", "a") as f:
        f.write(json.dumps({"date": "1/1/2025", "time": "0:00:00", "status": state, "verbosity": "INFO",
                            "message": message, **extra}) + "\n")


def main():
    task, args = sys.argv[1], sys.argv[2:]
    if os.environ.get("STANDIN_RECORD"):
        with open(os.environ["STANDIN_RECORD"], "a") as f:
            f.write(json.dumps({"argv": sys.argv[1:]}) + "\n")
    print("ssd stand-in invoked: ssd " + " ".join(sys.argv[1:]), flush=True)
    for name in sorted(n for n in os.environ if n.startswith("CLEARML_")):  # as TAO's ClearML setup might log
        print(f"clearml: {name}={os.environ[name]}", flush=True)
    o = parse(args)
    gen = os.environ.get("STANDIN_GENERATION", "tao5")
    results = o.get("-r") or o.get("--results_dir")
    if task == "evaluate" and not results:
        results = str(Path(o["-m"]).parent)
    fail = os.environ.get("STANDIN_FAIL", "")
    if fail == f"{task}:exit":
        print("Traceback (most recent call last):\nRuntimeError: stand-in crash", file=sys.stderr)
        return 3
    if fail == f"{task}:status":
        status(results, "FAILURE", "stand-in failure: bad spec")
        return 0
    for flag in ("-e", "-d", "-m", "-i"):
        if flag in o and not Path(o[flag]).exists():
            print(f"stand-in: {flag} {o[flag]} does not exist", file=sys.stderr)
            return 2
    status(results, "STARTED", f"Starting {task}.")
    globals()["do_" + task](o, gen, results)
    status(results, "SUCCESS", f"{task} finished successfully.")
    return 0


def do_dataset_convert(o, gen, results):
    prefix = o["-o"]
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    shard = f"{prefix}-fold-000-of-002-shard-00000-of-00001"
    Path(shard).write_bytes(b"records")
    Path(Path(shard).parent / ("idx-" + Path(shard).name)).write_text("0 7\n")
    print("Num images in Train: 3 Val: 0")


def do_train(o, gen, results):
    weights = Path(results) / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    ext = ".tlt" if gen == "tao4" else ".hdf5"
    for epoch in (1, 2):
        (weights / f"ssd_resnet18_epoch_{epoch:03d}{ext}").write_bytes(b"weights")
        status(results, "RUNNING", f"epoch {epoch}", epoch=epoch, max_epoch=2)
    (Path(results) / "ssd_training_log_resnet18.csv").write_text(
        "epoch,AP_lpd,loss,lr,mAP,validation_loss\n1,nan,12.5,0.001,nan,nan\n2,0.75,8.25,0.002,0.75,7.5\n")


def do_evaluate(o, gen, results):
    print("*******************************")
    print(f"{'lpd':<14}{'AP':<6}{0.812}")
    print(f"{'yellow_double_line':<14}{'AP':<6}{0.5}")
    print(f"{'':<14}{'mAP':<6}{0.656}")
    print("*******************************")


def do_prune(o, gen, results):
    out = o["-o"]
    if gen == "tao5" and not out.endswith(".hdf5"):
        out += ".hdf5"
    Path(out).write_bytes(b"pruned")
    print("2025-01-01 [TAO Toolkit] [INFO] magnet_prune 211: Pruning ratio (pruned model / original model): "
          "0.4321", file=sys.stderr)


def do_inference(o, gen, results):
    if gen == "tao5":
        images, labels = Path(results) / "images_annotated", Path(results) / "labels"
    else:
        images, labels = Path(o["-o"]), Path(o["-l"])
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for image in sorted(Path(o["-i"]).iterdir()):
        (images / image.name).write_bytes(image.read_bytes())
        (labels / (image.stem + ".txt")).write_text("lpd 0 0 0 1 2 3 4 0 0 0 0 0 0 0 0.9\n")


def do_export(o, gen, results):
    out = Path(o["-o"])
    if gen == "tao5" and out.exists():
        print(f"Output file {out} already exists", file=sys.stderr)
        sys.exit(1)
    out.write_bytes(b"model")
    if o.get("--gen_ds_config"):
        (out.parent / "labels.txt").write_text("background\nlpd\n")
        (out.parent / "nvinfer_config.txt").write_text("net-scale-factor=1.0\n")
    if o.get("--data_type") == "int8" and o.get("--cal_cache_file"):
        Path(o["--cal_cache_file"]).write_bytes(b"calibration")


def do_gen_trt_engine(o, gen, results):
    Path(o["--engine_file"]).write_bytes(b"engine")
    if o.get("--data_type") == "int8" and o.get("--cal_cache_file"):
        Path(o["--cal_cache_file"]).write_bytes(b"calibration")


if __name__ == "__main__":
    sys.exit(main())
