"""Incremental conversion: new or changed images convert alone, and the result equals a full conversion."""

import shutil
from pathlib import Path

from taoflow.datasets.crpd import convert_crpd
from taoflow.datasets.demo import generate_crpd
from taoflow.fsutil import tree_digest
from taoflow.pipeline import RunConfig, stage_convert
from taoflow.store import Store


def test_added_and_changed_images_only_are_converted(tmp_path):
    raw = tmp_path / "raw"
    generate_crpd(raw, num_images=40, image_size=(160, 120), seed=2, progress=False)
    store, cfg = Store(tmp_path), RunConfig(workspace=str(tmp_path), dataset_path=str(raw))
    first = stage_convert(store, cfg)
    assert first.meta["images_converted"] == 40 and stage_convert(store, cfg).cached
    images = sorted((raw / "train/images").iterdir())
    for i, src in enumerate(images[:2]):  # two new images
        shutil.copy(src, raw / "train/images" / f"new_{i}.jpg")
        shutil.copy(raw / "train/labels" / f"{src.stem}.txt", raw / "train/labels" / f"new_{i}.txt")
    label = raw / "val/labels" / f"{sorted((raw / 'val/images').iterdir())[0].stem}.txt"
    label.write_text(label.read_text().splitlines()[0] + "\n")  # one edited label
    gone = images[-1]
    gone.unlink()
    (raw / "train/labels" / f"{gone.stem}.txt").unlink()  # one removed image
    second = stage_convert(store, cfg)
    assert (second.meta["images_converted"], second.meta["images_removed"]) == (3, 1)
    assert second.meta["images_reused"] == 38 and second.meta["previous"] == first.key
    convert_crpd(raw, tmp_path / "full", progress=False)
    incremental, full = tree_digest(Path(second.path) / "out"), tree_digest(tmp_path / "full")
    incremental.pop("report.json")
    full.pop("report.json")
    assert incremental == full
