"""Typed results of the executor's steps (taoflow.contract.executor), the same whichever backend ran.

Fields hold host paths; `command`/`log` are set only when a backend ran a command line (always masked: see
taoflow.backends.tao.masking). What counts as a checkpoint: `weights/*.tlt` (TAO 3/4, encrypted), `*.hdf5` (TAO 5)
and `*.pth` (native), ordered by the `_epoch_NNN` in the name.
"""

import csv
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath

WEIGHT_SUFFIXES = (".tlt", ".hdf5", ".pth")
_EPOCH = re.compile(r"_epoch_(\d+)\.")


@dataclass
class StepResult:
    command: str = None  # masked command line, when the step ran one
    log: Path = None  # the step's log (masked), when there is one
    status: list = field(default_factory=list)  # status.json records written by this run


@dataclass
class DatasetConvertResult(StepResult):
    records: list = field(default_factory=list)  # TFRecord shards
    index_files: list = field(default_factory=list)  # DALI idx- files
    warning_file: Path = None  # <prefix>_warning.json (rejected boxes), when written


@dataclass
class TrainResult(StepResult):
    results_dir: Path = None
    checkpoints: list = field(default_factory=list)  # weights/*.tlt|*.hdf5|*.pth, by epoch
    history: list = field(default_factory=list)  # rows of the training CSV: {"epoch": 1, "loss": ..., "mAP": ...}
    csv_file: Path = None

    @property
    def last_checkpoint(self):
        return self.checkpoints[-1] if self.checkpoints else None


@dataclass
class EvaluateResult(StepResult):
    ap: dict = field(default_factory=dict)  # class -> AP
    map: float = None

    def metrics(self):
        """{"AP_<class>": ..., "mAP": ...}: the figures stages, gates and passports keep."""
        return {**{f"AP_{name}": value for name, value in self.ap.items()}, "mAP": self.map}


@dataclass
class PruneResult(StepResult):
    output: Path = None  # the pruned model, where the task actually wrote it
    ratio: float = None  # pruned / original parameter count
    param_count: int = None  # parameters after pruning, when the task reported it


@dataclass
class InferenceResult(StepResult):
    labels_dir: Path = None  # KITTI label per image (16 fields, with confidence)
    images_dir: Path = None  # annotated images


@dataclass
class ExportResult(StepResult):
    model_file: Path = None  # .onnx (TAO 5, native) or .etlt (TAO 3/4)
    model_json: Path = None  # the model package sidecar (native; docs/model-package.md)
    labels: Path = None  # labels.txt (--gen_ds_config)
    nvinfer_config: Path = None  # nvinfer_config.txt (--gen_ds_config)
    cal_cache: Path = None  # TensorRT INT8 calibration cache (cal.bin)
    cal_data_file: Path = None  # preprocessed INT8 calibration batches (native: cal_data.npy)
    engine: Path = None
    files: dict = field(default_factory=dict)  # every file the export wrote, by kind: "onnx", "etlt", "model_json", ...


@dataclass
class EngineResult(StepResult):
    engine: Path = None
    cal_cache: Path = None


def result_dict(result):
    """A result as plain JSON-able data (paths as strings, NaN as None), e.g. for a Prefect result or a report.
    Mask it for secrets with taoflow.backends.tao.masking.mask_data."""
    def plain(value):
        if isinstance(value, PurePath):
            return str(value)
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    data = {f.name: plain(getattr(result, f.name)) for f in dataclasses.fields(result)}
    data["type"] = type(result).__name__
    return data


# -- what a results directory of the TAO contract holds (tao-ssd-contract.md §5), whichever backend wrote it --
def read_status(path, offset=0):
    """status.json records (JSON lines) from byte `offset` on; a torn last line (killed writer) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        f.seek(offset if offset <= path.stat().st_size else 0)  # rewritten rather than appended: read it all
        data = f.read().decode("utf-8", "replace")
    records = []
    for line in data.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def checkpoints(results_dir):
    """weights/*.tlt|*.hdf5|*.pth under results_dir, ordered by the epoch in TAO's name."""
    weights = Path(results_dir) / "weights"
    if not weights.is_dir():
        return []
    found = [p for p in weights.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]

    return sorted(found, key=lambda p: (epoch_of(p), p.name))


def epoch_of(checkpoint):
    """The epoch in a checkpoint's name (TAO's `<arch>_epoch_<NNN>.<suffix>`), or -1."""
    m = _EPOCH.search(Path(checkpoint).name)
    return int(m.group(1)) if m else -1


def training_csv(results_dir):
    """TAO's Keras CSVLogger file (ssd_training_log_<arch>.csv), or None."""
    found = sorted(Path(results_dir).glob("*_training_log_*.csv"))
    return found[0] if found else None


def read_training_csv(path):
    """Rows as dicts: `epoch` an int, every other column a float (NaN kept; empty -> None)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for key, value in row.items():
                value = (value or "").strip()
                if key == "epoch":
                    parsed[key] = int(float(value))
                elif value == "":
                    parsed[key] = None
                else:
                    try:
                        parsed[key] = float(value)
                    except ValueError:
                        parsed[key] = value
            rows.append(parsed)
    return rows


def train_result(results_dir):
    """From a training results directory: weights/*, the training CSV and status.json."""
    results_dir = Path(results_dir)
    csv_file = training_csv(results_dir)
    return TrainResult(status=read_status(results_dir / "status.json"), results_dir=results_dir,
                       checkpoints=checkpoints(results_dir), history=read_training_csv(csv_file) if csv_file else [],
                       csv_file=csv_file)
