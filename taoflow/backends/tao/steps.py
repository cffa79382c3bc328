"""Typed requests for each TAO SSD step, in host paths. `commands.py` turns them into launcher argv.

Optional fields left at None are not passed, so TAO applies its own defaults (listed per field from the contract,
tao-ssd-contract.md §5), except where TAO's default would write into the container's unmounted working directory
(INT8 calibration caches, the engine file): those default to a path next to the step's outputs. `data_root`
resolves relative paths inside the spec (taoflow's shipped specs name paths relative to the data root).
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass
class DatasetConvertRequest:
    spec: Path  # -d: dataset_export spec
    output_prefix: Path  # -o: TFRecords path prefix
    results_dir: Path = None  # -r: status.json
    validation_fold: int = None  # -f
    class_names_file: Path = None  # -c: only used when the spec's target_class_mapping is empty
    verbose: bool = False  # -v
    data_root: Path = None
    task = "dataset_convert"


@dataclass
class TrainRequest:
    spec: Path  # -e
    results_dir: Path  # -r
    resume_model: Path = None  # -m: pretrained weights, pruned model or checkpoint
    initial_epoch: int = None  # --initial_epoch (TAO: 1; > 1 resumes with optimizer state)
    arch: str = None  # --arch ssd|dssd (checked against the spec by TAO)
    use_multiprocessing: bool = False
    gpus: int = None  # --gpus (entrypoint wrapper; multi-GPU is for train only)
    gpu_index: tuple = ()  # --gpu_index
    use_amp: bool = False  # --use_amp
    log_file: Path = None  # --log_file
    data_root: Path = None
    task = "train"


@dataclass
class EvaluateRequest:
    model: Path  # -m
    spec: Path  # -e
    results_dir: Path = None  # -r (TAO: the model's directory)
    gpu_index: tuple = ()
    log_file: Path = None
    data_root: Path = None
    task = "evaluate"


@dataclass
class PruneRequest:
    model: Path  # -m
    output: Path  # -o (TAO 5 appends .hdf5 unless the name ends with it)
    results_dir: Path = None  # --results_dir
    normalizer: str = None  # -n max|L2 (TAO: max)
    equalization_criterion: str = None  # -eq arithmetic_mean|geometric_mean|union|intersection (TAO: union)
    pruning_granularity: int = None  # -pg (TAO: 8)
    pruning_threshold: float = None  # -pth (TAO: 0.1)
    min_num_filters: int = None  # -nf (TAO: 16)
    excluded_layers: tuple = ()  # -el
    verbose: bool = False
    gpu_index: tuple = ()
    log_file: Path = None
    task = "prune"


@dataclass
class InferenceRequest:
    model: Path  # -m
    spec: Path  # -e
    image_dir: Path  # -i: a directory or one image
    results_dir: Path  # TAO 5: -r (images_annotated/, labels/); TAO 3/4: -o and -l inside it, same layout
    threshold: float = None  # -t (TAO: 0.3)
    gpu_index: tuple = ()
    log_file: Path = None
    data_root: Path = None
    task = "inference"


@dataclass
class ExportRequest:
    model: Path  # -m
    output: Path  # -o: .onnx (TAO 5) or .etlt (TAO 3/4)
    spec: Path = None  # -e
    results_dir: Path = None  # --results_dir
    gen_ds_config: bool = False  # labels.txt + nvinfer_config.txt next to the output
    data_type: str = None  # --data_type fp32|fp16|int8
    cal_image_dir: Path = None
    cal_data_file: Path = None
    cal_cache_file: Path = None  # --cal_cache_file (with int8: <output dir>/cal.bin; TAO: ./cal.bin)
    cal_json_file: Path = None  # TAO 5: QAT scales
    batches: int = None
    batch_size: int = None
    max_batch_size: int = None
    static_batch_size: int = None  # TAO 5 (TAO: -1, dynamic)
    target_opset: int = None  # TAO 5 (TAO: 12)
    engine_file: Path = None
    verbose: bool = False
    replace: bool = False  # TAO 5 refuses an existing output; replace removes it first
    gpu_index: tuple = ()
    log_file: Path = None
    data_root: Path = None
    task = "export"


@dataclass
class GenTrtEngineRequest:
    """TAO 5's `tao deploy ssd gen_trt_engine`."""

    model: Path  # -m: .onnx (or .etlt/.uff)
    spec: Path  # -e
    results_dir: Path  # -r
    engine_file: Path = None  # --engine_file (default <results_dir>/<model stem>.engine)
    data_type: str = None  # fp32|fp16|int8
    cal_image_dir: Path = None
    cal_data_file: Path = None
    cal_cache_file: Path = None  # with int8: <results_dir>/cal.bin
    cal_json_file: Path = None
    max_batch_size: int = None
    opt_batch_size: int = None
    min_batch_size: int = None
    batch_size: int = None
    batches: int = None
    max_workspace_size: int = None  # GB
    strict_type_constraints: bool = False  # -s
    force_ptq: bool = False
    verbose: bool = False
    data_root: Path = None
    task = "gen_trt_engine"


STEP_TYPES = (DatasetConvertRequest, TrainRequest, EvaluateRequest, PruneRequest, InferenceRequest, ExportRequest,
              GenTrtEngineRequest)

# Which request fields the launcher must see, and in which direction. Inputs must exist; outputs get their
# directory created on the host first so that it can be mounted and TAO finds it.
INPUT_FIELDS = ("model", "resume_model", "image_dir", "class_names_file", "cal_image_dir", "cal_data_file",
                "cal_json_file")
OUTPUT_DIR_FIELDS = ("results_dir",)
OUTPUT_FILE_FIELDS = ("output", "output_prefix", "cal_cache_file", "engine_file", "log_file")


def path_fields(request):
    """(field name, Path) for every path set on the request, spec included."""
    out = []
    for name in ("spec", *INPUT_FIELDS, *OUTPUT_DIR_FIELDS, *OUTPUT_FILE_FIELDS):
        value = getattr(request, name, None)
        if value is not None:
            out.append((name, Path(value)))
    return out

