"""Synthetic traffic data in KITTI's on-disk format, and a small road-sign set in the same format.

`generate_kitti` writes frames as KITTI publishes them: `image_2/<6 digits>.png` at 1242x375 (smaller on request)
and `label_2/<6 digits>.txt` with 15-field lines over KITTI's 9 classes: Car, Van, Truck, Pedestrian, Person_sitting,
Cyclist, Tram, Misc and DontCare (distant clutter near the horizon, labelled only as a region, with KITTI's
-1/-10/-1000 placeholders). Objects stand on a road in perspective, are drawn far to near so nearer ones hide
farther ones, and carry KITTI's truncation (the share of the object outside the frame; the box is clipped) and
occlusion levels (0 fully visible, 1 partly, 2 largely occluded, from the pixels that nearer objects cover).

`generate_road_signs` writes a road-sign set the way a converted GTSDB or LISA export looks: KITTI-format frames
whose labels name the sign category (GTSDB's prohibitory, danger, mandatory, other), so that the flow's class map
for that source turns them into `road_sign`. Its frames show signs only: other road users are not annotated in such
sets, so none are drawn.

Each frame is a pure function of (seed, index, image size): the output is byte-identical for any number of workers.
"""

import time
from pathlib import Path

import cv2
import numpy as np

from ..errors import TaoflowError
from ..fsutil import atomic_dir
from ..parallel import map_chunks

KITTI_SIZE = (1242, 375)
KITTI_CLASSES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")
SIGN_CLASSES = ("prohibitory", "danger", "mandatory", "other")  # GTSDB's categories
# Every sign category is a road sign for the traffic spec set: the class map a flow run gives this source.
SIGN_CLASS_MAP = {name: "road_sign" for name in SIGN_CLASSES}
# class -> (weight per object, real height m, width m, length m); KITTI's class frequencies, flattened so that the
# rare classes still appear in a few hundred frames
OBJECTS = {
    "Car": (0.36, 1.5, 1.6, 3.9), "Van": (0.1, 2.2, 1.9, 5.1), "Truck": (0.07, 3.2, 2.5, 10.0),
    "Pedestrian": (0.2, 1.75, 0.65, 0.85), "Person_sitting": (0.04, 1.25, 0.6, 0.8),
    "Cyclist": (0.13, 1.75, 0.6, 1.75), "Tram": (0.04, 3.5, 2.6, 16.0), "Misc": (0.06, 1.8, 1.7, 3.5),
}
FOCAL = 720.0  # KITTI's camera (px) at 1242 px width; scaled with the width asked for
CAMERA_HEIGHT = 1.65  # m


def _colour(rng, base, jitter=25):
    return tuple(int(v) for v in np.clip(np.array(base) + rng.integers(-jitter, jitter + 1, 3), 0, 255))


def _scene(rng, w, h):
    """Sky gradient, buildings and trees on the horizon, a road with lane marks; returns (image, horizon y)."""
    horizon = int(h * rng.uniform(0.38, 0.48))
    sky_top, sky_low = np.array(_colour(rng, (215, 180, 150))), np.array(_colour(rng, (235, 220, 205)))
    t = np.linspace(0, 1, horizon)[:, None, None]
    img = np.empty((h, w, 3), np.uint8)
    img[:horizon] = (sky_top * (1 - t) + sky_low * t).astype(np.uint8)
    img[horizon:] = _colour(rng, (95, 110, 100), 15)  # verge
    for _ in range(int(rng.integers(4, 10))):  # buildings and trees behind the road
        x, bw, bh = int(rng.uniform(0, w)), int(rng.uniform(0.04, 0.15) * w), int(rng.uniform(0.1, 0.35) * h)
        if rng.random() < 0.6:
            cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon + 2), _colour(rng, (150, 150, 160), 45), -1)
        else:
            cv2.ellipse(img, (x, horizon - bh // 2), (bw // 2, bh // 2), 0, 0, 360, _colour(rng, (60, 120, 70)), -1)
    vx = w * rng.uniform(0.4, 0.6)
    road = np.int32([[vx - 0.02 * w, horizon], [vx + 0.02 * w, horizon], [w * 1.5, h], [-w * 0.5, h]])
    cv2.fillConvexPoly(img, road, _colour(rng, (85, 85, 85), 12))
    for side in (-1, 1):
        cv2.line(img, (int(vx + side * 0.01 * w), horizon), (int(vx + side * w), h), (225, 225, 225), 3, cv2.LINE_AA)
    for s in np.arange(rng.uniform(0, 0.1), 1.0, 0.12):  # dashed centre line, longer near the camera
        y1, y2 = horizon + (h - horizon) * s ** 2, horizon + (h - horizon) * min(1.0, (s + 0.06) ** 2)
        cv2.line(img, (int(vx), int(y1)), (int(vx), int(y2)), (230, 230, 230), max(1, int(4 * s)), cv2.LINE_AA)
    return img, horizon


def _draw_object(img, rng, cls, box):
    """Draw one road user into its box (x1, y1, x2, y2, pixels, may extend outside the frame)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    bw, bh = x2 - x1, y2 - y1
    dark = (25, 25, 25)
    if cls in ("Car", "Van", "Truck", "Tram", "Misc"):
        body = _colour(rng, {"Car": (60, 60, 200), "Van": (220, 220, 225), "Truck": (40, 150, 230),
                             "Tram": (50, 180, 60), "Misc": (120, 80, 150)}[cls], 30)
        roof = {"Car": 0.45, "Van": 0.12, "Truck": 0.0, "Tram": 0.08, "Misc": 0.3}[cls]
        wheel = max(2, int(bh * 0.16))
        top = y1 + int(bh * roof * 0.6)
        cv2.rectangle(img, (x1, top + int((bh - (top - y1)) * 0.35)), (x2, y2 - wheel // 2), body, -1)
        cabin = np.int32([[x1 + bw * roof * 0.4, y1], [x2 - bw * roof * 0.4, y1], [x2, top + (y2 - top) * 0.4],
                          [x1, top + (y2 - top) * 0.4]])
        cv2.fillConvexPoly(img, cabin, body, cv2.LINE_AA)
        if cls == "Truck":  # cargo box over most of the length, a cab at one end
            cv2.rectangle(img, (x1, y1), (x1 + int(bw * 0.72), y2 - wheel), _colour(rng, (200, 200, 190)), -1)
        n_windows = {"Car": 2, "Van": 3, "Truck": 1, "Tram": 6, "Misc": 0}[cls]
        for k in range(n_windows):
            wx = x1 + bw * (0.08 + 0.84 * k / max(n_windows, 1))
            cv2.rectangle(img, (int(wx), int(y1 + bh * 0.12)), (int(wx + bw * 0.8 / max(n_windows, 1) * 0.8),
                                                               int(y1 + bh * 0.4)), (70, 50, 40), -1)
        for wx in ((x1 + bw * 0.2, x2 - bw * 0.2) if cls != "Tram" else (x1 + bw * 0.1, x1 + bw * 0.3,
                                                                            x2 - bw * 0.3, x2 - bw * 0.1)):
            cv2.circle(img, (int(wx), y2 - wheel), wheel, dark, -1, cv2.LINE_AA)
        return
    skin, shirt = _colour(rng, (130, 160, 200), 20), _colour(rng, (40, 90, 160), 60)
    cx = (x1 + x2) // 2
    if cls == "Cyclist":
        r = max(2, int(bw * 0.24))
        for wx in (x1 + r, x2 - r):
            cv2.circle(img, (wx, y2 - r), r, dark, max(1, r // 4), cv2.LINE_AA)
        cv2.line(img, (x1 + r, y2 - r), (cx, y2 - 2 * r), (30, 30, 160), max(1, r // 4))
        cv2.line(img, (x2 - r, y2 - r), (cx, y2 - 2 * r), (30, 30, 160), max(1, r // 4))
        head = max(2, int(bh * 0.09))
        cv2.rectangle(img, (cx - head, y1 + 2 * head), (cx + head, y2 - 2 * r), shirt, -1)
        cv2.circle(img, (cx, y1 + head), head, skin, -1, cv2.LINE_AA)
        return
    head = max(2, int(min(bw * 0.35, bh * 0.1)))
    legs = y2 - int(bh * (0.45 if cls == "Pedestrian" else 0.2))
    cv2.circle(img, (cx, y1 + head), head, skin, -1, cv2.LINE_AA)
    cv2.rectangle(img, (x1 + bw // 6, y1 + 2 * head), (x2 - bw // 6, legs), shirt, -1)
    if cls == "Pedestrian":
        for dx in (-bw // 5, bw // 5):
            cv2.line(img, (cx, legs), (cx + dx, y2), (50, 40, 40), max(1, bw // 6), cv2.LINE_AA)
    else:  # seated: a bench under the person
        cv2.rectangle(img, (x1, legs), (x2, y2), (40, 70, 110), -1)


def _place(rng, w, h, horizon):
    """Draw one road user: class, distance, lateral offset; returns (class, box, dims, location)."""
    names = list(OBJECTS)
    weights = np.array([OBJECTS[n][0] for n in names])
    cls = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    _, hm, wm, lm = OBJECTS[cls]
    focal = FOCAL * w / KITTI_SIZE[0]
    z = float(rng.uniform(6, 45))
    x = float(rng.uniform(-9, 9))
    ry = float(rng.choice([-np.pi / 2, np.pi / 2]) + rng.uniform(-0.3, 0.3))
    # what the camera sees of a box turned by ry: its length across the view when side-on
    across = abs(np.cos(ry)) * wm + abs(np.sin(ry)) * lm
    bottom = horizon + focal * CAMERA_HEIGHT / z * (h / KITTI_SIZE[1]) * 0.9
    height, width = focal * hm / z, focal * across / z
    u = w / 2 + focal * x / z
    return cls, [u - width / 2, bottom - height, u + width / 2, bottom], (hm, wm, lm), (x, CAMERA_HEIGHT, z), ry


def _occlusion_level(visible_share):
    return 0 if visible_share > 0.9 else 1 if visible_share > 0.6 else 2


def render_kitti_frame(seed, index, image_size, max_objects=8):
    """Return (png bytes, label lines) of one synthetic KITTI frame."""
    rng = np.random.default_rng([seed, index])
    w, h = image_size
    img, horizon = _scene(rng, w, h)
    objects = [_place(rng, w, h, horizon) for _ in range(int(rng.integers(2, max_objects + 1)))]
    objects.sort(key=lambda o: -o[3][2])  # far to near: nearer objects are drawn over farther ones
    owner = np.full((h, w), -1, np.int32)
    lines = []
    for i, (cls, box, _dims, _loc, _ry) in enumerate(objects):
        _draw_object(img, rng, cls, box)
        x1, y1, x2, y2 = (int(np.clip(round(v), 0, s)) for v, s in zip(box, (w, h, w, h)))
        owner[y1:y2, x1:x2] = i
    for _ in range(int(rng.integers(0, 3))):  # distant clutter: one DontCare region each, as KITTI marks them
        dw, dh = rng.uniform(0.03, 0.1) * w, rng.uniform(0.03, 0.07) * h
        dx, dy = rng.uniform(0, w - dw), horizon - dh * rng.uniform(0.3, 0.9)
        for _ in range(int(rng.integers(2, 5))):
            cx = int(dx + dw * rng.random())
            cv2.rectangle(img, (cx, int(dy + dh * 0.3)), (cx + int(dw * 0.2), int(dy + dh)),
                          _colour(rng, (80, 80, 150), 50), -1)
        lines.append(f"DontCare -1 -1 -10 {dx:.2f} {dy:.2f} {dx + dw:.2f} {dy + dh:.2f} -1 -1 -1 -1000 -1000 -1000 -10")
    for i, (cls, box, (hm, wm, lm), (x, y, z), ry) in enumerate(objects):
        cx1, cy1, cx2, cy2 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(w)), min(box[3], float(h))
        if cx2 - cx1 < 2 or cy2 - cy1 < 2:
            continue  # fully outside the frame: not in the labels (KITTI labels what the camera sees)
        area = (box[2] - box[0]) * (box[3] - box[1])
        truncation = round(float(np.clip(1 - (cx2 - cx1) * (cy2 - cy1) / area, 0, 1)), 2)
        ix1, iy1, ix2, iy2 = int(cx1), int(cy1), int(np.ceil(cx2)), int(np.ceil(cy2))
        region = owner[iy1:iy2, ix1:ix2]
        visible = float((region == i).mean()) if region.size else 0.0
        if visible < 0.2:
            continue  # hidden behind nearer objects
        alpha = ry - np.arctan2(x, z)
        lines.append(f"{cls} {truncation:.2f} {_occlusion_level(visible)} {alpha:.2f} {cx1:.2f} {cy1:.2f} {cx2:.2f} "
                     f"{cy2:.2f} {hm:.2f} {wm:.2f} {lm:.2f} {x:.2f} {y:.2f} {z:.2f} {ry:.2f}")
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("OpenCV failed to encode a PNG")
    return png.tobytes(), lines


def _sign(img, rng, cls, box):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cx, cy, r = (x1 + x2) // 2, (y1 + y2) // 2, (x2 - x1) // 2
    cv2.line(img, (cx, cy), (cx, min(img.shape[0] - 1, y2 + 4 * r)), (110, 110, 110), max(1, r // 5))  # the pole
    if cls == "prohibitory":
        cv2.circle(img, (cx, cy), r, (30, 30, 210), -1, cv2.LINE_AA)
        cv2.circle(img, (cx, cy), int(r * 0.72), (245, 245, 245), -1, cv2.LINE_AA)
        cv2.putText(img, str(int(rng.choice([30, 50, 70]))), (cx - int(r * 0.55), cy + int(r * 0.25)),
                    cv2.FONT_HERSHEY_SIMPLEX, r / 40, (20, 20, 20), max(1, r // 12), cv2.LINE_AA)
    elif cls == "danger":
        tri = np.int32([[cx, y1], [x2, y2], [x1, y2]])
        cv2.fillConvexPoly(img, tri, (30, 30, 210), cv2.LINE_AA)
        inner = np.int32([[cx, y1 + r * 0.45], [x2 - r * 0.3, y2 - r * 0.18], [x1 + r * 0.3, y2 - r * 0.18]])
        cv2.fillConvexPoly(img, inner, (245, 245, 245), cv2.LINE_AA)
    elif cls == "mandatory":
        cv2.circle(img, (cx, cy), r, (190, 90, 20), -1, cv2.LINE_AA)
        cv2.arrowedLine(img, (cx, cy + r // 2), (cx, cy - r // 2), (245, 245, 245), max(1, r // 6), cv2.LINE_AA,
                        tipLength=0.4)
    else:
        diamond = np.int32([[cx, y1], [x2, cy], [cx, y2], [x1, cy]])
        cv2.fillConvexPoly(img, diamond, (245, 245, 245), cv2.LINE_AA)
        inner = np.int32([[cx, y1 + r * 0.3], [x2 - r * 0.3, cy], [cx, y2 - r * 0.3], [x1 + r * 0.3, cy]])
        cv2.fillConvexPoly(img, inner, (20, 200, 240), cv2.LINE_AA)


def render_sign_frame(seed, index, image_size, max_signs=3):
    """Return (png bytes, label lines) of one road-sign frame (signs only are annotated, and only signs shown)."""
    rng = np.random.default_rng([seed, index, 7])
    w, h = image_size
    img, horizon = _scene(rng, w, h)
    lines, taken = [], []
    for _ in range(int(rng.integers(1, max_signs + 1))):
        cls = SIGN_CLASSES[int(rng.integers(len(SIGN_CLASSES)))]
        side = float(rng.uniform(0.1, 0.28) * h)
        x1 = float(rng.uniform(0, w - side))
        y1 = float(rng.uniform(0.05 * h, max(0.06 * h, horizon - side * 0.5)))
        box = (x1, y1, x1 + side, y1 + side)
        if any(not (box[2] < t[0] or box[0] > t[2]) for t in taken):
            continue  # keep signs apart
        taken.append(box)
        _sign(img, rng, cls, box)
        lines.append(f"{cls} 0.00 0 -10 {box[0]:.2f} {box[1]:.2f} {box[2]:.2f} {box[3]:.2f} "
                     f"-1 -1 -1 -1000 -1000 -1000 -10")
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("OpenCV failed to encode a PNG")
    return png.tobytes(), lines


def _render_chunk(jobs):
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return [_render_one(*job) for job in jobs]
    finally:
        cv2.setNumThreads(threads)


def _render_one(root, kind, seed, index, image_size):
    render = render_kitti_frame if kind == "kitti" else render_sign_frame
    png, lines = render(seed, index, image_size)
    stem = f"{index:06d}"
    Path(root, "image_2", stem + ".png").write_bytes(png)
    Path(root, "label_2", stem + ".txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return [line.split()[0] for line in lines]


def _check(num_images, image_size):
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise TaoflowError(f"num_images must be an integer >= 1, got {num_images!r}")
    w, h = (int(v) for v in image_size)
    if not (64 <= w <= 4096 and 64 <= h <= 4096):
        raise TaoflowError(f"image size {w}x{h} is out of range: each side must be 64..4096 px")
    return w, h


def _generate(kind, output_dir, num_images, seed, image_size, workers, progress, replace):
    image_size = _check(num_images, image_size)
    start = time.perf_counter()
    with atomic_dir(output_dir, replace=replace) as tmp:
        (tmp / "image_2").mkdir()
        (tmp / "label_2").mkdir()
        jobs = [(str(tmp), kind, int(seed), i, image_size) for i in range(num_images)]
        results = map_chunks(_render_chunk, jobs, workers=workers, desc=f"demo-data {kind}", progress=progress)
    objects = {}
    for classes in results:
        for c in classes:
            objects[c] = objects.get(c, 0) + 1
    return {"output_dir": str(output_dir), "images": num_images, "image_size": list(image_size),
            "objects": dict(sorted(objects.items())), "seconds": round(time.perf_counter() - start, 3)}


def generate_kitti(output_dir, num_images=200, seed=0, image_size=KITTI_SIZE, workers=1, progress=True,
                   replace=False):
    """Write synthetic KITTI frames to output_dir/{image_2,label_2}; return statistics (objects per class)."""
    return _generate("kitti", output_dir, num_images, seed, image_size, workers, progress, replace)


def generate_road_signs(output_dir, num_images=60, seed=0, image_size=KITTI_SIZE, workers=1, progress=True,
                        replace=False):
    """Write a KITTI-format road-sign set (GTSDB's categories as classes) to output_dir/{image_2,label_2}."""
    return _generate("signs", output_dir, num_images, seed, image_size, workers, progress, replace)
