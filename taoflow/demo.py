"""`taoflow demo`: the README's main command, on embedded demo data.

Today it runs the data stage end to end — generate a CRPD-format dataset, convert it to KITTI, split off a
validation set, write TAO-layout TFRecords from a rendered copy of specs/crpd/ssd_tfrecords_crpd.txt — and prints
where everything is. Training, export and deployment join as those stages land.
"""

import json
import os
import time
from pathlib import Path

from .datasets.crpd import convert_crpd
from .datasets.demo import generate_crpd
from .datasets.split import split_dataset
from .datasets.tfrecords import dataset_convert
from .errors import TaoflowError
from .fsutil import write_text_atomic
from .parallel import default_workers
from .spec import load_dataset_export, render, rewrite_paths

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"


def run_demo(workspace="workspace", num_images=300, seed=0, workers=None, progress=True, fresh=False):
    ws = Path(workspace).resolve()
    workers = workers or default_workers()
    spec_path = SPECS_DIR / "crpd" / "ssd_tfrecords_crpd.txt"
    if not spec_path.is_file():
        raise TaoflowError(f"{spec_path} not found: run taoflow demo from a taoflow checkout (pip install -e .)")
    t0 = time.time()
    raw = ws / "raw" / "crpd_demo"
    data_root = ws / "data"
    kitti, split, records = (data_root / "crpd" / name for name in ("kitti", "split", "tfrecords"))
    replace = bool(fresh)
    steps = {}
    if fresh or not raw.exists():
        steps["demo_data"] = generate_crpd(raw, num_images=num_images, seed=seed, workers=workers, progress=progress,
                                           replace=replace)
    steps["convert"] = convert_crpd(raw, kitti, workers=workers, progress=progress, replace=True)
    steps["split"] = split_dataset(kitti / "train" / "image", kitti / "train" / "label", split, val_split=10,
                                   workers=workers, progress=progress, replace=True)
    # Render the shipped spec for this run: its relative data paths become absolute workspace paths.
    spec = load_dataset_export(spec_path)
    rendered = rewrite_paths(spec.raw, lambda _field, value: os.path.join(data_root, value))
    run_spec = ws / "specs" / spec_path.name
    run_spec.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_spec, render(rendered))
    steps["tfrecords"] = dataset_convert(run_spec, records / "crpd_train", workers=workers, progress=progress,
                                         replace=True)
    summary = {
        "workspace": str(ws),
        "raw_dataset": str(raw),
        "kitti": str(kitti),
        "split": str(split),
        "tfrecords": str(records),
        "dataset_convert_spec": str(run_spec),
        "images": steps["tfrecords"]["num_images"],
        "objects": steps["tfrecords"]["objects"],
        "wall_seconds": round(time.time() - t0, 2),
    }
    write_text_atomic(ws / "demo_summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def add_cli_arguments(parser):
    parser.add_argument("-w", "--workspace", default="workspace", help="data and results (default ./workspace)")
    parser.add_argument("-n", "--num-images", type=int, default=300, help="demo images to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-j", "--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    parser.add_argument("--fresh", action="store_true", help="regenerate the demo data even if it exists")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary")
    parser.add_argument("--no-progress", action="store_true")


def run_cli(args):
    summary = run_demo(args.workspace, num_images=args.num_images, seed=args.seed, workers=args.workers,
                       progress=not args.no_progress, fresh=args.fresh)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    print(f"taoflow demo finished in {summary['wall_seconds']} s (data stage; training lands with the SSD backend)")
    print(f"  demo CRPD dataset : {summary['raw_dataset']}")
    print(f"  KITTI labels      : {summary['kitti']}")
    print(f"  train/val split   : {summary['split']}")
    print(f"  TFRecords         : {summary['tfrecords']}  ({summary['images']} images, objects {summary['objects']})")
    print(f"  rendered spec     : {summary['dataset_convert_spec']}")
    return 0
