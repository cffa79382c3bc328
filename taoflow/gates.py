"""Quality gates a model passes before it may reach a device. Each returns {"name", "passed", "detail"}."""

from pathlib import Path

import numpy as np


def map_floor(map_value, floor, per_class=None, val_objects=None):
    """mAP >= floor. per_class ({class: AP}) and val_objects (class_coverage's table, or {class: val objects}) make
    the detail say what the mAP averaged: TAO's mAP is the plain mean of the per-class APs, a class without
    validation objects counting as AP 0, so one weak or absent class can fail the gate on its own."""
    passed = bool(map_value >= floor)
    detail = f"mAP {map_value:.4f} vs floor {floor}"
    if per_class:
        counts = _val_counts(val_objects)
        parts = []
        for cls, ap in sorted(per_class.items()):
            n = counts.get(cls)
            note = "" if n is None else " (no validation object: counted as 0)" if n == 0 else f" ({n} val objects)"
            parts.append(f"{cls} {ap:.4f}{note}")
        detail += f": mean of {len(per_class)} class APs: " + ", ".join(parts)
        if not passed:
            weakest = min(per_class, key=per_class.get)
            detail += f"; weakest: {weakest}"
    return {"name": "mAP floor", "passed": passed, "detail": detail}


def _val_counts(val_objects):
    if not val_objects:
        return {}
    table = val_objects.get("classes", val_objects)
    return {c: (n["val"] if isinstance(n, dict) else n) for c, n in table.items()}


def no_regression(map_value, deployed_map, max_drop, where=""):
    if deployed_map is None:
        return {"name": "no regression", "passed": True, "detail": f"no deployed model with a recorded mAP{where}"}
    passed = map_value >= deployed_map - max_drop
    return {"name": "no regression", "passed": bool(passed),
            "detail": f"mAP {map_value:.4f} vs deployed {deployed_map:.4f}{where} (max drop {max_drop})"}


def deployed_map(status, name):
    """The best mAP among the models currently running as `name` on the fleet, read from their passports.

    `status`: taoflow.deploy.fleet_status's result ({device: {model: state} or an error}). The best, not the worst:
    a new model must not be worse than what any device already runs. Returns (mAP or None, devices it was read
    from, devices that could not be read).
    """
    best, seen, unreachable = None, [], []
    for device, models in sorted(status.items()):
        if isinstance(models, Exception):
            unreachable.append(device)
            continue
        state = models.get(name) or {}
        current = next((v for v in state.get("versions", []) if v["version"] == state.get("current")), None)
        passport = (current or {}).get("passport") or {}
        lineage = passport.get("lineage") if isinstance(passport.get("lineage"), dict) else passport  # device wraps it
        value = (lineage.get("metrics") or {}).get("mAP")
        if isinstance(value, (int, float)):
            seen.append(device)
            best = value if best is None else max(best, value)
    return best, seen, unreachable


def export_parity(onnx_path, reference, rtol=1e-3, score_floor=0.05):
    """The exported ONNX (ONNX Runtime) must give the training framework's boxes and scores on held-out images.

    reference(): (input batch, boxes, scores) of the executor's own model on those images
    (Executor.reference_outputs), or a string saying why it cannot give them: TAO's own models (an encrypted .etlt,
    or a .tlt/.hdf5 checkpoint that only TAO's TensorFlow loads). The gate then says so and does not block. Such
    models are deployed with TAO's own inference labels as the device's expectations (the package builder)."""
    import onnxruntime as ort
    name = "export parity"
    if Path(onnx_path).suffix != ".onnx":
        return {"name": name, "passed": True, "skipped": True,
                "detail": f"not checked: {Path(onnx_path).name} is encrypted (TAO 3/4 .etlt)"}
    outputs = reference()
    if isinstance(outputs, str):
        return {"name": name, "passed": True, "skipped": True, "detail": f"not checked: {outputs}"}
    batch, tb, ts = outputs
    ob, os_ = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"Input": batch})
    relevant = ts[..., 1:].max(-1) > score_floor
    box_err = float(np.max(np.abs(ob[relevant] - tb[relevant]) / np.maximum(np.abs(tb[relevant]), 1e-2),
                           initial=0.0))
    score_err = float(np.max(np.abs(os_ - ts)))
    passed = box_err <= rtol and score_err <= rtol
    return {"name": "export parity", "passed": bool(passed),
            "detail": f"{len(batch)} images: box rel err {box_err:.2e}, score abs err {score_err:.2e} "
                      f"(tolerance {rtol})"}
