"""Acceptance: generated CRPD -> KITTI -> split -> TFRecords, read back with an independent TFRecord reader."""

import os

import numpy as np
from tfrecord.reader import tfrecord_loader
from tfrecord.tools.tfrecord2idx import create_index

from taoflow.datasets.crpd import convert_crpd
from taoflow.datasets.demo import generate_crpd
from taoflow.datasets.split import split_dataset
from taoflow.datasets.tfrecords import dataset_convert
from taoflow.fsutil import tree_digest
from taoflow.spec import load_dataset_export, render, rewrite_paths

from .spec.test_spec import REPO

MIN_SIZE = 4.0


def expected_boxes(label_path, width, height):
    """Boxes straight from the CRPD quads: min/max over the 4 corners, clipped, normalised; small ones dropped."""
    boxes = []
    for line in label_path.read_text(encoding="utf-8").splitlines():
        tokens = line.replace(",", " ").split()
        xs, ys = [float(v) for v in tokens[0:8:2]], [float(v) for v in tokens[1:8:2]]
        x1, x2 = max(min(xs), 0), min(max(xs), width)
        y1, y2 = max(min(ys), 0), min(max(ys), height)
        if x2 - x1 < MIN_SIZE or y2 - y1 < MIN_SIZE:
            continue
        boxes.append((x1 / width, y1 / height, x2 / width, y2 / height))
    return sorted(boxes)


def test_generated_crpd_to_tfrecords_round_trip(tmp_path):
    raw, data = tmp_path / "raw", tmp_path / "data"
    generate_crpd(raw, num_images=40, image_size=(320, 240), seed=3, progress=False)
    before = tree_digest(raw)
    convert_crpd(raw, data / "crpd" / "kitti", min_size=MIN_SIZE, workers=2, progress=False)
    split = split_dataset(data / "crpd/kitti/train/image", data / "crpd/kitti/train/label", data / "crpd/split",
                          val_split=20, progress=False)
    spec = load_dataset_export(REPO / "specs/crpd/ssd_tfrecords_crpd.txt")
    run_spec = tmp_path / "convert.txt"
    run_spec.write_text(render(rewrite_paths(spec.raw, lambda _f, v: os.path.join(data, v))))
    out = data / "crpd" / "tfrecords" / "crpd_train"
    report = dataset_convert(run_spec, out, workers=2, progress=False)
    assert tree_digest(raw) == before  # the user's dataset is untouched

    # TAO's naming: val_split 0 leaves fold 000 = training, 4 shards, one idx- file each, nothing else
    records = [f"crpd_train-fold-000-of-002-shard-{s:05d}-of-00004" for s in range(4)]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(records + [f"idx-{r}" for r in records])
    for name in records:
        ref = tmp_path / "ref.idx"
        create_index(str(out.parent / name), str(ref))
        assert (out.parent / f"idx-{name}").read_text() == ref.read_text()

    description = {"frame/id": "byte", "frame/width": "int", "frame/height": "int", "frame/encoded": "byte",
                   "target/object_class_id": "float", "target/coordinates_x1": "float",
                   "target/coordinates_y1": "float", "target/coordinates_x2": "float", "target/coordinates_y2": "float"}
    stems, n_boxes = set(), 0
    for name in records:
        for rec in tfrecord_loader(str(out.parent / name), None, description):
            stem = bytes(rec["frame/id"]).decode().split("/", 1)[1]
            stems.add(stem)
            w, h = int(rec["frame/width"][0]), int(rec["frame/height"][0])
            assert bytes(rec["frame/encoded"]) == (raw / "train" / "images" / f"{stem}.jpg").read_bytes()
            got = sorted(zip(rec["target/coordinates_x1"], rec["target/coordinates_y1"],
                             rec["target/coordinates_x2"], rec["target/coordinates_y2"]))
            want = expected_boxes(raw / "train" / "labels" / f"{stem}.txt", w, h)
            assert len(got) == len(want), stem
            np.testing.assert_allclose(np.array(got).reshape(-1, 4), np.array(want).reshape(-1, 4), atol=1e-6)
            assert list(rec["target/object_class_id"]) == [1.0] * len(want)  # `lpd` is class id 1 of 1
            n_boxes += len(want)
    assert stems == set(split["training"]) and not stems & set(split["val"])
    assert n_boxes == report["objects"]["lpd"] > 0
