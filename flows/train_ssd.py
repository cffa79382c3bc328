"""Prefect flow `train-ssd`: convert -> split -> tfrecords -> train -> evaluate -> prune -> retrain -> evaluate ->
inference grid -> export -> gates -> deploy. Each task is a thin wrapper over a content-addressed stage function of
taoflow.pipeline, so an identical re-run executes nothing heavy and a killed run resumes where it stopped."""

import json
from pathlib import Path
from typing import Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, State

from taoflow import gates as quality
from taoflow import pipeline as P
from taoflow import report as R
from taoflow.fsutil import write_text_atomic
from taoflow.store import Store


def _executor(backend, cfg=None, export_format="onnx"):
    """The step executor: taoflow's PyTorch SSD, or the real TAO Toolkit through the `tao` launcher.
    export_format "etlt" (native): export writes model.etlt, encoded with the key of `tao_key_block` /
    $TAO_MODEL_KEY, resolved when the export runs (never a parameter)."""
    if backend == "native":
        from taoflow.backends.native.executor import NativeExecutor
        if export_format == "etlt":
            from taoflow.backends.tao.flow_executor import config_from
            from taoflow.backends.tao.masking import resolve_key
            key_source = config_from((cfg or {}).get("tao_key_block")).key
            return NativeExecutor(export_format="etlt", etlt_key=lambda: resolve_key(key_source), **_placement(cfg))
        return NativeExecutor(**_placement(cfg))
    if backend == "tao":
        from taoflow.backends.tao.flow_executor import TaoFlowExecutor, config_from
        return TaoFlowExecutor(config_from((cfg or {}).get("tao_key_block")), **_placement(cfg))
    raise ValueError(f"unknown backend {backend!r}: choose native or tao")


def _placement(cfg):
    """GPU placement of the run's GPU steps (taoflow.gpus): how many of the worker's GPUs each leases."""
    return {"gpus": (cfg or {}).get("gpus", 1), "share_gpus": (cfg or {}).get("share_gpus", False)}


def _cfg(d):
    return P.RunConfig(**d)


def _res(d):
    return P.StageResult(**d)


def _done(result):
    """A reused stage ends in a Completed state named Cached, so Prefect (UI, API) shows it did no work."""
    d = result.to_dict()
    return Completed(data=d, name="Cached", message=f"reused {result.stage} {result.key}") if result.cached else d


def _v(x):
    return x.result() if isinstance(x, State) else x


@task(name="convert", task_run_name="convert-{source[name]}")
def convert(cfg, source):
    return _done(P.stage_convert(Store(cfg["workspace"]), _cfg(cfg), P.DatasetSource(**source)))


@task(name="merge")
def merge(cfg, sources, converted):
    pairs = [(P.DatasetSource(**s), _res(c)) for s, c in zip(sources, converted)]
    return _done(P.stage_merge(Store(cfg["workspace"]), _cfg(cfg), pairs))


@task(name="coverage")
def coverage(cfg, split_result):
    """Objects per class and split side; refuses to go on when a class has no training or validation example."""
    config = _cfg(cfg)
    table = P.class_coverage(config, _res(split_result))
    get_run_logger().info("objects per class (training / val): %s; dropped as unmapped: %s",
                          ", ".join(f"{c} {n['training']}/{n['val']}" for c, n in table["classes"].items()),
                          table["unmapped"] or "none")
    return P.check_coverage(config, table)


@task(name="split")
def split(cfg, converted):
    return _done(P.stage_split(Store(cfg["workspace"]), _cfg(cfg), _res(converted)))


@task(name="tfrecords")
def tfrecords(cfg, split_result, sources=None):
    return _done(P.stage_tfrecords(Store(cfg["workspace"]), _cfg(cfg), _res(split_result), sources))


@task(name="train")
def train(cfg, records, split_result, backend):
    return _done(P.stage_train(Store(cfg["workspace"]), _cfg(cfg), _res(records), _res(split_result),
                         _executor(backend, cfg)))


@task(name="evaluate")
def evaluate(cfg, trained, backend, name):
    return _done(P.stage_evaluate(Store(cfg["workspace"]), _cfg(cfg), _res(trained), _executor(backend, cfg), name))


@task(name="prune")
def prune(cfg, trained, backend):
    return _done(P.stage_prune(Store(cfg["workspace"]), _cfg(cfg), _res(trained), _executor(backend, cfg)))


@task(name="retrain")
def retrain(cfg, records, split_result, pruned, backend):
    return _done(P.stage_train(Store(cfg["workspace"]), _cfg(cfg), _res(records), _res(split_result),
                               _executor(backend, cfg), name="retrain", pruned=_res(pruned)))


@task(name="export")
def export(cfg, retrained, backend, export_format="onnx"):
    return _done(P.stage_export(Store(cfg["workspace"]), _cfg(cfg), _res(retrained),
                                _executor(backend, cfg, export_format)))


@task(name="report")
def build_report(cfg, stages, backend, map_floor, parity_tolerance, class_counts=None):
    """Inference grid, model comparison, gates and curves; content-addressed like every other stage."""
    material = {"stages": {k: v["key"] for k, v in stages.items()}, "map_floor": map_floor,
                "parity_tolerance": parity_tolerance}

    def produce(run_dir, _key):
        return _report(cfg, stages, backend, Path(run_dir), map_floor, parity_tolerance, class_counts)
    result = P.run_stage(Store(cfg["workspace"]), "report", material, produce)
    d = dict(result.meta, path=result.path, cached=result.cached, key=result.key)
    return Completed(data=d, name="Cached", message=f"reused report {result.key}") if result.cached else d


def _report(cfg, stages, backend, run_dir, map_floor, parity_tolerance, class_counts=None):
    trained, pruned, retrained, exported = (_res(stages[k]) for k in ("train", "prune", "retrain", "export"))
    spec = Path(retrained.path) / "experiment_spec.txt"
    val_images = sorted((Path(stages["split"]["path"]) / "out" / "val" / "image").iterdir())
    infer_dir = run_dir / "inference"
    _executor(backend, cfg).infer(spec, P.checkpoint_of(retrained), val_images[0].parent, infer_dir)
    rows = []
    for name, stage, ckpt in (("unpruned", "evaluate", P.checkpoint_of(trained)),
                              ("pruned", None, P.pruned_model_of(pruned)),
                              ("retrained", "evaluate_retrained", P.checkpoint_of(retrained))):
        metrics = stages[stage]["meta"]["metrics"] if stage else {"mAP": float("nan")}
        rows.append(dict(model=name, **R.model_stats(ckpt), **{k: v for k, v in metrics.items()
                                                               if k == "mAP" or k.startswith("AP_")}))
    final_map = rows[-1]["mAP"]
    checks = [quality.map_floor(final_map, map_floor, per_class=_ap_of(rows[-1]), val_objects=class_counts),
              quality.export_parity(spec, P.checkpoint_of(retrained), P.exported_model_of(exported),
                                    val_images[:8], rtol=parity_tolerance)]
    curves = R.training_curves({"train": trained.meta["history"], "retrain": retrained.meta["history"]},
                               run_dir / "training_curves.png")
    pr_file = Path(stages["evaluate_retrained"]["path"]) / "pr_curves.json"  # TAO's evaluate writes none
    pr_png = R.pr_curves(json.loads(pr_file.read_text()), run_dir / "pr_curves.png") if pr_file.is_file() else None
    grid = R.detection_grid(sorted((infer_dir / "images_annotated").iterdir())[:8], run_dir / "detections.png")
    rel = lambda p: str(Path(p).relative_to(run_dir)) if p else None  # noqa: E731 (paths move on commit)
    images = {"curves": rel(curves), "pr": rel(pr_png), "detections": rel(grid)}
    return {"rows": rows, "gates": checks, "images": images, "inference": rel(infer_dir)}


def _ap_of(row):
    return {k[3:]: v for k, v in row.items() if k.startswith("AP_")}


@task(name="gate-vs-fleet")
def against_fleet(inventory, tags, model_name, map_value, max_drop):
    """The no-regression gate: the new mAP vs the best mAP the fleet's current passports record."""
    from taoflow.deploy import fleet_status, load_inventory
    fleet = load_inventory(inventory)
    devices = fleet.select(None, tags)
    best, seen, unreachable = quality.deployed_map(fleet_status(devices, model_name, fleet.concurrency), model_name)
    if unreachable:
        get_run_logger().warning("no-regression gate: could not read %s", ", ".join(unreachable))
    where = f" (best of {len(seen)} devices)" if seen else f" on {len(devices)} devices"
    return quality.no_regression(map_value, best, max_drop, where)


@flow(name="train-ssd", log_prints=True)
def train_ssd(dataset_kind: Literal["crpd", "kitti"] = "crpd",
              dataset_path: str = "workspace/raw/crpd_demo",
              spec_set: Literal["demo_cpu", "crpd", "crpd_plate_type", "kitti", "traffic"] = "demo_cpu",
              extra_datasets: Optional[list[dict]] = None,
              backend: Literal["native", "tao"] = "native",
              prune_threshold: float = 0.1,
              prune_criterion: Literal["union", "intersection", "arithmetic_mean", "geometric_mean"] = "intersection",
              export_precision: Literal["fp32", "fp16", "int8"] = "fp16",
              export_format: Literal["onnx", "etlt"] = "onnx",
              etlt_devices: Literal["tensorrt", "onnxruntime"] = "tensorrt",
              map_floor: float = 0.85,
              max_map_drop: float = 0.02,
              parity_tolerance: float = 1e-3,
              val_split: int = 10,
              tfrecords_spec: Optional[str] = None,
              train_spec: Optional[str] = None,
              retrain_spec: Optional[str] = None,
              workspace: str = "workspace",
              deploy_inventory: Optional[str] = None,
              deploy_tags: Optional[list[str]] = None,
              model_name: str = "ssd",
              tao_key_block: Optional[str] = None,
              gpus: int = 1,
              share_gpus: bool = False,
              clearml: bool = True) -> dict:
    logger = get_run_logger()
    if export_format == "etlt" and backend != "native":
        raise ValueError("export_format='etlt' is the native backend's: TAO 3/4 export .etlt themselves, TAO 5 ONNX")
    ws = Path(workspace).resolve()
    cfg = P.RunConfig(workspace=str(ws), dataset_kind=dataset_kind, dataset_path=str(Path(dataset_path).resolve()),
                      spec_set=spec_set, val_split=val_split, prune_threshold=prune_threshold,
                      prune_criterion=prune_criterion, export_precision=export_precision,
                      tfrecords_spec=tfrecords_spec, train_spec=train_spec, retrain_spec=retrain_spec,
                      tao_key_block=tao_key_block, extra_datasets=extra_datasets, gpus=gpus,
                      share_gpus=share_gpus).__dict__
    tracker = None
    try:
        stages = {}
        # every dataset its own conversion; several are merged into one before the split (extra_datasets)
        sources = [s.__dict__ for s in P.dataset_sources(_cfg(cfg))]
        converted = [_v(convert(cfg, s)) for s in sources]
        for i, (s, c) in enumerate(zip(sources, converted)):
            stages["convert" if i == 0 else f"convert:{s['name']}"] = c
        if len(sources) > 1:
            stages["merge"] = _v(merge(cfg, sources, converted))
        stages["split"] = _v(split(cfg, stages.get("merge", stages["convert"])))
        class_counts = _v(coverage(cfg, stages["split"]))  # before any training: every class in both sides
        names = [s["name"] for s in sources] if len(sources) > 1 else None
        stages["tfrecords"] = _v(tfrecords(cfg, stages["split"], names))
        stages["train"] = _v(train(cfg, stages["tfrecords"], stages["split"], backend))
        stages["evaluate"] = _v(evaluate(cfg, stages["train"], backend, "evaluate"))
        stages["prune"] = _v(prune(cfg, stages["train"], backend))
        stages["retrain"] = _v(retrain(cfg, stages["tfrecords"], stages["split"], stages["prune"], backend))
        stages["evaluate_retrained"] = _v(evaluate(cfg, stages["retrain"], backend, "evaluate_retrained"))
        stages["export"] = _v(export(cfg, stages["retrain"], backend, export_format))
        passport = P.passport([_res(s) for s in stages.values()], names=list(stages))
        passport["metrics"] = {k: v for k, v in stages["evaluate_retrained"]["meta"]["metrics"].items()
                               if k == "mAP" or k.startswith("AP_")}
        rep = _v(build_report(cfg, stages, backend, map_floor, parity_tolerance, class_counts))
        run_dir = ws / "runs" / passport["id"]  # a readable entry point per model: passport, report, links
        # ClearML: the task that produced this model, when an earlier run recorded it; a new task only for a run
        # that did something (a fully reused run adds no task and no second copy of the model)
        produced_by = _recorded_tracking(run_dir / "passport.json") if stages["export"]["cached"] else None
        if clearml and not (produced_by and rep["cached"] and all(v["cached"] for v in stages.values())):
            tracker = _start_tracker(ws, cfg, spec_set, backend)
            produced_by = produced_by or tracker.record()
            tracker.params("model", {"produced_by_task": produced_by["clearml_task"]})
        if produced_by:
            passport["tracking"] = produced_by
        model_file = str(P.exported_model_of(_res(stages["export"])))  # .onnx, or TAO 3/4's .etlt
        rep["images"] = {k: str(Path(rep["path"]) / v) for k, v in rep["images"].items() if v}
        if deploy_inventory and all(g["passed"] for g in rep["gates"]):
            # read now, not cached with the report (the fleet changes between runs), and only for a model that
            # passed the other gates: a rejected model needs no SSH round to the fleet
            rep["gates"].append(against_fleet(deploy_inventory, deploy_tags, model_name,
                                              passport["metrics"]["mAP"], max_map_drop))
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "passport.json", json.dumps(passport, indent=2))
        markdown = R.summary_markdown(passport, rep["rows"], rep["gates"], {
            "exported model": model_file, **rep["images"],
            "inference": str(Path(rep["path"]) / rep["inference"])}, class_counts=class_counts)
        write_text_atomic(run_dir / "report.md", markdown)
        create_markdown_artifact(markdown, key="train-ssd-report", description="train-ssd run report")
        create_table_artifact([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                               for r in rep["rows"]], key="model-comparison", description="unpruned/pruned/retrained")
        if tracker:
            tracker.scalars("train", "train", stages["train"]["meta"]["history"])
            tracker.scalars("retrain", "retrain", stages["retrain"]["meta"]["history"])
            tracker.artifact("passport", passport)
            tracker.artifact("report", run_dir / "report.md")
            tracker.artifact("dataset_statistics", stages["split"]["meta"])
            for png in rep["images"].values():
                if png:
                    tracker.image("report", png)
            if produced_by["clearml_task"] == tracker.task_id:
                tracker.model(model_file, f"ssd-{spec_set}", passport)
        gates_ok = all(g["passed"] for g in rep["gates"])
        deployed = None
        if not gates_ok:
            logger.warning("gates failed, not deploying: %s", [g for g in rep["gates"] if not g["passed"]])
        elif deploy_inventory:
            from flows.deploy_ssd import deploy_ssd
            val_images = Path(stages["split"]["path"]) / "out" / "val" / "image"
            # TAO's inference labels of the val images: the smoke expectations for TAO's own export (a native
            # export's are computed on the host from the exported model itself)
            deployed = deploy_ssd(export_dir=stages["export"]["path"], inventory=deploy_inventory,
                                  sample_images=str(val_images), model_name=model_name, passport=passport,
                                  tags=deploy_tags, workspace=str(ws),
                                  reference_labels=str(Path(rep["path"]) / rep["inference"] / "labels"),
                                  tao_key_block=tao_key_block, etlt_devices=etlt_devices)
        summary = {
            "passport": passport, "map": passport["metrics"]["mAP"], "gates": rep["gates"], "gates_passed": gates_ok,
            "stages": {k: {"key": v["key"], "cached": v["cached"], "seconds": v["seconds"]} for k, v in stages.items()},
            "model": model_file, "report": str(run_dir / "report.md"), "classes": class_counts,
            "run_dir": str(run_dir), "deployed": deployed,
        }
    except BaseException:
        if clearml:  # a failed run is tracked too: its parameters and specs
            (tracker or _start_tracker(ws, cfg, spec_set, backend)).close()
        raise
    if tracker:
        summary["clearml_session"] = tracker.close()
        where = f"offline session: {summary['clearml_session']}" if tracker.offline else "task closed"
        logger.info("ClearML %s", where)
    elif produced_by:
        from taoflow.tracking import offline_session
        summary["clearml_session"] = offline_session(ws, produced_by["clearml_task"])
        logger.info("ClearML: nothing new to track; this model's task is %s", produced_by["clearml_task"])
    summary["clearml_task"] = (passport.get("tracking") or {}).get("clearml_task")
    return summary


def _start_tracker(ws, cfg, spec_set, backend):
    from taoflow.tracking import Tracker
    tracker = Tracker(ws, "taoflow", f"train-ssd {spec_set}", tags=[spec_set, backend])
    tracker.params("run", {k: v for k, v in cfg.items() if k != "workspace"})
    for label, path in zip(("spec/tfrecords", "spec/train", "spec/retrain"), _cfg(cfg).spec_paths()):
        tracker.params(label, {"file": str(path), "text": path.read_text()})
    return tracker


def _recorded_tracking(passport_file):
    """The `tracking` record ({clearml_task}) an earlier run wrote into this passport, or None."""
    try:
        tracking = json.loads(Path(passport_file).read_text(encoding="utf-8")).get("tracking")
    except (OSError, ValueError, AttributeError):
        return None
    return tracking if isinstance(tracking, dict) and isinstance(tracking.get("clearml_task"), str) else None
