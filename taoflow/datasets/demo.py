"""A synthetic dataset in CRPD's on-disk format, so every pipeline stage can run without downloading CRPD.

CRPD (github.com/yxgong0/CRPD) holds Chinese surveillance frames with one label file per image: one line
`x1 y1 x2 y2 x3 y3 x4 y4 type content` per plate. This module draws plates of the four CRPD types onto procedural
street-like backgrounds, perspective-warps them and writes the same layout and label format, including the real
data's quirks (inconsistent corner order, a few plates cut by the image border).

Each image is a pure function of (seed, index, image_size, max_plates): it owns a numpy Generator seeded from
(seed, index), so the output is byte-identical for any number of workers.
"""

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from ..errors import TaoflowError
from ..fsutil import atomic_dir
from ..parallel import map_chunks

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # plates never use I or O: they read as 1 and 0
DIGITS = "0123456789"
POLICE = "警"
SPLITS = ("train", "val", "test")
TYPE_NAMES = ("blue", "yellow", "yellow_double", "white")
# Blue (private cars) dominates real traffic; the rarer types stay frequent enough for a detector to learn them.
TYPE_WEIGHTS = (0.5, 0.2, 0.15, 0.15)

# BGR (plate background, characters), after GA 36-2018's colours.
PLATE_COLOURS = {
    0: ((165, 75, 15), (245, 245, 245)),
    1: ((20, 185, 235), (25, 25, 25)),
    2: ((20, 185, 235), (25, 25, 25)),
    3: ((235, 235, 235), (25, 25, 25)),
}
RED = (35, 35, 200)
CAR_COLOURS = ((230, 230, 230), (30, 30, 30), (140, 140, 140), (190, 190, 195), (40, 40, 170), (150, 70, 30),
               (60, 90, 60), (90, 150, 200))

# Character cells (x, y, w, h) in millimetres on the 440x140 single-line and 440x220 double-line plates.
# The wider gap after the second character holds the separator dot.
SINGLE_CELLS = [(15.5 + 57 * i + (22 if i >= 2 else 0), 25, 45, 90) for i in range(7)]
DOUBLE_CELLS = [(110, 15, 80, 60), (250, 15, 80, 60)] + [(27.5 + 80 * i, 90, 65, 110) for i in range(5)]
FONT = cv2.FONT_HERSHEY_SIMPLEX
JPEG_QUALITY = (85, 95)
MIN_SIDE, MAX_SIDE = 64, 8192


# ---------------------------------------------------------------------------------------------------------------
# Plates


def plate_text(rng, ptype):
    """Province, issuing-office letter, five serial characters; white (police) plates may end with 警."""
    police = ptype == 3 and rng.random() < 0.5
    chars = [PROVINCES[rng.integers(len(PROVINCES))], LETTERS[rng.integers(len(LETTERS))]]
    for _ in range(4 if police else 5):
        pool = DIGITS if rng.random() < 0.7 else LETTERS
        chars.append(pool[rng.integers(len(pool))])
    return "".join(chars) + (POLICE if police else "")


def _pseudo_glyph(canvas, cell, colour, thick, rng):
    """A few strokes standing in for a Chinese character, which Hershey fonts cannot draw."""
    x, y, w, h = cell
    n = int(rng.integers(4, 8))
    u = rng.uniform(0.08, 0.92, size=(n, 4))
    kind = rng.integers(3, size=n)
    u[kind == 0, 3] = u[kind == 0, 1]  # horizontal stroke
    u[kind == 1, 2] = u[kind == 1, 0]  # vertical stroke
    for a, b, c, d in u:
        for dx in (0, thick):  # the canvas is stretched 2x horizontally: double the stroke so it stays even
            p1 = (int(x + w * a + dx), int(y + h * b))
            p2 = (int(x + w * c + dx), int(y + h * d))
            cv2.line(canvas, p1, p2, colour, thick, cv2.LINE_AA)


def _latin_glyph(canvas, ch, cell, colour, thick):
    x, y, w, h = cell
    (tw, th), _ = cv2.getTextSize(ch, FONT, 1.0, 1)
    scale = min((h - thick) / th, (w - 2 * thick) / tw)
    ox = x + (w - tw * scale - thick) / 2
    for dx in (0, thick):
        cv2.putText(canvas, ch, (int(ox + dx), int(y + h - thick / 2)), FONT, scale, colour, thick, cv2.LINE_AA)


def render_plate(rng, ptype, text, out_width):
    """Draw a plate face; returns a BGR image about 1.3x the width it will be warped to (less aliasing)."""
    double = ptype == 2
    h_mm = 220 if double else 140
    bg, fg = PLATE_COLOURS[ptype]
    bg = np.clip(np.array(bg) + rng.integers(-15, 16, 3), 0, 255)
    # Plate characters are twice as tall as wide, Hershey glyphs roughly square: draw on a canvas of 1 px/mm
    # across and 0.5 px/mm down, then squeeze it to the plate's aspect ratio.
    canvas = np.empty((h_mm // 2, 440, 3), np.uint8)
    canvas[:] = bg
    for ch, (x, y, w, h) in zip(text, DOUBLE_CELLS if double else SINGLE_CELLS):
        cell = (x, y / 2, w, h / 2)
        thick = max(2, round(h / 2 * 0.09))
        if ch in PROVINCES or ch == POLICE:
            _pseudo_glyph(canvas, cell, RED if ch == POLICE else fg, thick, rng)
        else:
            _latin_glyph(canvas, ch, cell, fg, thick)
    dot = (220, 22) if double else (134, 35)
    cv2.ellipse(canvas, dot, (6, 3), 0, 0, 360, fg, -1, cv2.LINE_AA)
    fw = int(np.clip(round(out_width * 1.3), 24, 220))
    fh = max(8, round(fw * h_mm / 440))
    plate = cv2.resize(canvas, (fw, fh), interpolation=cv2.INTER_AREA)
    cv2.rectangle(plate, (1, 1), (fw - 2, fh - 2), fg, 1, cv2.LINE_AA)
    shade = rng.uniform(0.75, 1.1)  # some plates sit in shadow, some catch the sun
    return cv2.convertScaleAbs(plate, alpha=shade, beta=rng.uniform(-10, 10))


def plate_quad(rng, width, aspect):
    """Corners TL, TR, BR, BL of a plate `width` px wide seen under a mild random yaw/pitch/roll, centred at 0."""
    yaw, pitch, roll = np.radians([rng.uniform(-25, 25), rng.uniform(-5, 20), rng.uniform(-6, 6)])
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    h = 0.5 / aspect
    pts = np.array([[-0.5, -h, 0], [0.5, -h, 0], [0.5, h, 0], [-0.5, h, 0]]) @ (r_roll @ r_pitch @ r_yaw).T
    dist = 2.5  # camera distance in plate widths: near enough for visible keystoning, far enough to stay mild
    return pts[:, :2] * (dist / (dist + pts[:, 2:3])) * width


def _place(rng, quad, size, boxes, outside):
    """Translate quad to a free spot (optionally across an image edge); None when the image is too crowded."""
    w, h = size
    lo, hi = quad.min(0), quad.max(0)
    ext = hi - lo
    for _ in range(30):
        c = rng.uniform(-lo, np.array([w, h]) - hi)
        if outside:  # push 15-45% of the plate's extent across one edge
            axis, far = int(rng.integers(2)), bool(rng.integers(2))
            shift = rng.uniform(0.15, 0.45) * ext[axis]
            c[axis] = (size[axis] - hi[axis] + shift) if far else (-lo[axis] - shift)
        box = np.concatenate([c + lo - 3, c + hi + 3])
        if all(box[0] > b[2] or box[2] < b[0] or box[1] > b[3] or box[3] < b[1] for b in boxes):
            boxes.append(box)
            return quad + c
    return None


def _paste(img, plate, quad):
    """Perspective-warp plate onto img inside quad's bounding box only (warping the whole frame is 10x slower)."""
    ph, pw = plate.shape[:2]
    x0, y0 = np.maximum(np.floor(quad.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(quad.max(0)).astype(int) + 1, (img.shape[1], img.shape[0]))
    if x1 <= x0 or y1 <= y0:
        return
    src = np.float32([[0, 0], [pw, 0], [pw, ph], [0, ph]]) - 0.5
    m = cv2.getPerspectiveTransform(src, np.float32(quad - [x0, y0]))
    roi = np.ascontiguousarray(img[y0:y1, x0:x1])
    cv2.warpPerspective(plate, m, (x1 - x0, y1 - y0), dst=roi, flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_TRANSPARENT)
    img[y0:y1, x0:x1] = roi


# ---------------------------------------------------------------------------------------------------------------
# Scene


def _colour(rng, base, jitter=20):
    return tuple(int(v) for v in np.clip(np.array(base) + rng.integers(-jitter, jitter + 1, 3), 0, 255))


def _background(rng, w, h):
    """Smooth colour gradient, a road with dashed lanes, blobs and boxes (buildings, other cars), a sign."""
    grey = rng.integers(50, 200, size=(3, 4, 1))
    grid = np.clip(grey + rng.integers(-30, 31, size=(3, 4, 3)), 0, 255).astype(np.uint8)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.75:
        horizon, vx = h * rng.uniform(0.15, 0.5), w * rng.uniform(0.2, 0.8)
        road = np.int32([[vx - w * 0.05, horizon], [vx + w * 0.05, horizon], [w * 1.4, h], [-w * 0.4, h]])
        cv2.fillConvexPoly(img, road, _colour(rng, (90, 90, 90), 25))
        paint = _colour(rng, (220, 220, 220), 25)
        for bx in rng.uniform(-0.2, 1.2, size=int(rng.integers(1, 4))) * w:
            for t in np.arange(rng.uniform(0, 0.15), 1.0, 0.2):  # dashes, longer near the camera
                p1 = (int(vx + (bx - vx) * t), int(horizon + (h - horizon) * t))
                p2 = (int(vx + (bx - vx) * (t + 0.1)), int(horizon + (h - horizon) * (t + 0.1)))
                cv2.line(img, p1, p2, paint, max(1, int(w * 0.006 * (t + 0.3))), cv2.LINE_AA)
    for _ in range(int(rng.integers(2, 7))):
        x, y = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        a, b = int(rng.uniform(0.03, 0.2) * w), int(rng.uniform(0.03, 0.2) * h)
        colour = _colour(rng, CAR_COLOURS[rng.integers(len(CAR_COLOURS))])
        if rng.random() < 0.5:
            cv2.rectangle(img, (x - a, y - b), (x + a, y + b), colour, -1)
        else:
            cv2.ellipse(img, (x, y), (a, b), float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    if rng.random() < 0.4:  # text that is not a plate: a hard negative for the detector
        x, y, s = int(rng.uniform(0, w * 0.8)), int(rng.uniform(h * 0.1, h)), rng.uniform(0.3, 0.9) * w / 640
        text = "".join(LETTERS[i] for i in rng.integers(len(LETTERS), size=int(rng.integers(3, 7))))
        (tw, th), _ = cv2.getTextSize(text, FONT, s, 2)
        cv2.rectangle(img, (x - 4, y - th - 6), (x + tw + 4, y + 6), _colour(rng, (200, 200, 200), 50), -1)
        cv2.putText(img, text, (x, y), FONT, s, _colour(rng, (40, 40, 40), 30), 2, cv2.LINE_AA)
    return img


def _car_front(img, rng, quad):
    """A crude car front around a plate: body, windscreen, grille, headlights — plates rarely float in the air."""
    (x0, y0), (x1, y1) = quad.min(0), quad.max(0)
    pw, ph, cx = x1 - x0, y1 - y0, (x0 + x1) / 2
    cw = pw * rng.uniform(2.6, 3.6)
    top, bottom = y0 - ph * rng.uniform(2.5, 5.0), y1 + ph * rng.uniform(0.6, 1.5)
    left, right, c = cx - cw / 2, cx + cw / 2, cw * 0.08
    body = np.int32([[left + c, top], [right - c, top], [right, top + c], [right, bottom], [left, bottom],
                     [left, top + c]])
    colour = _colour(rng, CAR_COLOURS[rng.integers(len(CAR_COLOURS))])
    cv2.fillConvexPoly(img, body, colour, cv2.LINE_AA)
    glass_y = top + (y0 - top) * 0.45
    glass = np.int32([[left + cw * 0.2, top + c], [right - cw * 0.2, top + c], [right - cw * 0.1, glass_y],
                      [left + cw * 0.1, glass_y]])
    cv2.fillConvexPoly(img, glass, _colour(rng, (50, 45, 40), 15), cv2.LINE_AA)
    grille = (int(cx - pw * 0.6), int(y0 - ph * 1.3)), (int(cx + pw * 0.6), int(y0 - ph * 0.3))
    cv2.rectangle(img, *grille, tuple(v // 3 for v in colour), -1)
    light = _colour(rng, (225, 230, 230), 25)
    for side in (-1, 1):
        centre = (int(cx + side * cw * 0.36), int(y0 - ph * 0.8))
        cv2.ellipse(img, centre, (max(1, int(cw * 0.09)), max(1, int(ph * 0.45))), 0, 0, 360, light, -1,
                    cv2.LINE_AA)


def _camera(img, rng):
    """Optics then sensor: gaussian or motion blur, coarse texture plus fine noise, brightness/contrast jitter."""
    h, w = img.shape[:2]
    kind = rng.integers(3)
    if kind == 1:
        k = int(rng.choice([3, 5]))
        img = cv2.GaussianBlur(img, (k, k), 0)
    elif kind == 2:
        n = int(rng.integers(3, 8))
        kernel = np.zeros((n, n), np.float32)
        angle = rng.uniform(0, np.pi)
        d = (n - 1) / 2 * np.array([np.cos(angle), np.sin(angle)])
        c = (n - 1) / 2
        cv2.line(kernel, (round(c - d[0]), round(c - d[1])), (round(c + d[0]), round(c + d[1])), 1.0, 1)
        img = cv2.filter2D(img, -1, kernel / kernel.sum())
    amp = int(rng.integers(8, 40))
    coarse = rng.integers(0, amp, size=(h // 16 + 2, w // 16 + 2), dtype=np.uint8)
    tex = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    tex += rng.integers(0, 7, size=(h, w), dtype=np.uint8)  # at most 39 + 6: no uint8 overflow
    alpha, beta = rng.uniform(0.7, 1.25), rng.uniform(-35, 35)
    return cv2.addWeighted(img, alpha, cv2.cvtColor(tex, cv2.COLOR_GRAY2BGR), 1.0, beta - (amp + 6) / 2)


def render_image(seed, index, image_size, max_plates):
    """Return (jpeg_bytes, plates) for one image; plates are (corners 4x2 float, type, content)."""
    rng = np.random.default_rng([seed, index])
    w, h = image_size
    plates, boxes = [], []
    for _ in range(int(rng.integers(1, max_plates + 1))):
        ptype = int(rng.choice(4, p=TYPE_WEIGHTS))
        aspect = 2.0 if ptype == 2 else 440 / 140
        # Log-uniform width: small, distant plates are the common case in surveillance frames. At least 16 px
        # (narrower is noise even to a detector) and short enough to fit wide, low frames.
        width = w * np.exp(rng.uniform(np.log(0.08), np.log(0.35)))
        width = min(max(width, 16.0), 0.3 * h * aspect)
        quad = _place(rng, plate_quad(rng, width, aspect), image_size, boxes, outside=rng.random() < 0.03)
        if quad is not None:
            plates.append((quad, ptype, plate_text(rng, ptype), width))
    img = _background(rng, w, h)
    for quad, *_ in plates:
        if rng.random() < 0.8:
            _car_front(img, rng, quad)
    for quad, ptype, text, width in plates:
        _paste(img, render_plate(rng, ptype, text, width), quad)
    img = _camera(img, rng)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return jpeg.tobytes(), [(quad, ptype, text) for quad, ptype, text, _ in plates]


def label_line(rng, quad, ptype, text):
    """CRPD line; the real files mix clockwise TL,TR,BR,BL and counter-clockwise TL,BL,BR,TR, so do we."""
    order = [0, 1, 2, 3] if rng.random() < 0.5 else [0, 3, 2, 1]
    coords = " ".join(str(int(v)) for v in np.rint(quad[order]).ravel())
    return f"{coords} {ptype} {text}"


def _render_chunk(jobs):
    """Worker: render and write the images of one chunk; returns (split, types, n_partly_outside) per image."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one image per core already; nested threads would only contend on the benchmark box
    try:
        return [_render_one(*job) for job in jobs]
    finally:
        cv2.setNumThreads(threads)


def _render_one(root, split, seed, index, image_size, max_plates):
    jpeg, plates = render_image(seed, index, image_size, max_plates)
    rng = np.random.default_rng([seed, index, 1])  # separate stream: label quirks never change the pixels
    stem = f"demo_{index:06d}"
    Path(root, split, "images", stem + ".jpg").write_bytes(jpeg)
    lines = [label_line(rng, *p) + "\n" for p in plates]
    Path(root, split, "labels", stem + ".txt").write_text("".join(lines), encoding="utf-8")
    corners = [np.rint(q) for q, _, _ in plates]
    outside = sum(bool((c < 0).any() or (c >= image_size).any()) for c in corners)
    return split, [p[1] for p in plates], outside


# ---------------------------------------------------------------------------------------------------------------
# Public API and CLI


def split_counts(num_images, fractions):
    """Images per split; image i goes to train, val, test by index so the assignment never depends on workers."""
    b1 = round(num_images * fractions[0])
    b2 = round(num_images * (fractions[0] + fractions[1]))
    return {"train": b1, "val": b2 - b1, "test": num_images - b2}


def _validate(num_images, seed, image_size, fractions, max_plates, workers):
    for name, value, low in (("num_images", num_images, 1), ("seed", seed, 0), ("max_plates", max_plates, 1),
                             ("workers", workers, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise TaoflowError(f"{name} must be an integer >= {low}, got {value!r}")
    try:
        w, h = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise TaoflowError(f"image_size must be (width, height), got {image_size!r}") from None
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise TaoflowError(f"image size {w}x{h} is out of range: each side must be {MIN_SIDE}..{MAX_SIDE} px")
    try:
        fractions = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise TaoflowError(f"split fractions must be three numbers, got {fractions!r}") from None
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-3:
        raise TaoflowError(f"split fractions must be three non-negative numbers (train,val,test) summing to 1, "
                           f"got {fractions}")
    return (w, h), fractions


def generate_crpd(output_dir, num_images=200, seed=0, image_size=(640, 480), split_fractions=(0.8, 0.1, 0.1),
                  max_plates=4, workers=1, progress=True, replace=False):
    """Write a synthetic CRPD subset to output_dir/{train,val,test}/{images,labels} and return statistics.

    Splits that receive no image are not created. The directory appears atomically when complete.
    """
    image_size, fractions = _validate(num_images, seed, image_size, split_fractions, max_plates, workers)
    counts = split_counts(num_images, fractions)
    start = time.perf_counter()
    with atomic_dir(output_dir, replace=replace) as tmp:
        splits = [s for s, n in counts.items() for _ in range(n)]
        for split in set(splits):
            for sub in ("images", "labels"):
                (tmp / split / sub).mkdir(parents=True)
        jobs = [(str(tmp), split, int(seed), i, image_size, int(max_plates)) for i, split in enumerate(splits)]
        results = map_chunks(_render_chunk, jobs, workers=workers, desc="demo-data", progress=progress)
    seconds = time.perf_counter() - start
    plates = {name: 0 for name in TYPE_NAMES}
    for _, types, _ in results:
        for t in types:
            plates[TYPE_NAMES[t]] += 1
    return {
        "output_dir": str(output_dir),
        "images": counts,
        "plates": plates,
        "plates_total": sum(plates.values()),
        "plates_partly_outside": sum(r[2] for r in results),
        "seconds": round(seconds, 3),
        "images_per_second": round(num_images / seconds, 1) if seconds > 0 else None,
    }


def parse_image_size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise TaoflowError(f"--image-size must look like 640x480, got {text!r}") from None
    return w, h


def parse_fractions(text):
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise TaoflowError(f"--split-fractions must look like 0.8,0.1,0.1, got {text!r}") from None


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output-dir", required=True, help="directory to create (must not exist)")
    parser.add_argument("--kind", choices=("crpd", "kitti"), default="crpd",
                        help="crpd: license plates in CRPD's format (default); kitti: KITTI-format traffic frames in "
                             "OUT/kitti/{image_2,label_2} and a KITTI-format road-sign set in OUT/road_signs/")
    parser.add_argument("-n", "--num-images", type=int, default=200, help="number of images (default 200)")
    parser.add_argument("--road-signs", type=int, default=None,
                        help="--kind kitti: road-sign frames (default a third of --num-images; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--image-size", default=None,
                        help="WIDTHxHEIGHT (default 640x480 for crpd, KITTI's 1242x375 for kitti)")
    parser.add_argument("--max-plates", type=int, default=4, help="at most this many plates per image (default 4)")
    parser.add_argument("--split-fractions", default="0.8,0.1,0.1", help="train,val,test (default 0.8,0.1,0.1)")
    parser.add_argument("-j", "--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--replace", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_kitti_cli(args) -> int:
    from .demo_traffic import KITTI_SIZE, generate_kitti, generate_road_signs
    size = parse_image_size(args.image_size) if args.image_size else KITTI_SIZE
    out = Path(args.output_dir)
    if out.exists() and not args.replace:
        raise TaoflowError(f"{out} exists; choose a new directory or pass --replace")
    out.mkdir(parents=True, exist_ok=True)
    opts = dict(seed=args.seed, image_size=size, workers=args.workers, progress=not args.no_progress,
                replace=args.replace)
    kitti = generate_kitti(out / "kitti", num_images=args.num_images, **opts)
    print(f"Wrote {kitti['images']} KITTI-format frames ({size[0]}x{size[1]} PNG) to {kitti['output_dir']}: "
          + ", ".join(f"{c} {n}" for c, n in kitti["objects"].items()))
    n_signs = args.num_images // 3 if args.road_signs is None else args.road_signs
    if n_signs:
        signs = generate_road_signs(out / "road_signs", num_images=n_signs, **opts)
        print(f"Wrote {signs['images']} road-sign frames to {signs['output_dir']}: "
              + ", ".join(f"{c} {n}" for c, n in signs["objects"].items())
              + " (class map for the traffic spec set: every category -> road_sign)")
    return 0


def run_cli(args) -> int:
    if args.kind == "kitti":
        return run_kitti_cli(args)
    stats = generate_crpd(args.output_dir, num_images=args.num_images, seed=args.seed,
                          image_size=parse_image_size(args.image_size or "640x480"),
                          split_fractions=parse_fractions(args.split_fractions), max_plates=args.max_plates,
                          workers=args.workers, progress=not args.no_progress, replace=args.replace)
    images = ", ".join(f"{s} {n}" for s, n in stats["images"].items() if n)
    plates = ", ".join(f"{t} {n}" for t, n in stats["plates"].items())
    print(f"Wrote {sum(stats['images'].values())} synthetic CRPD images ({images}) with {stats['plates_total']} "
          f"plates ({plates}; {stats['plates_partly_outside']} partly outside the frame) to {stats['output_dir']} "
          f"in {stats['seconds']:.1f} s ({stats['images_per_second']} images/s). Layout: <split>/images/*.jpg "
          f"with <split>/labels/*.txt, one 'x1 y1 x2 y2 x3 y3 x4 y4 type content' line per plate.")
    return 0
