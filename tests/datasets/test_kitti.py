"""KITTI line format, strict parsing, and KITTI traffic ingestion."""

import argparse
import json
import os
from pathlib import Path

import pytest

from taoflow.datasets import kitti
from taoflow.datasets.kitti import KittiObject, convert_kitti, format_kitti_line, parse_kitti_file
from taoflow.errors import DataError, TaoflowError
from taoflow.fsutil import tree_digest
from tests.conftest import write_image, write_text

REPO = Path(__file__).resolve().parents[2]
LINE = "Car 0.00 0 -1.57 10.00 10.00 40.00 30.00 1.50 1.60 3.90 1.00 1.50 10.00 -1.50"


def test_lpd_line_matches_nvidia_lpd_prep():
    obj = KittiObject("lpd", 0.0, 0, 0.0, 12, 34.5, 56.789, 78, *([0.0] * 7))
    assert format_kitti_line(obj) == "lpd 0.0 0 0.0 12.00 34.50 56.79 78.00 0.0 0.0 0.0 0.0 0.0 0.0 0.0"


def test_parse_then_format_round_trips_values(tmp_path):
    path = write_text(tmp_path / "a.txt", LINE + "\n\n   \n")
    [obj] = parse_kitti_file(path)
    assert (obj.cls, obj.occlusion, obj.alpha, obj.x2, obj.rot_y, obj.score) == ("Car", 0, -1.57, 40.0, -1.5, None)
    again = format_kitti_line(obj).split()
    assert len(again) == 15
    assert [float(v) for v in again[1:]] == [float(v) for v in LINE.split()[1:]]


def test_sixteen_fields_need_allow_scores(tmp_path):
    path = write_text(tmp_path / "s.txt", LINE + "\n" + LINE + " 0.87\n")
    with pytest.raises(DataError, match="--allow-scores") as exc:
        parse_kitti_file(path)
    assert (exc.value.path, exc.value.line) == (str(path), 2)
    objs = parse_kitti_file(path, allow_scores=True)
    assert [o.score for o in objs] == [None, 0.87]
    assert format_kitti_line(objs[1]).endswith(" 0.87")


@pytest.mark.parametrize("line,match", [
    (LINE.rsplit(" ", 1)[0], "expected 15"),
    (LINE.replace("10.00 10.00 40.00", "10.00 abc 40.00"), "field 6 .bbox_top. is not a number"),
    (LINE.replace("-1.50", "inf"), "not a finite number"),
    (LINE.replace(" 0 -1.57", " 0.5 -1.57"), "must be an integer"),
])
def test_strict_parse_errors_name_line(tmp_path, line, match):
    path = write_text(tmp_path / "bad.txt", LINE + "\n" + line + "\n")
    with pytest.raises(DataError, match=match) as exc:
        parse_kitti_file(path)
    assert str(exc.value).startswith(f"{path}:2:")


def test_utf8_bom_is_tolerated(tmp_path):
    path = write_text(tmp_path / "bom.txt", ("\ufeff" + LINE + "\n").encode("utf-8"))
    assert parse_kitti_file(path)[0].cls == "Car"


def test_traffic_preset_remaps_drops_and_reports(kitti_tree, tmp_path):
    before = tree_digest(kitti_tree)
    report = convert_kitti(kitti_tree, tmp_path / "out", class_map=kitti.TRAFFIC_CLASS_MAP, progress=False)
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["image", "label", "report.json"]
    labels = (out / "label" / "000000.txt").read_text().splitlines()
    assert [line.split()[0] for line in labels] == ["vehicle", "pedestrian"]
    assert labels[1].split()[2] == "1"  # occlusion kept: TAO treats occlusion != 0 as difficult
    second = (out / "label" / "000001.txt").read_text().splitlines()
    assert [line.split()[0] for line in second] == ["tram", "bicycle"]  # unmapped tram kept, lowercased
    assert second[1].split()[4:8] == ["90.00", "10.00", "100.00", "50.00"]  # clipped to the 100 px width
    assert report["objects"] == {"bicycle": 1, "pedestrian": 1, "tram": 1, "vehicle": 1}
    assert report["dropped"] == {"drop_class": 1, "outside_image": 1}
    assert report["dropped_by_class"] == {"dontcare": 1, "van": 1}
    assert report["dropped_boxes"] == [
        {"file": "label_2/000001.txt", "line": 3, "reason": "outside_image", "class": "van", "box": [101, 10, 120, 50]}
    ]
    assert report["clipped_boxes"] == 1
    assert json.loads((out / "report.json").read_text()) == report
    assert tree_digest(kitti_tree) == before


def test_drop_unmapped_and_custom_map(kitti_tree, tmp_path):
    report = convert_kitti(kitti_tree, tmp_path / "out", class_map={"CAR": "Auto", "tram": "auto"},
                           drop_unmapped=True, progress=False)
    assert report["objects"] == {"auto": 2}
    assert report["dropped"]["unmapped_class"] == 3


def test_scores_dropped_only_when_allowed_and_counted(tmp_path):
    root = tmp_path / "in"
    write_image(root / "image" / "a.jpg", 100, 60)
    write_text(root / "label" / "a.txt", LINE + " 0.9\n")
    with pytest.raises(DataError, match="16 fields"):
        convert_kitti(root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    report = convert_kitti(root, tmp_path / "out", allow_scores=True, progress=False)
    assert report["scores_dropped"] == 1
    assert len((tmp_path / "out" / "label" / "a.txt").read_text().split()) == 15


def test_output_independent_of_workers(kitti_tree, tmp_path):
    convert_kitti(kitti_tree, tmp_path / "a", workers=1, progress=False)
    convert_kitti(kitti_tree, tmp_path / "b", workers=2, progress=True)
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    report_a = json.loads((tmp_path / "a" / "report.json").read_text())
    report_b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report_a.pop("output") != report_b.pop("output")
    assert report_a == report_b
    del a["report.json"], b["report.json"]
    assert a == b


def test_images_are_hard_linked_or_copied(kitti_tree, tmp_path, monkeypatch):
    convert_kitti(kitti_tree, tmp_path / "linked", progress=False)
    src = kitti_tree / "image_2" / "000000.png"
    assert os.path.samefile(src, tmp_path / "linked" / "image" / "000000.png")

    def no_links(a, b):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    convert_kitti(kitti_tree, tmp_path / "copied", progress=False)
    copy = tmp_path / "copied" / "image" / "000000.png"
    assert not os.path.samefile(src, copy)
    assert copy.read_bytes() == src.read_bytes()


def test_layout_errors(tmp_path):
    (tmp_path / "kitti" / "training").mkdir(parents=True)
    with pytest.raises(DataError, match="KITTI keeps them under"):
        convert_kitti(tmp_path / "kitti", tmp_path / "out", progress=False)


def test_bad_class_map_value():
    with pytest.raises(TaoflowError, match="single words"):
        kitti.normalize_class_map({"car": "big car"})


def test_cli_preset_and_class_map(kitti_tree, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    kitti.add_cli_arguments(parser)
    args = parser.parse_args(["-i", str(kitti_tree), "-o", str(tmp_path / "out"), "--preset", "traffic",
                              "--class-map", "tram=vehicle", "-j", "1", "--no-progress"])
    assert kitti.run_cli(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["objects"] == {"bicycle": 1, "pedestrian": 1, "vehicle": 2}
    assert "kitti: 2 images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["-i", "x", "-o", "y", "--class-map", "novalue"])


def test_published_kitti_pngs_pass_through_convert_split_and_tfrecords(tmp_path):
    """KITTI as published (image_2/ 1242x375 PNGs, label_2/ with 9 classes) through the whole data stage, with the
    traffic TFRecords spec made to name ".jpg": every image byte reaches the records untouched."""
    from taoflow.datasets.split import split_dataset
    from taoflow.datasets.tfrecords import dataset_convert
    from tests.datasets.kitti_samples import KITTI_CLASSES, write_kitti_frames

    raw = tmp_path / "kitti" / "training"
    truth = write_kitti_frames(raw / "image_2", raw / "label_2", 6)
    (raw / "image_2" / "000005.png").rename(raw / "image_2" / "000005.PNG")  # a case variant among them
    before = tree_digest(raw)
    report = convert_kitti(raw, tmp_path / "conv", class_map=kitti.TRAFFIC_CLASS_MAP, progress=False)
    assert report["image_extensions"] == {".PNG": 1, ".png": 5}
    classes_seen = {cls for objects in truth.values() for cls, _, _ in objects}
    assert classes_seen == set(KITTI_CLASSES)
    assert set(report["objects"]) == {"vehicle", "pedestrian", "bicycle", "tram", "misc"}  # unmapped kept
    assert report["dropped_by_class"] == {"dontcare": 2}
    split = split_dataset(tmp_path / "conv" / "image", tmp_path / "conv" / "label", tmp_path / "split", val_split=34,
                          progress=False)
    assert split["counts"] == {"training": 4, "val": 2}
    spec = tmp_path / "tfrecords.txt"
    root = tmp_path / "split" / "training"
    spec.write_text((REPO / "specs" / "traffic" / "ssd_tfrecords_traffic.txt").read_text()
                    .replace('"traffic/split/training"', f'"{root}"')
                    .replace("kitti_config {", 'kitti_config {\n  image_extension: ".jpg"'))
    records = dataset_convert(spec, tmp_path / "tfr" / "train", progress=False)
    assert records["num_images"] == 4 and "'.jpg' matches no file" in records["image_extension_note"]
    from tfrecord.reader import tfrecord_loader
    seen = 0
    for f in sorted((tmp_path / "tfr").glob("train-fold-*")):
        for r in tfrecord_loader(str(f), None, {"frame/id": "byte", "frame/encoded": "byte", "frame/width": "int"}):
            stem = bytes(r["frame/id"]).decode().split("/")[1]
            name = f"{stem}.PNG" if stem == "000005" else f"{stem}.png"
            assert bytes(r["frame/encoded"]) == (raw / "image_2" / name).read_bytes()
            assert int(r["frame/width"][0]) == 1242
            seen += 1
    assert seen == 4
    assert tree_digest(raw) == before
