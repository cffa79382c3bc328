"""What a train-ssd run leaves beside its stages: the report stage (inference grid, model comparison, gates,
curves), the passport, the run folder `runs/<passport id>/` (passport.json, report.md) and the ClearML task.

Plain functions over the stage results of taoflow.pipeline; the flow (flows/train_ssd.py) only calls them in order.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from . import gates as quality
from . import pipeline as P
from . import report as R
from .fsutil import write_text_atomic

log = logging.getLogger(__name__)
PASSPORT_FILE = "passport.json"
REPORT_FILE = "report.md"


# -- report stage -------------------------------------------------------------------------------------------------
def stage_report(store, stages, executor, map_floor, parity_tolerance, class_counts=None):
    """Inference grid, model comparison, gates and curves; content-addressed like every other stage. Returns the
    report as data: {rows, gates, images (absolute paths), inference, path, cached, key}."""
    material = {"stages": {k: v.key for k, v in stages.items()}, "map_floor": map_floor,
                "parity_tolerance": parity_tolerance}

    def produce(run_dir, _key):
        return _report(stages, executor, Path(run_dir), map_floor, parity_tolerance, class_counts)
    result = P.run_stage(store, "report", material, produce)
    report = dict(result.meta, path=result.path, cached=result.cached, key=result.key)
    report["images"] = {k: str(Path(result.path) / v) for k, v in report["images"].items() if v}
    return report


def _report(stages, executor, run_dir, map_floor, parity_tolerance, class_counts=None):
    trained, pruned, retrained, exported = (stages[k] for k in ("train", "prune", "retrain", "export"))
    spec = Path(retrained.path) / "experiment_spec.txt"
    val_images = sorted((Path(stages["split"].path) / "out" / "val" / "image").iterdir())
    infer_dir = run_dir / "inference"
    executor.infer(spec, P.checkpoint_of(retrained), val_images[0].parent, infer_dir)
    rows = []
    for name, stage, ckpt in (("unpruned", "evaluate", P.checkpoint_of(trained)),
                              ("pruned", None, P.pruned_model_of(pruned)),
                              ("retrained", "evaluate_retrained", P.checkpoint_of(retrained))):
        metrics = stages[stage].meta["metrics"] if stage else {"mAP": float("nan")}
        rows.append(dict(model=name, **executor.model_stats(ckpt), **{k: v for k, v in metrics.items()
                                                               if k == "mAP" or k.startswith("AP_")}))
    final_map = rows[-1]["mAP"]
    checks = [quality.map_floor(final_map, map_floor, per_class=_ap_of(rows[-1]), val_objects=class_counts),
              quality.export_parity(P.exported_model_of(exported), lambda: executor.reference_outputs(
                  spec, P.checkpoint_of(retrained), val_images[:8]), rtol=parity_tolerance)]
    curves = R.training_curves({"train": trained.meta["history"], "retrain": retrained.meta["history"]},
                               run_dir / "training_curves.png")
    pr_file = Path(stages["evaluate_retrained"].path) / "pr_curves.json"  # TAO's evaluate writes none
    pr_png = R.pr_curves(json.loads(pr_file.read_text()), run_dir / "pr_curves.png") if pr_file.is_file() else None
    grid = R.detection_grid(sorted((infer_dir / "images_annotated").iterdir())[:8], run_dir / "detections.png")
    rel = lambda p: str(Path(p).relative_to(run_dir)) if p else None  # noqa: E731 (paths move on commit)
    images = {"curves": rel(curves), "pr": rel(pr_png), "detections": rel(grid)}
    return {"rows": rows, "gates": checks, "images": images, "inference": rel(infer_dir)}


def _ap_of(row):
    return {k[3:]: v for k, v in row.items() if k.startswith("AP_")}


# -- passport and run folder ----------------------------------------------------------------------------------------
def model_passport(stages):
    """The passport of the exported model (taoflow.pipeline.passport: the chain of stage keys) with the final mAP
    and AP per class."""
    passport = P.passport(list(stages.values()), names=list(stages))
    passport["metrics"] = {k: v for k, v in stages["evaluate_retrained"].meta["metrics"].items()
                           if k == "mAP" or k.startswith("AP_")}
    return passport


def run_dir_of(workspace, passport):
    """A readable entry point per model: <workspace>/runs/<passport id>/."""
    return Path(workspace) / "runs" / passport["id"]


def write_run(run_dir, passport, report, model_file, class_counts=None):
    """passport.json and report.md into the run folder (atomically); returns the report's markdown."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / PASSPORT_FILE, json.dumps(passport, indent=2))
    markdown = R.summary_markdown(passport, report["rows"], report["gates"], {
        "exported model": str(model_file), **report["images"],
        "inference": str(Path(report["path"]) / report["inference"])}, class_counts=class_counts)
    write_text_atomic(run_dir / REPORT_FILE, markdown)
    return markdown


def summary(passport, report, stages, model_file, run_dir, class_counts=None):
    """What a train-ssd run returns (the flow adds `deployed` and the ClearML task); `models`: the report's model
    table's sizes and CPU latency."""
    return {"passport": passport, "map": passport["metrics"]["mAP"], "gates": report["gates"],
            "gates_passed": all(g["passed"] for g in report["gates"]),
            "stages": {k: {"key": v.key, "cached": v.cached, "seconds": v.seconds} for k, v in stages.items()},
            "model": str(model_file), "report": str(run_dir / REPORT_FILE), "classes": class_counts,
            "run_dir": str(run_dir),
            "models": [{k: r.get(k) for k in ("model", "params", "gflops", "cpu_latency_ms")} for r in report["rows"]]}


def recorded_tracking(passport_file):
    """The `tracking` record ({clearml_task}) an earlier run wrote into this passport, or None."""
    try:
        tracking = json.loads(Path(passport_file).read_text(encoding="utf-8")).get("tracking")
    except (OSError, ValueError, AttributeError):
        return None
    return tracking if isinstance(tracking, dict) and isinstance(tracking.get("clearml_task"), str) else None


# -- ClearML ---------------------------------------------------------------------------------------------------------
@dataclass
class RunTracking:
    """The ClearML side of one run. A task is made only for a run that did something: a fully reused run links the
    task recorded in its passport instead (no new task, no second copy of the model). A failed run is tracked too
    (its parameters and specs)."""
    workspace: Path
    cfg: P.RunConfig
    backend: str
    enabled: bool = True
    tracker: object = None
    produced_by: dict = field(default=None)

    def start(self, stages, report, passport):
        """Start a task unless tracking is off or everything was reused; puts the task that produced the model
        (this run's, or the one an earlier run recorded for the same export) into the passport."""
        run_dir = run_dir_of(self.workspace, passport)
        produced_by = recorded_tracking(run_dir / PASSPORT_FILE) if stages["export"].cached else None
        reused = produced_by and report["cached"] and all(s.cached for s in stages.values())
        if self.enabled and not reused:
            self.tracker = self._new_tracker()
            produced_by = produced_by or self.tracker.record()
            self.tracker.params("model", {"produced_by_task": produced_by["clearml_task"]})
        self.produced_by = produced_by
        if produced_by:
            passport["tracking"] = produced_by

    def log(self, stages, report, passport, run_dir, model_file):
        if not self.tracker:
            return
        t = self.tracker
        t.scalars("train", "train", stages["train"].meta["history"])
        t.scalars("retrain", "retrain", stages["retrain"].meta["history"])
        t.artifact("passport", passport)
        t.artifact("report", run_dir / REPORT_FILE)
        t.artifact("dataset_statistics", stages["split"].meta)
        for png in report["images"].values():
            t.image("report", png)
        if self.produced_by["clearml_task"] == t.task_id:
            t.model(str(model_file), f"ssd-{self.cfg.spec_set}", passport)

    def failed(self):
        if self.enabled:
            (self.tracker or self._new_tracker()).close()

    def close(self):
        """{clearml_session, clearml_task} for the run's summary."""
        out = {}
        if self.tracker:
            out["clearml_session"] = self.tracker.close()
            where = f"offline session: {out['clearml_session']}" if self.tracker.offline else "task closed"
            log.info("ClearML %s", where)
        elif self.produced_by:
            from .tracking import offline_session
            out["clearml_session"] = offline_session(self.workspace, self.produced_by["clearml_task"])
            log.info("ClearML: nothing new to track; this model's task is %s", self.produced_by["clearml_task"])
        out["clearml_task"] = (self.produced_by or {}).get("clearml_task")
        return out

    def _new_tracker(self):
        from .tracking import Tracker
        tracker = Tracker(self.workspace, "taoflow", f"train-ssd {self.cfg.spec_set}",
                          tags=[self.cfg.spec_set, self.backend])
        tracker.params("run", {k: v for k, v in self.cfg.__dict__.items() if k != "workspace"})
        for label, path in zip(("spec/tfrecords", "spec/train", "spec/retrain"), self.cfg.spec_paths()):
            tracker.params(label, {"file": str(path), "text": path.read_text()})
        return tracker
