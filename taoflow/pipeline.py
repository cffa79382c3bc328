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

from .contract.results import epoch_of, train_result
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
    "kitti": ("kitti", "ssd_tfrecords_kitti.txt", "ssd_train_resnet18_kitti.txt", "ssd_retrain_resnet18_kitti.txt",
              None),
    "demo_cpu": ("crpd", "ssd_tfrecords_crpd.txt", "../demo/ssd_train_resnet10_demo_cpu.txt",
                 "../demo/ssd_retrain_resnet10_demo_cpu.txt", "lpd"),
}
# The class map a KITTI dataset is converted with, per spec set. None keeps KITTI's own classes (lowercased,
# DontCare dropped) and leaves the mapping to the specs' target_class_mapping, as TAO's KITTI samples do; any other
# spec set converts with taoflow.datasets.kitti.TRAFFIC_CLASS_MAP. An extra dataset's own class_map replaces it.
KITTI_CONVERT_MAPS = {"kitti": None}
DATASET_KEYS = {"kind", "path", "class_map", "name"}


@dataclass(frozen=True)
class DatasetSource:
    """One dataset of a run: its kind (crpd | kitti), folder, class map (source class -> class) and name, which
    prefixes its files once datasets are merged."""
    name: str
    kind: str
    path: str
    class_map: tuple = None  # sorted (source, target) pairs; None: the spec set's default


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
    gpus: int = 1  # GPUs each GPU step leases among the worker's (taoflow.gpus); 0: CPU
    share_gpus: bool = False  # True: use them even while another run of this machine holds them
    extra_datasets: list = None  # [{kind, path, class_map, name}]: merged with the main dataset before the split

    def spec_paths(self):
        if self.spec_set not in SPEC_SETS:
            raise TaoflowError(f"unknown spec set {self.spec_set!r}; choose one of {', '.join(SPEC_SETS)}")
        folder, tfr, tr, re_, _ = SPEC_SETS[self.spec_set]
        base = REPO_SPECS / folder
        chosen = (self.tfrecords_spec or base / tfr, self.train_spec or base / tr, self.retrain_spec or base / re_)
        return tuple(Path(p).resolve() for p in chosen)


def _source_name(path, taken):
    from .datasets.merge import SEPARATOR
    base = re.sub(r"[^a-z0-9-]+", "_", Path(path).name.lower()).strip("_") or "dataset"
    base = base.replace(SEPARATOR, "_")
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def dataset_sources(cfg):
    """The run's datasets: the main one (dataset_kind, dataset_path) first, then cfg.extra_datasets in order."""
    from .datasets.merge import check_source_name
    sources = [DatasetSource(_source_name(cfg.dataset_path, ()), cfg.dataset_kind, str(cfg.dataset_path))]
    for i, entry in enumerate(cfg.extra_datasets or []):
        where = f"extra_datasets[{i}]"
        if not isinstance(entry, dict) or not entry.get("path"):
            raise TaoflowError(f"{where}: expected {{kind, path, class_map, name}} with a path, got {entry!r}")
        unknown = set(entry) - DATASET_KEYS
        if unknown:
            raise TaoflowError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                               f"{', '.join(sorted(DATASET_KEYS))}")
        kind = entry.get("kind", "kitti")
        if kind not in ("crpd", "kitti"):
            raise TaoflowError(f"{where}: kind must be crpd or kitti, got {kind!r}")
        class_map = entry.get("class_map")
        if class_map is not None and not (isinstance(class_map, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in class_map.items())):
            raise TaoflowError(f"{where}: class_map must map class names to class names, got {class_map!r}")
        if class_map is not None and kind != "kitti":
            raise TaoflowError(f"{where}: class_map applies to kitti datasets (crpd's classes come from the spec set)")
        taken = [s.name for s in sources]
        from .datasets.kitti import normalize_class_map
        try:
            name = check_source_name(entry["name"]) if entry.get("name") else _source_name(entry["path"], taken)
            pairs = tuple(sorted(normalize_class_map(class_map).items())) if class_map is not None else None
        except TaoflowError as e:
            raise TaoflowError(f"{where}: {e}") from None
        if name in taken:
            raise TaoflowError(f"{where}: another dataset is already named {name!r}; give this one a distinct name")
        sources.append(DatasetSource(name, kind, str(Path(entry["path"]).resolve()), pairs))
    return sources


def convert_class_map(cfg, source):
    """The class map a KITTI source is converted with: its own, else the spec set's default (None: keep classes)."""
    if source.class_map is not None:
        return dict(source.class_map)
    if cfg.spec_set in KITTI_CONVERT_MAPS:
        return KITTI_CONVERT_MAPS[cfg.spec_set]
    from .datasets.kitti import TRAFFIC_CLASS_MAP
    return dict(TRAFFIC_CLASS_MAP)


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


def stage_convert(store, cfg: RunConfig, source: DatasetSource = None):
    """Convert one raw dataset (the main one by default) to KITTI; when a previous conversion of it exists, convert
    only what changed. Each dataset of a run has its own conversion (and lineage)."""
    source = source or dataset_sources(cfg)[0]
    raw = Path(source.path)
    if not raw.is_dir():
        raise TaoflowError(f"dataset not found: {raw}")
    class_mode = SPEC_SETS[cfg.spec_set][4] or "lpd"
    class_map = convert_class_map(cfg, source) if source.kind == "kitti" else None
    manifest = tree_manifest(raw, store.hashes)
    store.hashes.save()
    code = code_version("datasets", "incremental.py")
    material = {"manifest": digest(manifest), "kind": source.kind, "class_mode": class_mode, "class_map": class_map,
                "code": code}
    lineage = digest({"dataset": str(raw.resolve()), "kind": source.kind, "class_mode": class_mode,
                      "class_map": class_map, "code": code})
    previous = _previous_conversion(store, lineage)

    def produce(tmp, _key):
        from . import incremental
        if previous is None:
            report = _convert(cfg, source.kind, raw, tmp / "out", class_mode, class_map)
            return {"images": _count_units(manifest), "images_converted": _count_units(manifest),
                    "report": _brief(report)}
        prev_manifest = previous["manifest"]
        changed, removed = incremental.plan(prev_manifest, manifest)
        delta_out, delta_report = None, None
        if changed:
            incremental.build_delta(raw, manifest, changed, tmp / "delta")
            delta_report = _convert(cfg, source.kind, tmp / "delta", tmp / "delta_out", class_mode, class_map)
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


def _convert(cfg, kind, raw, out, class_mode, class_map):
    from .datasets.crpd import convert_crpd
    from .datasets.kitti import convert_kitti
    if kind == "crpd":
        return convert_crpd(raw, out, class_mode=class_mode, workers=cfg.workers, progress=False)
    if kind == "kitti":
        return convert_kitti(raw, out, class_map=class_map, workers=cfg.workers, progress=False)
    raise TaoflowError(f"dataset_kind must be crpd or kitti, got {kind!r}")


def _brief(report):
    return {k: v for k, v in report.items() if k in ("totals", "splits", "images", "objects", "dropped")}


def _pool_dirs(convert: StageResult, kind):
    out = Path(convert.path) / "out"
    base = out / "train" if kind == "crpd" and convert.stage != "merge" and (out / "train").is_dir() else out
    return base / "image", base / "label"


def stage_merge(store, cfg, converted):
    """Several converted datasets as one (files prefixed with their dataset's name), so one split covers them all.

    converted: [(DatasetSource, convert StageResult)], the main dataset first."""
    from .datasets.merge import merge_kitti
    material = {"sources": [[s.name, r.key] for s, r in converted], "code": code_version("datasets/merge.py")}

    def produce(tmp, _key):
        report = merge_kitti([(s.name, *_pool_dirs(r, s.kind)) for s, r in converted], tmp / "out")
        return {"sources": report["sources"], "images": report["images"]}
    return run_stage(store, "merge", material, produce)


def stage_split(store, cfg, convert):
    """The val split of the converted (or merged) data. Merged data is split stratified by class, so that a class
    only one dataset brings (road signs) gets its share of the validation images."""
    from .datasets.split import split_dataset
    stratify = convert.stage == "merge"
    material = {"convert": convert.key, "val_split": cfg.val_split, "seed": cfg.seed, "stratify": stratify,
                "code": code_version("datasets")}

    def produce(tmp, _key):
        image_dir, label_dir = _pool_dirs(convert, cfg.dataset_kind)
        report = split_dataset(image_dir, label_dir, tmp / "out", val_split=cfg.val_split, seed=cfg.seed,
                               stratify=stratify, workers=cfg.workers, progress=False)
        return {"counts": report["counts"], "per_class": report["per_class"]}
    return run_stage(store, "split", material, produce)


def class_coverage(cfg, split):
    """Objects per target class in each side of the split, as training and validation will see them: training
    through the TFRecords spec's target_class_mapping, validation through the training spec's. Returns
    {"classes": {class: {"training": n, "val": n}}, "unmapped": {source class: n}} (unmapped: dropped, as TAO
    drops them, e.g. KITTI's dontcare, truck, tram and misc with the kitti set)."""
    tfr_path, train_path, _ = cfg.spec_paths()
    tfr_classes, tfr_ids = load_dataset_export(tfr_path).class_ids()
    train_map = {k.lower(): v.lower() for k, v in
                 load_experiment(train_path, task="train").effective.dataset_config.target_class_mapping.items()}
    to_class = {"training": {k: tfr_classes[i - 1] for k, i in tfr_ids.items()}, "val": train_map}
    targets = sorted(set(train_map.values()) | set(tfr_classes))
    classes = {c: {"training": 0, "val": 0} for c in targets}
    unmapped = {}
    for side in ("training", "val"):
        for source_class, counts in split.meta["per_class"].get(side, {}).items():
            target = to_class[side].get(source_class.lower())
            if target is None:
                unmapped[source_class] = unmapped.get(source_class, 0) + counts["objects"]
            else:
                classes[target][side] += counts["objects"]
    return {"classes": classes, "unmapped": dict(sorted(unmapped.items()))}


def check_coverage(cfg, coverage):
    """Refuse to train when a target class has no training or no validation example: say which, and the fix."""
    problems = []
    tfr_path, train_path, _ = cfg.spec_paths()
    for cls, n in coverage["classes"].items():
        if n["training"] and n["val"]:
            continue
        if not n["training"] and not n["val"]:
            found = ", ".join(sorted(coverage["unmapped"])) or "none"
            fix = (f"add a dataset with {cls} objects (flow parameter extra_datasets=[{{\"kind\": \"kitti\", "
                   f"\"path\": ..., \"class_map\": {{\"<its class>\": \"{cls}\"}}}}], README: Bringing a "
                   f"road-sign dataset)")
            if cfg.spec_set == "traffic" and cls == "road_sign":
                fix += ", or train on KITTI alone with spec_set \"kitti\""
            problems.append(f"class {cls!r} has no training and no validation example: no object of the datasets "
                            f"maps to it (unmapped classes found: {found}); {fix}")
        else:
            side = "training" if not n["training"] else "validation"
            problems.append(f"class {cls!r} has no {side} example ({n['training']} training, {n['val']} val "
                            f"objects): add images with {cls} objects or raise val_split (now {cfg.val_split}%)")
    if problems:
        raise TaoflowError(f"not training with spec set {cfg.spec_set!r} ({Path(train_path).name}): "
                           + "; ".join(problems))
    return coverage


def stage_tfrecords(store, cfg, split, sources=None):
    """TFRecords of the split's training side. With several datasets (sources: their names), one record set per
    dataset, records/<name>/train-*, that the training spec lists as repeated data_sources, as TAO users do."""
    from .datasets.tfrecords import dataset_convert
    spec_path, _, _ = cfg.spec_paths()
    spec = load_dataset_export(spec_path)
    material = {"split": split.key, "spec": spec_text_without_paths(spec.raw), "sources": sources,
                "code": code_version("datasets")}
    training = Path(split.path) / "out" / "training"

    def convert(root, run_spec, prefix):
        write_text_atomic(run_spec, render(rewrite_paths(spec.raw, lambda _f, _v: str(root))))
        return dataset_convert(run_spec, prefix, workers=cfg.workers, progress=False)

    def produce(tmp, _key):
        if not sources:
            report = convert(training, tmp / "dataset_convert_spec.txt", tmp / "records" / "train")
            return {"num_images": report["num_images"], "objects": report["objects"], "classes": report["classes"]}
        per_source = {}
        for name in sources:
            root = _source_subset(training, name, tmp / "subsets" / name)
            if root is None:
                continue  # every image of this dataset went to val
            report = convert(root, tmp / f"dataset_convert_spec_{name}.txt", tmp / "records" / name / "train")
            per_source[name] = {"num_images": report["num_images"], "objects": report["objects"]}
        shutil.rmtree(tmp / "subsets")
        objects = {}
        for r in per_source.values():
            for c, n in r["objects"].items():
                objects[c] = objects.get(c, 0) + n
        return {"num_images": sum(r["num_images"] for r in per_source.values()), "objects": objects,
                "classes": report["classes"], "sources": list(per_source), "per_source": per_source}
    return run_stage(store, "tfrecords", material, produce)


def _source_subset(training, name, out):
    """Link one dataset's files of a merged split side into out/{image,label}; None when it has none."""
    from .datasets.merge import source_of
    from .fsutil import link_or_copy
    images = [p for p in (training / "image").iterdir() if source_of(p.name) == name]
    if not images:
        return None
    for sub in ("image", "label"):
        (out / sub).mkdir(parents=True)
    for image in images:
        link_or_copy(image, out / "image" / image.name)
        link_or_copy(training / "label" / f"{image.stem}.txt", out / "label" / f"{image.stem}.txt")
    return out


def render_experiment(spec_path, tfrecords, split, out_path):
    """The experiment spec of a run: training data from this run's TFRecords (one data_sources per dataset when
    there are several) or its split's training folders, validation from its split."""
    spec = load_experiment(spec_path, task="train")
    out = Path(split.path) / "out"

    def path_for(field, value):
        side = "training" if field.startswith("dataset_config.data_sources.") else "val"
        if field.endswith("tfrecords_path"):
            return str(Path(tfrecords.path) / "records" / "train-fold-000-of-002-shard-*")
        if field.endswith("image_directory_path"):
            return str(out / side / "image")
        if field.endswith("label_directory_path"):
            return str(out / side / "label")
        return value
    message = rewrite_paths(spec.raw, path_for)
    sources = tfrecords.meta.get("sources")
    data_sources = message.dataset_config.data_sources
    if sources and data_sources and data_sources[0].tfrecords_path:
        del data_sources[:]
        for name in sources:
            data_sources.add(tfrecords_path=str(Path(tfrecords.path) / "records" / name /
                                                "train-fold-000-of-002-shard-*"))
    write_text_atomic(out_path, render(message))
    return out_path, spec


def stage_train(store, cfg, tfrecords, split, executor, name="train", pruned=None):
    """Train (or retrain from a pruned model). Resumes from the last checkpoint of an interrupted attempt."""
    _, train_spec, retrain_spec = cfg.spec_paths()
    spec_path = retrain_spec if pruned is not None else train_spec
    raw = load_experiment(spec_path, task="train").raw
    material = {"tfrecords": tfrecords.key, "split": split.key, "spec": spec_text_without_paths(raw),
                "pruned": pruned.key if pruned is not None else None, "backend": executor.name,
                "code": executor.code_version("train")}

    def produce(tmp, key):
        work = store.work_dir(name, key)  # survives a killed flow: the next run resumes here
        run_spec, spec = render_experiment(spec_path, tfrecords, split, work / "experiment_spec.txt")
        done = train_result(work / "results")  # what an interrupted attempt left
        last = done.last_checkpoint
        num_epochs = spec.effective.training_config.num_epochs
        resume_from, initial_epoch = None, 1
        if last is not None:
            resume_from, initial_epoch = last, epoch_of(last) + 1
            log.info("resuming %s from %s (epoch %d of %d)", name, last.name, initial_epoch, num_epochs)
        if initial_epoch <= num_epochs:
            start_model = resume_from or (pruned_model_of(pruned) if pruned is not None else None)
            done = executor.train(run_spec, work / "results", start_model, initial_epoch if resume_from else 1)
        if done.last_checkpoint is None or done.csv_file is None:
            raise TaoflowError(f"{name} wrote no checkpoint or no training log in {work / 'results'}")
        final, csv_name = done.last_checkpoint.name, done.csv_file.name
        shutil.copytree(work / "results", tmp / "results")
        shutil.copy2(run_spec, tmp / "experiment_spec.txt")
        shutil.rmtree(work, ignore_errors=True)
        # empty cells (epochs without validation) as NaN: "not measured", as the report's curves read them
        history = [{k: math.nan if v is None else v for k, v in row.items()} for row in done.history]
        return {"checkpoint": f"results/weights/{final}", "resumed_from_epoch": initial_epoch if resume_from
                else None, "history": history, "training_log": f"results/{csv_name}"}
    return run_stage(store, name, material, produce)


def checkpoint_of(stage):
    return Path(stage.path) / stage.meta["checkpoint"]


def pruned_model_of(stage):
    """The pruned model file: pruned.pth (native), or the name TAO gave it (.hdf5, .tlt)."""
    return Path(stage.path) / stage.meta["prune"].get("model", "pruned.pth")


def exported_model_of(stage):
    """The exported model file: model.onnx (native, TAO 5) or model.etlt (TAO 3/4)."""
    return Path(stage.path) / stage.meta["files"].get("onnx", stage.meta["files"].get("etlt", "model.onnx"))


def stage_evaluate(store, cfg, trained, executor, name="evaluate"):
    material = {"model": trained.key, "backend": executor.name, "code": executor.code_version("evaluate")}

    def produce(tmp, _key):
        metrics = executor.evaluate(Path(trained.path) / "experiment_spec.txt", checkpoint_of(trained), tmp).metrics()
        write_text_atomic(tmp / "metrics.json", json.dumps(metrics, indent=2))
        return {"metrics": metrics}
    return run_stage(store, name, material, produce)


def stage_prune(store, cfg, trained, executor):
    material = {"model": trained.key, "pth": cfg.prune_threshold, "eq": cfg.prune_criterion,
                "backend": executor.name, "code": executor.code_version("prune")}

    def produce(tmp, _key):
        pruned = executor.prune(checkpoint_of(trained), tmp / "pruned.pth", cfg.prune_threshold, cfg.prune_criterion)
        return {"prune": {"model": Path(pruned.output).name, "ratio": pruned.ratio, "param_count": pruned.param_count}}
    return run_stage(store, "prune", material, produce)


def stage_export(store, cfg, trained, executor):
    material = {"model": trained.key, "precision": cfg.export_precision, "backend": executor.name,
                "code": executor.code_version("export")}
    if getattr(executor, "export_format", "onnx") != "onnx":  # .etlt: another output (ONNX keys stay as they were)
        material["format"] = executor.export_format

    def produce(tmp, _key):
        exported = executor.export(Path(trained.path) / "experiment_spec.txt", checkpoint_of(trained),
                                   tmp / "model.onnx", cfg.export_precision)
        return {"files": {k: os.path.relpath(v, tmp) for k, v in exported.files.items()}}
    return run_stage(store, "export", material, produce)


def passport(stages, names=None):
    """The chain of stage keys from raw data to the exported model, and its own digest. names: one per stage when
    a stage runs more than once (each dataset's convert), else the stages' own names."""
    names = names or [s.stage for s in stages]
    chain = {name: {"key": s.key, "cached": s.cached} for name, s in zip(names, stages)}
    return {"format": "taoflow-passport/1", "stages": {k: v["key"] for k, v in chain.items()},
            "id": digest({k: v["key"] for k, v in chain.items()})[:16]}
