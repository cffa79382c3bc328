"""GPU placement: which GPUs a run's GPU steps use, and a per-machine lease so two runs never share one.

A worker is started for some GPUs of its machine ($TAOFLOW_GPUS=0,1, else $CUDA_VISIBLE_DEVICES, else every GPU
`nvidia-smi` lists); the flow runs it starts inherit that environment. Each GPU step (native train, evaluate,
inference; every TAO launcher call) leases `count` of those GPUs for its duration: an flock on
`<lock dir>/gpu-<id>.lock`, the lock dir being per machine and on local disk ($TAOFLOW_GPU_LOCK_DIR, default
/tmp/taoflow-gpu-leases). flock is released by the kernel when a run dies, so a crashed run never keeps a GPU. A step
that finds all of them leased waits for one; `share=True` takes the first `count` without leasing (runs asked to
share a GPU). A machine with no GPU gives an empty placement: the step runs on the CPU. A multi-GPU training run
(`taoflow-ssd train --gpus N`) takes one GPU per rank from the same list (training_placement).

Ids are physical (nvidia-smi's, what `docker --gpus device=` and TAO's `--gpu_index` mean); `ordinals` are the same
GPUs as this process's CUDA numbers them (their position in $CUDA_VISIBLE_DEVICES when that is set), which is what
torch's `cuda:N` needs.
"""

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TaoflowError

log = logging.getLogger(__name__)
GPUS_ENV = "TAOFLOW_GPUS"
LOCK_DIR_ENV = "TAOFLOW_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/taoflow-gpu-leases"


@dataclass
class Placement:
    ids: list = field(default_factory=list)  # physical GPU ids (strings: an index, or a GPU UUID)
    ordinals: list = field(default_factory=list)  # the same GPUs as this process's CUDA numbers them

    def __bool__(self):
        return bool(self.ids)


def _split(value):
    return [v.strip() for v in value.split(",") if v.strip()]


def machine_gpus(env=None):
    """The physical GPU ids this worker may use: $TAOFLOW_GPUS, else $CUDA_VISIBLE_DEVICES, else nvidia-smi's."""
    env = os.environ if env is None else env
    if env.get(GPUS_ENV) is not None:
        return _split(env[GPUS_ENV])
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        visible = _split(env["CUDA_VISIBLE_DEVICES"])
        return [] if visible in (["-1"], ["none"], ["NoDevFiles"]) else visible
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30, env=dict(env))
    except (OSError, subprocess.SubprocessError):
        return []
    return _split(out.stdout.replace("\n", ",")) if out.returncode == 0 else []


def ordinals_of(ids, env=None):
    """CUDA ordinals of physical ids inside this process: positions in $CUDA_VISIBLE_DEVICES when set."""
    env = os.environ if env is None else env
    visible = _split(env["CUDA_VISIBLE_DEVICES"]) if env.get("CUDA_VISIBLE_DEVICES") is not None else None
    out = []
    for gpu in ids:
        if visible is not None:
            if gpu not in visible:
                raise TaoflowError(f"GPU {gpu} (${GPUS_ENV}) is not in CUDA_VISIBLE_DEVICES={','.join(visible)}")
            out.append(visible.index(gpu))
        elif gpu.isdigit():
            out.append(int(gpu))
        else:
            raise TaoflowError(f"GPU {gpu!r} is a UUID: name it in CUDA_VISIBLE_DEVICES too")
    return out


def lock_dir(env=None):
    env = os.environ if env is None else env
    return Path(env.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


def _open_lock(directory, gpu):
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(directory, 0o1777)  # every user's runs share the machine's GPUs
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in gpu)
    fd = os.open(directory / f"gpu-{safe}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    return fd


def _try_take(directory, gpu, what):
    fd = _open_lock(directory, gpu)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    with contextlib.suppress(OSError):  # for people: who holds it
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what, "since": time.time()}).encode(), 0)
    return fd


def holder(gpu, env=None):
    """What the lease file of `gpu` says about its last holder (None when never leased)."""
    try:
        return json.loads((lock_dir(env) / f"gpu-{gpu}.lock").read_text() or "null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def lease(count=1, share=False, env=None, what="", poll_s=1.0, timeout=None):
    """Hold `count` of this worker's GPUs (waiting while they are all leased); yields a Placement."""
    env = os.environ if env is None else env
    candidates = machine_gpus(env)
    if count is None:
        count = 1
    if count < 0:
        raise TaoflowError(f"gpus must be 0 or more, not {count}")
    if count == 0 or not candidates:
        yield Placement()
        return
    if count > len(candidates):
        raise TaoflowError(f"{count} GPUs asked for, but this worker has {len(candidates)} ({','.join(candidates)}): "
                           f"start it with more in ${GPUS_ENV} or CUDA_VISIBLE_DEVICES")
    if share:
        chosen = candidates[:count]
        yield Placement(chosen, ordinals_of(chosen, env))
        return
    directory = lock_dir(env)
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    while True:
        held = {}
        for gpu in candidates:
            fd = _try_take(directory, gpu, what)
            if fd is not None:
                held[gpu] = fd
                if len(held) == count:
                    break
        if len(held) == count:
            break
        for fd in held.values():
            os.close(fd)
        if deadline is not None and time.monotonic() >= deadline:
            raise TaoflowError(f"no {count} free GPU(s) among {','.join(candidates)} within {timeout} s")
        if not told:
            log.info("%s: waiting for %d of GPUs %s (leased by other runs of this machine)", what or "step", count,
                     ",".join(candidates))
            told = True
        time.sleep(poll_s)
    chosen = list(held)
    log.info("%s: GPU(s) %s", what or "step", ",".join(chosen))
    try:
        yield Placement(chosen, ordinals_of(chosen, env))
    finally:
        for fd in held.values():
            os.close(fd)


def training_placement(count, env=None):
    """The GPUs of an N-process training run, one per rank in rank order: the first `count` of machine_gpus().

    A machine without GPUs gives an empty Placement (the ranks run on the CPU and talk over gloo); a machine with
    fewer GPUs than ranks is bad input, as in TAO's launcher (two ranks never share a GPU: NCCL refuses it)."""
    env = os.environ if env is None else env
    if count < 1:
        raise TaoflowError(f"--gpus must be 1 or more for a multi-process run, got {count}")
    candidates = machine_gpus(env)
    if not candidates:
        return Placement()
    if count > len(candidates):
        raise TaoflowError(f"--gpus {count} needs {count} GPUs, but only {len(candidates)} "
                           f"{'is' if len(candidates) == 1 else 'are'} visible ({','.join(candidates)}; "
                           f"${GPUS_ENV}, CUDA_VISIBLE_DEVICES or nvidia-smi)")
    chosen = candidates[:count]
    return Placement(chosen, ordinals_of(chosen, env))
