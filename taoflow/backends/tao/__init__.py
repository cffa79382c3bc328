"""TAO launcher backend: run each SSD step on the real TAO Toolkit through NVIDIA's `tao` launcher.

`nvidia-tao` is not a dependency of taoflow (it pins old requests/urllib3); install it in its own environment
(`pipx install nvidia-tao`) and taoflow finds `tao` on PATH, at $TAOFLOW_TAO_LAUNCHER or at TaoConfig.launcher.
Step results are the backend-neutral types of taoflow.backends.results.
"""

from .commands import TaoCommand, build_command, shell_word
from .executor import KEY_VAR, TaoConfig, TaoExecutor
from .launcher import TAO4, TAO5, LauncherInfo, find_launcher, normalize_generation, probe_launcher
from .masking import KEY_ENV, MASK, mask_data, mask_secrets, resolve_key, secrets_to_mask
from .mounts import MOUNTS_ENV
from .paths import CONTAINER_ROOT, ContainerSpec, PathMap
from .preflight import TaoPreflightError, run_preflight
from .results import (DatasetConvertResult, EngineResult, EvaluateResult, ExportResult, InferenceResult, PruneResult,
                      StepResult, TrainResult, parse_ap_table, parse_pruning_ratio, result_dict)
from .runner import TaoRunError
from .steps import (DatasetConvertRequest, EvaluateRequest, ExportRequest, GenTrtEngineRequest, InferenceRequest,
                    PruneRequest, TrainRequest)

__all__ = [
    "CONTAINER_ROOT", "KEY_ENV", "KEY_VAR", "MASK", "MOUNTS_ENV", "TAO4", "TAO5",
    "ContainerSpec", "DatasetConvertRequest", "DatasetConvertResult", "EngineResult", "EvaluateRequest",
    "EvaluateResult", "ExportRequest", "ExportResult", "GenTrtEngineRequest", "InferenceRequest", "InferenceResult",
    "LauncherInfo", "PathMap", "PruneRequest", "PruneResult", "StepResult", "TaoCommand", "TaoConfig",
    "TaoExecutor", "TaoPreflightError", "TaoRunError", "TrainRequest", "TrainResult",
    "build_command", "find_launcher", "mask_data", "mask_secrets", "normalize_generation", "parse_ap_table",
    "parse_pruning_ratio", "probe_launcher", "resolve_key", "result_dict", "run_preflight", "secrets_to_mask",
    "shell_word",
]
