"""The TAO executor: run one SSD step through the real `tao` launcher and return a typed result.

Per step it: checks the machine once (preflight), makes the step's paths visible in the container (mounts),
renders a container-side copy of the spec, builds the command for the launcher's generation, writes the step's
mounts file and points $LAUNCHER_MOUNTS at it, runs the launcher with its output streamed (masked) into the step
directory, turns any failure into a TaoRunError with the log's tail, and parses what TAO wrote into the typed
results shared with the native backend (taoflow.backends.results).

Outputs are what the run actually wrote: the files a step may produce (every name TAO or the native backend may
give a pruned or exported model, export's sidecars, calibration files) are stat'ed before the launcher starts, and a
result names only files that are new or changed afterwards, so a stale file of an earlier run is never reported.
status.json records are those appended by this run (all of them when the task rewrote the file).

Run directory layout (one directory per launcher call):
    <run_dir>/tao/<NN>-<task>/command.txt   masked command line
                              mounts.json   the launcher mounts file as sent, Envs values masked (the file the
                                            launcher reads is private, outside the run directory, and deleted
                                            after the step: nothing secret is ever written into a run or the store)
                              spec.txt      the spec as TAO sees it (container paths)
                              launcher.log  launcher + task output, masked
"""

import dataclasses
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ...errors import OutputExistsError, TaoflowError
from . import results as R
from .commands import build_command, output_candidates
from .launcher import TAO5, check_supported, find_launcher, probe_launcher
from .masking import MASK, mask_data, resolve_key, secret_env_values
from .mounts import (MOUNTS_ENV, clearml_envs, docker_options, mounts_document, private_mounts_file,
                     recorded_document, write_mounts_file)
from .paths import ContainerSpec, PathMap, mount_dir
from .preflight import docker_disabled, run_preflight
from .runner import TaoRunError, run_launcher
from .steps import INPUT_FIELDS, OUTPUT_DIR_FIELDS, OUTPUT_FILE_FIELDS, STEP_TYPES, path_fields

# The launcher's shell expands this variable into the `-k` argument, so the key is not in the argv of the `tao`
# process nor in the launcher's debug log of the command. (The task's own argv still carries it: TAO reads it there.)
KEY_VAR = "TAOFLOW_TAO_KEY"


@dataclass
class TaoConfig:
    launcher: str = None  # path of `tao`; default $TAOFLOW_TAO_LAUNCHER, else `tao` on PATH
    generation: str = None  # "tao4" (TAO 3.x/4.x) or "tao5" (TAO 5+); default: from the launcher's config
    key: object = None  # model key: str, Prefect Secret block, SecretStr or callable; default $TAO_MODEL_KEY
    mounts: tuple = ()  # (host dir, container dir) pairs, as in ~/.tao_mounts.json; others are mounted mirrored
    docker_options: dict = None  # DockerOptions for the launcher (`user` defaults to your uid:gid)
    docker_disabled: bool = None  # TAO_DOCKER_DISABLE=1 (run TAO's wheels directly); default: the environment
    env: dict = None  # extra environment variables for the launcher
    preflight: bool = True  # check docker, login and GPU runtime before the first step


class TaoExecutor:
    def __init__(self, run_dir, config=None):
        self.run_dir = Path(run_dir)
        self.config = config or TaoConfig()
        self._info = {}

    # -- environment ------------------------------------------------------------------------------------------
    def environ(self):
        env = dict(os.environ)
        env.update(self.config.env or {})
        if self.config.docker_disabled is not None:
            env["TAO_DOCKER_DISABLE"] = "1" if self.config.docker_disabled else "0"
        return env

    def launcher_info(self, group_task=None):
        """The launcher (found, inspected, checked once per task group); raises TaoPreflightError."""
        if group_task not in self._info:
            env = self.environ()
            if self.config.preflight:
                info = run_preflight(env, self.config.launcher, self.config.generation, group_task).launcher
            else:
                docker_disabled(env)
                info = probe_launcher(find_launcher(self.config.launcher, env), env, self.config.generation)
                check_supported(info, group_task)
            self._info[group_task] = info
        return self._info[group_task]

    def _group_task(self, request):
        return ("deploy", "ssd") if request.task == "gen_trt_engine" else None

    # -- one step ---------------------------------------------------------------------------------------------
    def run(self, request, on_line=None):
        """Run `request` (a steps.*Request, host paths) and return its result; raise TaoRunError on failure."""
        if not isinstance(request, STEP_TYPES):
            raise TaoflowError(f"not a TAO step request: {type(request).__name__}")
        env = self.environ()
        info = self.launcher_info(self._group_task(request))
        disabled = docker_disabled(env)
        key = resolve_key(self.config.key, env)
        hidden = [key, *secret_env_values(env)]

        # Everything that can be refused is checked before the step directory is created.
        self._prepare_paths(request, info.generation)
        spec = None
        if getattr(request, "spec", None) is not None:
            spec = ContainerSpec(request.spec, request.task, getattr(request, "data_root", None))
        step_dir = self._next_step_dir(request.task)
        pathmap = PathMap(self.config.mounts, identity=disabled)
        # The run directory as a whole (step files, and usually the results), plus whatever the step names.
        needed = [self.run_dir, *(mount_dir(p) for name, p in path_fields(request) if name != "spec")]
        pathmap.need([d for d in needed if d is not None] + (spec.mount_dirs() if spec else []))
        if spec is not None:
            request = dataclasses.replace(request, spec=step_dir / "spec.txt")
        command = build_command(request, info.generation, info.path, pathmap.to_container, key)
        options = {} if disabled else docker_options(self.config.docker_options, info.docker_options)

        step_dir.mkdir()
        if spec is not None:
            spec.write(request.spec, pathmap)
        shown = command.display(hidden)
        (step_dir / "command.txt").write_text(shown + "\n", encoding="utf-8")
        document = mounts_document(pathmap, clearml_envs(env), options)
        write_mounts_file(step_dir / "mounts.json", recorded_document(document, MASK))
        if key:
            env[KEY_VAR] = key

        status_file = self._status_dir(request, info.generation)
        status_file = status_file / "status.json" if status_file is not None else None
        status_before = _read_bytes(status_file) if status_file is not None else None
        outputs = _Outputs(_watched(request, command))
        marker = f"TAOFLOW_EXIT_{secrets.token_hex(6)}"
        with private_mounts_file(document) as mounts_file:
            env[MOUNTS_ENV] = str(mounts_file)
            run = run_launcher([info.path, *command.launcher_args(KEY_VAR, marker)], env, step_dir / "launcher.log",
                               hidden, marker, header=f"$ {shown}", use_pty=not disabled, on_line=on_line,
                               cwd=step_dir)
        status = mask_data(status_since(status_file, status_before), hidden) if status_file is not None else []

        def fail(message):
            tail = [pathmap.translate_text(line) for line in run.tail]
            raise TaoRunError(f"TAO {request.task} failed: {message}", task=request.task,
                              task_exit_code=run.task_returncode, log=run.log, tail=tail)

        if run.returncode != 0:
            fail(f"the launcher exited with status {run.returncode}")
        if run.task_returncode is None:
            fail("the launcher did not run the task (does this launcher know `tao "
                 f"{' '.join(command.prefix)}`?)")
        if run.task_returncode != 0:
            fail(f"`{' '.join(command.task_argv[:2])}` exited with status {run.task_returncode}")
        failed = R.failures(status)
        if failed:
            fail("status.json records FAILURE: " + pathmap.translate_text(str(failed[-1].get("message", ""))))
        base = dict(command=shown, log=run.log, status=status)
        return _PARSERS[request.task](request, command, base, run, fail, outputs)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _next_step_dir(self, task):
        """<run_dir>/tao/<NN>-<task>, numbered after the existing ones (created by the caller)."""
        root = self.run_dir / "tao"
        root.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in root.iterdir() if (m := re.match(r"(\d+)-", p.name))]
        return root / f"{max(numbers, default=0) + 1:02d}-{task}"

    def _prepare_paths(self, request, generation):
        """Inputs must exist; output directories are created so that they can be mounted."""
        for name in INPUT_FIELDS + ("spec",):
            value = getattr(request, name, None)
            if value is not None and not Path(value).exists():
                raise TaoflowError(f"{request.task}: {name} not found: {value}")
        for name in OUTPUT_DIR_FIELDS:
            if getattr(request, name, None) is not None:
                Path(getattr(request, name)).mkdir(parents=True, exist_ok=True)
        for name in OUTPUT_FILE_FIELDS:
            if getattr(request, name, None) is not None:
                Path(getattr(request, name)).parent.mkdir(parents=True, exist_ok=True)
        if request.task == "export":
            present = [p for p in output_candidates(request.output, ".onnx") if p.exists()]
            if present and request.replace:
                for path in present:
                    path.unlink()
            elif present and generation == TAO5:  # TAO 5's export refuses to overwrite, after loading the model
                raise OutputExistsError(f"export output already exists: {present[0]} (pass replace=True)")

    @staticmethod
    def _status_dir(request, generation):
        if request.task == "evaluate" and request.results_dir is None:
            return Path(request.model).parent  # TAO's default results_dir for evaluate
        if request.task == "inference" and generation != TAO5:
            return None  # TAO 3/4 inference takes no results_dir
        value = getattr(request, "results_dir", None)
        return None if value is None else Path(value)


def _stat(path):
    """(inode, mtime_ns, size) of a file, or None when there is none."""
    try:
        st = os.stat(path)
    except (OSError, TypeError):
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size) if os.path.isfile(path) else None


def _watched(request, command):
    """Every file the step may write whose freshness decides what its result names."""
    paths = []
    for value in command.outputs.values():
        if value is None:
            continue
        paths += [Path(v) for v in value] if isinstance(value, tuple) else [Path(value)]
    if request.task == "export":
        for model in command.outputs["model"]:
            paths += [model.parent / name for name in R.EXPORT_SIDECARS.values()]
        paths += [p for p in (request.cal_data_file, Path(request.output).parent / "cal_data.npy") if p]
    return paths


def _read_bytes(path):
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def status_since(path, before):
    """The status.json records this run wrote, given the file's content `before` it (None: there was none): what
    was appended, or all of it when the task started the file afresh (TAO and the native backend both replace the
    file for a new run; the content no longer starts with what was there)."""
    data = _read_bytes(path)
    if data is None:
        return []
    offset = len(before) if before and data.startswith(before) else 0
    return R.read_status(path, offset)


class _Outputs:
    """The watched files' state before the launcher ran; `fresh` tells which ones this run wrote."""

    def __init__(self, paths):
        self.before = {Path(p): _stat(p) for p in paths}

    def fresh(self, path):
        if path is None:
            return None
        path = Path(path)
        now = _stat(path)
        return path if now is not None and now != self.before.get(path) else None

    def first_fresh(self, candidates):
        return next((p for p in map(self.fresh, candidates) if p is not None), None)


def _log_text(run):
    return run.log.read_text(encoding="utf-8")


def _dataset_convert(request, command, base, run, fail, outputs):
    records, index, warning = R.dataset_records(request.output_prefix)
    if not records:
        fail(f"no TFRecords were written for {request.output_prefix}")
    return R.DatasetConvertResult(**base, records=records, index_files=index, warning_file=warning)


def _train(request, command, base, run, fail, outputs):
    found = R.checkpoints(request.results_dir)
    if not found:
        fail(f"no checkpoint in {Path(request.results_dir) / 'weights'} (checkpoint_interval > num_epochs?)")
    csv_file = R.training_csv(request.results_dir)
    rows = R.read_training_csv(csv_file) if csv_file else []
    return R.TrainResult(**base, results_dir=Path(request.results_dir), checkpoints=found, history=rows,
                         csv_file=csv_file)


def _evaluate(request, command, base, run, fail, outputs):
    ap, mean = R.evaluate_values(_log_text(run), base["status"])
    if mean is None:
        fail("no AP/mAP table in TAO's output")
    return R.EvaluateResult(**base, ap=ap, map=mean)


def _prune(request, command, base, run, fail, outputs):
    candidates = command.outputs["model"]
    model = outputs.first_fresh(candidates)
    if model is None:
        fail(f"the pruned model was not written (looked for {', '.join(str(p) for p in candidates)})")
    ratio = R.parse_pruning_ratio(_log_text(run), base["status"])
    return R.PruneResult(**base, output=model, ratio=ratio, param_count=R.param_count(base["status"]))


def _inference(request, command, base, run, fail, outputs):
    labels, images = Path(command.outputs["labels_dir"]), Path(command.outputs["images_dir"])
    if not labels.is_dir():
        fail(f"no label directory {labels}")
    return R.InferenceResult(**base, labels_dir=labels, images_dir=R.existing(images))


def _export(request, command, base, run, fail, outputs):
    candidates = command.outputs["model"]
    model = outputs.first_fresh(candidates)
    if model is None:
        fail(f"the exported model was not written (looked for {', '.join(str(p) for p in candidates)})")
    sidecars = {name: outputs.fresh(model.parent / file) for name, file in R.EXPORT_SIDECARS.items()}
    cal_data = outputs.first_fresh([p for p in (request.cal_data_file, model.parent / "cal_data.npy") if p])
    return R.ExportResult(**base, model_file=model, **sidecars, cal_cache=outputs.fresh(command.outputs["cal_cache"]),
                          cal_data_file=cal_data, engine=outputs.fresh(command.outputs["engine"]))


def _gen_trt_engine(request, command, base, run, fail, outputs):
    engine = outputs.fresh(command.outputs["engine"])
    if engine is None:
        fail(f"the TensorRT engine {command.outputs['engine']} was not written")
    return R.EngineResult(**base, engine=engine, cal_cache=outputs.fresh(command.outputs["cal_cache"]))


_PARSERS = {"dataset_convert": _dataset_convert, "train": _train, "evaluate": _evaluate, "prune": _prune,
            "inference": _inference, "export": _export, "gen_trt_engine": _gen_trt_engine}
