"""Deterministic train/val split of a KITTI dataset into the layout of TAO 5's generate_split.py.

TAO's sample scripts take the first val_split% of `os.listdir` (filesystem order, *.png only) and the TAO 3/4 one
*moves* the files. Here the input is never touched: files are hard-linked (copied across filesystems) into
`<output>/training/{image,label}` and `<output>/val/{image,label}`, every image extension counts, and the choice is
reproducible: stems sorted, shuffled with random.Random(seed), the first int(N * val_split / 100) go to val.
"""

import json
import math
import random
import sys
from collections import Counter
from functools import partial
from pathlib import Path

from .. import fsutil
from ..errors import DataError, TaoflowError
from ..parallel import default_workers, map_chunks
from . import images as imgs
from .kitti import parse_kitti_file

SIDES = ("training", "val")
BACKGROUND = ""  # stratification group of images without objects


def check_val_split(val_split):
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or not math.isfinite(val_split):
        raise TaoflowError(f"val_split must be a number of percent, got {val_split!r}")
    if val_split < 0:
        raise TaoflowError(f"val_split must be a percentage in [0, 100), got {val_split}")
    if val_split >= 100:
        raise TaoflowError(f"val_split must be a percentage in [0, 100), got {val_split}: "
                           f"100 or more would leave no training images")


def _classes_chunk(label_paths):
    # Strict parsing: a label TAO's converter would reject should fail here, naming file:line, not later in TAO.
    # Problems come back as data so the caller raises the first one in sorted order whatever the worker count.
    out = []
    for path in label_paths:
        try:
            out.append((None, dict(Counter(obj.cls.lower() for obj in parse_kitti_file(path)))))
        except DataError as err:
            out.append((imgs.problem_from(err), None))
            break
    return out


def _link_chunk(jobs, out_root):
    for side, image, label in jobs:
        fsutil.link_or_copy(image, Path(out_root, side, "image", Path(image).name))
        fsutil.link_or_copy(label, Path(out_root, side, "label", Path(label).name))
    return [None] * len(jobs)


def _rarest_class(classes, images_per_class):
    if not classes:
        return BACKGROUND
    return min(classes, key=lambda c: (images_per_class[c], c))


def _apportion(sizes, total):
    """Split `total` over groups in proportion to their sizes (largest remainder, exact integer arithmetic)."""
    n = sum(sizes.values())
    quotas = {g: size * total // n for g, size in sizes.items()}
    left = total - sum(quotas.values())
    by_remainder = sorted(sizes, key=lambda g: (-(sizes[g] * total % n), g))
    for g in by_remainder[:left]:
        quotas[g] += 1
    return quotas


def choose_val(stems, classes, val_split, seed, stratify=False):
    """Return the set of val stems. classes: {stem: {class: objects}} (used only when stratify)."""
    order = sorted(stems)
    random.Random(seed).shuffle(order)
    n_val = int(len(order) * val_split / 100)
    if not stratify or n_val == 0:
        return set(order[:n_val])
    # Group each image under its rarest class, so rare classes get their share of val instead of whatever the
    # shuffle happens to give them; inside a group the shuffled order decides.
    images_per_class = Counter(c for stem in order for c in classes[stem])
    groups = {}
    for stem in order:
        groups.setdefault(_rarest_class(classes[stem], images_per_class), []).append(stem)
    quotas = _apportion({g: len(members) for g, members in groups.items()}, n_val)
    return {stem for g, members in groups.items() for stem in members[: quotas[g]]}


def _per_class(stems, classes):
    images, objects = Counter(), Counter()
    for stem in stems:
        images.update(classes[stem].keys())
        objects.update(classes[stem])
    return {c: {"images": images[c], "objects": objects[c]} for c in sorted(images)}


def split_dataset(image_dir, label_dir, output_dir, val_split=10, seed=42, stratify=False, workers=1, progress=True,
                  replace=False):
    """Link a KITTI image/label pair of directories into <output>/training and <output>/val; return split.json."""
    check_val_split(val_split)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaoflowError(f"seed must be an integer, got {seed!r}")
    image_dir, label_dir, output_dir = Path(image_dir), Path(label_dir), Path(output_dir)
    fsutil.check_not_inside(output_dir, image_dir)
    fsutil.check_not_inside(output_dir, label_dir)
    pairs, problems = imgs.pair_images_labels(image_dir, label_dir)
    if problems:
        imgs.raise_problem(problems[0])
    if not pairs:
        raise DataError("no images found", path=image_dir)
    counts = map_chunks(_classes_chunk, [label for _, _, label in pairs], workers=workers, desc="labels",
                        progress=progress)
    for bad, _ in counts:
        if bad:
            imgs.raise_problem(bad)
    classes = {stem: c for (stem, _, _), (_, c) in zip(pairs, counts)}
    val = choose_val(classes.keys(), classes, val_split, seed, stratify)
    sides = {"training": [s for s, _, _ in pairs if s not in val], "val": [s for s, _, _ in pairs if s in val]}
    report = {
        "step": "split",
        "image_dir": str(image_dir),
        "label_dir": str(label_dir),
        "output": str(output_dir),
        "seed": seed,
        "val_split": val_split,
        "stratify": bool(stratify),
        "counts": {side: len(stems) for side, stems in sides.items()},
        "per_class": {side: _per_class(stems, classes) for side, stems in sides.items()},
        **sides,
    }
    jobs = [("val" if stem in val else "training", str(image), str(label)) for stem, image, label in pairs]
    with fsutil.atomic_dir(output_dir, replace=replace) as tmp:
        for side in SIDES:
            for sub in ("image", "label"):
                (tmp / side / sub).mkdir(parents=True)
        map_chunks(partial(_link_chunk, out_root=str(tmp)), jobs, workers=workers, desc="link", progress=progress)
        (tmp / "split.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------------------------------- CLI


def add_cli_arguments(parser):
    # TAO's generate_val_dataset.py / generate_split.py spell the flags with underscores; dashes work too.
    parser.add_argument("--input_image_dir", "--input-image-dir", dest="input_image_dir", required=True,
                        help="directory of images")
    parser.add_argument("--input_label_dir", "--input-label-dir", dest="input_label_dir", required=True,
                        help="directory of KITTI labels, <stem>.txt per image")
    parser.add_argument("-o", "--output_dir", "--output-dir", dest="output_dir", required=True,
                        help="new directory for training/{image,label}, val/{image,label} and split.json")
    parser.add_argument("--val_split", "--val-split", dest="val_split", type=int, default=10,
                        help="percent of images for validation, 0 <= val_split < 100 (default 10)")
    parser.add_argument("--seed", type=int, default=42, help="shuffle seed (default 42)")
    parser.add_argument("--stratify", action="store_true",
                        help="keep each class's share of val close to val_split (groups images by their rarest class)")
    parser.add_argument("-j", "--workers", type=int, default=default_workers(), help="worker processes")
    parser.add_argument("--replace", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args):
    report = split_dataset(args.input_image_dir, args.input_label_dir, args.output_dir, val_split=args.val_split,
                           seed=args.seed, stratify=args.stratify, workers=args.workers,
                           progress=not args.no_progress, replace=args.replace)
    print(summary(report), file=sys.stderr)
    return 0


def summary(report):
    lines = [f"split: {report['counts']['training']} training, {report['counts']['val']} val images "
             f"(val_split {report['val_split']}%, seed {report['seed']}{', stratified' if report['stratify'] else ''})"
             f" -> {report['output']}"]
    for cls in sorted(set(report["per_class"]["training"]) | set(report["per_class"]["val"])):
        tr = report["per_class"]["training"].get(cls, {"images": 0})["images"]
        va = report["per_class"]["val"].get(cls, {"images": 0})["images"]
        lines.append(f"  {cls}: {tr} training / {va} val images")
    return "\n".join(lines)
