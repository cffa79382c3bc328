"""KITTI object-detection frames as published: 1242x375 PNG images, the 9 KITTI classes, 15-field label lines.

Synthetic pixels (filled boxes on a grey road scene) with label lines in KITTI's own spelling, for tests of the
data stage and of native training from raw KITTI folders.
"""

from pathlib import Path

import cv2
import numpy as np

KITTI_CLASSES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")
KITTI_SIZE = (1242, 375)
# TAO's KITTI sample specs (ssd_train_resnet18_kitti*.txt): car<-car,van; pedestrian<-pedestrian,person_sitting.
TAO_SAMPLE_MAPPING = {"car": "car", "pedestrian": "pedestrian", "cyclist": "cyclist", "van": "car",
                      "person_sitting": "pedestrian"}
_COLOURS = {"Car": (40, 40, 220), "Van": (40, 160, 220), "Truck": (40, 220, 40), "Pedestrian": (220, 40, 40),
            "Person_sitting": (220, 40, 160), "Cyclist": (220, 220, 40), "Tram": (120, 120, 40),
            "Misc": (40, 120, 120), "DontCare": (90, 90, 90)}


def kitti_line(cls, box, occluded=0, truncated=0.0):
    """A label line as KITTI writes it (DontCare with KITTI's -1/-10/-1000 placeholders)."""
    x1, y1, x2, y2 = box
    if cls == "DontCare":
        return f"DontCare -1 -1 -10 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} -1 -1 -1 -1000 -1000 -1000 -10"
    return (f"{cls} {truncated:.2f} {occluded} -1.58 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} "
            f"1.65 1.67 3.64 -0.65 1.71 46.70 -1.59")


def write_kitti_frames(image_dir, label_dir, count, size=KITTI_SIZE, extension=".png", seed=0, classes=KITTI_CLASSES):
    """Write count frames `<6-digit stem><extension>` + labels; return {stem: [(class, box, occluded)]}."""
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    truth = {}
    for i in range(count):
        stem = f"{i:06d}"
        img = np.full((height, width, 3), 110, np.uint8)
        img[: height // 3] = (200, 170, 140)  # sky
        objects = []
        for k in range(3):
            cls = classes[(i * 3 + k) % len(classes)]
            w, h = rng.uniform(0.12, 0.3) * width, rng.uniform(0.25, 0.6) * height
            x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            box = (round(x1, 2), round(y1, 2), round(x1 + w, 2), round(y1 + h, 2))
            cv2.rectangle(img, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), _COLOURS[cls], -1)
            objects.append((cls, box, int(k == 2)))
        assert cv2.imwrite(str(image_dir / f"{stem}{extension}"), img)
        lines = [kitti_line(cls, box, occ) for cls, box, occ in objects]
        (label_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        truth[stem] = objects
    return truth
