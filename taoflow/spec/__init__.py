"""TAO spec files as data: protobuf schemas, loading with file:line errors, TAO's defaults, rendering."""

from .dataset_export import DatasetExportSpec, load_dataset_export, parse_dataset_export_text
from .experiment import ExperimentSpec, load_experiment, parse_experiment_text
from .render import render, rewrite_paths

__all__ = [
    "DatasetExportSpec", "ExperimentSpec", "load_dataset_export", "load_experiment", "parse_dataset_export_text",
    "parse_experiment_text", "render", "rewrite_paths",
]
