#!/usr/bin/env python3
"""Data-stage throughput: CRPD -> KITTI -> split -> TFRecords on generated images, against a plain file copy.

All timings come from one run on one machine (these machines are noisy). Every contender reads from a warm page cache
and is timed until it returns, as a user sees it. Each timed section starts after a sync, because this machine's
disk is slow enough that the deferred writeback of one contender's output otherwise lands on the next one's clock.
The plain copy (shutil.copytree of the same images and labels) runs before each stage run; the ratio uses the mean
of the two copies. Prints images/s of the whole stage, the copy time, their ratio (target <= 1.5) and the 1 -> 2
worker speed-up (target >= 1.7), and ends with one line:
data_stage_vs_copy=... speedup_2_workers=... images_per_s=...
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.datasets.crpd import convert_crpd  # noqa: E402
from taoflow.datasets.demo import generate_crpd  # noqa: E402
from taoflow.datasets.split import split_dataset  # noqa: E402
from taoflow.datasets.tfrecords import dataset_convert  # noqa: E402
from taoflow.spec import parse_dataset_export_text  # noqa: E402

SPEC = """kitti_config {{
  root_directory_path: "{root}"
  image_dir_name: "image"
  label_dir_name: "label"
  image_extension: ".jpg"
  partition_mode: "random"
  num_partitions: 2
  val_split: 0
  num_shards: {shards}
}}
target_class_mapping {{ key: "lpd" value: "lpd" }}
"""


def data_stage(raw, work, workers, shards):
    """The whole stage, as the pipeline runs it; returns (seconds, {step: seconds})."""
    os.sync()
    t0 = time.perf_counter()
    convert_crpd(raw, work / "kitti", splits=["train"], workers=workers, progress=False)
    t1 = time.perf_counter()
    split_dataset(work / "kitti/train/image", work / "kitti/train/label", work / "split", val_split=10,
                  workers=workers, progress=False)
    t2 = time.perf_counter()
    spec = parse_dataset_export_text(SPEC.format(root=work / "split/training", shards=shards))
    dataset_convert(spec, work / "tfrecords/train", workers=workers, progress=False)
    t3 = time.perf_counter()
    return t3 - t0, {"convert": t1 - t0, "split": t2 - t1, "tfrecords": t3 - t2}


def plain_copy(src, dst):
    os.sync()
    t0 = time.perf_counter()
    shutil.copytree(src, dst)
    return time.perf_counter() - t0


def ensure_dataset(raw, num_images, size, workers):
    stamp = raw / "bench_params.json"
    params = {"num_images": num_images, "size": list(size)}
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return
    print(f"generating {num_images} images at {size[0]}x{size[1]} into {raw} ...", flush=True)
    t0 = time.perf_counter()
    generate_crpd(raw, num_images=num_images, image_size=size, split_fractions=(1.0, 0.0, 0.0), seed=1,
                  workers=workers, progress=True, replace=True)
    stamp.write_text(json.dumps(params))
    print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--num-images", type=int, default=5000)
    p.add_argument("--image-size", default="1920x1080", help="CRPD frames are 1080p surveillance images")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "data_stage"))
    args = p.parse_args()
    size = tuple(int(v) for v in args.image_size.lower().split("x"))
    out = Path(args.out)
    raw = out / "raw"
    ensure_dataset(raw, args.num_images, size, workers=os.cpu_count() or 1)
    nbytes = sum(f.stat().st_size for f in raw.rglob("*") if f.is_file())
    print(f"dataset: {args.num_images} images, {nbytes / 1e6:.0f} MB", flush=True)

    results = {}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp = Path(tmp)
        plain_copy(raw / "train", tmp / "warm")  # warm the page cache for everyone
        shutil.rmtree(tmp / "warm")
        for workers in (1, 2):
            results[f"copy_{workers}"] = plain_copy(raw / "train", tmp / f"copy{workers}")
            results[f"stage_{workers}"], steps = data_stage(raw, tmp / f"stage{workers}", workers, args.shards)
            detail = ", ".join(f"{step} {t:.2f}" for step, t in steps.items())
            print(f"workers={workers}: data stage {results[f'stage_{workers}']:.2f} s ({detail}), "
                  f"plain copy {results[f'copy_{workers}']:.2f} s", flush=True)

    copy_s = (results["copy_1"] + results["copy_2"]) / 2
    ratio = results["stage_2"] / copy_s
    speedup = results["stage_1"] / results["stage_2"]
    ips = args.num_images / results["stage_2"]
    print(f"data stage (2 workers): {ips:.0f} images/s; plain copy of the same files: {copy_s:.2f} s; "
          f"ratio {ratio:.2f} (target <= 1.5); 1 -> 2 workers speed-up {speedup:.2f} (target >= 1.7)")
    print(f"data_stage_vs_copy={ratio:.2f} speedup_2_workers={speedup:.2f} images_per_s={ips:.0f}")


if __name__ == "__main__":
    main()
