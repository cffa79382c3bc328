"""The native backend as the contract's Executor (taoflow.contract.executor), returning its typed results.

GPU placement (taoflow.gpus): training, evaluation and inference each lease `gpus` of the worker's GPUs for their
duration and run on the first of them (`cuda:<ordinal>`); no GPU on the machine, or `gpus=0`, runs on the CPU.
Pruning and export run on the CPU and lease nothing."""

import json
from pathlib import Path

import numpy as np

from ... import gpus as G
from ...store import code_version
from .. import results as R

# The code each step's output depends on (taoflow.store.code_version paths): a change there invalidates that step's
# stored results, and only those.
# The reference NMS (validation, evaluate, inference) and the model package's fields, plugin attributes and TensorRT
# checks (export) live in taoflow/contract.
STEP_CODE = {"train": ("backends/native", "contract/nms.py"), "evaluate": ("backends/native", "contract/nms.py"),
             "prune": ("backends/native/prune.py",),
             "export": ("backends/native/export.py", "contract/nms.py", "contract/model_package.py",
                        "contract/trt_ops.py"),
             "infer": ("backends/native", "contract/nms.py")}


class NativeExecutor:
    name = "native"

    def __init__(self, device=None, export_format="onnx", etlt_key=None, gpus=1, share_gpus=False):
        """export_format "etlt": export writes model.etlt (the ONNX encoded with `etlt_key`, a string or a callable
        returning it, default $TAO_MODEL_KEY) and keeps the plain model.onnx beside it on the host."""
        if export_format not in ("onnx", "etlt"):
            raise ValueError(f"export_format {export_format!r}: choose onnx or etlt")
        self.device = device  # an explicit torch device wins over GPU placement
        self.export_format = export_format
        self._etlt_key = etlt_key
        self.gpus = gpus  # how many of the worker's GPUs a step leases (0: CPU)
        self.share_gpus = share_gpus  # True: take them even when another run of this machine holds them

    def code_version(self, step):
        """Digest of the code that makes `step`'s outputs (part of the stage's cache key)."""
        return code_version(*STEP_CODE[step])

    def _lease(self, what):
        if self.device is not None:
            return G.lease(0)
        return G.lease(self.gpus, self.share_gpus, what=f"native {what}")

    def _device(self, placement=None):
        from .train import pick_device
        if self.device is not None:
            return self.device
        return pick_device(1 if placement else self.gpus, placement.ordinals if placement else None)

    def train(self, spec_path, results_dir, resume_model=None, initial_epoch=1):
        from .evaluate import validation_fn
        from .train import train
        with self._lease("train") as placement:
            train(spec_path, results_dir, resume_model=resume_model, initial_epoch=initial_epoch,
                  gpus=1 if placement else self.gpus, gpu_index=placement.ordinals or None, device=self.device,
                  evaluate_fn=validation_fn)
        return R.train_result(results_dir)

    def evaluate(self, spec_path, model_path, out_dir):
        """AP per class and mAP as TAO reports them, plus PR curves saved for the report."""
        from .build import anchors_for
        from .evaluate import evaluate_model, load_model_for
        spec, model, arch = load_model_for(spec_path, model_path)
        with self._lease("evaluate") as placement:
            device = self._device(placement)
            metrics = evaluate_model(model.to(device), spec, anchors_for(spec, arch["nlayers"]).to(device), device)
        pr = {name: {"precision": np.asarray(p).tolist(), "recall": np.asarray(r).tolist()}
              for name, (p, r) in metrics.pop("pr").items()}
        (Path(out_dir) / "pr_curves.json").write_text(json.dumps(pr))
        print(metrics.pop("table"))
        return R.evaluate_result(metrics=metrics)

    def reference_outputs(self, spec_path, model_path, image_paths):
        """(input batch, decoded boxes, scores) of the PyTorch model on these images, as the export's parity gate
        compares them with ONNX Runtime's; a string saying why not for a TAO model (.tlt/.hdf5)."""
        import torch

        from ...errors import TaoflowError
        from .build import anchors_for
        from .evaluate import load_model_for, predict, preprocess, read_image
        try:
            spec, model, arch = load_model_for(spec_path, model_path)
        except TaoflowError as e:
            if Path(model_path).suffix == ".pth":
                raise
            return f"{Path(model_path).name} is a TAO model ({e})"
        c, h, w = arch["input"]
        batch = np.stack([preprocess(read_image(p), c, h, w, spec.image_mean()) for p in image_paths])
        boxes, scores = predict(model, torch.from_numpy(batch), anchors_for(spec, arch["nlayers"]), spec.variances)
        return batch, boxes, scores

    def model_stats(self, model_path, runs=10):
        """Parameters, GFLOPs (multiply-accumulates) and CPU latency at batch 1 of a native checkpoint, for the
        report's model table; None for each when the file is a TAO model (.tlt/.hdf5)."""
        import time

        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from ...errors import TaoflowError
        from .checkpoint import build_from_checkpoint, load_checkpoint
        try:
            state = load_checkpoint(model_path)
        except TaoflowError:
            if Path(model_path).suffix == ".pth":
                raise
            return {"params": None, "gflops": None, "cpu_latency_ms": None}
        model = build_from_checkpoint(state).eval()
        c, h, w = state["arch"]["input"]
        x = torch.zeros(1, c, h, w)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        with torch.no_grad():
            model(x)
            t0 = time.perf_counter()
            for _ in range(runs):
                model(x)
        return {"params": sum(p.numel() for p in model.parameters()), "gflops": counter.get_total_flops() / 2e9,
                "cpu_latency_ms": 1000 * (time.perf_counter() - t0) / runs}

    def prune(self, model_path, output, threshold, criterion):
        from .prune import prune_checkpoint
        return R.prune_result(report=prune_checkpoint(model_path, output, threshold=threshold,
                                                      equalization=criterion))

    def export(self, spec_path, model_path, output, precision):
        from .export import export_onnx
        if self.export_format == "etlt":
            import os
            key = self._etlt_key() if callable(self._etlt_key) else self._etlt_key
            written = export_onnx(spec_path, model_path, output, data_type=precision, gen_ds_config=True,
                                  etlt_key=key or os.environ.get("TAO_MODEL_KEY") or "", keep_onnx=True)
        else:
            written = export_onnx(spec_path, model_path, output, data_type=precision, gen_ds_config=True)
        return R.export_result(written=written)

    def infer(self, spec_path, model_path, image_dir, results_dir, threshold=0.3):
        from .inference import run_inference
        with self._lease("inference") as placement:
            run_inference(spec_path, model_path, image_dir, results_dir, threshold=threshold,
                          device=self._device(placement))
        return R.inference_result(results_dir=results_dir)
