"""Launcher command lines for every SSD step, for both command surfaces (tao-ssd-contract.md §5, §6).

A `TaoCommand` keeps the task's arguments as a list (container paths, the real key). It never prints them raw:
`display()` masks the key, and `launcher_args()` is what the `tao` process receives, with the key replaced by a
reference to an environment variable.

Why the launcher needs its arguments escaped: nvidia-tao (0.1.x for TAO 3 up to 6.x) joins the task arguments with
spaces and runs the result through a shell (`subprocess.check_call(cmd, shell=True)`), inside
`bash -c '... docker exec <id> ...'` when docker is used. So each argument is shell-escaped with backslashes
(which survive the outer single quotes), and single quotes and newlines, which cannot cross them, are refused.

Why an exit marker: the launcher discards the task's exit status (it exits non-zero only when CalledProcessError
carries captured output, which check_call never sets), so `tao` exits 0 when the task fails. A trailing
`; echo <marker>=$?` runs in that same shell right after the task (after `docker exec` returns the task's status),
which gives the real exit code back in the output stream.

Output names: `-o` is passed as the caller gave it. TAO 5's prune appends `.hdf5` and its export `.onnx` when the
name lacks them, and the native backend (which follows TAO's argv, so it can stand behind the launcher) appends
`.pth` to a pruned model; `outputs` lists every name the task may have used, and the executor returns the one the
run actually wrote (a file that is new or changed after the launcher returns), never a stale file of an earlier run.
"""

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import TaoflowError
from .launcher import TAO4, TAO5
from .masking import mask_secrets
from .steps import (DatasetConvertRequest, EvaluateRequest, ExportRequest, GenTrtEngineRequest, InferenceRequest,
                    PruneRequest, TrainRequest)

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:=,@%+-")
# Steps whose TAO 3/4 models are encrypted .tlt/.etlt files: TAO needs -k to read or write them.
_KEY_REQUIRED_TAO4 = ("train", "evaluate", "prune", "inference", "export")


@dataclass
class TaoCommand:
    launcher: str
    prefix: tuple  # ("model", "ssd", "train") / ("ssd", "train") / ("deploy", "ssd", "gen_trt_engine")
    args: list  # the task's own arguments, container-side paths, the real key
    generation: str
    key: str = None
    key_index: int = None  # position of the key's value in args
    outputs: dict = field(default_factory=dict)  # name -> host path TAO will write, or a tuple of candidates

    @property
    def task(self):
        return self.prefix[-1]

    @property
    def argv(self):
        """The full command as TAO sees it. Holds the key: never log it; use display()."""
        return [self.launcher, *self.prefix, *self.args]

    @property
    def task_argv(self):
        """What the launcher runs: `ssd <task> <args>` in the container (or on PATH with TAO_DOCKER_DISABLE=1)."""
        return [*self.prefix[-2:], *self.args]

    def display(self, secrets=()):
        return mask_secrets(shlex.join(self.argv), [self.key, *secrets])

    def launcher_args(self, key_env, exit_marker):
        """Arguments for the `tao` process: escaped for the launcher's shell, key as "$key_env", exit marker last."""
        words = []
        for i, arg in enumerate(self.args):
            words.append(f'"${key_env}"' if i == self.key_index else shell_word(arg))
        return [*self.prefix, *words, ";", "echo", f"{exit_marker}=$?"]


def shell_word(arg):
    """`arg` escaped for one pass of a POSIX shell, using only backslashes (safe inside bash -c '...')."""
    arg = str(arg)
    if "'" in arg or "\n" in arg or "\r" in arg or "\0" in arg:
        raise TaoflowError(f"argument {arg!r} contains a quote or newline, which the TAO launcher cannot pass "
                           "through its shell; rename the file or directory")
    if arg == "":
        return '""'
    return "".join(c if c in _SAFE or not c.isascii() else "\\" + c for c in arg)


def build_command(request, generation, launcher="tao", to_container=None, key=None):
    """The TaoCommand running `request` on a launcher of `generation` (TAO4 or TAO5).

    `to_container` maps a host path to the path TAO sees (identity when None); `key` is the model key.
    """
    if generation not in (TAO4, TAO5):
        raise TaoflowError(f"unknown TAO generation {generation!r}")
    c = _Args(to_container or (lambda p: str(p)), key, generation, request.task)
    builder = _BUILDERS.get(type(request))
    if builder is None:
        raise TaoflowError(f"not a TAO step request: {type(request).__name__}")
    builder(c, request)
    if request.task == "gen_trt_engine":
        if generation != TAO5:
            raise TaoflowError("gen_trt_engine is a TAO 5 `tao deploy` task; TAO 3/4 exports .etlt, which "
                               "tao-converter turns into an engine on the device")
        prefix = ("deploy", "ssd", "gen_trt_engine")
    else:
        prefix = ("model", "ssd", request.task) if generation == TAO5 else ("ssd", request.task)
    return TaoCommand(launcher=str(launcher), prefix=prefix, args=c.args, generation=generation, key=key,
                      key_index=c.key_index, outputs=c.outputs)


class _Args:
    """Accumulates one task's arguments; None/False values are left out so TAO applies its defaults."""

    def __init__(self, to_container, key, generation, task):
        self.to_container = to_container
        self.key = key
        self.generation = generation
        self.task = task
        self.args = []
        self.key_index = None
        self.outputs = {}

    def path(self, flag, value):
        if value is not None:
            self.args += [flag, str(self.to_container(Path(value)))]

    def value(self, flag, value):
        if value is not None:
            self.args += [flag, str(value)]

    def flag(self, flag, on):
        if on:
            self.args.append(flag)

    def choice(self, flag, value, choices):
        if value is not None and value not in choices:
            raise TaoflowError(f"{self.task}: {flag} must be one of {', '.join(choices)}, got {value!r}")
        self.value(flag, value)

    def key_arg(self):
        if self.key:
            self.args.append("-k")
            self.key_index = len(self.args)
            self.args.append(self.key)
        elif self.generation == TAO4 and self.task in _KEY_REQUIRED_TAO4:
            raise TaoflowError(f"TAO 3/4 `{self.task}` needs the model key (-k) that encrypts its .tlt/.etlt "
                               "models; set $TAO_MODEL_KEY or pass key= to the TAO executor")

    def tao5_only(self, request, *names):
        if self.generation == TAO5:
            return
        for name in names:
            if getattr(request, name) not in (None, False):
                raise TaoflowError(f"{self.task}: {name} is a TAO 5 option; this launcher drives TAO 3/4")

    def entrypoint(self, request, multi_gpu=False):
        """Options of TAO's entrypoint wrapper, which every task accepts (only train may use several GPUs)."""
        if multi_gpu:
            self.value("--gpus", request.gpus)
            self.flag("--use_amp", request.use_amp)
        if request.gpu_index:
            self.args += ["--gpu_index", *(str(i) for i in request.gpu_index)]
        self.path("--log_file", request.log_file)


def _dataset_convert(c, r: DatasetConvertRequest):
    c.path("-d", r.spec)
    c.path("-o", r.output_prefix)
    c.value("-f", r.validation_fold)
    c.flag("-v", r.verbose)
    c.path("-r", r.results_dir)
    c.path("-c", r.class_names_file)


def _train(c, r: TrainRequest):
    c.path("-e", r.spec)
    c.path("-r", r.results_dir)
    c.key_arg()
    c.path("-m", r.resume_model)
    c.value("--initial_epoch", r.initial_epoch)
    c.choice("--arch", r.arch, ("ssd", "dssd"))
    c.flag("--use_multiprocessing", r.use_multiprocessing)
    c.entrypoint(r, multi_gpu=True)


def _evaluate(c, r: EvaluateRequest):
    c.path("-m", r.model)
    c.key_arg()
    c.path("-e", r.spec)
    c.path("-r", r.results_dir)
    c.entrypoint(r)


def _prune(c, r: PruneRequest):
    output = Path(r.output)
    c.path("-m", r.model)
    c.path("-o", output)  # as asked: the task decides the suffix (see output_candidates)
    c.path("--results_dir", r.results_dir)
    c.key_arg()
    c.choice("-n", r.normalizer, ("max", "L2"))
    c.choice("-eq", r.equalization_criterion, ("arithmetic_mean", "geometric_mean", "union", "intersection"))
    c.value("-pg", r.pruning_granularity)
    c.value("-pth", r.pruning_threshold)
    c.value("-nf", r.min_num_filters)
    if r.excluded_layers:
        c.args += ["-el", *r.excluded_layers]
    c.flag("-v", r.verbose)
    c.entrypoint(r)
    c.outputs["model"] = output_candidates(output, ".hdf5" if c.generation == TAO5 else None, ".pth")


def _inference(c, r: InferenceRequest):
    results = Path(r.results_dir)
    if c.generation == TAO5:
        c.path("-m", r.model)
        c.path("-i", r.image_dir)
        c.key_arg()
        c.path("-e", r.spec)
        c.value("-t", r.threshold)
        c.path("-r", results)
    else:  # TAO 3/4 takes the two output directories separately; keep TAO 5's layout under results_dir
        c.path("-i", r.image_dir)
        c.path("-o", results / "images_annotated")
        c.path("-e", r.spec)
        c.path("-m", r.model)
        c.path("-l", results / "labels")
        c.key_arg()
        c.value("-t", r.threshold)
    c.entrypoint(r)
    c.outputs.update(images_dir=results / "images_annotated", labels_dir=results / "labels")


def _export(c, r: ExportRequest):
    suffix = ".onnx" if c.generation == TAO5 else ".etlt"
    if Path(r.output).suffix != suffix:
        what = "TAO 5 exports ONNX" if c.generation == TAO5 else "TAO 3/4 exports encrypted UFF"
        raise TaoflowError(f"export: {what}; name the output *{suffix} (got {r.output})")
    c.tao5_only(r, "cal_json_file", "static_batch_size", "target_opset")
    cal_cache = _cal_cache(r, Path(r.output).parent)
    c.path("-m", r.model)
    c.key_arg()
    c.path("-o", r.output)
    c.path("-e", r.spec)
    c.flag("--gen_ds_config", r.gen_ds_config)
    c.path("--cal_json_file", r.cal_json_file)
    c.value("--static_batch_size", r.static_batch_size)
    c.value("--target_opset", r.target_opset)
    c.path("--results_dir", r.results_dir)
    c.flag("-v", r.verbose)
    c.choice("--data_type", r.data_type, ("fp32", "fp16", "int8"))
    c.path("--cal_image_dir", r.cal_image_dir)
    c.path("--cal_data_file", r.cal_data_file)
    c.path("--cal_cache_file", cal_cache)
    c.value("--batches", r.batches)
    c.value("--batch_size", r.batch_size)
    c.value("--max_batch_size", r.max_batch_size)
    c.path("--engine_file", r.engine_file)
    c.entrypoint(r)
    c.outputs.update(model=output_candidates(r.output, ".onnx"), cal_cache=cal_cache,
                     engine=r.engine_file and Path(r.engine_file))


def output_candidates(output, *forced):
    """Where a task asked to write `output` may put it: the name as given, or with a suffix the task appends when
    the name lacks it (TAO 5 prune: .hdf5; TAO 5 export: .onnx; the native backend: .pth for prune, .onnx for
    export). The executor reports the candidate the run actually wrote."""
    output = Path(output)
    found = [output]
    for suffix in forced:
        if suffix and output.suffix != suffix:
            found.append(output.with_name(output.name + suffix))
    return tuple(found)


def _cal_cache(r, default_dir):
    """INT8 calibration cache path. TAO's default is ./cal.bin in the container's working directory, which is not
    mounted, so the cache would vanish with the container: put it next to the outputs instead."""
    if r.cal_cache_file is not None:
        return Path(r.cal_cache_file)
    return default_dir / "cal.bin" if r.data_type == "int8" else None


def _gen_trt_engine(c, r: GenTrtEngineRequest):
    # Always name the engine: where TAO would put it otherwise is not part of the contract.
    engine = Path(r.engine_file) if r.engine_file else Path(r.results_dir) / (Path(r.model).stem + ".engine")
    cal_cache = _cal_cache(r, Path(r.results_dir))
    c.path("-m", r.model)
    c.path("-e", r.spec)
    c.path("-r", r.results_dir)
    c.key_arg()
    c.choice("--data_type", r.data_type, ("fp32", "fp16", "int8"))
    c.path("--engine_file", engine)
    c.path("--cal_image_dir", r.cal_image_dir)
    c.path("--cal_data_file", r.cal_data_file)
    c.path("--cal_cache_file", cal_cache)
    c.path("--cal_json_file", r.cal_json_file)
    c.value("--max_batch_size", r.max_batch_size)
    c.value("--opt_batch_size", r.opt_batch_size)
    c.value("--min_batch_size", r.min_batch_size)
    c.value("--batch_size", r.batch_size)
    c.value("--batches", r.batches)
    c.value("--max_workspace_size", r.max_workspace_size)
    c.flag("-s", r.strict_type_constraints)
    c.flag("--force_ptq", r.force_ptq)
    c.flag("-v", r.verbose)
    c.outputs.update(engine=engine, cal_cache=cal_cache)


_BUILDERS = {
    DatasetConvertRequest: _dataset_convert, TrainRequest: _train, EvaluateRequest: _evaluate,
    PruneRequest: _prune, InferenceRequest: _inference, ExportRequest: _export, GenTrtEngineRequest: _gen_trt_engine,
}
