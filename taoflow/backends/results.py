"""The parsers of what a TAO-contract `ssd` task prints and writes, and adapters that build the contract's typed
results (taoflow.contract.results, re-exported here) from the native backend's outputs.

The TAO executor (taoflow.backends.tao) parses TAO's output into those results; the native backend writes the same
files (the contract is TAO's, tao-ssd-contract.md §5), and its executor builds the same results with the adapters at
the end of this module, so the pipeline cannot tell the executors apart.
"""

import math
import re
from pathlib import Path

from ..contract.results import (WEIGHT_SUFFIXES, DatasetConvertResult, EngineResult, EvaluateResult,  # noqa: F401
                                ExportResult, InferenceResult, PruneResult, StepResult, TrainResult, checkpoints,
                                read_status, read_training_csv, result_dict, train_result, training_csv)

_PRUNING_RATIO = re.compile(r"Pruning ratio \(pruned model / original model\):\s*([-+0-9.eE]+|nan)")
_STARS = re.compile(r"^\*{3,}\s*$")
# Files `ssd export` may write next to its model (TAO: --gen_ds_config, INT8; native: model.json, cal_data.npy).
EXPORT_SIDECARS = {"model_json": "model.json", "labels": "labels.txt", "nvinfer_config": "nvinfer_config.txt"}


# -- parsers of the TAO contract's files and output -------------------------------------------------------------
def failures(records):
    return [r for r in records if str(r.get("status", "")).upper() == "FAILURE"]


def last_kpi(records, key):
    """The kpi dict of the last status record whose kpi holds `key`, else None."""
    for record in reversed(list(records)):
        kpi = record.get("kpi")
        if isinstance(kpi, dict) and key in kpi:
            return kpi
    return None


def parse_ap_table(text):
    """(AP per class, mAP) from the last `***`-framed table TAO printed: `{cls:<14}{'AP':<6}{ap}` rows and one
    `{'':<14}{'mAP':<6}{map}` row. A class name of 14 or more characters runs straight into "AP"."""
    block, inside, current = None, False, []
    for line in (text or "").splitlines():
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


def evaluate_values(text, status=()):
    """(AP per class, mAP) of an evaluate run: the printed table (TAO rounds it to 3 digits), or the full-precision
    `kpi` of status.json (`AP_<class>`, `mAP`, as the native backend writes it) where that agrees with the table."""
    ap, mean = parse_ap_table(text)
    kpi = last_kpi(status, "mAP")
    if kpi is None:
        return ap, mean
    kpi_ap = {k[3:]: float(v) for k, v in kpi.items() if k.startswith("AP_") and _number(v)}
    if not _number(kpi["mAP"]):
        return ap, mean
    kpi_map = float(kpi["mAP"])
    if mean is not None and not (_close(kpi_map, mean) and set(kpi_ap) == set(ap)
                                 and all(_close(kpi_ap[c], ap[c]) for c in ap)):
        return ap, mean  # a kpi that does not describe the printed table: trust the table
    return kpi_ap, kpi_map


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _close(full, printed):
    """Whether `full` prints as `printed` at TAO's 3 (evaluate) or 5 (training) digits; NaN matches NaN."""
    if math.isnan(full) or math.isnan(printed):
        return math.isnan(full) and math.isnan(printed)
    return abs(full - printed) <= 5e-4 + 1e-9


def parse_pruning_ratio(text, status=()):
    """The ratio from TAO's log line, else from the status.json kpi TAO 5 writes."""
    found = _PRUNING_RATIO.findall(text or "")
    if found:
        return float(found[-1])
    kpi = last_kpi(status, "pruning_ratio")
    return float(kpi["pruning_ratio"]) if kpi else None


def param_count(status=()):
    kpi = last_kpi(status, "param_count")
    return int(kpi["param_count"]) if kpi else None


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


# -- adapters: the same results from a native run (files it wrote, its printed output, its return values) --------
def dataset_convert_result(output_prefix, results_dir=None):
    records, index, warning = dataset_records(output_prefix)
    status = read_status(Path(results_dir) / "status.json") if results_dir else []
    return DatasetConvertResult(status=status, records=records, index_files=index, warning_file=warning)


def evaluate_result(output=None, results_dir=None, metrics=None):
    """From `ssd evaluate`'s printed output and status.json (results_dir: -r, TAO's default the model's directory),
    or from the metrics dict of taoflow.backends.native.evaluate.evaluate_model (`AP_<class>`, `mAP`)."""
    status = read_status(Path(results_dir) / "status.json") if results_dir else []
    if metrics is not None:
        ap = {k[3:]: float(v) for k, v in metrics.items() if k.startswith("AP_")}
        return EvaluateResult(status=status, ap=ap, map=float(metrics["mAP"]))
    ap, mean = evaluate_values(output, status)
    return EvaluateResult(status=status, ap=ap, map=mean)


def prune_result(report=None, output=None, text=None, results_dir=None):
    """From the report of taoflow.backends.native.prune.prune_checkpoint, or from the pruned file plus the printed
    output / status.json kpi."""
    status = read_status(Path(results_dir) / "status.json") if results_dir else []
    if report is not None:
        return PruneResult(status=status, output=Path(report["output"]), ratio=float(report["ratio"]),
                           param_count=report.get("params_after"))
    return PruneResult(status=status, output=existing(output), ratio=parse_pruning_ratio(text, status),
                       param_count=param_count(status))


def inference_result(results_dir=None, labels_dir=None, images_dir=None):
    """TAO 5 layout (`results_dir`/labels, /images_annotated) or TAO 3/4's two directories."""
    if results_dir is not None:
        labels_dir = labels_dir or Path(results_dir) / "labels"
        images_dir = images_dir or Path(results_dir) / "images_annotated"
    status = read_status(Path(results_dir) / "status.json") if results_dir else []
    return InferenceResult(status=status, labels_dir=existing(labels_dir), images_dir=existing(images_dir))


def export_result(model_file=None, written=None, cal_cache=None):
    """From the exported model file and what lies next to it, or from the dict returned by
    taoflow.backends.native.export.export_onnx ({"onnx", "model_json", "labels", "nvinfer_config", ...})."""
    written = dict(written or {})
    model_file = Path(written.get("onnx") or model_file)
    found = {name: existing(written.get(name) or model_file.parent / file) for name, file in EXPORT_SIDECARS.items()}
    files = {model_file.suffix.lstrip("."): model_file} if existing(model_file) else {}
    files.update({name: path for name, path in found.items() if path is not None})
    files.update({kind: Path(path) for kind, path in written.items()})
    return ExportResult(model_file=existing(model_file), **found, cal_cache=existing(cal_cache),
                        cal_data_file=existing(written.get("cal_data_file")), files=files)
