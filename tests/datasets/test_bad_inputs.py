"""A corpus of bad inputs over convert crpd, convert kitti and split.

Each case builds a small valid tree, breaks one thing, and runs the step through its CLI (the tools/ script's main
and the module's run_cli). An error must name the file (and line where there is one), exit 2 without a traceback,
and leave no output or temp directory behind; a reported skip must show up in report.json. In every case the input
tree is byte-for-byte unchanged.
"""

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from taoflow.datasets import crpd, kitti, split
from taoflow.errors import TaoflowError
from taoflow.fsutil import tree_digest
from tests.conftest import write_image, write_text
from tests.datasets.hostile_images import write_huge_image

REPO = Path(__file__).resolve().parents[2]
MODULES = {"crpd": crpd, "kitti": kitti, "split": split}
TOOLS = {"crpd": "convert_crpd", "kitti": "convert_kitti", "split": "split"}
PLATE = "10 10 40 10 40 30 10 30 0 京A12345\n"
GBK_LINES = PLATE.encode() + "1 2 30 2 30 20 1 20 0 粤B\n".encode("gbk")  # line 2 is not UTF-8
KITTI = "Car 0.00 0 0.00 10.00 10.00 40.00 30.00 1.50 1.60 3.90 1.00 1.50 10.00 -1.50\n"


def base_tree(step, root):
    """A valid two-image input for the step: CRPD subset root, KITTI image_2/label_2, or image/label for split."""
    images, labels, line = {
        "crpd": (root / "train" / "images", root / "train" / "labels", PLATE),
        "kitti": (root / "image_2", root / "label_2", KITTI),
        "split": (root / "image", root / "label", KITTI),
    }[step]
    for stem in ("a", "b"):
        write_image(images / f"{stem}.jpg", 80, 50)
        write_text(labels / f"{stem}.txt", line)
    return images, labels


@dataclass
class Case:
    step: str
    breakage: object  # f(images_dir, labels_dir, root) applied to the valid tree
    match: str  # regex the error (or the skip's message) must contain
    where: tuple = None  # (path relative to the input root, line or None) the error must name
    args: list = field(default_factory=list)
    skip: str = None  # report key holding the expected reported skip instead of an error
    output: str = "out"  # output path relative to tmp_path


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def set_label(name, text):
    return lambda images, labels, root: write_text(labels / name, text)


CASES = {
    "crpd_wrong_field_count": Case("crpd", set_label("a.txt", PLATE + "1 2 3 4 5 6 7 8 0 x extra\n"),
                                   "expected 10 fields", ("train/labels/a.txt", 2)),
    "crpd_missing_type_and_content": Case("crpd", set_label("a.txt", "1 2 30 2 30 20 1 20\n"),
                                          "found 8", ("train/labels/a.txt", 1)),
    "crpd_type_missing_text_in_its_place": Case("crpd", set_label("a.txt", "1 2 30 2 30 20 1 20 京A1\n"),
                                                "type. must be 0..3", ("train/labels/a.txt", 1)),
    "crpd_non_numeric_coordinate": Case("crpd", set_label("b.txt", "1 2 x3 2 30 20 1 20 0 京A1\n"),
                                        "field 3 .corner coordinate. is not a number", ("train/labels/b.txt", 1)),
    "crpd_nan_coordinate": Case("crpd", set_label("b.txt", "1 2 nan 2 30 20 1 20 0 京A1\n"), "not a finite number",
                                ("train/labels/b.txt", 1)),
    "crpd_type_out_of_range": Case("crpd", set_label("a.txt", "1 2 30 2 30 20 1 20 4 京A1\n"), "type. must be 0..3",
                                   ("train/labels/a.txt", 1)),
    "crpd_non_utf8_content": Case("crpd", set_label("a.txt", GBK_LINES),
                                  "not valid UTF-8", ("train/labels/a.txt", 2)),
    "crpd_degenerate_quad": Case("crpd", set_label("a.txt", "10 10 20 10 30 10 40 10 0 京A1\n"), "degenerate_quad",
                                 ("train/labels/a.txt", 1), skip="dropped_boxes"),
    "crpd_box_outside_image": Case("crpd", set_label("a.txt", PLATE + "90 10 120 10 120 30 90 30 1 京A2\n"),
                                   "outside_image", ("train/labels/a.txt", 2), skip="dropped_boxes"),
    "crpd_box_too_small": Case("crpd", set_label("b.txt", "10 10 12 10 12 30 10 30 0 京A3\n"), "too_small",
                               ("train/labels/b.txt", 1), skip="dropped_boxes"),
    "crpd_missing_label_file": Case("crpd", lambda i, lbl, r: (lbl / "b.txt").unlink(), "no label file",
                                    ("train/images/b.jpg", None)),
    "crpd_label_without_image": Case("crpd", set_label("c.txt", PLATE), "has no image", ("train/labels/c.txt", None)),
    "crpd_truncated_image": Case("crpd", lambda i, lbl, r: truncate(i / "a.jpg"), "truncated or corrupt JPEG",
                                 ("train/images/a.jpg", None)),
    "crpd_empty_image_file": Case("crpd", lambda i, lbl, r: (i / "b.jpg").write_bytes(b""), "image file is empty",
                                  ("train/images/b.jpg", None)),
    "crpd_truncated_image_skipped": Case("crpd", lambda i, lbl, r: truncate(i / "a.jpg"), "truncated or corrupt",
                                         ("train/images/a.jpg", None), args=["--on-error", "skip"], skip="skipped"),
    "crpd_duplicate_stems": Case("crpd", lambda i, lbl, r: write_image(i / "a.png"), "a.jpg, a.png",
                                 ("train/images/a.jpg", None)),
    "crpd_empty_dataset": Case("crpd", lambda i, lbl, r: [p.unlink() for d in (i, lbl) for p in d.iterdir()],
                               "no images found", ("train/images", None)),
    "crpd_no_layout": Case("crpd", lambda i, lbl, r: i.rename(r / "train" / "pictures"), "expected images/ and labels/",
                           (".", None)),
    "crpd_output_inside_input": Case("crpd", None, "overlaps the input", output="in/train/converted"),
    "crpd_input_inside_output": Case("crpd", None, "overlaps the input", output="."),
    "crpd_existing_output": Case("crpd", None, "already exists.*--replace", output="existing"),
    "kitti_16_fields": Case("kitti", set_label("b.txt", KITTI.strip() + " 0.93\n"), "--allow-scores",
                            ("label_2/b.txt", 1)),
    "kitti_14_fields": Case("kitti", set_label("a.txt", KITTI + "Car 0 0 0 1 1 5 5 1 1 1 1 1 1\n"), "expected 15",
                            ("label_2/a.txt", 2)),
    "kitti_nan_field": Case("kitti", set_label("a.txt", KITTI.replace("1.60", "NaN")),
                            "field 10 .width. is not a finite", ("label_2/a.txt", 1)),
    "kitti_non_utf8": Case("kitti", set_label("a.txt", b"Caf\xe9 0 0 0 1 1 5 5 1 1 1 1 1 1 1\n"), "not valid UTF-8",
                           ("label_2/a.txt", 1)),
    "kitti_box_outside_image": Case("kitti", set_label("a.txt", KITTI.replace("10.00 10.00 40.00", "90.00 1 95.00")),
                                    "outside_image", ("label_2/a.txt", 1), skip="dropped_boxes"),
    "kitti_missing_label_skipped": Case("kitti", lambda i, lbl, r: (lbl / "a.txt").unlink(), "no label file",
                                        ("image_2/a.jpg", None), args=["--on-error", "skip"], skip="skipped"),
    "kitti_corrupt_png": Case("kitti", lambda i, lbl, r: (i / "a.jpg").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30),
                              "corrupt PNG", ("image_2/a.jpg", None)),
    "kitti_no_layout": Case("kitti", lambda i, lbl, r: lbl.rename(r / "labels"), "expected image_2/ and label_2/",
                            (".", None)),
    "split_val_split_100": Case("split", None, "val_split must be a percentage in .0, 100..*no training",
                                args=["--val_split", "100"]),
    "split_val_split_negative": Case("split", None, "val_split must be", args=["--val_split", "-5"]),
    "split_label_without_image": Case("split", set_label("z.txt", KITTI), "has no image", ("label/z.txt", None)),
    "split_missing_label": Case("split", lambda i, lbl, r: (lbl / "a.txt").unlink(), "no label file",
                                ("image/a.jpg", None)),
    "split_16_field_label": Case("split", set_label("b.txt", KITTI.strip() + " 0.5\n"), "16 fields",
                                 ("label/b.txt", 1)),
    "split_empty_dataset": Case("split", lambda i, lbl, r: [p.unlink() for d in (i, lbl) for p in d.iterdir()],
                                "no images found", ("image", None)),
    "split_output_inside_input": Case("split", None, "overlaps the input", output="in/image/val"),
    # Headers claiming 65000x65000 (or 60000x60000) pixels: header-only checks pass them, OpenCV fails on them in
    # training naming no file, so every step refuses them against --max-image-side (default 16384).
    "crpd_huge_jpeg_header": Case("crpd", lambda i, lbl, r: write_huge_image(i / "a.jpg"),
                                  "claims 65000x65000 pixels.*limit of 16384", ("train/images/a.jpg", None)),
    "crpd_huge_png_header_skipped": Case("crpd", lambda i, lbl, r: ((i / "b.jpg").unlink(),
                                                                    write_huge_image(i / "b.png", 60000)),
                                         "claims 60000x60000", ("train/images/b.png", None),
                                         args=["--on-error", "skip"], skip="skipped"),
    "crpd_max_image_side_option": Case("crpd", None, "claims 80x50 pixels.*limit of 64", ("train/images/a.jpg", None),
                                       args=["--max-image-side", "64"]),
    "crpd_max_image_side_zero": Case("crpd", None, "max_image_side must be a positive", args=["--max-image-side", "0"]),
    "kitti_huge_png_header": Case("kitti", lambda i, lbl, r: ((i / "b.jpg").unlink(), write_huge_image(i / "b.png")),
                                  "claims 65000x65000", ("image_2/b.png", None)),
    "kitti_huge_jpeg_header_skipped": Case("kitti", lambda i, lbl, r: write_huge_image(i / "a.jpg", 60000),
                                           "claims 60000x60000", ("image_2/a.jpg", None),
                                           args=["--on-error", "skip"], skip="skipped"),
    "split_huge_jpeg_header": Case("split", lambda i, lbl, r: write_huge_image(i / "b.jpg"), "claims 65000x65000",
                                   ("image/b.jpg", None)),
    "split_huge_png_header_stratified": Case("split", lambda i, lbl, r: ((i / "a.jpg").unlink(),
                                                                         write_huge_image(i / "a.png", 60000)),
                                             "claims 60000x60000", ("image/a.png", None), args=["--stratify"]),
    "split_max_image_side_option": Case("split", None, "limit of 64", ("image/a.jpg", None),
                                        args=["--max-image-side", "64"]),
    # split checks images with convert's own check (images.image_size), not only the labels.
    "split_truncated_jpeg": Case("split", lambda i, lbl, r: truncate(i / "b.jpg"), "truncated or corrupt JPEG",
                                 ("image/b.jpg", None)),
    "split_truncated_jpeg_replace": Case("split", lambda i, lbl, r: truncate(i / "a.jpg"), "truncated or corrupt JPEG",
                                         ("image/a.jpg", None), args=["--replace"]),
    "split_corrupt_png": Case("split", lambda i, lbl, r: (i / "a.jpg").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30),
                              "corrupt PNG", ("image/a.jpg", None)),
    "split_empty_image_file": Case("split", lambda i, lbl, r: (i / "b.jpg").write_bytes(b""), "image file is empty",
                                   ("image/b.jpg", None)),
}


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli_argv(step, root, out, extra):
    if step == "split":
        io = ["--input_image_dir", str(root / "image"), "--input_label_dir", str(root / "label"),
              "--output_dir", str(out)]
    else:
        io = ["-i", str(root), "-o", str(out)]
    return io + ["-j", "1", "--no-progress", *extra]


def snapshot(tmp_path):
    """Every path under tmp_path (so stray empty temp dirs count) and the input's file digests."""
    return sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")), tree_digest(tmp_path / "in")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, capsys):
    case = CASES[name]
    root = tmp_path / "in"
    images, labels = base_tree(case.step, root)
    if case.breakage:
        case.breakage(images, labels, root)
    out = tmp_path / case.output
    if case.output == "existing":
        write_text(out / "keep.txt", "previous output")
    before = snapshot(tmp_path)
    argv = cli_argv(case.step, root, out, case.args)
    rc = load_tool(TOOLS[case.step]).main(argv)
    err = capsys.readouterr().err

    if case.skip:
        assert rc == 0, err
        report = json.loads((out / ("split.json" if case.step == "split" else "report.json")).read_text("utf-8"))
        path_key = "path" if case.skip == "skipped" else "file"
        hits = [e for e in report[case.skip]
                if e[path_key] == case.where[0] and e.get("line") == case.where[1]]
        assert len(hits) == 1, report[case.skip]
        assert re.search(case.match, json.dumps(hits[0], ensure_ascii=False)), hits[0]
        assert snapshot(tmp_path)[1] == before[1]
        return

    assert rc == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(case.match, err), err
    assert snapshot(tmp_path) == before  # no output, no temp dir, input untouched
    parser = argparse.ArgumentParser()
    MODULES[case.step].add_cli_arguments(parser)
    with pytest.raises(TaoflowError, match=case.match) as exc:
        MODULES[case.step].run_cli(parser.parse_args(argv))
    if case.where:
        rel, line = case.where
        assert Path(exc.value.path).resolve() == (root / rel).resolve()
        assert exc.value.line == line
        assert err.startswith(f"error: {exc.value.path}" + (f":{line}:" if line else ":"))
    assert snapshot(tmp_path) == before


def test_script_exits_2_without_traceback(tmp_path):
    root = tmp_path / "in"
    base_tree("crpd", root)
    write_text(root / "train" / "labels" / "a.txt", "1 2 nan 2 30 20 1 20 0 x\n")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_crpd.py"), "-i", str(root), "-o",
                           str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    label = root / "train" / "labels" / "a.txt"
    assert proc.stderr == f"error: {label}:1: field 3 (corner coordinate) is not a finite number: 'nan'\n"
    assert not (tmp_path / "out").exists()
