"""CRPD (Chinese Road Plate Dataset, github yxgong0/CRPD) to TAO KITTI conversion.

A CRPD label line is `x1 y1 x2 y2 x3 y3 x4 y4 type content`: four plate corners, the plate type (0 blue, 1 yellow
single-line, 2 yellow double-line, 3 white) and the plate text. The README writes commas but the released files use
spaces, so both separate fields (mixed too: `1,2 3 ...`). Corner order differs between files (clockwise or
counter-clockwise), so the axis-aligned box is the min/max over the four points, which does not depend on the order.

Label files as they come: a UTF-8 BOM, CRLF line ends and UTF-8 plate text are read as such. A line with the corners
and the type but no plate text (9 fields: unreadable plates are labelled that way) keeps its box for detection; its
text is empty and the conversion report counts it (`plates_without_text`). Any other field count, a non-numeric
corner or a type outside 0..3 is an error naming file and line.
"""

import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .. import fsutil
from ..errors import DataError, TaoflowError
from ..parallel import default_workers, map_chunks
from . import images as imgs
from .kitti import KittiObject, clip_box, format_kitti_line, parse_number, read_text_lines, tao_keeps_box

PLATE_TYPES = {0: "blue", 1: "yellow_single", 2: "yellow_double", 3: "white"}
CLASS_MODES = ("lpd", "plate_type")
# Third-party copies of CRPD name the image folder imgs/ instead of images/.
IMAGE_DIR_NAMES = ("images", "imgs")
LABEL_DIR_NAME = "labels"
_SEPARATORS = re.compile(r"[,\uff0c\s]+")  # ASCII or full-width commas, any whitespace
# One plates.jsonl line: what json.dumps(record, ensure_ascii=False, sort_keys=True) gives, without building a new
# encoder for every plate.
_JSONL = json.JSONEncoder(ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class CrpdPlate:
    line: int
    quad: tuple  # ((x1, y1), (x2, y2), (x3, y3), (x4, y4)) as written in the file
    type: int
    content: str


def parse_crpd_file(path):
    """Parse a CRPD label file: 10 fields per non-blank line (9 when the plate text is missing: content "");
    numbers finite, type 0..3."""
    plates = []
    for lineno, text in read_text_lines(path):
        tokens = [t for t in _SEPARATORS.split(text.strip()) if t]
        if not tokens:
            continue
        if len(tokens) not in (9, 10):
            raise DataError(f"expected 10 fields 'x1 y1 x2 y2 x3 y3 x4 y4 type content' (9 without the plate "
                            f"text), found {len(tokens)}", path=path, line=lineno)
        coords = _coordinates(tokens, path, lineno)
        try:
            plate_type = int(tokens[8])
        except ValueError:
            plate_type = None
        if plate_type not in PLATE_TYPES:
            raise DataError(f"field 9 (type) must be 0..3 (0 blue, 1 yellow single, 2 yellow double, 3 white), "
                            f"got {tokens[8]!r}", path=path, line=lineno)
        quad = tuple((coords[i], coords[i + 1]) for i in range(0, 8, 2))
        plates.append(CrpdPlate(lineno, quad, plate_type, tokens[9] if len(tokens) == 10 else ""))
    return plates


def _coordinates(tokens, path, lineno):
    """The 8 corner coordinates as floats; the per-token parser runs only to name a bad field."""
    try:
        coords = list(map(float, tokens[:8]))
        if math.isfinite(sum(coords)):
            return coords
    except ValueError:
        pass
    # A bad token, or finite values whose sum overflowed (then every parse below succeeds).
    return [parse_number(tok, f"field {i + 1} (corner coordinate)", path, lineno) for i, tok in enumerate(tokens[:8])]


def _shoelace(p0, p1, p2, p3):
    """Shoelace area of the closed polygon p0 p1 p2 p3, written out: it runs for every plate."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = p0, p1, p2, p3
    return 0.5 * abs(sum([x0 * y1 - x1 * y0, x1 * y2 - x2 * y1, x2 * y3 - x3 * y2, x3 * y0 - x0 * y3]))


def quad_area(quad):
    """Largest shoelace area over the three ways to join four points into a closed polygon.

    Corner order is not reliable in CRPD, and a crossed order (TL, TR, BL, BR) gives zero shoelace area even for a
    perfect rectangle; the maximum is order-invariant and is zero only when all four points are collinear.
    """
    a, b, c, d = quad
    return max(_shoelace(a, b, c, d), _shoelace(a, b, d, c), _shoelace(a, c, b, d))


def plate_box(quad, width, height, min_size):
    """Return (box, drop reason): box = min/max of the corners clipped to the image; reason None when kept."""
    xs, ys = [p[0] for p in quad], [p[1] for p in quad]
    raw = (min(xs), min(ys), max(xs), max(ys))
    if quad_area(quad) == 0:
        return raw, "degenerate_quad"
    box = clip_box(*raw, width, height)
    if box is None:
        return raw, "outside_image"
    if box[2] - box[0] < min_size or box[3] - box[1] < min_size:
        return box, "too_small"
    if not tao_keeps_box(*box):  # only reachable with min_size < 1
        return box, "subpixel_box"
    return box, None


def class_name(plate_type, class_mode):
    return "lpd" if class_mode == "lpd" else PLATE_TYPES[plate_type]


def _json_number(v, digits=None):
    """Integral values as JSON integers (CRPD writes integer corners); others as floats, rounded if asked."""
    if float(v).is_integer():
        return int(v)
    return float(v) if digits is None else round(float(v), digits)


# ------------------------------------------------------------------------------------------------- conversion


def _image_subdir(root):
    found = [root / name for name in IMAGE_DIR_NAMES if (root / name).is_dir()]
    if len(found) > 1:
        raise DataError("both images/ and imgs/ exist; keep one", path=root)
    return found[0] if found else None


def find_splits(input_dir, splits=None):
    """Return [(split name, image_dir, label_dir)]; the name is "." when input_dir is itself a single split.

    The name doubles as the output subdirectory, so a single split is written at the output root.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise DataError("input directory not found", path=root)
    image_dir = _image_subdir(root)
    if image_dir is not None and (root / LABEL_DIR_NAME).is_dir():
        if splits:
            raise DataError("--split selects split directories, but the input is a single split (it has images/ "
                            "and labels/); drop --split or point at the subset root", path=root)
        return [(".", image_dir, root / LABEL_DIR_NAME)]
    found = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        sub_images = _image_subdir(sub)
        if sub_images is not None and (sub / LABEL_DIR_NAME).is_dir():
            found[sub.name] = (sub.name, sub_images, sub / LABEL_DIR_NAME)
    if not found:
        raise DataError("expected images/ and labels/ here, or split directories (train/, val/, test/) that contain "
                        "them; for CRPD-all pick one subset such as CRPD_single", path=root)
    missing = sorted(set(splits or ()) - set(found))
    if missing:
        raise DataError(f"split(s) {', '.join(missing)} not found; available: {', '.join(found)}", path=root)
    return [found[name] for name in found if not splits or name in splits]


def _convert_one(item, out_root, config):
    split, stem, image_path, label_path = item  # paths as str: see imgs.dir_prefix
    try:
        width, height = imgs.image_size(image_path, config["max_side"])
        plates = parse_crpd_file(label_path)
    except DataError as err:
        return {"split": split, "stem": stem, "problem": imgs.problem_from(err)}
    lines, records, objects, dropped = [], [], Counter(), []
    for index, plate in enumerate(plates):
        box, reason = plate_box(plate.quad, width, height, config["min_size"])
        cls = class_name(plate.type, config["class_mode"])
        if reason is None:
            lines.append(format_kitti_line(KittiObject(cls, 0.0, 0, 0.0, *box, *([0.0] * 7))))
            objects[cls] += 1
        else:
            dropped.append({"line": plate.line, "reason": reason, "box": [_json_number(v, 2) for v in box]})
        record = {
            "stem": stem, "index": index, "line": plate.line, "type": plate.type,
            "type_name": PLATE_TYPES[plate.type], "content": plate.content,
            "quad": [[_json_number(x), _json_number(y)] for x, y in plate.quad],
            "box": [_json_number(v, 2) for v in box], "kept": reason is None, "drop_reason": reason,
        }
        # The plates.jsonl line is encoded here, in the worker: one string travels back to the main process
        # instead of a dict per plate, and the main process only concatenates.
        records.append(_JSONL.encode(record) + "\n")
    name = os.path.basename(image_path)
    out_dir = os.path.join(out_root, split)
    fsutil.link_or_copy(image_path, os.path.join(out_dir, "image", name))
    # An image whose plates were all dropped still gets an empty label file: TAO needs one per image.
    fsutil.write_file(os.path.join(out_dir, "label", f"{stem}.txt"), "".join(f"{line}\n" for line in lines).encode())
    return {"split": split, "stem": stem, "ext": os.path.splitext(name)[1], "plates": len(records),
            "no_text": sum(1 for plate in plates if not plate.content),
            "plates_jsonl": "".join(records), "objects": objects, "dropped": dropped, "label": label_path}


def _convert_chunk(items, out_root, config):
    results = []
    for item in items:
        results.append(_convert_one(item, out_root, config))
        if "problem" in results[-1] and config["on_error"] == "fail":
            break  # the caller raises the first problem in sorted order
    return results


def _check_options(class_mode, min_size, on_error, max_side):
    imgs.check_on_error(on_error)
    imgs.check_max_side(max_side)
    if class_mode not in CLASS_MODES:
        raise TaoflowError(f"class_mode must be one of {', '.join(CLASS_MODES)}, got {class_mode!r}")
    if not (isinstance(min_size, (int, float)) and math.isfinite(min_size) and min_size >= 0):
        raise TaoflowError(f"min_size must be a finite number >= 0, got {min_size!r}")


def convert_crpd(input_dir, output_dir, class_mode="lpd", min_size=4.0, splits=None, workers=1, progress=True,
                 replace=False, on_error="fail", max_side=imgs.MAX_IMAGE_SIDE):
    """Convert a CRPD subset root (train/ val/ test/) or a single split dir to TAO KITTI; return the report.

    An image whose header claims more than max_side pixels a side is a bad file like a truncated one (on_error).
    """
    _check_options(class_mode, min_size, on_error, max_side)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    found = find_splits(input_dir, splits)
    fsutil.check_not_inside(output_dir, input_dir)
    items, problems = [], []
    for split, image_dir, label_dir in found:
        pairs, split_problems = imgs.pair_images_labels(image_dir, label_dir)
        if not pairs and not split_problems:
            raise DataError("no images found", path=image_dir)
        problems += [{**p, "split": split} for p in split_problems]
        items += [(split, stem, image, label) for stem, image, label in pairs]
    if problems and on_error == "fail":
        imgs.raise_problem(problems[0])
    config = {"class_mode": class_mode, "min_size": float(min_size), "on_error": on_error, "max_side": max_side}
    with fsutil.atomic_dir(output_dir, replace=replace) as tmp:
        for split, _, _ in found:
            for sub in ("image", "label"):
                (tmp / split / sub).mkdir(parents=True)
        fn = partial(_convert_chunk, out_root=str(tmp), config=config)
        results = map_chunks(fn, items, workers=workers, desc="crpd", progress=progress)
        problems += [{**r["problem"], "split": r["split"]} for r in results if "problem" in r]
        if problems and on_error == "fail":
            imgs.raise_problem(problems[0])
        done = [r for r in results if "problem" not in r]
        if not done:
            raise DataError(f"no usable images left: all {len(problems)} problem files were skipped", path=input_dir)
        for split, _, _ in found:
            with open(tmp / split / "plates.jsonl", "w", encoding="utf-8", newline="\n") as f:
                f.write("".join(r["plates_jsonl"] for r in done if r["split"] == split))
        report = _build_report(found, done, problems, input_dir, output_dir, config)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return report


def _split_counts(results):
    objects, dropped = Counter(), Counter()
    for r in results:  # plain loops: Counter.update with a mapping is slow per call, and this runs per image
        for cls, n in r["objects"].items():
            objects[cls] += n
        for d in r["dropped"]:
            dropped[d["reason"]] += 1
    return {
        "images": len(results),
        "empty_images": sum(1 for r in results if not r["objects"]),
        "plates": sum(r["plates"] for r in results),
        "plates_without_text": sum(r["no_text"] for r in results),
        "objects": dict(sorted(objects.items())),
        "dropped": dict(sorted(dropped.items())),
        "image_extensions": dict(sorted(Counter(r["ext"] for r in results).items())),
    }


def _build_report(found, done, problems, input_dir, output_dir, config):
    per_split = {split: _split_counts([r for r in done if r["split"] == split]) for split, _, _ in found}
    return {
        "step": "convert_crpd",
        "input": str(input_dir),
        "output": str(output_dir),
        "class_mode": config["class_mode"],
        "min_size": config["min_size"],
        "on_error": config["on_error"],
        "splits": per_split,
        "totals": _split_counts(done),
        "dropped_boxes": [
            {"split": r["split"], "file": imgs.relative(r["label"], input_dir), **d} for r in done for d in r["dropped"]
        ],
        "skipped": [{**p, "path": imgs.relative(p["path"], input_dir)} for p in problems],
    }


# ---------------------------------------------------------------------------------------------------------- CLI


def add_cli_arguments(parser):
    parser.add_argument("-i", "--input-dir", required=True,
                        help="CRPD subset root (with train/ val/ test/) or one split dir (with images/ and labels/)")
    parser.add_argument("-o", "--output-dir", required=True, help="new directory for the KITTI dataset")
    parser.add_argument("--class-mode", choices=CLASS_MODES, default="lpd",
                        help="lpd: one class 'lpd' (default); plate_type: blue/yellow_single/yellow_double/white")
    parser.add_argument("--min-size", type=float, default=4.0,
                        help="drop boxes narrower or shorter than this many pixels after clipping (default 4)")
    parser.add_argument("--split", action="append", dest="splits", metavar="NAME",
                        help="convert only this split directory (repeatable; default all)")
    parser.add_argument("--on-error", choices=imgs.ON_ERROR_CHOICES, default="fail",
                        help="fail on a bad image or label file (default), or skip that image and report it")
    imgs.add_max_side_argument(parser)
    parser.add_argument("-j", "--workers", type=int, default=default_workers(), help="worker processes")
    parser.add_argument("--replace", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args):
    report = convert_crpd(args.input_dir, args.output_dir, class_mode=args.class_mode, min_size=args.min_size,
                          splits=args.splits, workers=args.workers, progress=not args.no_progress,
                          replace=args.replace, on_error=args.on_error, max_side=args.max_image_side)
    print(summary(report), file=sys.stderr)
    return 0


def summary(report):
    lines = []
    for split, c in report["splits"].items():
        objects = ", ".join(f"{k}={v}" for k, v in c["objects"].items()) or "none"
        dropped = ", ".join(f"{k}={v}" for k, v in c["dropped"].items()) or "none"
        no_text = f" ({c['plates_without_text']} without plate text)" if c["plates_without_text"] else ""
        lines.append(f"crpd {split}: {c['images']} images, {c['plates']} plates{no_text}; "
                     f"kept {objects}; dropped {dropped}")
    if report["dropped_boxes"]:
        first = report["dropped_boxes"][0]
        lines.append(f"crpd: {len(report['dropped_boxes'])} plates dropped (see report.json), first: "
                     f"{first['file']}:{first['line']}: {first['reason']}")
    if report["skipped"]:
        first = report["skipped"][0]
        lines.append(f"crpd: skipped {len(report['skipped'])} files (see report.json), first: "
                     f"{first['path']}: {first['error']}")
    lines.append(f"crpd: written to {report['output']}")
    return "\n".join(lines)
