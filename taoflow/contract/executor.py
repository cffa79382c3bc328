"""The executor protocol: what the pipeline (taoflow.pipeline) asks of a backend, one method per `ssd` task of
TAO's command line, each returning the typed result of taoflow.contract.results.

Two implementations: taoflow.backends.native.executor.NativeExecutor (taoflow's PyTorch SSD) and
taoflow.backends.tao.flow_executor.TaoFlowExecutor (the real TAO Toolkit through the `tao` launcher). They write the
same files (TAO's results-directory layout), differing in file names only (.pth / .hdf5 / .tlt checkpoints, .onnx /
.etlt exports): callers find files through the results, never by assuming a suffix.
"""

from pathlib import Path
from typing import Optional, Protocol

from .results import EvaluateResult, ExportResult, InferenceResult, PruneResult, TrainResult


class Executor(Protocol):
    name: str  # "native" | "tao": part of every stage's cache key
    export_format: str  # "onnx" | "etlt": what export writes

    def code_version(self, step: str) -> str:
        """Digest of the code that makes `step`'s outputs ("train", "evaluate", "prune", "export", "infer"), part
        of that stage's cache key: changing a backend invalidates that backend's results, and only those."""

    def train(self, spec_path: Path, results_dir: Path, resume_model: Optional[Path] = None,
              initial_epoch: int = 1) -> TrainResult:
        """Train into results_dir (weights/, the training CSV, status.json). resume_model with initial_epoch > 1
        resumes a checkpoint; a pruned model with initial_epoch 1 starts a retrain from it."""

    def evaluate(self, spec_path: Path, model_path: Path, out_dir: Path) -> EvaluateResult:
        """AP per class and mAP on the spec's validation data (out_dir may also get pr_curves.json)."""

    def prune(self, model_path: Path, output: Path, threshold: float, criterion: str) -> PruneResult:
        """Prune with -pth threshold and -eq criterion into output's directory (the backend names the file)."""

    def export(self, spec_path: Path, model_path: Path, output: Path, precision: str) -> ExportResult:
        """Export next to output (.onnx, or .etlt), with model.json and the DeepStream files."""

    def model_stats(self, model_path: Path) -> dict:
        """{"params", "gflops", "cpu_latency_ms"} of a model (None each where the host cannot load it), for the
        report's model table."""

    def reference_outputs(self, spec_path: Path, model_path: Path, image_paths: list):
        """(input batch, boxes, scores) of the model in its training framework on these images, for the export
        parity gate (taoflow.gates.export_parity); or a string saying why this executor cannot run it on the host."""

    def infer(self, spec_path: Path, model_path: Path, image_dir: Path, results_dir: Path,
              threshold: float = 0.3) -> InferenceResult:
        """KITTI labels with confidence (results_dir/labels) and annotated images (results_dir/images_annotated)."""
