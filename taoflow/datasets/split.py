"""Deterministic train/val split of a KITTI dataset into the layout of TAO 5's generate_split.py.

TAO's sample scripts take the first val_split% of `os.listdir` (filesystem order, *.png only) and the TAO 3/4 one
*moves* the files. Here the input is never touched: files are hard-linked (copied across filesystems) into
`<output>/training/{image,label}` and `<output>/val/{image,label}`, every image extension counts, and the choice is
reproducible: stems sorted, shuffled with random.Random(seed), the first int(N * val_split / 100) go to val.
Images get the check `convert` gives them (images.image_size: header, truncation, size limit), so a file that
convert would refuse is not passed on by split.
"""

import json
import math
import os
import random
import sys
from collections import Counter
from functools import partial
from pathlib import Path

from .. import fsutil
from ..errors import DataError, TaoflowError
from ..parallel import default_workers, map_chunks, worker_pool
from . import images as imgs
from .kitti import kitti_class_counts

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


def _check_chunk(jobs, out_root=None, max_side=imgs.MAX_IMAGE_SIDE):
    """Per (side, image, label): (problem, {class: objects}, link error); the first problem ends it.

    Strict validation: an image convert would refuse (imgs.image_size, the same check) or a label TAO's converter
    would reject should fail here, naming the file (and line), not later in TAO or in training.
    Problems come back as data so the caller raises the first one in sorted order whatever the worker count.
    With out_root, each image and label is also linked under out_root/side. A failed link comes back as data too
    and stops the linking, not the checking: a bad label further on is still the error to raise.
    """
    out, linking = [], out_root is not None
    for side, image, label in jobs:
        try:
            imgs.image_size(image, max_side)
            classes = kitti_class_counts(label)
        except DataError as err:
            out.append((imgs.problem_from(err), None, None))
            break
        link_error = None
        if linking:
            try:
                _link(out_root, side, image, label)
            except OSError as err:
                link_error, linking = err, False
        out.append((None, classes, link_error))
    return out


def _link_chunk(jobs, out_root):
    for side, image, label in jobs:
        _link(out_root, side, image, label)
    return [None] * len(jobs)


def _link(out_root, side, image, label):
    fsutil.link_or_copy(image, os.path.join(out_root, side, "image", os.path.basename(image)))
    fsutil.link_or_copy(label, os.path.join(out_root, side, "label", os.path.basename(label)))


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
    for stem in stems:  # plain loops: Counter.update is slow per call, and this runs per image
        for c, n in classes[stem].items():
            images[c] += 1
            objects[c] += n
    return {c: {"images": images[c], "objects": objects[c]} for c in sorted(images)}


def split_dataset(image_dir, label_dir, output_dir, val_split=10, seed=42, stratify=False, workers=1, progress=True,
                  replace=False, max_side=imgs.MAX_IMAGE_SIDE):
    """Link a KITTI image/label pair of directories into <output>/training and <output>/val; return split.json."""
    check_val_split(val_split)
    imgs.check_max_side(max_side)
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
    # Without stratification the val images follow from the stems alone, so one pass over the images checks the
    # labels and links the files. Links into one directory are serialised by the filesystem and gain nothing from
    # more workers; in one pass they overlap with the label checks, which do. Two passes (check, then link) when a
    # stratified choice needs the classes first, and when creating the output before the labels are checked would
    # show: a bad label is reported before an existing output is refused, and leaves no new parent directory.
    one_pass = not stratify and (replace or not output_dir.exists()) and output_dir.parent.is_dir()
    with worker_pool(workers) as pool:  # one pool for both passes, when there are two
        if one_pass:
            val = choose_val([stem for stem, _, _ in pairs], None, val_split, seed)
        else:
            classes = _check_labels(pairs, [(None, image, label) for _, image, label in pairs], None, workers,
                                    progress, pool, max_side)
            val = choose_val(classes.keys(), classes, val_split, seed, stratify)
        jobs = [("val" if stem in val else "training", image, label) for stem, image, label in pairs]
        with fsutil.atomic_dir(output_dir, replace=replace) as tmp:
            for side in SIDES:
                for sub in ("image", "label"):
                    (tmp / side / sub).mkdir(parents=True)
            if one_pass:
                classes = _check_labels(pairs, jobs, str(tmp), workers, progress, pool, max_side)
            else:
                map_chunks(partial(_link_chunk, out_root=str(tmp)), jobs, workers=workers, desc="link",
                           progress=progress, pool=pool)
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
            (tmp / "split.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return report


def _check_labels(pairs, jobs, out_root, workers, progress, pool, max_side):
    """Run _check_chunk over jobs; return {stem: {class: objects}}, raising the first problem in sorted order."""
    results = map_chunks(partial(_check_chunk, out_root=out_root, max_side=max_side), jobs, workers=workers,
                         desc="labels" if out_root is None else "split", progress=progress, pool=pool)
    for bad, _, _ in results:
        if bad:
            imgs.raise_problem(bad)
    for _, _, link_error in results:
        if link_error:
            raise link_error
    return {stem: classes for (stem, _, _), (_, classes, _) in zip(pairs, results)}


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
    imgs.add_max_side_argument(parser)
    parser.add_argument("-j", "--workers", type=int, default=default_workers(), help="worker processes")
    parser.add_argument("--replace", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args):
    report = split_dataset(args.input_image_dir, args.input_label_dir, args.output_dir, val_split=args.val_split,
                           seed=args.seed, stratify=args.stratify, workers=args.workers,
                           progress=not args.no_progress, replace=args.replace, max_side=args.max_image_side)
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
