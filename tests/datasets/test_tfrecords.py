"""dataset_convert compatibility: records are read back with the independent `tfrecord` package (its own
Example parser and DALI index builder) and CRCs are checked with the independent `crc32c` package."""

import json
import random
import struct

import cv2
import crc32c
import numpy as np
import pytest
from tfrecord.reader import tfrecord_loader
from tfrecord.tools.tfrecord2idx import create_index

from taoflow.datasets.tfrecords import dataset_convert
from taoflow.errors import DataError, OutputExistsError
from taoflow.fsutil import tree_digest
from taoflow.spec import parse_dataset_export_text

DESCRIPTION = {  # TAO's DALI feature schema for SSD (ssd/builders/dalipipeline_builder.py)
    "frame/id": "byte", "frame/height": "int", "frame/width": "int", "frame/encoded": "byte",
    "target/object_class_id": "float", "target/truncation": "float", "target/occlusion": "int",
    "target/observation_angle": "float", "target/coordinates_x1": "float", "target/coordinates_y1": "float",
    "target/coordinates_x2": "float", "target/coordinates_y2": "float", "target/world_bbox_h": "float",
    "target/world_bbox_w": "float", "target/world_bbox_l": "float", "target/world_bbox_x": "float",
    "target/world_bbox_y": "float", "target/world_bbox_z": "float", "target/world_bbox_rot_y": "float",
}

SPEC = """
kitti_config {{
  root_directory_path: "{root}"
  image_dir_name: "image"
  label_dir_name: "label"
  image_extension: ".jpg"
  partition_mode: "random"
  num_partitions: 2
  val_split: {val_split}
  num_shards: {num_shards}
}}
image_directory_path: "{root}"
target_class_mapping {{ key: "car" value: "vehicle" }}
target_class_mapping {{ key: "Van" value: "vehicle" }}
target_class_mapping {{ key: "pedestrian" value: "Pedestrian" }}
"""


def kitti_line(cls, x1, y1, x2, y2, occ=0):
    return f"{cls} 0.00 {occ} -1.5 {x1} {y1} {x2} {y2} 1.5 1.6 3.9 1.0 1.7 30.0 0.1"


@pytest.fixture()
def kitti_root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "kitti"
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    truth = {}
    for i in range(11):
        w, h = int(rng.integers(64, 200)), int(rng.integers(48, 160))
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "image" / f"{i:04d}.jpg"), img)
        lines = []
        if i % 4 != 3:  # some frames without objects
            lines.append(kitti_line("Car", 1.5, 2.25, w - 3.5, h / 2))
            lines.append(kitti_line("pedestrian", 4, 5, 20.75, 30, occ=1))
            lines.append(kitti_line("cyclist", 1, 1, 10, 10))  # unmapped -> dropped
        if i == 5:
            lines.append(kitti_line("van", 10.9, 5, 10.2, 30))  # int(10.9) == int(10.2): TAO rejects it
        (root / "label" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
        truth[f"{i:04d}"] = (w, h, lines)
    (root / "image" / "ignored.png").write_bytes(b"not matched: extension differs")
    return root, truth


def write_spec(tmp_path, root, val_split=20, num_shards=3):
    text = SPEC.format(root=root, val_split=val_split, num_shards=num_shards)
    path = tmp_path / "convert.txt"
    path.write_text(text)
    return path


def read_records(path):
    return list(tfrecord_loader(str(path), None, DESCRIPTION))


def test_names_partitions_and_order_match_tao(tmp_path, kitti_root):
    root, truth = kitti_root
    out = tmp_path / "out" / "kitti_train"
    report = dataset_convert(write_spec(tmp_path, root), out, progress=False)

    names = sorted(p.name for p in out.parent.iterdir())
    records = [f"kitti_train-fold-{p:03d}-of-002-shard-{s:05d}-of-00003" for p in (0, 1) for s in range(3)]
    assert names == sorted(records + [f"idx-{r}" for r in records] + ["kitti_train_warning.json"])

    # TAO: fold 0 = first int(0.2 * 11) = 2 sorted stems; both folds shuffled by seed 42 twice, val first.
    stems = sorted(truth)
    random.seed(42)
    parts = [stems[:2], stems[2:]]
    for part in parts:
        random.shuffle(part)
    for part in parts:
        random.shuffle(part)
    for p, part in enumerate(parts):
        size = len(part) // 3
        shards = [part[i * size:(i + 1) * size if i < 2 else len(part)] for i in range(3)]
        for s, shard in enumerate(shards):
            got = [bytes(r["frame/id"]).decode() for r in read_records(out.parent / records[p * 3 + s])]
            assert got == [f"image/{stem}" for stem in shard]
    assert report["num_images"] == 11 and report["num_val_images"] == 2


def test_features_hold_normalised_boxes_and_raw_bytes(tmp_path, kitti_root):
    root, truth = kitti_root
    out = tmp_path / "out" / "t"
    report = dataset_convert(write_spec(tmp_path, root, val_split=0, num_shards=0), out, progress=False)
    assert report["classes"] == ["pedestrian", "vehicle"]
    files = sorted(p for p in out.parent.iterdir() if p.name.startswith("t-fold"))
    assert [f.name for f in files] == ["t-fold-000-of-002"]  # val fold empty -> skipped; num_shards 0 -> no shard part
    seen = set()
    for rec in read_records(files[0]):
        stem = bytes(rec["frame/id"]).decode().split("/")[1]
        seen.add(stem)
        w, h, lines = truth[stem]
        assert bytes(rec["frame/encoded"]) == (root / "image" / f"{stem}.jpg").read_bytes()
        assert (int(rec["frame/width"][0]), int(rec["frame/height"][0])) == (w, h)
        expected = []
        for line in lines:
            f = line.split()
            cls = {"car": 2.0, "van": 2.0, "pedestrian": 1.0}.get(f[0].lower())
            x1, y1, x2, y2 = map(float, f[4:8])
            if cls is None or not (int(x1) < int(x2) and int(y1) < int(y2)):
                continue
            expected.append((cls, x1 / w, y1 / h, x2 / w, y2 / h, int(f[2])))
        got = list(zip(rec["target/object_class_id"], rec["target/coordinates_x1"], rec["target/coordinates_y1"],
                       rec["target/coordinates_x2"], rec["target/coordinates_y2"], rec["target/occlusion"]))
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g[0] == e[0] and g[5] == e[5]
            np.testing.assert_allclose(g[1:5], e[1:5], atol=1e-6)
        assert len(rec["target/world_bbox_z"]) == len(expected)
    assert seen == set(truth)
    warnings = json.loads((out.parent / "t_warning.json").read_text())
    assert warnings == {f"{root / 'label' / '0005.txt'}_3": [10, 5, 10, 30]}


def test_index_files_and_crcs_match_independent_implementations(tmp_path, kitti_root):
    root, _ = kitti_root
    out = tmp_path / "out" / "kitti_train"
    dataset_convert(write_spec(tmp_path, root), out, progress=False, workers=2)
    for rec_file in out.parent.glob("kitti_train-fold-*"):
        ref = tmp_path / "ref.idx"
        create_index(str(rec_file), str(ref))
        assert (out.parent / f"idx-{rec_file.name}").read_text() == ref.read_text()
        data = rec_file.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            for chunk, crc_at in ((data[pos:pos + 8], pos + 8), (data[pos + 12:pos + 12 + length], pos + 12 + length)):
                crc = crc32c.crc32c(chunk)
                masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
                assert struct.unpack("<I", data[crc_at:crc_at + 4])[0] == masked
            pos += 16 + length


def test_output_is_independent_of_workers_and_deterministic(tmp_path, kitti_root):
    root, _ = kitti_root
    spec = write_spec(tmp_path, root)
    dataset_convert(spec, tmp_path / "a" / "x", progress=False, workers=1)
    dataset_convert(spec, tmp_path / "b" / "x", progress=False, workers=2)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")


def test_existing_output_refused_then_replaced(tmp_path, kitti_root):
    root, _ = kitti_root
    spec = write_spec(tmp_path, root)
    out = tmp_path / "out" / "x"
    dataset_convert(spec, out, progress=False)
    with pytest.raises(OutputExistsError):
        dataset_convert(spec, out, progress=False)
    dataset_convert(spec, out, progress=False, replace=True)
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("line, message", [
    (kitti_line("car", 1, 2, 30, 40) + " 0.9", "has 16 fields"),
    ("car 0 0 0 1 2 x 4 0 0 0 0 0 0 0", "'x' is not a number"),
    ("car 0 0 0 1 2 nan 4 0 0 0 0 0 0 0", "NaN"),
])
def test_bad_label_names_file_and_line_and_leaves_nothing(tmp_path, kitti_root, line, message):
    root, _ = kitti_root
    label = root / "label" / "0002.txt"
    label.write_text(label.read_text() + line + "\n")
    before = tree_digest(root)
    out = tmp_path / "out" / "x"
    with pytest.raises(DataError) as err:
        dataset_convert(write_spec(tmp_path, root), out, progress=False)
    assert message in str(err.value) and f"{label}:4:" in str(err.value)
    assert tree_digest(root) == before
    assert not out.parent.exists()  # the output directory it had to create is removed again


def test_missing_label_file_is_an_error(tmp_path, kitti_root):
    root, _ = kitti_root
    (root / "label" / "0007.txt").unlink()
    with pytest.raises(DataError, match="0007.txt: label file missing"):
        dataset_convert(write_spec(tmp_path, root), tmp_path / "o" / "x", progress=False)


def test_spec_rules_follow_tao(tmp_path):
    from taoflow.errors import SpecError
    text = SPEC.format(root="/data", val_split=100, num_shards=2)
    with pytest.raises(SpecError, match=r"<spec>:9:3: kitti_config.val_split: must satisfy 0 <= val_split < 100"):
        parse_dataset_export_text(text)
    with pytest.raises(SpecError, match="partition_mode"):
        parse_dataset_export_text(text.replace('"random"', '"randm"').replace("100", "10"))
    spec = parse_dataset_export_text(text.replace("100", "10").replace('root_directory_path: "/data"',
                                                                       'root_directory_path: "rel/dir"'))
    assert spec.class_ids() == (["pedestrian", "vehicle"], {"car": 2, "van": 2, "pedestrian": 1})


# ------------------------------------------------------------------------------------ image extensions as they come

EXT_SPEC = """
kitti_config {{
  root_directory_path: "{root}"
  image_dir_name: "image"
  label_dir_name: "label"
  {extension}
  partition_mode: "random"
  num_partitions: 2
  val_split: 0
  num_shards: 2
}}
image_directory_path: "{root}"
target_class_mapping {{ key: "car" value: "car" }}
target_class_mapping {{ key: "van" value: "car" }}
target_class_mapping {{ key: "pedestrian" value: "pedestrian" }}
target_class_mapping {{ key: "person_sitting" value: "pedestrian" }}
target_class_mapping {{ key: "cyclist" value: "cyclist" }}
"""


def convert_with(tmp_path, root, extension_line, name):
    spec = tmp_path / f"{name}.txt"
    spec.write_text(EXT_SPEC.format(root=root, extension=extension_line))
    return dataset_convert(spec, tmp_path / name / "kitti_train", progress=False)


def all_records(out_dir):
    return {bytes(r["frame/id"]).decode(): r for f in sorted(out_dir.glob("kitti_train-fold-*"))
            for r in read_records(f)}


@pytest.fixture()
def kitti_png(tmp_path):
    """Real KITTI as published: 1242x375 PNG frames, the 9 classes."""
    from tests.datasets.kitti_samples import write_kitti_frames
    root = tmp_path / "kitti_split" / "training"
    truth = write_kitti_frames(root / "image", root / "label", 5)
    return root, truth


def test_jpg_spec_over_png_kitti_converts_the_pngs_with_a_note(tmp_path, kitti_png, caplog):
    root, truth = kitti_png
    before = tree_digest(root)
    with caplog.at_level("WARNING", logger="taoflow.datasets.tfrecords"):
        report = convert_with(tmp_path, root, 'image_extension: ".jpg"', "jpg")
    note = report["image_extension_note"]
    assert "'.jpg' matches no file" in note and "5 .png" in note and 'image_extension: ".png"' in note
    assert note in caplog.text
    assert report["num_images"] == 5 and report["image_extensions"] == {".png": 5}
    records = all_records(tmp_path / "jpg")
    assert sorted(records) == [f"image/{stem}" for stem in sorted(truth)]
    for stem in truth:
        r = records[f"image/{stem}"]
        assert bytes(r["frame/encoded"]) == (root / "image" / f"{stem}.png").read_bytes()  # passed through
        assert (int(r["frame/width"][0]), int(r["frame/height"][0])) == (1242, 375)
    # The records are those the corrected spec gives, file for file.
    fixed = convert_with(tmp_path, root, 'image_extension: ".png"', "png")
    assert fixed["image_extension_note"] is None
    assert tree_digest(tmp_path / "jpg") == tree_digest(tmp_path / "png")
    assert tree_digest(root) == before


def test_nine_kitti_classes_map_like_tao_samples(tmp_path, kitti_png):
    root, truth = kitti_png
    report = convert_with(tmp_path, root, 'image_extension: ".png"', "out")
    ids = {"car": 1, "van": 1, "cyclist": 2, "pedestrian": 3, "person_sitting": 3}  # sorted targets, 1-based
    written, dropped = {}, {}
    for objects in truth.values():
        for cls, _, _ in objects:
            counts = written if cls.lower() in ids else dropped
            counts[cls.lower()] = counts.get(cls.lower(), 0) + 1
    assert set(dropped) == {"truck", "tram", "misc", "dontcare"}
    assert report["classes"] == ["car", "cyclist", "pedestrian"]
    assert report["objects"] == written  # counted per source class, as TAO logs them
    assert report["dropped_unmapped_objects"] == dropped
    records = all_records(tmp_path / "out")
    for stem, objects in truth.items():
        expected = [float(ids[cls.lower()]) for cls, _, _ in objects if cls.lower() in ids]
        assert list(records[f"image/{stem}"]["target/object_class_id"]) == expected


def test_no_extension_in_spec_detects_mixed_and_case_variants(tmp_path):
    from tests.conftest import write_image
    root = tmp_path / "mixed"
    sizes = {"a.jpg": (64, 48), "b.PNG": (70, 40), "c.jpeg": (50, 60), "d.png": (80, 30), "e.JPG": (40, 40)}
    for name, (w, h) in sizes.items():
        write_image(root / "image" / name, w, h)
        (root / "label").mkdir(exist_ok=True)
        (root / "label" / f"{name.split('.')[0]}.txt").write_text(kitti_line("car", 1, 2, 20, 25) + "\n")
    (root / "image" / "notes.txt").write_text("not an image")
    (root / "image" / "._d.png").write_bytes(b"AppleDouble, not an image")
    report = convert_with(tmp_path, root, "", "out")
    assert report["image_extension_note"] is None
    assert report["image_extensions"] == {".JPG": 1, ".PNG": 1, ".jpeg": 1, ".jpg": 1, ".png": 1}
    records = all_records(tmp_path / "out")
    assert sorted(records) == ["image/a", "image/b", "image/c", "image/d", "image/e"]
    for name, (w, h) in sizes.items():
        r = records[f"image/{name.split('.')[0]}"]
        assert bytes(r["frame/encoded"]) == (root / "image" / name).read_bytes()
        assert (int(r["frame/width"][0]), int(r["frame/height"][0])) == (w, h)
        assert list(r["target/coordinates_x2"]) == pytest.approx([20 / w])


def test_extension_given_and_present_is_honoured_like_tao(tmp_path):
    from tests.conftest import write_image
    root = tmp_path / "mixed"
    for name in ("a.png", "b.jpg", "c.png", "d.PNG"):
        write_image(root / "image" / name)
        (root / "label").mkdir(exist_ok=True)
        (root / "label" / f"{name.split('.')[0]}.txt").write_text(kitti_line("car", 1, 2, 20, 25) + "\n")
    report = convert_with(tmp_path, root, 'image_extension: ".png"', "out")
    assert sorted(all_records(tmp_path / "out")) == ["image/a", "image/c"]  # case-sensitive, as TAO
    assert "2 image(s)" in report["image_extension_note"] and "1 .PNG, 1 .jpg" in report["image_extension_note"]


def test_detected_duplicate_stems_and_empty_folder_are_clear_errors(tmp_path):
    from tests.conftest import write_image
    root = tmp_path / "dup"
    write_image(root / "image" / "a.jpg")
    write_image(root / "image" / "a.png")
    (root / "label").mkdir()
    (root / "label" / "a.txt").write_text(kitti_line("car", 1, 2, 20, 25) + "\n")
    with pytest.raises(DataError, match=r"a.jpg, a.png.*set image_extension"):
        convert_with(tmp_path, root, "", "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # With the extension given there is no ambiguity.
    assert convert_with(tmp_path, root, 'image_extension: ".png"', "png")["num_images"] == 1
    empty = tmp_path / "empty"
    (empty / "image").mkdir(parents=True)
    (empty / "label").mkdir()
    (empty / "image" / "x.bmp").write_bytes(b"BM")
    with pytest.raises(DataError, match=r"no images in .*'.jpg' \(image_extension\) or any .jpg/.jpeg/.png"):
        convert_with(tmp_path, empty, 'image_extension: ".jpg"', "e")


def test_cli_prints_the_note_and_exits_0(tmp_path, kitti_png):
    import subprocess
    import sys
    root, _ = kitti_png
    spec = tmp_path / "spec.txt"
    spec.write_text(EXT_SPEC.format(root=root, extension='image_extension: ".jpg"'))
    proc = subprocess.run([sys.executable, "-m", "taoflow.cli", "tfrecords", "-d", str(spec), "-o",
                           str(tmp_path / "cli" / "kitti_train"), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "matches no file" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------- hostile inputs (issue 13): refuse before writing


def _listing(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_image_header_over_the_size_limit_fails_naming_the_file(tmp_path, kitti_root):
    from tests.datasets.hostile_images import write_huge_image
    root, _ = kitti_root
    image = write_huge_image(root / "image" / "0004.jpg")
    out = tmp_path / "new" / "x"
    with pytest.raises(DataError, match="claims 65000x65000 pixels") as err:
        dataset_convert(write_spec(tmp_path, root), out, progress=False)
    assert err.value.path == str(image)
    assert not out.parent.exists()
    with pytest.raises(DataError, match="limit of 100"):  # the limit is configurable
        dataset_convert(write_spec(tmp_path, root), out, progress=False, max_side=100)
    (root / "image" / "0004.jpg").unlink()
    (root / "label" / "0004.txt").unlink()
    dataset_convert(write_spec(tmp_path, root), out, progress=False, max_side=200)


@pytest.mark.parametrize("spelling", ["{d}", "{d}/"])
def test_directory_as_prefix_is_refused_before_touching_it(tmp_path, kitti_root, spelling):
    import subprocess
    import sys
    root, _ = kitti_root
    spec = write_spec(tmp_path, root)
    records = tmp_path / "records"
    dataset_convert(spec, records / "crpd_train", progress=False)  # an earlier run's records in the directory
    (records / "notes.txt").write_text("mine")
    before, listing = tree_digest(records), _listing(tmp_path)
    target = spelling.format(d=records)
    proc = subprocess.run([sys.executable, "-m", "taoflow.cli", "tfrecords", "-d", str(spec), "-o", target,
                           "--replace", "--no-progress", "-r", str(tmp_path / "results")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith(
        f"error: -o {target} is a directory; -o is the TFRecord file prefix (e.g. {records / 'crpd_train'})")
    assert tree_digest(records) == before and _listing(tmp_path) == listing  # no status.json, nothing deleted


def test_replace_publishes_new_records_before_removing_old_ones(tmp_path, kitti_root, monkeypatch):
    import os
    from pathlib import Path
    from taoflow.datasets import tfrecords
    root, _ = kitti_root
    out = tmp_path / "out" / "x"
    dataset_convert(write_spec(tmp_path, root, num_shards=3), out, progress=False)
    old = {p.name for p in out.parent.iterdir()}
    # Entries that share the prefix but are not outputs: a directory and a symlink stay untouched.
    (out.parent / "x-fold-009-of-002-shard-00000-of-00003").mkdir()
    (out.parent / "x-fold-009-of-002-shard-00000-of-00003" / "keep").write_text("keep")
    (out.parent / "x-link").symlink_to(root / "label" / "0000.txt")
    events = []
    real_replace, real_unlink = os.replace, Path.unlink
    monkeypatch.setattr(tfrecords.os, "replace", lambda a, b: (events.append(("replace", Path(b).name)),
                                                               real_replace(a, b)))
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: (events.append(("unlink", self.name)),
                                                               real_unlink(self, *a, **k)))
    dataset_convert(write_spec(tmp_path, root, num_shards=2), out, progress=False, replace=True)
    new = {name for kind, name in events if kind == "replace"}
    removed = {name for kind, name in events if kind == "unlink"}
    assert new and removed == old - new  # 3-shard files not rewritten by the 2-shard run
    first_unlink = next(i for i, (kind, _) in enumerate(events) if kind == "unlink")
    assert all(kind == "replace" for kind, _ in events[:first_unlink]) and len(events[:first_unlink]) == len(new)
    names = {p.name for p in out.parent.iterdir()}
    assert names == new | {"x-fold-009-of-002-shard-00000-of-00003", "x-link"}
    assert (out.parent / "x-fold-009-of-002-shard-00000-of-00003" / "keep").read_text() == "keep"
    assert (out.parent / "x-link").is_symlink()


def test_failed_replace_keeps_the_old_records(tmp_path, kitti_root):
    root, _ = kitti_root
    out = tmp_path / "out" / "x"
    dataset_convert(write_spec(tmp_path, root), out, progress=False)
    before = tree_digest(out.parent)
    (root / "label" / "0003.txt").write_text("car 0 0 0 1 2 x 4 0 0 0 0 0 0 0\n")
    with pytest.raises(DataError, match="0003.txt:1:"):
        dataset_convert(write_spec(tmp_path, root), out, progress=False, replace=True)
    assert tree_digest(out.parent) == before and not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("breakage, match", [
    (lambda root, tmp: (root / "label").rename(tmp / "elsewhere"), "label directory not found"),
    (lambda root, tmp: [p.unlink() for p in (root / "image").iterdir()], "no images in"),
    (lambda root, tmp: (tmp / "convert.txt").write_text("kitti_config { partition_mode: 'x' }"), "partition_mode"),
])
def test_nothing_is_created_before_the_spec_and_inputs_are_validated(tmp_path, kitti_root, breakage, match):
    from taoflow.errors import TaoflowError
    root, _ = kitti_root
    spec = write_spec(tmp_path, root)
    breakage(root, tmp_path)
    with pytest.raises(TaoflowError, match=match):
        dataset_convert(spec, tmp_path / "a" / "b" / "x", progress=False, results_dir=tmp_path / "results")
    assert not (tmp_path / "a").exists() and not (tmp_path / "results").exists()
