"""Synthetic KITTI traffic frames and the KITTI-format road-sign set (taoflow demo-data --kind kitti)."""

import cv2
import pytest

from taoflow.datasets import demo_traffic as dt
from taoflow.datasets.kitti import read_kitti_lines
from taoflow.errors import TaoflowError


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "kitti"
    return out, dt.generate_kitti(out, num_images=30, seed=3, progress=False)


def test_frames_are_kitti_sized_pngs_with_strict_15_field_labels(kitti):
    out, stats = kitti
    images = sorted((out / "image_2").iterdir())
    assert [p.name for p in images[:2]] == ["000000.png", "000001.png"] and len(images) == 30
    assert cv2.imread(str(images[0])).shape == (375, 1242, 3)  # KITTI's own frame size by default
    for label in (out / "label_2").iterdir():
        for _, obj in read_kitti_lines(label):  # raises on anything TAO's converter would assert on
            assert 0 <= obj.x1 < obj.x2 <= 1242 and 0 <= obj.y1 < obj.y2 <= 375
    assert stats["image_size"] == [1242, 375]


def test_every_kitti_class_truncation_and_occlusion_level_appears(kitti):
    out, stats = kitti
    assert set(stats["objects"]) == set(dt.KITTI_CLASSES)
    objects = [obj for label in (out / "label_2").iterdir() for _, obj in read_kitti_lines(label)]
    real = [o for o in objects if o.cls != "DontCare"]
    assert {o.occlusion for o in real} == {0, 1, 2}
    assert any(o.truncation > 0 for o in real) and all(0 <= o.truncation <= 1 for o in real)
    dontcare = [o for o in objects if o.cls == "DontCare"]
    assert all(o.truncation == -1 and o.occlusion == -1 and o.z == -1000 for o in dontcare)  # KITTI's placeholders


def test_same_seed_same_bytes_any_workers(tmp_path):
    a = dt.generate_kitti(tmp_path / "a", num_images=4, seed=1, image_size=(414, 125), progress=False)
    b = dt.generate_kitti(tmp_path / "b", num_images=4, seed=1, image_size=(414, 125), workers=2, progress=False)
    assert a["objects"] == b["objects"]
    for sub in ("image_2", "label_2"):
        for f in (tmp_path / "a" / sub).iterdir():
            assert f.read_bytes() == (tmp_path / "b" / sub / f.name).read_bytes()


def test_road_sign_set_uses_gtsdb_categories_that_map_to_road_sign(tmp_path):
    stats = dt.generate_road_signs(tmp_path / "signs", num_images=12, progress=False)
    assert set(stats["objects"]) <= set(dt.SIGN_CLASSES) and len(stats["objects"]) >= 3
    assert set(dt.SIGN_CLASS_MAP.values()) == {"road_sign"}
    for label in (tmp_path / "signs" / "label_2").iterdir():
        assert all(obj.cls in dt.SIGN_CLASSES for _, obj in read_kitti_lines(label))


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(TaoflowError, match="num_images"):
        dt.generate_kitti(tmp_path / "x", num_images=0, progress=False)
    with pytest.raises(TaoflowError, match="out of range"):
        dt.generate_kitti(tmp_path / "x", num_images=1, image_size=(10, 10), progress=False)


def test_cli_writes_kitti_and_road_signs(tmp_path):
    from taoflow.cli import main
    assert main(["demo-data", "--kind", "kitti", "-o", str(tmp_path / "d"), "-n", "3", "--image-size", "320x120",
                 "--no-progress"]) == 0
    assert len(list((tmp_path / "d" / "kitti" / "image_2").iterdir())) == 3
    assert len(list((tmp_path / "d" / "road_signs" / "label_2").iterdir())) == 1
    assert cv2.imread(str(tmp_path / "d" / "kitti" / "image_2" / "000000.png")).shape == (120, 320, 3)
