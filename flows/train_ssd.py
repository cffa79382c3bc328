"""Prefect flow `train-ssd`: convert -> split -> tfrecords -> train -> evaluate -> prune -> retrain -> evaluate ->
report (inference grid, gates) -> passport, run folder, ClearML -> deploy. Each task is a thin wrapper over a
content-addressed stage function (taoflow.pipeline, taoflow.runs), so an identical re-run executes nothing heavy and
a killed run resumes where it stopped. Tasks pass the stages' typed results; the store is the cache (Prefect's own
task cache is off: it would hash argument values, not the files they name)."""

from pathlib import Path
from typing import Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from flows.executors import executor_for
from taoflow import gates as quality
from taoflow import pipeline as P
from taoflow import runs
from taoflow.store import Store

stage_task = task(cache_policy=NO_CACHE)


def _done(result):
    """A reused stage (a StageResult, or the report's dict) ends in a Completed state named Cached, so Prefect (UI,
    API) shows it did no work."""
    stage, key, cached = (("report", result["key"], result["cached"]) if isinstance(result, dict)
                          else (result.stage, result.key, result.cached))
    return Completed(data=result, name="Cached", message=f"reused {stage} {key}") if cached else result


def _v(x):
    return x.result() if isinstance(x, State) else x


@stage_task(name="convert", task_run_name="convert-{source.name}")
def convert(store, cfg, source):
    return _done(P.stage_convert(store, cfg, source))


@stage_task(name="merge")
def merge(store, cfg, sources, converted):
    return _done(P.stage_merge(store, cfg, list(zip(sources, converted))))


@stage_task(name="coverage")
def coverage(cfg, split_result):
    """Objects per class and split side; refuses to go on when a class has no training or validation example."""
    table = P.class_coverage(cfg, split_result)
    get_run_logger().info("objects per class (training / val): %s; dropped as unmapped: %s",
                          ", ".join(f"{c} {n['training']}/{n['val']}" for c, n in table["classes"].items()),
                          table["unmapped"] or "none")
    return P.check_coverage(cfg, table)


@stage_task(name="split")
def split(store, cfg, converted):
    return _done(P.stage_split(store, cfg, converted))


@stage_task(name="tfrecords")
def tfrecords(store, cfg, split_result, sources=None):
    return _done(P.stage_tfrecords(store, cfg, split_result, sources))


@stage_task(name="train")
def train(store, cfg, records, split_result, executor):
    return _done(P.stage_train(store, cfg, records, split_result, executor))


@stage_task(name="evaluate")
def evaluate(store, cfg, trained, executor, name):
    return _done(P.stage_evaluate(store, cfg, trained, executor, name))


@stage_task(name="prune")
def prune(store, cfg, trained, executor):
    return _done(P.stage_prune(store, cfg, trained, executor))


@stage_task(name="retrain")
def retrain(store, cfg, records, split_result, pruned, executor):
    return _done(P.stage_train(store, cfg, records, split_result, executor, name="retrain", pruned=pruned))


@stage_task(name="export")
def export(store, cfg, retrained, executor):
    return _done(P.stage_export(store, cfg, retrained, executor))


@stage_task(name="report")
def build_report(store, stages, executor, map_floor, parity_tolerance, class_counts=None):
    """Inference grid, model comparison, gates and curves (taoflow.runs.stage_report)."""
    return _done(runs.stage_report(store, stages, executor, map_floor, parity_tolerance, class_counts))


@stage_task(name="gate-vs-fleet")
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


def publish(markdown, rows):
    """The report and the model table as artifacts of the flow run (Prefect's UI shows them with the run)."""
    create_markdown_artifact(markdown, key="train-ssd-report", description="train-ssd run report")
    create_table_artifact([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                          key="model-comparison", description="unpruned/pruned/retrained")


def deploy(stages, rep, passport, inventory, tags, model_name, workspace, tao_key_block, etlt_devices):
    """Ship a model that passed its gates with deploy-ssd (a subflow): the val images are the smoke samples, and
    TAO's inference labels of them the smoke expectations for TAO's own export (a native export's are computed on
    the host from the exported model itself)."""
    from flows.deploy_ssd import deploy_ssd
    return deploy_ssd(export_dir=stages["export"].path, inventory=inventory,
                      sample_images=str(Path(stages["split"].path) / "out" / "val" / "image"), model_name=model_name,
                      passport=passport, tags=tags, workspace=str(workspace),
                      reference_labels=str(Path(rep["path"]) / rep["inference"] / "labels"),
                      tao_key_block=tao_key_block, etlt_devices=etlt_devices)


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
    if export_format == "etlt" and backend != "native":
        raise ValueError("export_format='etlt' is the native backend's: TAO 3/4 export .etlt themselves, TAO 5 ONNX")
    ws = Path(workspace).resolve()
    cfg = P.RunConfig(workspace=str(ws), dataset_kind=dataset_kind, dataset_path=str(Path(dataset_path).resolve()),
                      spec_set=spec_set, val_split=val_split, prune_threshold=prune_threshold,
                      prune_criterion=prune_criterion, export_precision=export_precision,
                      tfrecords_spec=tfrecords_spec, train_spec=train_spec, retrain_spec=retrain_spec,
                      tao_key_block=tao_key_block, extra_datasets=extra_datasets, gpus=gpus, share_gpus=share_gpus)
    store, executor = Store(cfg.workspace), executor_for(backend, cfg)
    tracking = runs.RunTracking(ws, cfg, backend, enabled=clearml)
    try:
        # every dataset its own conversion; several are merged into one before the split (extra_datasets)
        sources = P.dataset_sources(cfg)
        converted = [_v(convert(store, cfg, s)) for s in sources]
        stages = {("convert" if i == 0 else f"convert:{s.name}"): c for i, (s, c) in enumerate(zip(sources, converted))}
        if len(sources) > 1:
            stages["merge"] = _v(merge(store, cfg, sources, converted))
        stages["split"] = _v(split(store, cfg, stages.get("merge", stages["convert"])))
        class_counts = _v(coverage(cfg, stages["split"]))  # before any training: every class in both sides
        stages["tfrecords"] = _v(tfrecords(store, cfg, stages["split"], [s.name for s in sources]
                                           if len(sources) > 1 else None))
        stages["train"] = _v(train(store, cfg, stages["tfrecords"], stages["split"], executor))
        stages["evaluate"] = _v(evaluate(store, cfg, stages["train"], executor, "evaluate"))
        stages["prune"] = _v(prune(store, cfg, stages["train"], executor))
        stages["retrain"] = _v(retrain(store, cfg, stages["tfrecords"], stages["split"], stages["prune"], executor))
        stages["evaluate_retrained"] = _v(evaluate(store, cfg, stages["retrain"], executor, "evaluate_retrained"))
        stages["export"] = _v(export(store, cfg, stages["retrain"], executor_for(backend, cfg, export_format)))
        rep = _v(build_report(store, stages, executor, map_floor, parity_tolerance, class_counts))
        passport = runs.model_passport(stages)
        tracking.start(stages, rep, passport)
        model_file = P.exported_model_of(stages["export"])  # .onnx, or TAO 3/4's .etlt
        if deploy_inventory and all(g["passed"] for g in rep["gates"]):
            # read now, not cached with the report (the fleet changes between runs), and only for a model that
            # passed the other gates: a rejected model needs no SSH round to the fleet
            rep["gates"].append(against_fleet(deploy_inventory, deploy_tags, model_name,
                                              passport["metrics"]["mAP"], max_map_drop))
        run_dir = runs.run_dir_of(ws, passport)
        publish(runs.write_run(run_dir, passport, rep, model_file, class_counts), rep["rows"])
        tracking.log(stages, rep, passport, run_dir, model_file)
        gates_ok = all(g["passed"] for g in rep["gates"])
        if not gates_ok:
            get_run_logger().warning("gates failed, not deploying: %s", [g for g in rep["gates"] if not g["passed"]])
        deployed = deploy(stages, rep, passport, deploy_inventory, deploy_tags, model_name, ws, tao_key_block,
                          etlt_devices) if gates_ok and deploy_inventory else None
    except BaseException:
        tracking.failed()  # a failed run is tracked too: its parameters and specs
        raise
    return dict(runs.summary(passport, rep, stages, model_file, run_dir, class_counts), deployed=deployed,
                **tracking.close())
