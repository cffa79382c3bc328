"""The synthetic CRPD generator: layout, label format, visible plates, determinism, argument errors."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from taoflow.datasets.demo import LETTERS, PROVINCES, add_cli_arguments, generate_crpd, run_cli
from taoflow.errors import OutputExistsError, TaoflowError
from taoflow.fsutil import tree_digest

REPO = Path(__file__).resolve().parents[2]
SIZE = (320, 240)
SERIAL = re.compile(rf"^[{LETTERS}0-9]{{5}}$|^[{LETTERS}0-9]{{4}}警$")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "crpd"
    stats = generate_crpd(out, num_images=60, seed=3, image_size=SIZE, progress=False)
    return out, stats


def read_labels(root):
    """Yield (image_path, corners 4x2 int array, type, content) for every label line under root."""
    for label in sorted(Path(root).glob("*/labels/*.txt")):
        image = label.parent.parent / "images" / (label.stem + ".jpg")
        for line in label.read_text(encoding="utf-8").splitlines():
            tokens = line.split(" ")
            yield image, np.array([int(t) for t in tokens[:8]]).reshape(4, 2), int(tokens[8]), tokens[9]


def signed_area(q):
    x, y = q[:, 0].astype(float), q[:, 1].astype(float)
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def test_layout_and_pairing(batch):
    root, stats = batch
    assert stats["images"] == {"train": 48, "val": 6, "test": 6}
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]
    for split, n in stats["images"].items():
        images = sorted(p.stem for p in (root / split / "images").iterdir())
        labels = sorted(p.stem for p in (root / split / "labels").iterdir())
        assert images == labels and len(images) == n
        assert all(re.fullmatch(r"demo_\d{6}", s) for s in images)
        assert all(cv2.imread(str(root / split / "images" / f"{s}.jpg")).shape == (SIZE[1], SIZE[0], 3)
                   for s in images[:3])
    # Splits are assigned by index: the first 80% of indices are train.
    assert (root / "train" / "images" / "demo_000000.jpg").exists()
    assert (root / "test" / "images" / "demo_000059.jpg").exists()


def test_label_lines_match_crpd_format(batch):
    root, stats = batch
    lines = [line for p in root.glob("*/labels/*.txt") for line in p.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == stats["plates_total"] > 60
    for line in lines:
        tokens = line.split(" ")
        assert len(tokens) == 10, line
        assert all(re.fullmatch(r"-?\d+", t) for t in tokens[:8]), line
        assert tokens[8] in {"0", "1", "2", "3"}, line
        content = tokens[9]
        assert content[0] in PROVINCES and content[1] in LETTERS and SERIAL.match(content[2:]), line
        assert not content.endswith("警") or tokens[8] == "3", line


def test_corners_form_convex_quads_in_both_orders(batch):
    root, _ = batch
    orientations = set()
    for _, q, _, _ in read_labels(root):
        edges = np.roll(q, -1, axis=0) - q
        cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
        assert (cross > 0).all() or (cross < 0).all(), q  # convex and not self-intersecting
        assert abs(signed_area(q)) >= 20, q
        # First corner is the top-left one in both of CRPD's orders.
        assert q[0, 0] < q[2, 0] and q[0, 1] < q[2, 1], q
        orientations.add(signed_area(q) > 0)  # y points down: TL,TR,BR,BL is positive
    assert orientations == {True, False}


def test_all_types_and_some_partly_outside_plates(batch):
    root, stats = batch
    assert all(n > 0 for n in stats["plates"].values()), stats["plates"]
    w, h = SIZE
    outside = [q for _, q, _, _ in read_labels(root) if (q < 0).any() or (q[:, 0] >= w).any() or (q[:, 1] >= h).any()]
    assert len(outside) == stats["plates_partly_outside"] >= 1
    for q in outside:  # cut by the border, not lost outside the frame
        centre = q.mean(0)
        assert -0.25 * w < centre[0] < 1.25 * w and -0.25 * h < centre[1] < 1.25 * h


def test_plates_are_visible_in_their_colours(batch):
    root, _ = batch
    w, h = SIZE
    checked = {0: 0, 1: 0}
    for image, q, ptype, _ in read_labels(root):
        if ptype not in checked or (q < 0).any() or (q[:, 0] >= w).any() or (q[:, 1] >= h).any():
            continue
        if abs(signed_area(q)) < 150:
            continue
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, q.astype(np.int32), 255)
        mask = cv2.erode(mask, np.ones((3, 3), np.uint8))  # ignore the blurred edge
        b, g, r, _ = cv2.mean(cv2.imread(str(image)), mask=mask)
        if ptype == 0:
            assert b > r + 40, (image, q, (b, g, r))
        else:
            assert r > b + 40 and g > b + 20, (image, q, (b, g, r))
        checked[ptype] += 1
    assert checked[0] >= 10 and checked[1] >= 3


def test_output_is_independent_of_workers(tmp_path):
    kwargs = dict(num_images=24, seed=11, image_size=(200, 150), progress=False)
    generate_crpd(tmp_path / "one", workers=1, **kwargs)
    generate_crpd(tmp_path / "two", workers=2, **kwargs)
    digest = tree_digest(tmp_path / "one")
    assert len(digest) == 48 and digest == tree_digest(tmp_path / "two")
    generate_crpd(tmp_path / "other", workers=1, **{**kwargs, "seed": 12})
    assert tree_digest(tmp_path / "other") != digest


def test_existing_output_needs_replace(tmp_path):
    out = tmp_path / "crpd"
    generate_crpd(out, num_images=3, image_size=(128, 96), progress=False)
    with pytest.raises(OutputExistsError):
        generate_crpd(out, num_images=3, image_size=(128, 96), progress=False)
    stats = generate_crpd(out, num_images=5, image_size=(128, 96), progress=False, replace=True)
    assert sum(stats["images"].values()) == 5
    assert len(list(out.glob("*/images/*.jpg"))) == 5


@pytest.mark.parametrize("kwargs", [
    {"num_images": 0},
    {"num_images": -3},
    {"num_images": 2.5},
    {"image_size": (10, 10)},
    {"image_size": (640,)},
    {"image_size": "big"},
    {"split_fractions": (0.5, 0.5, 0.5)},
    {"split_fractions": (0.9, 0.1)},
    {"split_fractions": (1.2, -0.1, -0.1)},
    {"max_plates": 0},
    {"workers": 0},
    {"seed": -1},
])
def test_bad_arguments_raise_taoflow_error(tmp_path, kwargs):
    with pytest.raises(TaoflowError):
        generate_crpd(tmp_path / "crpd", progress=False, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_empty_splits_are_not_created(tmp_path):
    stats = generate_crpd(tmp_path / "crpd", num_images=6, image_size=(128, 96), split_fractions=(0.67, 0.33, 0),
                          progress=False)
    assert stats["images"] == {"train": 4, "val": 2, "test": 0}
    assert sorted(p.name for p in (tmp_path / "crpd").iterdir()) == ["train", "val"]


def test_cli_summary_and_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    out = tmp_path / "crpd"
    args = parser.parse_args(["-o", str(out), "-n", "4", "--image-size", "160x120", "--no-progress",
                              "--split-fractions", "0.5,0.5,0"])
    assert run_cli(args) == 0
    summary = capsys.readouterr().out
    assert str(out) in summary and "4 synthetic CRPD images" in summary
    with pytest.raises(TaoflowError, match="640x480"):
        run_cli(parser.parse_args(["-o", str(tmp_path / "x"), "--image-size", "640*480"]))

    script = [sys.executable, str(REPO / "tools" / "demo_data.py"), "-o", str(out), "-n", "2", "--no-progress"]
    proc = subprocess.run(script, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: output already exists")
