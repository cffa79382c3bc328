"""KITTI label format (the format TAO's SSD dataset_convert reads) and ingestion of KITTI-style traffic datasets.

TAO's converter asserts exactly 15 whitespace-separated fields per line and parses every field after the class as a
float, so anything else must be caught here with a file:line message rather than as an assert deep inside TAO.
"""

import argparse
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .. import fsutil
from ..errors import DataError, TaoflowError
from ..parallel import default_workers, map_chunks
from . import images as imgs

FIELD_NAMES = (
    "type", "truncated", "occluded", "alpha", "bbox_left", "bbox_top", "bbox_right", "bbox_bottom",
    "height", "width", "length", "x", "y", "z", "rotation_y", "score",
)
TRAFFIC_CLASS_MAP = {
    "car": "vehicle",
    "van": "vehicle",
    "truck": "vehicle",
    "pedestrian": "pedestrian",
    "person_sitting": "pedestrian",
    "cyclist": "bicycle",
}
PRESETS = {"traffic": TRAFFIC_CLASS_MAP}
# (image dir, label dir) pairs accepted as a KITTI dataset, KITTI's own names first.
LAYOUTS = (("image_2", "label_2"), ("image", "label"))


@dataclass
class KittiObject:
    cls: str
    truncation: float
    occlusion: int
    alpha: float
    x1: float
    y1: float
    x2: float
    y2: float
    h: float
    w: float
    l: float  # noqa: E741 - KITTI's own name for the length
    x: float
    y: float
    z: float
    rot_y: float
    score: float | None = None


def _num(value):
    # Shortest text that reads back as the same float: "0.0" for the zeros NVIDIA's LPD prep writes, and
    # KITTI's "1.57" stays "1.57".
    return repr(float(value))


def format_kitti_line(obj):
    """One KITTI line: 15 fields (16 with a score); box corners with 2 decimals like NVIDIA's LPD data prep."""
    fields = [
        obj.cls, _num(obj.truncation), str(int(obj.occlusion)), _num(obj.alpha),
        f"{obj.x1:.2f}", f"{obj.y1:.2f}", f"{obj.x2:.2f}", f"{obj.y2:.2f}",
        *(_num(v) for v in (obj.h, obj.w, obj.l, obj.x, obj.y, obj.z, obj.rot_y)),
    ]
    if obj.score is not None:
        fields.append(_num(obj.score))
    return " ".join(fields)


def read_text_lines(path):
    """Return [(1-based line number, text)] of a UTF-8 text file; DataError naming the line of a bad byte."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror or e}", path=Path(path)) from None
    try:
        # Every label file passes through here: decode in one call. A newline byte never occurs inside a UTF-8
        # sequence, so this equals decoding line by line whenever the file is valid.
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return _bad_utf8(data, path)
    lines[0] = lines[0].lstrip("\ufeff")
    return list(enumerate(lines, start=1))


def _bad_utf8(data, path):
    """Raise the DataError naming the first line (and column) that is not UTF-8."""
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"not valid UTF-8 (byte 0x{raw[e.start]:02x}); re-encode the file as UTF-8, "
                f"e.g. iconv -f GBK -t UTF-8", path=Path(path), line=lineno, column=e.start + 1,
            ) from None
    raise AssertionError("the whole file failed to decode, so one of its lines must")


def parse_number(token, what, path, lineno):
    """float(token), refusing text, NaN and infinities with a file:line message."""
    try:
        value = float(token)
    except ValueError:
        raise DataError(f"{what} is not a number: {token!r}", path=path, line=lineno) from None
    if not math.isfinite(value):
        raise DataError(f"{what} is not a finite number: {token!r}", path=path, line=lineno)
    return value


def _parse_occlusion(token, path, lineno):
    value = parse_number(token, "field 3 (occluded)", path, lineno)
    if not value.is_integer():
        raise DataError(f"field 3 (occluded) must be an integer, got {token!r}", path=path, line=lineno)
    return int(value)


def read_kitti_lines(path, allow_scores=False):
    """Return [(line number, KittiObject)] of a KITTI label file, strictly validated; blank lines ignored."""
    out = []
    for lineno, text in read_text_lines(path):
        fields = text.split()
        if not fields:
            continue
        if len(fields) == 16 and not allow_scores:
            raise DataError(
                "16 fields: the 16th looks like a detection score, and TAO's dataset_convert asserts exactly 15; "
                "drop the score column with `taoflow convert kitti --allow-scores`", path=path, line=lineno,
            )
        if len(fields) not in (15, 16):
            raise DataError(f"expected 15 space-separated KITTI fields, found {len(fields)}", path=path, line=lineno)
        nums = [
            parse_number(tok, f"field {i + 1} ({FIELD_NAMES[i]})", path, lineno)
            for i, tok in enumerate(fields) if i not in (0, 2)
        ]
        occlusion = _parse_occlusion(fields[2], path, lineno)
        score = nums[13] if len(fields) == 16 else None
        out.append((lineno, KittiObject(fields[0], nums[0], occlusion, *nums[1:13], score=score)))
    return out


def parse_kitti_file(path, allow_scores=False):
    """Parse a KITTI label file: exactly 15 fields per line (16 only with allow_scores), all numbers finite."""
    return [obj for _, obj in read_kitti_lines(path, allow_scores)]


def kitti_class_counts(path):
    """{lowercased class: objects} of a KITTI label file, validated exactly like parse_kitti_file (15 fields).

    For callers that only count classes (the split): a cheap check per line instead of a KittiObject and a
    per-token parse. Whenever a line does not pass it, the strict parser reads the file again and raises the
    error naming file, line and field; if it accepts the file after all, its objects are counted.
    """
    counts = {}
    for _, text in read_text_lines(path):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 15 or not _numbers_ok(fields):
            return dict(Counter(obj.cls.lower() for obj in parse_kitti_file(path)))
        cls = fields[0].lower()
        counts[cls] = counts.get(cls, 0) + 1
    return counts


def _numbers_ok(fields):
    """Fields 2..15 are finite numbers and field 3 (occluded) an integer, as read_kitti_lines demands."""
    try:
        nums = list(map(float, fields[1:]))
    except ValueError:
        return False
    # A NaN or infinity makes the sum non-finite; so can an overflow of finite values, which the strict parser
    # then accepts.
    return math.isfinite(sum(nums)) and nums[1].is_integer()


def tao_keeps_box(x1, y1, x2, y2):
    """TAO's converter truncates corners with int() and silently drops a box unless x1 < x2 and y1 < y2."""
    return int(x1) < int(x2) and int(y1) < int(y2)


def clip_box(x1, y1, x2, y2, width, height):
    """Clip a box to the image [0,W]x[0,H]; return None when it lies fully outside."""
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return None
    return max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))


# ---------------------------------------------------------------------------------------------------- ingestion


def find_layout(input_dir):
    """Return (image_dir, label_dir) of a KITTI dataset directory."""
    root = Path(input_dir)
    if not root.is_dir():
        raise DataError("input directory not found", path=root)
    found = [(root / i, root / lbl) for i, lbl in LAYOUTS if (root / i).is_dir() and (root / lbl).is_dir()]
    if len(found) > 1:
        raise DataError("both image_2/+label_2/ and image/+label/ exist; point at a directory with one", path=root)
    if not found:
        hint = f"; KITTI keeps them under {root / 'training'}" if (root / "training").is_dir() else ""
        raise DataError(f"expected image_2/ and label_2/ (or image/ and label/) in the input directory{hint}",
                        path=root)
    return found[0]


def normalize_class_map(class_map):
    """Lowercase keys and values (TAO lowercases class names) and refuse names that would break a KITTI line."""
    out = {}
    for src, dst in (class_map or {}).items():
        src, dst = str(src).strip().lower(), str(dst).strip().lower()
        if not src or not dst or any(c.isspace() for c in src + dst):
            raise TaoflowError(f"bad class mapping {src!r} -> {dst!r}: names must be non-empty single words")
        out[src] = dst
    return out


def map_class(name, class_map, drop_classes, drop_unmapped):
    """Return (output class, None) or (None, drop reason) for a source class name."""
    name = name.lower()
    if name in drop_classes:
        return None, "drop_class"
    if name in class_map:
        return class_map[name], None
    if drop_unmapped:
        return None, "unmapped_class"
    return name, None


def _convert_one(item, out_dir, config):
    stem, image_path, label_path = item
    try:
        width, height = imgs.image_size(image_path, config["max_side"])
        parsed = read_kitti_lines(label_path, config["allow_scores"])
    except DataError as err:
        return {"stem": stem, "problem": imgs.problem_from(err)}
    lines, objects, dropped, dropped_by_class, boxes = [], Counter(), Counter(), Counter(), []
    scores = clipped = 0
    for lineno, obj in parsed:
        scores += obj.score is not None
        target, reason = map_class(obj.cls, config["class_map"], config["drop_classes"], config["drop_unmapped"])
        box = None
        if reason is None and not (obj.x1 < obj.x2 and obj.y1 < obj.y2):
            reason = "empty_box"
        elif reason is None:
            box = clip_box(obj.x1, obj.y1, obj.x2, obj.y2, width, height)
            reason = "outside_image" if box is None else None if tao_keeps_box(*box) else "subpixel_box"
        if reason is not None:
            dropped[reason] += 1
            dropped_by_class[obj.cls.lower()] += 1
            if reason not in ("drop_class", "unmapped_class"):  # class drops are by request, not data problems
                boxes.append({"line": lineno, "reason": reason, "class": obj.cls.lower(),
                              "box": [obj.x1, obj.y1, obj.x2, obj.y2]})
            continue
        clipped += box != (obj.x1, obj.y1, obj.x2, obj.y2)
        obj.cls, obj.score = target, None
        obj.x1, obj.y1, obj.x2, obj.y2 = box
        lines.append(format_kitti_line(obj))
        objects[target] += 1
    name = os.path.basename(image_path)
    fsutil.link_or_copy(image_path, os.path.join(out_dir, "image", name))
    fsutil.write_file(os.path.join(out_dir, "label", f"{stem}.txt"), "".join(f"{line}\n" for line in lines).encode())
    return {
        "stem": stem, "ext": os.path.splitext(name)[1], "objects": objects, "dropped": dropped,
        "dropped_by_class": dropped_by_class, "boxes": boxes, "scores": scores, "clipped": clipped,
    }


def _convert_chunk(items, out_dir, config):
    results = []
    for item in items:
        results.append(_convert_one(item, out_dir, config))
        if "problem" in results[-1] and config["on_error"] == "fail":
            break  # the first problem in sorted order is raised by the caller; the rest of the chunk is moot
    return results


def convert_kitti(input_dir, output_dir, class_map=None, drop_classes=("dontcare",), allow_scores=False, workers=1,
                  progress=True, replace=False, on_error="fail", drop_unmapped=False, max_side=imgs.MAX_IMAGE_SIDE):
    """Convert a KITTI dataset (image_2/+label_2/ or image/+label/) into TAO's image/+label/ layout; return the report.

    Labels are rewritten as strict 15-field lines with class names lowercased and remapped; images are hard-linked.
    An image whose header claims more than max_side pixels a side is a bad file like a truncated one (on_error).
    """
    imgs.check_on_error(on_error)
    imgs.check_max_side(max_side)
    class_map = normalize_class_map(class_map)
    if drop_unmapped and not class_map:
        raise TaoflowError("drop_unmapped needs a class map (--preset or --class-map), or every object is dropped")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    image_dir, label_dir = find_layout(input_dir)
    fsutil.check_not_inside(output_dir, input_dir)
    pairs, problems = imgs.pair_images_labels(image_dir, label_dir)
    if problems and on_error == "fail":
        imgs.raise_problem(problems[0])
    if not pairs:
        raise DataError(f"no usable image/label pairs in {image_dir} and {label_dir}", path=input_dir)
    config = {
        "class_map": class_map, "drop_classes": frozenset(c.lower() for c in drop_classes),
        "drop_unmapped": drop_unmapped, "allow_scores": allow_scores, "on_error": on_error, "max_side": max_side,
    }
    with fsutil.atomic_dir(output_dir, replace=replace) as tmp:
        (tmp / "image").mkdir()
        (tmp / "label").mkdir()
        fn = partial(_convert_chunk, out_dir=str(tmp), config=config)
        results = map_chunks(fn, pairs, workers=workers, desc="kitti", progress=progress)
        report = _build_report(results, problems, input_dir, output_dir, (image_dir, label_dir), config)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return report


def _sum_counters(results, key):
    total = Counter()
    for r in results:
        total.update(r[key])
    return dict(sorted(total.items()))


def _build_report(results, problems, input_dir, output_dir, layout, config):
    image_dir, label_dir = layout
    problems = problems + [r["problem"] for r in results if "problem" in r]
    if problems and config["on_error"] == "fail":
        imgs.raise_problem(problems[0])  # results come in stem order, so this is the first bad image
    done = [r for r in results if "problem" not in r]
    if not done:
        raise DataError(f"no usable images left: all {len(problems)} were skipped", path=input_dir)
    return {
        "step": "convert_kitti",
        "input": str(input_dir),
        "output": str(output_dir),
        "layout": f"{image_dir.name}/+{label_dir.name}/",
        "class_map": config["class_map"],
        "drop_classes": sorted(config["drop_classes"]),
        "drop_unmapped": config["drop_unmapped"],
        "allow_scores": config["allow_scores"],
        "on_error": config["on_error"],
        "images": len(done),
        "empty_images": sum(1 for r in done if not r["objects"]),
        "image_extensions": dict(sorted(Counter(r["ext"] for r in done).items())),
        "objects": _sum_counters(done, "objects"),
        "dropped": _sum_counters(done, "dropped"),
        "dropped_by_class": _sum_counters(done, "dropped_by_class"),
        "scores_dropped": sum(r["scores"] for r in done),
        "clipped_boxes": sum(r["clipped"] for r in done),
        "dropped_boxes": [
            {"file": imgs.relative(label_dir / f"{r['stem']}.txt", input_dir), **b} for r in done for b in r["boxes"]
        ],
        "skipped": [{**p, "path": imgs.relative(p["path"], input_dir)}
                    for p in sorted(problems, key=lambda p: p["path"])],
    }


# ---------------------------------------------------------------------------------------------------------- CLI


def _class_pair(text):
    src, sep, dst = text.partition("=")
    if not sep or not src.strip() or not dst.strip():
        raise argparse.ArgumentTypeError(f"expected SRC=DST, got {text!r}")
    return src.strip(), dst.strip()


def add_cli_arguments(parser):
    parser.add_argument("-i", "--input-dir", required=True,
                        help="KITTI directory with image_2/+label_2/ or image/+label/")
    parser.add_argument("-o", "--output-dir", required=True, help="new directory for image/, label/ and report.json")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="class map preset (traffic: car/van/truck->vehicle, "
                        "pedestrian/person_sitting->pedestrian, cyclist->bicycle)")
    parser.add_argument("--class-map", action="append", type=_class_pair, default=[], metavar="SRC=DST",
                        help="map a source class to an output class (repeatable; overrides the preset)")
    parser.add_argument("--drop-unmapped", action="store_true", help="drop objects whose class is not in the map")
    parser.add_argument("--allow-scores", action="store_true", help="accept 16-field lines and drop the score column")
    parser.add_argument("--on-error", choices=imgs.ON_ERROR_CHOICES, default="fail",
                        help="fail on a bad image or label file (default), or skip that image and report it")
    imgs.add_max_side_argument(parser)
    parser.add_argument("-j", "--workers", type=int, default=default_workers(), help="worker processes")
    parser.add_argument("--replace", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args):
    class_map = dict(PRESETS.get(args.preset) or {})
    class_map.update(dict(args.class_map))
    report = convert_kitti(
        args.input_dir, args.output_dir, class_map=class_map or None, allow_scores=args.allow_scores,
        workers=args.workers, progress=not args.no_progress, replace=args.replace, on_error=args.on_error,
        drop_unmapped=args.drop_unmapped, max_side=args.max_image_side,
    )
    print(summary(report), file=sys.stderr)
    return 0


def summary(report):
    objects = ", ".join(f"{k}={v}" for k, v in report["objects"].items()) or "none"
    dropped = ", ".join(f"{k}={v}" for k, v in report["dropped"].items()) or "none"
    lines = [
        f"kitti: {report['images']} images -> {report['output']}",
        f"  objects: {objects}",
        f"  dropped objects: {dropped}",
    ]
    if report["dropped_boxes"]:
        first = report["dropped_boxes"][0]
        lines.append(f"  {len(report['dropped_boxes'])} boxes dropped as bad data (see report.json), first: "
                     f"{first['file']}:{first['line']}: {first['reason']}")
    if report["scores_dropped"]:
        lines.append(f"  score column dropped from {report['scores_dropped']} objects (--allow-scores)")
    if report["skipped"]:
        lines.append(f"  skipped {len(report['skipped'])} files (see report.json), first: "
                     f"{report['skipped'][0]['path']}: {report['skipped'][0]['error']}")
    return "\n".join(lines)
