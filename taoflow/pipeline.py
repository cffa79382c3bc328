"""The train-ssd pipeline as plain, content-addressed stage functions (Prefect tasks wrap them one to one).

Every stage returns a StageResult whose key hashes what it depends on: input file contents (via the store's hash
cache), upstream keys, the spec text it uses (paths excluded: they are rewritten per run), its parameters and the
code that runs it. Keys chain from the raw dataset to the exported model, and the chain is the model's passport.
"""

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backends.results import WEIGHT_SUFFIXES
from .errors import TaoflowError
from .fsutil import write_text_atomic
from .spec import load_dataset_export, load_experiment, render, rewrite_paths
from .store import Store, code_version, digest, read_json, tree_manifest

log = logging.getLogger(__name__)
REPO_SPECS = Path(__file__).resolve().parent.parent / "specs"
# spec set -> (folder, tfrecords spec, train spec, retrain spec, crpd class mode)
SPEC_SETS = {
    "crpd": ("crpd", "ssd_tfrecords_crpd.txt", "ssd_train_resnet18_crpd.txt", "ssd_retrain_resnet18_crpd.txt", "lpd"),
    "crpd_plate_type": ("crpd", "ssd_tfrecords_crpd_plate_type.txt", "ssd_train_resnet18_crpd_plate_type.txt",
                        "ssd_retrain_resnet18_crpd_plate_type.txt", "plate_type"),
    "traffic": ("traffic", "ssd_tfrecords_traffic.txt", "ssd_train_resnet18_traffic.txt",
                "ssd_retrain_resnet18_traffic.txt", None),
    "demo_cpu": ("crpd", "ssd_tfrecords_crpd.txt", "../demo/ssd_train_resnet10_demo_cpu.txt",
                 "../demo/ssd_retrain_resnet10_demo_cpu.txt", "lpd"),
}


@dataclass
class StageResult:
    stage: str
    key: str
    path: str
    cached: bool
    seconds: float
    meta: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)


@dataclass
class RunConfig:
    workspace: str
    dataset_kind: str = "crpd"  # crpd | kitti
    dataset_path: str = "workspace/raw/crpd_demo"
    spec_set: str = "demo_cpu"
    val_split: int = 10
    seed: int = 42
    prune_threshold: float = 0.1
    prune_criterion: str = "intersection"
    export_precision: str = "fp16"
    workers: int = 2
    tfrecords_spec: str = None  # explicit spec files override the spec set's
    train_spec: str = None
    retrain_spec: str = None
    tao_key_block: str = None  # backend "tao": Prefect Secret block holding the model key (else $TAO_MODEL_KEY)

    def spec_paths(self):
        if self.spec_set not in SPEC_SETS:
            raise TaoflowError(f"unknown spec set {self.spec_set!r}; choose one of {', '.join(SPEC_SETS)}")
        folder, tfr, tr, re_, _ = SPEC_SETS[self.spec_set]
        base = REPO_SPECS / folder
        chosen = (self.tfrecords_spec or base / tfr, self.train_spec or base / tr, self.retrain_spec or base / re_)
        return tuple(Path(p).resolve() for p in chosen)


def run_stage(store: Store, stage: str, material: dict, produce) -> StageResult:
    """Return the stored output for this key, or produce it into a temp dir and commit it."""
    key = digest(material)[:24]
    t0 = time.time()
    with store.lock(stage, key):
        store.clean_stale(stage, held_key=key)  # what killed runs left in this stage
        if store.has(stage, key):
            return StageResult(stage, key, str(store.path(stage, key)), True, 0.0, store.meta(stage, key))
        tmp = store.new_temp(stage, key)
        try:
            meta = produce(tmp, key) or {}
            meta = dict(meta, material=material, seconds=round(time.time() - t0, 2))
            path = store.commit(stage, key, tmp, meta)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("stage %s computed (%s) in %.1f s", stage, key, time.time() - t0)
    return StageResult(stage, key, str(path), False, round(time.time() - t0, 2), store.meta(stage, key))


def spec_text_without_paths(message):
    """The spec as text with every path blanked: what a stage's output depends on, not where files live."""
    return render(rewrite_paths(message, lambda _f, _v: "<path>"))


def stage_convert(store, cfg: RunConfig):
    """Convert the raw dataset to KITTI; when a previous conversion of it exists, convert only what changed."""
    raw = Path(cfg.dataset_path)
    if not raw.is_dir():
        raise TaoflowError(f"dataset not found: {raw}")
    class_mode = SPEC_SETS[cfg.spec_set][4] or "lpd"
    manifest = tree_manifest(raw, store.hashes)
    store.hashes.save()
    code = code_version("datasets", "incremental.py")
    material = {"manifest": digest(manifest), "kind": cfg.dataset_kind, "class_mode": class_mode, "code": code}
    lineage = digest({"dataset": str(raw.resolve()), "kind": cfg.dataset_kind, "class_mode": class_mode,
                      "code": code})
    previous = _previous_conversion(store, lineage)

    def produce(tmp, _key):
        from . import incremental
        if previous is None:
            report = _convert(cfg, raw, tmp / "out", class_mode)
            return {"images": _count_units(manifest), "images_converted": _count_units(manifest),
                    "report": _brief(report)}
        prev_manifest = previous["manifest"]
        changed, removed = incremental.plan(prev_manifest, manifest)
        delta_out, delta_report = None, None
        if changed:
            incremental.build_delta(raw, manifest, changed, tmp / "delta")
            delta_report = _convert(cfg, tmp / "delta", tmp / "delta_out", class_mode)
            delta_out = tmp / "delta_out"
        reused = incremental.merge(store.path("convert", previous["key"]) / "out", delta_out, tmp / "out",
                                   changed, removed)
        shutil.rmtree(tmp / "delta", ignore_errors=True)
        shutil.rmtree(tmp / "delta_out", ignore_errors=True)
        log.info("incremental conversion: %d images converted, %d reused, %d removed", len(changed), reused,
                 len(removed))
        write_text_atomic(tmp / "out" / "report.json", json.dumps(
            {"step": "convert", "incremental": {"previous": previous["key"], "converted": len(changed),
                                                "reused": reused, "removed": len(removed)},
             "delta": delta_report}, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return {"images": _count_units(manifest), "images_converted": len(changed), "images_reused": reused,
                "images_removed": len(removed), "previous": previous["key"]}

    def produce_with_manifest(tmp, key):
        meta = produce(tmp, key)
        write_text_atomic(tmp / "manifest.json", json.dumps(manifest))
        return meta
    result = run_stage(store, "convert", material, produce_with_manifest)
    _record_conversion(store, lineage, result.key, raw)
    return result


# Which conversion of a dataset is the latest, so that the next one converts only what changed: one small file per
# lineage (dataset path, kind, class mode, converter code) in store/convert/.lineage/, written atomically under that
# lineage's lock, so two datasets on one workspace never touch each other's record and a killed run leaves the old
# record or the new one. (Earlier taoflow kept every lineage in one store/convert/index.json: read, never written.)
LINEAGE_DIR = ".lineage"
LEGACY_INDEX = "index.json"


def _previous_conversion(store, lineage):
    """{"key", "manifest"} of this lineage's latest complete conversion, or None (then everything is converted)."""
    with store.lock("convert", f"lineage-{lineage}"):
        record = read_json(store.root / "convert" / LINEAGE_DIR / f"{lineage}.json", "conversion lineage")
    if not isinstance(record, dict):
        legacy = read_json(store.root / "convert" / LEGACY_INDEX, "conversion index")
        record = legacy.get(lineage) if isinstance(legacy, dict) else None
    key = record.get("key") if isinstance(record, dict) else None
    if not isinstance(key, str) or not store.has("convert", key):
        return None
    manifest = read_json(store.path("convert", key) / "manifest.json", "conversion manifest")
    if not isinstance(manifest, dict):
        return None  # a full conversion instead
    return {"key": key, "manifest": manifest}


def _record_conversion(store, lineage, key, raw):
    with store.lock("convert", f"lineage-{lineage}"):
        write_text_atomic(store.root / "convert" / LINEAGE_DIR / f"{lineage}.json",
                          json.dumps({"key": key, "dataset": str(raw.resolve())}, indent=2) + "\n")


def _count_units(manifest):
    from .incremental import unit_of
    return len({unit_of(rel) for rel in manifest if unit_of(rel) is not None})


def _convert(cfg, raw, out, class_mode):
    from .datasets.crpd import convert_crpd
    from .datasets.kitti import TRAFFIC_CLASS_MAP, convert_kitti
    if cfg.dataset_kind == "crpd":
        return convert_crpd(raw, out, class_mode=class_mode, workers=cfg.workers, progress=False)
    if cfg.dataset_kind == "kitti":
        return convert_kitti(raw, out, class_map=TRAFFIC_CLASS_MAP, workers=cfg.workers, progress=False)
    raise TaoflowError(f"dataset_kind must be crpd or kitti, got {cfg.dataset_kind!r}")


def _brief(report):
    return {k: v for k, v in report.items() if k in ("totals", "splits", "images", "objects", "dropped")}


def _pool_dirs(convert: StageResult, kind):
    out = Path(convert.path) / "out"
    base = out / "train" if kind == "crpd" and (out / "train").is_dir() else out
    return base / "image", base / "label"


def stage_split(store, cfg, convert):
    from .datasets.split import split_dataset
    material = {"convert": convert.key, "val_split": cfg.val_split, "seed": cfg.seed, "code": code_version("datasets")}

    def produce(tmp, _key):
        image_dir, label_dir = _pool_dirs(convert, cfg.dataset_kind)
        report = split_dataset(image_dir, label_dir, tmp / "out", val_split=cfg.val_split, seed=cfg.seed,
                               workers=cfg.workers, progress=False)
        return {"counts": report["counts"], "per_class": report["per_class"]}
    return run_stage(store, "split", material, produce)


def stage_tfrecords(store, cfg, split):
    from .datasets.tfrecords import dataset_convert
    spec_path, _, _ = cfg.spec_paths()
    spec = load_dataset_export(spec_path)
    material = {"split": split.key, "spec": spec_text_without_paths(spec.raw), "code": code_version("datasets")}

    def produce(tmp, _key):
        rendered = rewrite_paths(spec.raw, lambda _f, _v: str(Path(split.path) / "out" / "training"))
        run_spec = tmp / "dataset_convert_spec.txt"
        write_text_atomic(run_spec, render(rendered))
        report = dataset_convert(run_spec, tmp / "records" / "train", workers=cfg.workers, progress=False)
        return {"num_images": report["num_images"], "objects": report["objects"], "classes": report["classes"]}
    return run_stage(store, "tfrecords", material, produce)


def render_experiment(spec_path, tfrecords, split, out_path):
    """The experiment spec of a run: training data from this run's TFRecords, validation from its split."""
    spec = load_experiment(spec_path, task="train")

    def path_for(field, value):
        if field.endswith("tfrecords_path"):
            return str(Path(tfrecords.path) / "records" / "train-fold-000-of-002-shard-*")
        if field.endswith("image_directory_path"):
            return str(Path(split.path) / "out" / "val" / "image")
        if field.endswith("label_directory_path"):
            return str(Path(split.path) / "out" / "val" / "label")
        return value
    write_text_atomic(out_path, render(rewrite_paths(spec.raw, path_for)))
    return out_path, spec


def _last_checkpoint(weights_dir):
    """The highest-epoch checkpoint: .pth (native), .hdf5 (TAO 5) or .tlt (TAO 3/4)."""
    ckpts = sorted((p for p in Path(weights_dir).glob("*_epoch_*.*") if p.suffix in WEIGHT_SUFFIXES),
                   key=lambda p: int(re.findall(r"_epoch_(\d+)", p.name)[-1]))
    return ckpts[-1] if ckpts else None


def stage_train(store, cfg, tfrecords, split, executor, name="train", pruned=None):
    """Train (or retrain from a pruned model). Resumes from the last checkpoint of an interrupted attempt."""
    _, train_spec, retrain_spec = cfg.spec_paths()
    spec_path = retrain_spec if pruned is not None else train_spec
    raw = load_experiment(spec_path, task="train").raw
    material = {"tfrecords": tfrecords.key, "split": split.key, "spec": spec_text_without_paths(raw),
                "pruned": pruned.key if pruned is not None else None, "backend": executor.name,
                "code": code_version("backends/native")}

    def produce(tmp, key):
        work = store.work_dir(name, key)  # survives a killed flow: the next run resumes here
        run_spec, spec = render_experiment(spec_path, tfrecords, split, work / "experiment_spec.txt")
        last = _last_checkpoint(work / "results" / "weights")
        num_epochs = spec.effective.training_config.num_epochs
        resume_from, initial_epoch = None, 1
        if last is not None:
            done = int(re.findall(r"_epoch_(\d+)", last.name)[-1])
            resume_from, initial_epoch = last, done + 1
            log.info("resuming %s from %s (epoch %d of %d)", name, last.name, initial_epoch, num_epochs)
        if initial_epoch <= num_epochs:
            start_model = resume_from or (pruned_model_of(pruned) if pruned is not None else None)
            executor.train(run_spec, work / "results", start_model, initial_epoch if resume_from else 1)
        final = _last_checkpoint(work / "results" / "weights")
        shutil.copytree(work / "results", tmp / "results")
        shutil.copy2(run_spec, tmp / "experiment_spec.txt")
        shutil.rmtree(work, ignore_errors=True)
        return {"checkpoint": f"results/weights/{final.name}", "resumed_from_epoch": initial_epoch if resume_from
                else None, "history": _read_csv(next((tmp / "results").glob("ssd_training_log_*.csv")))}
    return run_stage(store, name, material, produce)


def _read_csv(path):
    """Training CSV rows as floats; TAO leaves the AP/mAP cells of epochs without validation empty (NaN here)."""
    import csv
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
                for row in csv.DictReader(f)]


def checkpoint_of(stage):
    return Path(stage.path) / stage.meta["checkpoint"]


def pruned_model_of(stage):
    """The pruned model file: pruned.pth (native), or the name TAO gave it (.hdf5, .tlt)."""
    return Path(stage.path) / stage.meta["prune"].get("model", "pruned.pth")


def exported_model_of(stage):
    """The exported model file: model.onnx (native, TAO 5) or model.etlt (TAO 3/4)."""
    return Path(stage.path) / stage.meta["files"].get("onnx", stage.meta["files"].get("etlt", "model.onnx"))


def stage_evaluate(store, cfg, trained, executor, name="evaluate"):
    material = {"model": trained.key, "backend": executor.name, "code": code_version("backends/native")}

    def produce(tmp, _key):
        metrics = executor.evaluate(Path(trained.path) / "experiment_spec.txt", checkpoint_of(trained), tmp)
        write_text_atomic(tmp / "metrics.json", json.dumps(metrics, indent=2))
        return {"metrics": metrics}
    return run_stage(store, name, material, produce)


def stage_prune(store, cfg, trained, executor):
    material = {"model": trained.key, "pth": cfg.prune_threshold, "eq": cfg.prune_criterion,
                "backend": executor.name, "code": code_version("backends/native/prune.py")}

    def produce(tmp, _key):
        report = executor.prune(checkpoint_of(trained), tmp / "pruned.pth", cfg.prune_threshold, cfg.prune_criterion)
        return {"prune": report}
    return run_stage(store, "prune", material, produce)


def stage_export(store, cfg, trained, executor):
    material = {"model": trained.key, "precision": cfg.export_precision, "backend": executor.name,
                "code": code_version("backends/native/export.py")}
    if getattr(executor, "export_format", "onnx") != "onnx":  # .etlt: another output (ONNX keys stay as they were)
        material["format"] = executor.export_format

    def produce(tmp, _key):
        written = executor.export(Path(trained.path) / "experiment_spec.txt", checkpoint_of(trained),
                                  tmp / "model.onnx", cfg.export_precision)
        return {"files": {k: os.path.relpath(v, tmp) for k, v in written.items()}}
    return run_stage(store, "export", material, produce)


def passport(stages):
    """The chain of stage keys from raw data to the exported model, and its own digest."""
    chain = {s.stage: {"key": s.key, "cached": s.cached} for s in stages}
    return {"format": "taoflow-passport/1", "stages": {k: v["key"] for k, v in chain.items()},
            "id": digest({k: v["key"] for k, v in chain.items()})[:16]}
