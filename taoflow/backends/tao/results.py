"""What TAO wrote, found on the host and parsed into typed results (tao-ssd-contract.md §5).

Every result carries the masked command line and the step's log. Parsers are plain functions over files and text
so that the native backend's outputs, which follow the same contract, parse identically.
"""

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

WEIGHT_SUFFIXES = (".tlt", ".hdf5", ".pth")
_EPOCH = re.compile(r"_epoch_(\d+)\.")
_PRUNING_RATIO = re.compile(r"Pruning ratio \(pruned model / original model\):\s*([-+0-9.eE]+|nan)")
_STARS = re.compile(r"^\*{3,}\s*$")


@dataclass
class StepResult:
    command: str  # masked command line
    log: Path  # the step's launcher log (masked)
    status: list = field(default_factory=list)  # status.json records written by this run


@dataclass
class DatasetConvertResult(StepResult):
    records: list = field(default_factory=list)  # TFRecord shards
    index_files: list = field(default_factory=list)  # DALI idx- files
    warning_file: Path = None  # <prefix>_warning.json (rejected boxes), when written


@dataclass
class TrainResult(StepResult):
    results_dir: Path = None
    checkpoints: list = field(default_factory=list)  # weights/*, by epoch
    training_log: list = field(default_factory=list)  # rows of the training CSV
    csv_file: Path = None

    @property
    def last_checkpoint(self):
        return self.checkpoints[-1] if self.checkpoints else None


@dataclass
class EvaluateResult(StepResult):
    ap: dict = field(default_factory=dict)  # class -> AP
    map: float = None


@dataclass
class PruneResult(StepResult):
    model: Path = None
    pruning_ratio: float = None  # pruned / original parameter count


@dataclass
class InferenceResult(StepResult):
    labels_dir: Path = None  # KITTI label per image (16 fields, with confidence)
    images_dir: Path = None  # annotated images


@dataclass
class ExportResult(StepResult):
    model: Path = None  # .onnx (TAO 5) or .etlt (TAO 3/4)
    labels: Path = None  # labels.txt (--gen_ds_config)
    nvinfer_config: Path = None
    cal_cache: Path = None  # cal.bin (INT8)
    engine: Path = None


@dataclass
class EngineResult(StepResult):
    engine: Path = None
    cal_cache: Path = None


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


def failures(records):
    return [r for r in records if str(r.get("status", "")).upper() == "FAILURE"]


def checkpoints(results_dir):
    """weights/*.tlt|*.hdf5|*.pth under results_dir, ordered by the epoch in TAO's name."""
    weights = Path(results_dir) / "weights"
    if not weights.is_dir():
        return []
    found = [p for p in weights.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]

    def order(p):
        m = _EPOCH.search(p.name)
        return (int(m.group(1)) if m else -1, p.name)
    return sorted(found, key=order)


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


def parse_ap_table(text):
    """(AP per class, mAP) from the last `***`-framed table TAO printed: `{cls:<14}{'AP':<6}{ap}` rows and one
    `{'':<14}{'mAP':<6}{map}` row. A class name of 14 or more characters runs straight into "AP"."""
    block, inside, current = None, False, []
    for line in text.splitlines():
        if _STARS.match(line):
            if inside and current:
                block = current
            inside, current = True, []
        elif inside:
            current.append(line)
    ap, mean = {}, None
    for line in block or ():
        parts = line.rstrip().rsplit(None, 1)
        if len(parts) != 2:
            continue
        head, value = parts[0].rstrip(), parts[1]
        try:
            number = float(value)
        except ValueError:
            continue
        if head.strip() == "mAP":
            mean = number
        elif head.endswith("AP") and head[:-2].strip():
            ap[head[:-2].rstrip()] = number
    if mean is None and ap:
        mean = sum(ap.values()) / len(ap)
    return ap, mean


def parse_pruning_ratio(text, status=()):
    """The ratio from TAO's log line, else from the status.json kpi TAO 5 writes."""
    found = _PRUNING_RATIO.findall(text or "")
    if found:
        return float(found[-1])
    for record in reversed(list(status)):
        kpi = record.get("kpi") or {}
        if "pruning_ratio" in kpi:
            return float(kpi["pruning_ratio"])
    return None


def dataset_records(output_prefix):
    """(records, idx files, warning file) dataset_convert wrote for `output_prefix`."""
    prefix = Path(output_prefix)
    parent = prefix.parent
    if not parent.is_dir():
        return [], [], None
    records = sorted(p for p in parent.glob(prefix.name + "*")
                     if p.is_file() and not p.name.endswith("_warning.json"))
    index = sorted(parent.glob("idx-" + prefix.name + "*"))
    warning = parent / (prefix.name + "_warning.json")
    return records, index, warning if warning.is_file() else None


def existing(path):
    return Path(path) if path is not None and Path(path).exists() else None

