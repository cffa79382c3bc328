"""The native backend behind the interface the pipeline calls (the TAO backend offers the same methods)."""

import json
from pathlib import Path

import numpy as np


class NativeExecutor:
    name = "native"

    def __init__(self, device=None, export_format="onnx", etlt_key=None):
        """export_format "etlt": export writes model.etlt (the ONNX encoded with `etlt_key`, a string or a callable
        returning it, default $TAO_MODEL_KEY) and keeps the plain model.onnx beside it on the host."""
        if export_format not in ("onnx", "etlt"):
            raise ValueError(f"export_format {export_format!r}: choose onnx or etlt")
        self.device = device
        self.export_format = export_format
        self._etlt_key = etlt_key

    def _device(self):
        from .train import pick_device
        return self.device or pick_device()

    def train(self, spec_path, results_dir, resume_model=None, initial_epoch=1):
        from .evaluate import validation_fn
        from .train import train
        return train(spec_path, results_dir, resume_model=resume_model, initial_epoch=initial_epoch,
                     device=self.device, evaluate_fn=validation_fn)

    def evaluate(self, spec_path, model_path, out_dir):
        """AP per class and mAP as TAO reports them, plus PR curves saved for the report."""
        from .build import anchors_for
        from .evaluate import evaluate_model, load_model_for
        spec, model, arch = load_model_for(spec_path, model_path)
        device = self._device()
        metrics = evaluate_model(model.to(device), spec, anchors_for(spec, arch["nlayers"]).to(device), device)
        pr = {name: {"precision": np.asarray(p).tolist(), "recall": np.asarray(r).tolist()}
              for name, (p, r) in metrics.pop("pr").items()}
        (Path(out_dir) / "pr_curves.json").write_text(json.dumps(pr))
        print(metrics.pop("table"))
        return metrics

    def prune(self, model_path, output, threshold, criterion):
        from .prune import prune_checkpoint
        report = prune_checkpoint(model_path, output, threshold=threshold, equalization=criterion)
        return {k: v for k, v in report.items() if k != "layers"}

    def export(self, spec_path, model_path, output, precision):
        from .export import export_onnx
        if self.export_format == "etlt":
            import os
            key = self._etlt_key() if callable(self._etlt_key) else self._etlt_key
            return export_onnx(spec_path, model_path, output, data_type=precision, gen_ds_config=True,
                               etlt_key=key or os.environ.get("TAO_MODEL_KEY") or "", keep_onnx=True)
        return export_onnx(spec_path, model_path, output, data_type=precision, gen_ds_config=True)

    def infer(self, spec_path, model_path, image_dir, results_dir, threshold=0.3):
        from .inference import run_inference
        return run_inference(spec_path, model_path, image_dir, results_dir, threshold=threshold,
                             device=self._device())
