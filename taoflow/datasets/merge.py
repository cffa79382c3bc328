"""Merge several converted KITTI datasets (image/ + label/) into one, so that one val split covers them all.

Each source's files are linked (never copied or re-encoded) under `<source>__<original name>`: two datasets that
both number their frames 000000, 000001, ... do not collide, and every merged frame says where it came from, so the
TFRecords stage can write one record set per source (TAO's repeated `data_sources`).
"""

import json
import re
from collections import Counter
from pathlib import Path

from .. import fsutil
from ..errors import TaoflowError
from . import images as imgs
from .kitti import kitti_class_counts

SEPARATOR = "__"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def check_source_name(name):
    if not isinstance(name, str) or not NAME.match(name) or SEPARATOR in name:
        raise TaoflowError(f"dataset name {name!r}: use lowercase letters, digits, '-' and single '_' "
                           f"(it prefixes the merged file names as <name>{SEPARATOR}<file>)")
    return name


def source_of(filename):
    """The source name a merged file name starts with, or None."""
    name, sep, _ = Path(filename).name.partition(SEPARATOR)
    return name if sep else None


def merge_kitti(sources, output_dir, replace=False):
    """sources: [(name, image_dir, label_dir)]; link them into output_dir/{image,label}; return the report."""
    names = [check_source_name(name) for name, _, _ in sources]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise TaoflowError(f"two datasets are both named {dup!r}; give each a distinct name")
    report = {"step": "merge", "sources": {}}
    with fsutil.atomic_dir(output_dir, replace=replace) as tmp:
        (tmp / "image").mkdir()
        (tmp / "label").mkdir()
        for name, image_dir, label_dir in sources:
            pairs, problems = imgs.pair_images_labels(image_dir, label_dir)
            if problems:
                imgs.raise_problem(problems[0])
            objects = Counter()
            for stem, image, label in pairs:
                fsutil.link_or_copy(image, tmp / "image" / f"{name}{SEPARATOR}{Path(image).name}")
                fsutil.link_or_copy(label, tmp / "label" / f"{name}{SEPARATOR}{stem}.txt")
                objects.update(kitti_class_counts(label))
            report["sources"][name] = {"images": len(pairs), "objects": dict(sorted(objects.items())),
                                       "image_dir": str(image_dir)}
        report["images"] = sum(s["images"] for s in report["sources"].values())
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return report
