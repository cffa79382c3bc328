"""Shared fixtures: tiny synthetic CRPD and KITTI trees built from cv2-written images."""

from pathlib import Path

import cv2
import numpy as np
import pytest


def write_image(path, width=64, height=48):
    """Write a small real JPEG/PNG (format from the extension) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((height, width, 3), 127, np.uint8)
    pixels[: height // 2, : width // 2] = (0, 80, 200)  # some structure so JPEG data is not trivial
    assert cv2.imwrite(str(path), pixels)
    return path


def write_text(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


# CRPD: stem -> (split, image name, (width, height), label text). Comments on each plate say what it tests.
CRPD_FILES = {
    "img001": ("train", "img001.jpg", (200, 100),
               "10 20 50 20 50 40 10 40 0 皖A12345\n"          # clockwise TL,TR,BR,BL -> 10 20 50 40
               "60 30 60 50 100 50 100 30 1 粤B6789学\n"),      # counter-clockwise TL,BL,BR,TR -> 60 30 100 50
    "img002": ("train", "img002.png", (120, 80),
               "150 10 190 10 190 30 150 30 2 京C00001\n"      # fully outside (x >= 120)
               "100 60 130 60 130 90 100 90 3 沪D11111\n"      # clipped to 100 60 120 80
               "5 5 7 5 7 7 5 7 0 苏E22222\n"),                 # 2x2: below min_size 4
    "img003": ("val", "img003.jpg", (200, 100),
               "30,40,70,40,70,60,30,60,2,浙F33333\n"           # README-style commas
               "\n"
               "10 10 20 10 30 10 40 10 0 鲁G44444\n"),         # collinear corners: degenerate quad
    "img004": ("test", "img004.jpg", (90, 60), ""),              # no plates: still gets a label file
}


@pytest.fixture
def crpd_tree(tmp_path):
    root = tmp_path / "CRPD_single"
    for stem, (split, name, (w, h), label) in CRPD_FILES.items():
        write_image(root / split / "images" / name, w, h)
        write_text(root / split / "labels" / f"{stem}.txt", label)
    return root


KITTI_FILES = {
    "000000": ((100, 60), (
        "Car 0.00 0 -1.57 10.00 10.00 40.00 30.00 1.50 1.60 3.90 1.00 1.50 10.00 -1.50\n"
        "Pedestrian 0.10 1 0.20 50.00 5.00 60.00 40.00 1.70 0.60 0.80 2.00 1.60 8.00 0.10\n"
        "DontCare -1 -1 -10 70.00 10.00 90.00 20.00 -1 -1 -1 -1000 -1000 -1000 -10\n")),
    "000001": ((100, 60), (
        "Tram 0.00 0 0.00 0.00 0.00 20.00 20.00 3.00 2.50 15.00 1.00 1.50 30.00 0.00\n"
        "Cyclist 0.00 2 0.50 90.00 10.00 120.00 50.00 1.80 0.60 1.70 3.00 1.60 9.00 0.20\n"   # clipped to x2=100
        "Van 0.00 0 0.00 101.00 10.00 120.00 50.00 2.00 1.90 4.50 5.00 1.60 20.00 0.00\n")),  # outside
}


@pytest.fixture
def kitti_tree(tmp_path):
    root = tmp_path / "kitti" / "training"
    for stem, ((w, h), label) in KITTI_FILES.items():
        write_image(root / "image_2" / f"{stem}.png", w, h)
        write_text(root / "label_2" / f"{stem}.txt", label)
    return root
