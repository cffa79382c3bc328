"""The TAO backend behind the interface the pipeline calls (taoflow.pipeline's stages and flows/train_ssd.py), the
same methods and return shapes as taoflow.backends.native.executor.NativeExecutor, so a flow switches executors with
one parameter (`backend="tao"`) and cannot tell which one ran.

The model key comes in the TaoConfig (`key`: a string or a callable resolved when a step needs it); flows get it
from a Prefect Secret block (flows/executors.py), so nothing here imports Prefect.

Each call runs one step through the `tao` launcher (TaoExecutor) with its launcher files (masked command line,
mounts file, container-side spec, masked log) kept in a `tao/` directory beside the step's outputs, so they land in
the content-addressed store with the results they explain. The data stage is not sent to TAO: taoflow writes its
TFRecords exactly as `tao ssd dataset_convert` does (taoflow.datasets.tfrecords), and both executors read them.

What TAO writes differs from the native backend in file names only: checkpoints are `.tlt` (TAO 3/4, encrypted with
the model key) or `.hdf5` (TAO 5), a pruned model gets TAO's suffix, and TAO 3/4 export an encrypted `.etlt`.
Callers find the files through the returned paths, never by assuming `.pth`/`.onnx`.

GPU placement (taoflow.gpus): every launcher call leases `gpus` of the worker's GPUs for its duration and passes
them as TAO's `--gpu_index` (physical ids, which the launcher hands to docker), and train also gets `--gpus`.
"""

import dataclasses
from pathlib import Path

from ... import gpus as G

from ...errors import TaoflowError
from ...store import code_version
from .executor import TaoConfig, TaoExecutor
from .launcher import TAO5
from .model_json import write_tao_model_json
from .steps import EvaluateRequest, ExportRequest, InferenceRequest, PruneRequest, TrainRequest


class TaoFlowExecutor:
    name = "tao"

    def __init__(self, config=None, gpus=1, share_gpus=False):
        self.config = config or TaoConfig()
        self._generation = None
        self.gpus = gpus  # how many of the worker's GPUs a launcher call leases (0: let TAO choose)
        self.share_gpus = share_gpus

    def code_version(self, _step):
        """Digest of the code that runs TAO's steps and reads their outputs (part of every stage's cache key); the
        container's own version is TAO's; model.json's fields come from the contract."""
        return code_version("backends/tao", "backends/results.py", "contract/model_package.py")

    def model_stats(self, model_path):
        """Parameters, GFLOPs and CPU latency: unknown on the host for TAO's models (only its containers load them)."""
        return {"params": None, "gflops": None, "cpu_latency_ms": None}

    def reference_outputs(self, spec_path, model_path, image_paths):
        """Why the export parity gate cannot compare TAO's model on the host: only TAO's containers load it."""
        return f"{Path(model_path).name} is a TAO model, which only TAO's TensorFlow loads"

    def _executor(self, where):
        return TaoExecutor(Path(where), self.config)

    def _run(self, where, request):
        """Run one launcher call on GPUs leased for it (see the module's docstring)."""
        with G.lease(self.gpus, self.share_gpus, what=f"tao {request.task}") as placement:
            if placement:
                changes = {"gpu_index": tuple(placement.ids)}
                if hasattr(request, "gpus"):
                    changes["gpus"] = len(placement.ids)
                request = dataclasses.replace(request, **changes)
            return self._executor(where).run(request)

    def generation(self, where):
        if self._generation is None:
            self._generation = self._executor(where).launcher_info().generation
        return self._generation

    def train(self, spec_path, results_dir, resume_model=None, initial_epoch=1):
        """Train, or continue from `resume_model`: a checkpoint with `initial_epoch` > 1 resumes with its optimizer
        state (TAO's --initial_epoch); a pruned model with initial_epoch 1 starts a retrain from it."""
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        request = TrainRequest(spec=Path(spec_path), results_dir=results_dir,
                               resume_model=Path(resume_model) if resume_model else None,
                               initial_epoch=initial_epoch if resume_model and initial_epoch > 1 else None)
        return self._run(results_dir, request)

    def evaluate(self, spec_path, model_path, out_dir):
        """AP per class and mAP parsed from TAO's printed table (no PR curves: TAO does not write them)."""
        result = self._run(out_dir, EvaluateRequest(model=Path(model_path), spec=Path(spec_path),
                                                             results_dir=Path(out_dir)))
        if result.map is None:
            raise TaoflowError(f"TAO's evaluate printed no mAP (log: {result.log})")
        return result

    def prune(self, model_path, output, threshold, criterion):
        """Prune into `output`'s directory; TAO names the file (`.hdf5` on TAO 5, `.tlt` on TAO 3/4)."""
        output = Path(output)
        suffix = ".hdf5" if self.generation(output.parent) == TAO5 else ".tlt"
        result = self._run(output.parent, PruneRequest(
            model=Path(model_path), output=output.with_suffix(suffix), results_dir=output.parent,
            equalization_criterion=criterion, pruning_threshold=threshold))
        if result.output is None:
            raise TaoflowError(f"TAO's prune wrote no model (log: {result.log})")
        return result

    def export(self, spec_path, model_path, output, precision):
        """Export next to `output` (TAO 5: .onnx, TAO 3/4: .etlt); `files` holds {kind: path} of what TAO wrote."""
        output = Path(output)
        if self.generation(output.parent) != TAO5:
            output = output.with_suffix(".etlt")
        result = self._run(output.parent, ExportRequest(
            model=Path(model_path), output=output, spec=Path(spec_path), results_dir=output.parent,
            gen_ds_config=True, data_type=precision))
        written = {"onnx" if Path(result.model_file).suffix == ".onnx" else "etlt": str(result.model_file)}
        for kind in ("model_json", "labels", "nvinfer_config", "cal_cache", "cal_data_file"):
            if getattr(result, kind) is not None:
                written[kind] = str(getattr(result, kind))
        if "model_json" not in written:  # what a device needs to run it, as the native export describes its own
            written["model_json"] = str(write_tao_model_json(spec_path, result.model_file, precision, model_path))
            result = dataclasses.replace(result, model_json=Path(written["model_json"]))
        return dataclasses.replace(result, files={kind: Path(path) for kind, path in written.items()})

    def infer(self, spec_path, model_path, image_dir, results_dir, threshold=0.3):
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        return self._run(results_dir, InferenceRequest(
            model=Path(model_path), spec=Path(spec_path), image_dir=Path(image_dir), results_dir=results_dir,
            threshold=threshold))
