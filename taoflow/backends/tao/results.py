"""What TAO wrote, found on the host and parsed into typed results (tao-ssd-contract.md §5).

The result types and the parsers live in taoflow.backends.results, shared with the native backend, so that a step
run through the launcher and the same step run natively give the same results. Every result the TAO executor
returns carries the masked command line and the step's log.
"""

from ..results import (EXPORT_SIDECARS, WEIGHT_SUFFIXES, DatasetConvertResult, EngineResult, EvaluateResult,
                       ExportResult, InferenceResult, PruneResult, StepResult, TrainResult, checkpoints,
                       dataset_records, evaluate_values, existing, failures, last_kpi, param_count, parse_ap_table,
                       parse_pruning_ratio, read_status, read_training_csv, result_dict, training_csv)

__all__ = [
    "EXPORT_SIDECARS", "WEIGHT_SUFFIXES", "DatasetConvertResult", "EngineResult", "EvaluateResult", "ExportResult",
    "InferenceResult", "PruneResult", "StepResult", "TrainResult", "checkpoints", "dataset_records",
    "evaluate_values", "existing", "failures", "last_kpi", "param_count", "parse_ap_table", "parse_pruning_ratio",
    "read_status", "read_training_csv", "result_dict", "training_csv",
]
