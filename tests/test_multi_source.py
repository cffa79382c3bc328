"""Several datasets in one run (extra_datasets), the class coverage check before training, per-class gate and
report: the data side of the kitti and traffic spec sets, without training."""

from pathlib import Path

import pytest

from taoflow import gates
from taoflow import pipeline as P
from taoflow import report as R
from taoflow.datasets.demo_traffic import SIGN_CLASS_MAP, generate_kitti, generate_road_signs
from taoflow.datasets.merge import merge_kitti, source_of
from taoflow.errors import TaoflowError
from taoflow.spec import load_experiment
from taoflow.store import Store


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    generate_kitti(root / "kitti", num_images=40, seed=5, image_size=(414, 125), progress=False)
    generate_road_signs(root / "signs", num_images=10, seed=5, image_size=(414, 125), progress=False)
    return root


def _cfg(tmp_path, raw, spec_set, signs=False, **kw):
    extra = [{"path": str(raw / "signs"), "class_map": SIGN_CLASS_MAP, "name": "road_signs"}] if signs else None
    return P.RunConfig(workspace=str(tmp_path / "ws"), dataset_kind="kitti", dataset_path=str(raw / "kitti"),
                       spec_set=spec_set, extra_datasets=extra, val_split=25, workers=1, **kw)


def _data_stage(cfg):
    store = Store(cfg.workspace)
    sources = P.dataset_sources(cfg)
    converted = [(s, P.stage_convert(store, cfg, s)) for s in sources]
    pool = P.stage_merge(store, cfg, converted) if len(sources) > 1 else converted[0][1]
    split = P.stage_split(store, cfg, pool)
    return store, sources, split


def test_kitti_only_with_the_traffic_set_fails_before_training_naming_road_sign(tmp_path, raw):
    cfg = _cfg(tmp_path, raw, "traffic")
    _, _, split = _data_stage(cfg)
    coverage = P.class_coverage(cfg, split)
    assert coverage["classes"]["road_sign"] == {"training": 0, "val": 0}
    with pytest.raises(TaoflowError, match="class 'road_sign' has no training and no validation example") as e:
        P.check_coverage(cfg, coverage)
    assert "extra_datasets" in str(e.value) and 'spec_set "kitti"' in str(e.value)
    assert not (Path(cfg.workspace) / "store" / "tfrecords").exists()


def test_kitti_set_uses_taos_sample_mapping_and_drops_the_rest(tmp_path, raw):
    cfg = _cfg(tmp_path, raw, "kitti")
    assert [p.parent.name for p in cfg.spec_paths()] == ["kitti"] * 3
    _, _, split = _data_stage(cfg)
    coverage = P.check_coverage(cfg, P.class_coverage(cfg, split))
    assert set(coverage["classes"]) == {"car", "cyclist", "pedestrian"}
    assert all(n["training"] and n["val"] for n in coverage["classes"].values())
    # KITTI's own classes are kept by the conversion; Truck, Tram and Misc fall out of TAO's mapping, DontCare is
    # dropped at conversion as TAO's converter drops it
    assert {"truck", "tram", "misc"} <= set(coverage["unmapped"]) and "dontcare" not in coverage["unmapped"]
    assert load_experiment(cfg.spec_paths()[1]).classes == ["car", "cyclist", "pedestrian"]


def test_traffic_merges_sources_and_writes_one_record_set_per_dataset(tmp_path, raw):
    cfg = _cfg(tmp_path, raw, "traffic", signs=True)
    store, sources, split = _data_stage(cfg)
    assert [s.name for s in sources] == ["kitti", "road_signs"]
    assert dict(sources[1].class_map) == SIGN_CLASS_MAP
    merged = {source_of(p.name) for side in ("training", "val")
              for p in (Path(split.path) / "out" / side / "image").iterdir()}
    assert merged == {"kitti", "road_signs"}
    coverage = P.check_coverage(cfg, P.class_coverage(cfg, split))
    assert set(coverage["classes"]) == {"bicycle", "pedestrian", "road_sign", "vehicle"}
    assert coverage["classes"]["road_sign"]["val"] > 0  # merged data is split stratified
    records = P.stage_tfrecords(store, cfg, split, [s.name for s in sources])
    assert records.meta["sources"] == ["kitti", "road_signs"]
    assert set(records.meta["per_source"]["road_signs"]["objects"]) == {"road_sign"}
    for name in ("kitti", "road_signs"):
        assert list((Path(records.path) / "records" / name).glob("train-fold-000-of-002-shard-*"))
    spec, _ = P.render_experiment(cfg.spec_paths()[1], records, split, tmp_path / "run_spec.txt")
    rendered = load_experiment(spec)
    paths = [s.tfrecords_path for s in rendered.raw.dataset_config.data_sources]
    assert [Path(p).parent.name for p in paths] == ["kitti", "road_signs"]
    assert rendered.raw.dataset_config.validation_data_sources[0].image_directory_path.endswith("out/val/image")


def test_each_dataset_converts_in_its_own_stage_and_reruns_reuse_them(tmp_path, raw):
    cfg = _cfg(tmp_path, raw, "traffic", signs=True)
    store = Store(cfg.workspace)
    first = [P.stage_convert(store, cfg, s) for s in P.dataset_sources(cfg)]
    again = [P.stage_convert(store, cfg, s) for s in P.dataset_sources(cfg)]
    assert len({r.key for r in first}) == 2 and all(r.cached for r in again)


def test_a_validation_side_without_a_class_is_refused_with_the_fix(tmp_path):
    cfg = P.RunConfig(workspace=str(tmp_path), spec_set="kitti", val_split=10)
    split = P.StageResult("split", "k", str(tmp_path), False, 0.0, {"per_class": {
        "training": {"car": {"images": 5, "objects": 9}, "cyclist": {"images": 1, "objects": 1},
                     "pedestrian": {"images": 3, "objects": 3}},
        "val": {"car": {"images": 1, "objects": 2}, "pedestrian": {"images": 1, "objects": 1}}}})
    with pytest.raises(TaoflowError, match=r"class 'cyclist' has no validation example \(1 training, 0 val.*"
                                           r"raise val_split \(now 10%\)"):
        P.check_coverage(cfg, P.class_coverage(cfg, split))


@pytest.mark.parametrize("entry, message", [
    ({"kind": "kitti"}, "with a path"),
    ({"path": "/x", "classmap": {}}, "unknown key"),
    ({"path": "/x", "kind": "coco"}, "kind must be crpd or kitti"),
    ({"path": "/x", "class_map": ["a"]}, "class_map must map"),
    ({"path": "/x", "name": "Bad Name"}, "dataset name"),
    ({"path": "/data/kitti"}, "already named 'kitti'"),
])
def test_bad_extra_datasets_are_refused(tmp_path, entry, message):
    cfg = P.RunConfig(workspace=str(tmp_path), dataset_kind="kitti", dataset_path="/a/kitti", spec_set="traffic",
                      extra_datasets=[entry] if "already" not in message else [{**entry, "name": "kitti"}])
    with pytest.raises(TaoflowError, match=message):
        P.dataset_sources(cfg)


def test_merge_prefixes_names_so_equal_frame_numbers_do_not_collide(tmp_path, raw):
    report = merge_kitti([("a", raw / "kitti" / "image_2", raw / "kitti" / "label_2"),
                          ("b", raw / "kitti" / "image_2", raw / "kitti" / "label_2")], tmp_path / "m")
    assert report["images"] == 80 and (tmp_path / "m" / "image" / "b__000000.png").is_file()
    assert (tmp_path / "m" / "label" / "a__000000.txt").read_bytes() == (raw / "kitti" / "label_2" /
                                                                         "000000.txt").read_bytes()
    with pytest.raises(TaoflowError, match="both named 'a'"):
        merge_kitti([("a", raw, raw), ("a", raw, raw)], tmp_path / "m2")


def test_map_floor_gate_says_what_it_averaged_per_class():
    coverage = {"classes": {"road_sign": {"training": 9, "val": 0}, "vehicle": {"training": 40, "val": 12}}}
    gate = gates.map_floor(0.45, 0.5, per_class={"road_sign": 0.0, "vehicle": 0.9}, val_objects=coverage)
    assert not gate["passed"]
    assert gate["detail"] == ("mAP 0.4500 vs floor 0.5: mean of 2 class APs: road_sign 0.0000 (no validation object: "
                              "counted as 0), vehicle 0.9000 (12 val objects); weakest: road_sign")
    assert gates.map_floor(0.9, 0.5)["detail"] == "mAP 0.9000 vs floor 0.5"


def test_report_has_an_ap_row_per_class_with_its_object_counts():
    rows = [{"model": "unpruned", "params": 1, "gflops": 1.0, "mAP": 0.5, "cpu_latency_ms": 1.0, "AP_car": 0.6,
             "AP_cyclist": 0.4},
            {"model": "pruned", "params": 1, "gflops": 1.0, "mAP": float("nan"), "cpu_latency_ms": 1.0},
            {"model": "retrained", "params": 1, "gflops": 1.0, "mAP": 0.55, "cpu_latency_ms": 1.0, "AP_car": 0.7,
             "AP_cyclist": 0.4}]
    coverage = {"classes": {"car": {"training": 10, "val": 3}, "cyclist": {"training": 4, "val": 1}},
                "unmapped": {"tram": 2}}
    md = R.summary_markdown({"id": "p", "stages": {}}, rows, [], {}, class_counts=coverage)
    assert "| class | training objects | val objects | AP unpruned | AP retrained |" in md
    assert "| car | 10 | 3 | 0.6000 | 0.7000 |" in md and "| cyclist | 4 | 1 | 0.4000 | 0.4000 |" in md
    assert "tram 2" in md
