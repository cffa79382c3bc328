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


def export_parity(spec_path, checkpoint, onnx_path, image_paths, rtol=1e-3, score_floor=0.05):
    """The exported ONNX (ONNX Runtime) must give PyTorch's boxes and scores on held-out images.

    Not checkable here for TAO's own models (an encrypted .etlt, or a .tlt/.hdf5 checkpoint that only TAO's
    TensorFlow loads): the gate then says so and does not block. Such models cannot be deployed by taoflow yet
    (the package builder refuses them), so nothing unchecked reaches a device."""
    import onnxruntime as ort
    import torch

    from .backends.native.build import anchors_for
    from .backends.native.evaluate import load_model_for, predict, preprocess, read_image
    from .errors import TaoflowError
    name = "export parity"
    if Path(onnx_path).suffix != ".onnx":
        return {"name": name, "passed": True, "skipped": True,
                "detail": f"not checked: {Path(onnx_path).name} is encrypted (TAO 3/4 .etlt)"}
    try:
        spec, model, arch = load_model_for(spec_path, checkpoint)
    except TaoflowError as e:
        if Path(checkpoint).suffix == ".pth":
            raise
        return {"name": name, "passed": True, "skipped": True,
                "detail": f"not checked: {Path(checkpoint).name} is a TAO model ({e})"}
    c, h, w = arch["input"]
    batch = np.stack([preprocess(read_image(p), c, h, w, spec.image_mean()) for p in image_paths])
    ob, os_ = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"Input": batch})
    tb, ts = predict(model, torch.from_numpy(batch), anchors_for(spec, arch["nlayers"]), spec.variances)
    relevant = ts[..., 1:].max(-1) > score_floor
    box_err = float(np.max(np.abs(ob[relevant] - tb[relevant]) / np.maximum(np.abs(tb[relevant]), 1e-2),
                           initial=0.0))
    score_err = float(np.max(np.abs(os_ - ts)))
    passed = box_err <= rtol and score_err <= rtol
    return {"name": "export parity", "passed": bool(passed),
            "detail": f"{len(image_paths)} images: box rel err {box_err:.2e}, score abs err {score_err:.2e} "
                      f"(tolerance {rtol})"}
