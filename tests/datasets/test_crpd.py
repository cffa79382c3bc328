"""CRPD to TAO KITTI conversion: boxes, class modes, drops, sidecar, layouts."""

import argparse
import json
import os

import pytest

from taoflow.datasets import crpd
from taoflow.datasets.crpd import convert_crpd, plate_box, quad_area
from taoflow.errors import DataError
from tests.conftest import write_image, write_text
from taoflow.fsutil import tree_digest

RECT_CW = ((10, 20), (50, 20), (50, 40), (10, 40))


def labels(out, split, stem):
    return [line.split() for line in (out / split / "label" / f"{stem}.txt").read_text().splitlines()]


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (0, 3, 2, 1), (2, 3, 0, 1), (0, 2, 1, 3)])
def test_box_is_min_max_whatever_the_corner_order(order):
    quad = tuple(RECT_CW[i] for i in order)
    assert plate_box(quad, 200, 100, 4) == ((10, 20, 50, 40), None)
    assert quad_area(quad) == 800


def test_tilted_quad_box_and_clipping():
    tilted = ((176, 185), (237, 185), (235, 220), (172, 216))  # from CRPD issue #8
    assert plate_box(tilted, 1920, 1080, 4) == ((172, 185, 237, 220), None)
    assert plate_box(((-5, -5), (30, -5), (30, 20), (-5, 20)), 25, 15, 4) == ((0, 0, 25, 15), None)


@pytest.mark.parametrize("quad,reason", [
    (((10, 10), (20, 10), (30, 10), (40, 10)), "degenerate_quad"),
    (((5, 5), (5, 5), (5, 5), (5, 5)), "degenerate_quad"),
    (((300, 10), (320, 10), (320, 30), (300, 30)), "outside_image"),
    (((-30, 10), (0, 10), (0, 30), (-30, 30)), "outside_image"),  # touches the edge only
    (((195, 10), (230, 10), (230, 30), (195, 30)), "too_small"),   # 5x20 before clipping, 3x20 after
])
def test_dropped_boxes(quad, reason):
    assert plate_box(quad, 198, 100, 4)[1] == reason


def test_subpixel_box_dropped_like_tao_would():
    assert plate_box(((10.2, 10), (10.9, 10), (10.9, 30), (10.2, 30)), 100, 100, 0)[1] == "subpixel_box"


def test_lpd_mode_tree(crpd_tree, tmp_path):
    before = tree_digest(crpd_tree)
    out = tmp_path / "out"
    report = convert_crpd(crpd_tree, out, progress=False)
    assert sorted(os.listdir(out)) == ["report.json", "test", "train", "val"]
    assert labels(out, "train", "img001") == [
        "lpd 0.0 0 0.0 10.00 20.00 50.00 40.00 0.0 0.0 0.0 0.0 0.0 0.0 0.0".split(),
        "lpd 0.0 0 0.0 60.00 30.00 100.00 50.00 0.0 0.0 0.0 0.0 0.0 0.0 0.0".split(),
    ]
    assert [row[4:8] for row in labels(out, "train", "img002")] == [["100.00", "60.00", "120.00", "80.00"]]
    assert labels(out, "test", "img004") == []  # empty label file, still present
    assert (out / "train" / "image" / "img002.png").is_file()
    assert report["splits"]["train"]["dropped"] == {"outside_image": 1, "too_small": 1}
    assert report["splits"]["val"]["dropped"] == {"degenerate_quad": 1}
    assert report["totals"]["objects"] == {"lpd": 4}
    assert report["totals"]["empty_images"] == 1
    assert [(d["file"], d["line"], d["reason"]) for d in report["dropped_boxes"]] == [
        ("train/labels/img002.txt", 1, "outside_image"),
        ("train/labels/img002.txt", 3, "too_small"),
        ("val/labels/img003.txt", 3, "degenerate_quad"),
    ]
    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == report
    assert tree_digest(crpd_tree) == before


def test_plate_type_mode(crpd_tree, tmp_path):
    report = convert_crpd(crpd_tree, tmp_path / "out", class_mode="plate_type", progress=False)
    assert [row[0] for row in labels(tmp_path / "out", "train", "img001")] == ["blue", "yellow_single"]
    assert report["totals"]["objects"] == {"blue": 1, "white": 1, "yellow_double": 1, "yellow_single": 1}


def test_plates_jsonl_keeps_utf8_content(crpd_tree, tmp_path):
    convert_crpd(crpd_tree, tmp_path / "out", progress=False)
    raw = (tmp_path / "out" / "train" / "plates.jsonl").read_text(encoding="utf-8")
    assert "粤B6789学" in raw  # written as UTF-8, not \u escapes
    rows = [json.loads(line) for line in raw.splitlines()]
    assert [(r["stem"], r["index"], r["kept"], r["drop_reason"]) for r in rows] == [
        ("img001", 0, True, None), ("img001", 1, True, None),
        ("img002", 0, False, "outside_image"), ("img002", 1, True, None), ("img002", 2, False, "too_small"),
    ]
    assert rows[1]["quad"] == [[60, 30], [60, 50], [100, 50], [100, 30]]
    assert rows[1]["box"] == [60, 30, 100, 50]
    assert (rows[1]["type"], rows[1]["type_name"]) == (1, "yellow_single")
    val = [json.loads(line) for line in (tmp_path / "out" / "val" / "plates.jsonl").read_text("utf-8").splitlines()]
    assert [r["content"] for r in val] == ["浙F33333", "鲁G44444"]  # comma-separated line parsed too


def test_min_size_zero_keeps_small_plate(crpd_tree, tmp_path):
    report = convert_crpd(crpd_tree, tmp_path / "out", min_size=0, splits=["train"], progress=False)
    assert list(report["splits"]) == ["train"]
    assert report["splits"]["train"]["objects"] == {"lpd": 4}
    assert sorted(os.listdir(tmp_path / "out")) == ["report.json", "train"]


def test_single_split_dir_and_imgs_name(tmp_path):
    root = tmp_path / "val"
    write_image(root / "imgs" / "a.jpg", 80, 40)
    write_text(root / "labels" / "a.txt", "1 1 30 1 30 20 1 20 0 川A00000\n")
    report = convert_crpd(root, tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path / "out")) == ["image", "label", "plates.jsonl", "report.json"]
    assert list(report["splits"]) == ["."]
    assert report["splits"]["."]["objects"] == {"lpd": 1}
    with pytest.raises(DataError, match="single split"):
        convert_crpd(root, tmp_path / "out2", splits=["train"], progress=False)


def test_unknown_split_is_an_error(crpd_tree, tmp_path):
    with pytest.raises(DataError, match="split.s. nope not found; available: test, train, val"):
        convert_crpd(crpd_tree, tmp_path / "out", splits=["nope"], progress=False)


def test_output_independent_of_workers(crpd_tree, tmp_path):
    convert_crpd(crpd_tree, tmp_path / "a", workers=1, progress=False)
    convert_crpd(crpd_tree, tmp_path / "b", workers=3, progress=False)
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    a.pop("report.json"), b.pop("report.json")  # differs only by the output path it names
    assert a == b


def test_skip_mode_reports_and_continues(crpd_tree, tmp_path):
    write_text(crpd_tree / "train" / "labels" / "img001.txt", "1 2 3 4 5 6 7 8\n")
    report = convert_crpd(crpd_tree, tmp_path / "out", on_error="skip", progress=False)
    assert [(s["path"], s["line"]) for s in report["skipped"]] == [("train/labels/img001.txt", 1)]
    assert "found 8" in report["skipped"][0]["error"]
    assert not (tmp_path / "out" / "train" / "image" / "img001.jpg").exists()
    assert report["splits"]["train"]["images"] == 1


def test_cli(crpd_tree, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    crpd.add_cli_arguments(parser)
    args = parser.parse_args(["-i", str(crpd_tree), "-o", str(tmp_path / "out"), "--class-mode", "plate_type",
                              "--min-size", "1", "--split", "val", "--split", "train", "-j", "2", "--no-progress"])
    assert crpd.run_cli(args) == 0
    err = capsys.readouterr().err
    assert "crpd train: 2 images, 5 plates" in err and "crpd val:" in err and "crpd test" not in err


# Label lines as CRPD's files write them (issue #8 of yxgong0/CRPD quotes CRPD_multi/val/labels/48_0064.txt:
# space-separated integers, tilted quadrilaterals), with what copies of the files pick up on the way: a BOM, CRLF
# line ends, README-style commas, and unreadable plates labelled with the type but no text.
REAL_FORMAT_LINES = [
    "176 185 237 185 235 220 172 216 0 皖AD12345",     # issue #8 corners, clockwise from top-left
    "264 282 265 314 376 311 375 279 1 粤B6789学",       # counter-clockwise TL, BL, BR, TR
    "30,40,70,40,70,60,30,60,2,浙F33333",               # README commas
    "300, 40, 340, 42, 339, 60, 301, 58, 3, 京A1234警",  # comma and space
    "100 100 180 100 180 140 100 140 1",                # 9 fields: box and type, no plate text
    "200,200,260,200,260,230,200,230,0,",               # comma form of the same, trailing separator
]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("bom", [False, True])
def test_real_format_lines(tmp_path, newline, bom):
    root = tmp_path / "CRPD_multi" / "val"
    write_image(root / "images" / "48_0064.jpg", 400, 320)
    text = newline.join(REAL_FORMAT_LINES) + newline
    write_text(root / "labels" / "48_0064.txt", ("\ufeff" if bom else "") + text)
    before = tree_digest(root)
    report = convert_crpd(root, tmp_path / "out", progress=False)
    boxes = [row[4:8] for row in labels(tmp_path / "out", ".", "48_0064")]
    assert boxes == [["172.00", "185.00", "237.00", "220.00"], ["264.00", "279.00", "376.00", "314.00"],
                     ["30.00", "40.00", "70.00", "60.00"], ["300.00", "40.00", "340.00", "60.00"],
                     ["100.00", "100.00", "180.00", "140.00"], ["200.00", "200.00", "260.00", "230.00"]]
    counts = report["splits"]["."]
    assert (counts["plates"], counts["plates_without_text"], counts["objects"]) == (6, 2, {"lpd": 6})
    assert report["totals"]["plates_without_text"] == 2
    rows = [json.loads(line) for line in (tmp_path / "out" / "plates.jsonl").read_text("utf-8").splitlines()]
    assert [(r["content"], r["type"], r["line"]) for r in rows] == [
        ("皖AD12345", 0, 1), ("粤B6789学", 1, 2), ("浙F33333", 2, 3), ("京A1234警", 3, 4), ("", 1, 5), ("", 0, 6)]
    assert rows[1]["quad"] == [[264, 282], [265, 314], [376, 311], [375, 279]]  # as written, order kept
    assert tree_digest(root) == before


def test_summary_counts_plates_without_text(tmp_path):
    root = tmp_path / "val"
    write_image(root / "images" / "a.jpg", 200, 100)
    write_text(root / "labels" / "a.txt", "10 10 50 10 50 30 10 30 0\n")
    report = convert_crpd(root, tmp_path / "out", progress=False)
    assert "1 plates (1 without plate text)" in crpd.summary(report)


@pytest.mark.parametrize("line,match,column", [
    ("176 185 237 185 235 220 172 216 0 皖AD12345 extra", "found 11", None),
    ("176 185 237 185 235 220 172 216", "found 8", None),
    ("176 185 237 185 235 220 172 216 皖AD12345", "type. must be 0..3", None),  # type missing, text in its place
    ("176 185 237 185 235 220 172 2l6 0 皖AD12345", "field 8 .corner coordinate. is not a number", None),
    ("176 185 237 185 235 220 172 216 7", "type. must be 0..3", None),
])
def test_other_lines_fail_with_file_and_line(tmp_path, line, match, column):
    root = tmp_path / "val"
    write_image(root / "images" / "a.jpg", 400, 300)
    label = write_text(root / "labels" / "a.txt", "\ufeff" + REAL_FORMAT_LINES[0] + "\r\n" + line + "\r\n")
    with pytest.raises(DataError, match=match) as exc:
        convert_crpd(root, tmp_path / "out", progress=False)
    assert (exc.value.path, exc.value.line) == (str(label), 2)
    assert not (tmp_path / "out").exists()
