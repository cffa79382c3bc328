"""`taoflow-ssd train --gpus N`: N training processes on this machine, one per GPU, as TAO's launcher runs N under
mpirun.

The parent takes the GPUs from taoflow.gpus.training_placement (rank r trains on the r-th; every rank sees the same
CUDA_VISIBLE_DEVICES, so NCCL can use peer-to-peer links between them), starts the ranks with torchrun's
environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and watches them. The first
rank that fails ends the others (SIGTERM to its process group, SIGKILL after GRACE_S): a rank waiting in a
collective for a dead peer would otherwise wait for the process group's timeout (TAOFLOW_DIST_TIMEOUT_S, see
train.py), after which it fails too. A rank whose collective failed because a peer is gone or silent exits
PEERS_LOST_EXIT, so the launcher names the rank that failed first, not the ones that lost it. The run then exits 1
(2 when every failed rank reported bad input; 130 when interrupted), with one line naming that rank, and no
launcher traceback (torchrun prints one). NVLink multicast (NVLS) stays off unless the environment sets it: one
all-reduce of 53 MB per step gains nothing from it, and it can put a shared host's GPUs out of service.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from ...errors import TaoflowError

LAUNCHER_PID_ENV = "TAOFLOW_LAUNCHER_PID"
GRACE_S = 10.0  # how long a rank may take to exit after SIGTERM before it is killed
POLL_S = 0.2
# What the ranks get unless the environment says otherwise.
RANK_DEFAULTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


PEERS_LOST_EXIT = 3  # between a rank and its launcher only: the launcher exits 1


class _Terminated(Exception):
    pass


class PeersLost(TaoflowError):
    """A collective failed: another rank died, or stayed silent for the process group's timeout."""
    exit_code = PEERS_LOST_EXIT


@contextlib.contextmanager
def collective(what):
    """Around torch.distributed calls: their failure becomes PeersLost (gloo and NCCL raise RuntimeError)."""
    try:
        yield
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeersLost(f"{what} failed; another rank died or stopped answering ({reason})") from None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(base, rank, world, port, placement):
    env = dict(base)
    for key, value in RANK_DEFAULTS.items():
        env.setdefault(key, value)
    # As torchrun does: without it every rank starts a thread per core and they fight over the CPUs.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{LAUNCHER_PID_ENV: str(os.getpid())})
    if placement:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(placement.ids)
    return env


def run_ranks(argv, world, placement, grace_s=GRACE_S, env=None):
    """Run `python -m taoflow.backends.native <argv>` as `world` ranks; return the run's exit code."""
    env = os.environ if env is None else env
    port = free_port()
    procs = []
    previous = _on_sigterm()
    try:
        for rank in range(world):
            procs.append(subprocess.Popen([sys.executable, "-m", "taoflow.backends.native", *argv],
                                          env=rank_env(env, rank, world, port, placement), start_new_session=True))
        while True:
            codes = [p.poll() for p in procs]
            failed = {r: c for r, c in enumerate(codes) if c not in (None, 0)}
            if failed:
                break
            if all(c == 0 for c in codes):
                return 0
            time.sleep(POLL_S)
        culprits = [r for r, c in failed.items() if c != PEERS_LOST_EXIT] or list(failed)
        first = min(culprits)
        _stop(procs, grace_s)
        others = sum(1 for r, c in enumerate(codes) if c is None)
        print(f"train: rank {first} of {world} {_describe(failed[first])}"
              + (f"; stopped the other {others} rank{'s' if others > 1 else ''}" if others else ""),
              file=sys.stderr, flush=True)
        return 2 if all(failed[r] == 2 for r in culprits) else 1
    except (KeyboardInterrupt, _Terminated) as e:
        _stop(procs, grace_s)
        print("interrupted" if isinstance(e, KeyboardInterrupt) else "terminated", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 143
    finally:
        _stop(procs, 0)  # also what a rank started (compile workers) and outlived it
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def watch_launcher():
    """In a rank: end with SIGTERM when the launcher dies (killed too hard to stop its ranks itself)."""
    pid = os.environ.get(LAUNCHER_PID_ENV)
    if not pid or not sys.platform.startswith("linux"):
        return
    import ctypes
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(pid):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _describe(code):
    if code == PEERS_LOST_EXIT:
        return "lost the other ranks (one died without a word, or stopped answering)"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"failed (exit {code})"


def _stop(procs, grace_s):
    """SIGTERM every rank's process group, SIGKILL what is left after grace_s."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0)):
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
        deadline = time.monotonic() + wait
        while wait and any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(POLL_S)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def _on_sigterm():
    def handler(signum, frame):
        raise _Terminated()
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None
