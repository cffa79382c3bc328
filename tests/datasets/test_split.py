"""Deterministic, non-destructive train/val split."""

import argparse
import json
import os
import random

import pytest

from taoflow.datasets import split
from taoflow.datasets.split import choose_val, split_dataset
from taoflow.fsutil import tree_digest
from tests.conftest import write_image, write_text


def kitti_line(cls):
    return f"{cls} 0.0 0 0.0 1.00 1.00 5.00 5.00 0.0 0.0 0.0 0.0 0.0 0.0 0.0\n"


@pytest.fixture
def dataset(tmp_path):
    """40 images, mixed extensions; 'bus' appears in 4 of them, 'car' in all but two background images."""
    root = tmp_path / "data"
    for i in range(40):
        stem = f"{i:03d}"
        write_image(root / "image" / f"{stem}{'.png' if i % 3 == 0 else '.jpg'}", 8, 8)
        lines = "" if i in (7, 8) else kitti_line("car") + (kitti_line("bus") if i % 10 == 0 else "")
        write_text(root / "label" / f"{stem}.txt", lines)
    return root


def run(root, out, **kw):
    kw.setdefault("progress", False)
    return split_dataset(root / "image", root / "label", out, **kw)


def test_layout_counts_and_split_json(dataset, tmp_path):
    before = tree_digest(dataset)
    report = run(dataset, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["split.json", "training", "val"]
    assert report["counts"] == {"training": 36, "val": 4}  # int(40 * 10 / 100)
    for side in ("training", "val"):
        stems = sorted(os.path.splitext(n)[0] for n in os.listdir(out / side / "image"))
        assert stems == report[side]
        assert sorted(n[:-4] for n in os.listdir(out / side / "label")) == stems
    assert set(report["training"]).isdisjoint(report["val"])
    assert json.loads((out / "split.json").read_text()) == report
    assert report["per_class"]["training"]["car"]["images"] + report["per_class"]["val"]["car"]["images"] == 38
    assert tree_digest(dataset) == before  # nothing moved or modified
    assert os.path.samefile(dataset / "image" / "000.png", out / ("val" if "000" in report["val"] else "training")
                            / "image" / "000.png")


def test_matches_documented_algorithm(dataset, tmp_path):
    report = run(dataset, tmp_path / "out", val_split=25, seed=7)
    stems = sorted(f"{i:03d}" for i in range(40))
    random.Random(7).shuffle(stems)
    assert report["val"] == sorted(stems[:10])


def test_deterministic_and_seed_dependent(dataset, tmp_path):
    a = run(dataset, tmp_path / "a", seed=1)
    b = run(dataset, tmp_path / "b", seed=1, workers=3)
    c = run(dataset, tmp_path / "c", seed=2)
    assert a["val"] == b["val"] and a["val"] != c["val"]
    assert tree_digest(tmp_path / "a").keys() == tree_digest(tmp_path / "b").keys()


def test_zero_val_split(dataset, tmp_path):
    report = run(dataset, tmp_path / "out", val_split=0)
    assert report["counts"] == {"training": 40, "val": 0}
    assert os.listdir(tmp_path / "out" / "val" / "image") == []


def test_stratify_gives_rare_class_its_share():
    # 100 images, 10 with the rare class: a plain 20% split may give it 0..6 val images, stratified gives 2.
    stems = [f"{i:03d}" for i in range(100)]
    classes = {s: ({"car": 1, "bus": 1} if i % 10 == 0 else {"car": 2}) for i, s in enumerate(stems)}
    for seed in range(20):
        val = choose_val(stems, classes, 20, seed, stratify=True)
        assert len(val) == 20
        assert sum("bus" in classes[s] for s in val) == 2
        assert val == choose_val(stems, classes, 20, seed, stratify=True)


def test_stratify_in_split_dataset(dataset, tmp_path):
    report = run(dataset, tmp_path / "out", val_split=25, stratify=True)
    assert report["stratify"] is True
    assert report["counts"]["val"] == 10
    assert report["per_class"]["val"]["bus"]["images"] == 1  # 4 bus images * 25%


def test_cli_accepts_tao_flag_spellings(dataset, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    split.add_cli_arguments(parser)
    tao = parser.parse_args([f"--input_image_dir={dataset / 'image'}", f"--input_label_dir={dataset / 'label'}",
                             f"--output_dir={tmp_path / 'a'}", "--val_split=20", "--no-progress"])
    dashed = parser.parse_args(["--input-image-dir", str(dataset / "image"), "--input-label-dir",
                                str(dataset / "label"), "--output-dir", str(tmp_path / "b"), "--val-split", "20",
                                "--no-progress", "-j", "2"])
    assert split.run_cli(tao) == 0 and split.run_cli(dashed) == 0
    a = json.loads((tmp_path / "a" / "split.json").read_text())
    b = json.loads((tmp_path / "b" / "split.json").read_text())
    assert a["val"] == b["val"] and len(a["val"]) == 8
    assert "32 training, 8 val images" in capsys.readouterr().err


def test_replace(dataset, tmp_path):
    run(dataset, tmp_path / "out", val_split=10)
    report = run(dataset, tmp_path / "out", val_split=50, replace=True)
    assert len(os.listdir(tmp_path / "out" / "val" / "image")) == report["counts"]["val"] == 20
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
