"""GPU placement on CPU: which GPUs a worker may use, leases that keep two runs of one machine off the same GPU
(released when a run dies), and executors that pass the choice on: the native one to training and inference, the
TAO one to the launcher's --gpus/--gpu_index."""

import multiprocessing
import os
import traceback
import signal
import threading
import time
from pathlib import Path

import pytest

from taoflow import gpus as G
from taoflow.errors import TaoflowError

CTX = multiprocessing.get_context("fork")


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine whose worker was started for GPUs 0 and 1, with its own lease directory."""
    monkeypatch.setenv("TAOFLOW_GPUS", "0,1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("TAOFLOW_GPU_LOCK_DIR", str(tmp_path / "leases"))
    return tmp_path


def test_a_workers_gpus_come_from_its_environment(tmp_path):
    assert G.machine_gpus({"TAOFLOW_GPUS": "2, 3", "CUDA_VISIBLE_DEVICES": "0"}) == ["2", "3"]
    assert G.machine_gpus({"CUDA_VISIBLE_DEVICES": "1,3"}) == ["1", "3"]
    assert G.machine_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert G.machine_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\n[ \"$1\" = --query-gpu=index ] && printf '0\\n1\\n2\\n'\n")
    smi.chmod(0o755)
    assert G.machine_gpus({"PATH": str(smi.parent)}) == ["0", "1", "2"]
    assert G.machine_gpus({"PATH": str(tmp_path / "empty")}) == []
    # torch numbers the visible GPUs from 0: physical 3 is cuda:1 in a process started with CUDA_VISIBLE_DEVICES=2,3
    assert G.ordinals_of(["3"], {"CUDA_VISIBLE_DEVICES": "2,3"}) == [1]
    assert G.ordinals_of(["3"], {}) == [3]
    with pytest.raises(TaoflowError, match="not in CUDA_VISIBLE_DEVICES"):
        G.ordinals_of(["5"], {"CUDA_VISIBLE_DEVICES": "2,3"})


def _lease_in_child(count, share, queue, hold_s):
    try:
        with G.lease(count, share, what="child", poll_s=0.05) as placement:
            queue.put((os.getpid(), placement.ids, time.monotonic()))
            time.sleep(hold_s)
        queue.put((os.getpid(), "released", time.monotonic()))
        code = 0
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # A forked child inherits the test process's atexit hooks (Prefect's temporary server, ClearML, ...) and
        # threads; leave without running them, once the queue has sent what this child put in it.
        queue.close()
        queue.join_thread()
        os._exit(code)


def test_concurrent_runs_of_one_machine_never_share_a_gpu(machine):
    queue = CTX.Queue()
    children = [CTX.Process(target=_lease_in_child, args=(1, False, queue, 1.5)) for _ in range(3)]
    for child in children:
        child.start()
    events = [queue.get(timeout=30) for _ in range(6)]
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    held, live = {}, set()
    for pid, what, _ in events:  # replay: at no time do two holders have one GPU
        if what == "released":
            live.discard(held[pid])
        else:
            (gpu,) = what
            assert gpu not in live
            live.add(gpu)
            held[pid] = gpu
    assert sorted(set(held.values())) == ["0", "1"]  # the third run waited for one of the two


def test_runs_asked_to_share_do_share(machine):
    with G.lease(1, share=True) as a, G.lease(1, share=True) as b:
        assert a.ids == b.ids == ["0"]
    with G.lease(2) as both:
        assert both.ids == ["0", "1"] and both.ordinals == [0, 1]
        with pytest.raises(TaoflowError, match="no 1 free GPU"):
            with G.lease(1, timeout=0.3, poll_s=0.05):
                pass


def test_a_dead_runs_gpu_is_free_at_once(machine):
    queue = CTX.Queue()
    child = CTX.Process(target=_lease_in_child, args=(2, False, queue, 600))
    child.start()
    pid, ids, _ = queue.get(timeout=30)
    assert ids == ["0", "1"] and G.holder("0")["pid"] == pid
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    with G.lease(2, timeout=5, poll_s=0.05) as placement:
        assert placement.ids == ["0", "1"]


def test_no_gpu_or_zero_gpus_means_cpu_and_too_many_is_an_error(machine, monkeypatch):
    with G.lease(0) as placement:
        assert not placement and placement.ids == []
    with pytest.raises(TaoflowError, match="3 GPUs asked for, but this worker has 2"):
        with G.lease(3):
            pass
    monkeypatch.setenv("TAOFLOW_GPUS", "")
    with G.lease(1) as placement:
        assert placement.ids == []


def test_native_executor_trains_and_infers_on_its_leased_gpu(machine, monkeypatch):
    import torch

    from taoflow.backends.native import inference, train
    from taoflow.backends.native.executor import NativeExecutor
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    calls, inside = [], threading.Barrier(2, timeout=30)

    def fake_train(spec, results, **kwargs):
        calls.append(kwargs)
        inside.wait()  # both runs train at once
        return {}
    monkeypatch.setattr(train, "train", fake_train)
    runs = [threading.Thread(target=NativeExecutor().train, args=("spec", "results")) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(30)
    assert sorted(c["gpu_index"] for c in calls) == [[0], [1]] and all(c["gpus"] == 1 for c in calls)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    devices = []
    monkeypatch.setattr(inference, "run_inference", lambda *a, device=None, **k: devices.append(device))
    with G.lease(1) as other:  # another run holds GPU 0
        NativeExecutor().infer("spec", "model", "images", "out")
    assert other.ids == ["0"] and devices == [torch.device("cuda:1")]
    monkeypatch.setenv("TAOFLOW_GPUS", "1")  # a worker started for physical GPU 1 of CUDA_VISIBLE_DEVICES=1,0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    NativeExecutor().infer("spec", "model", "images", "out")
    assert devices[-1] == torch.device("cuda:0")
    NativeExecutor(gpus=0).infer("spec", "model", "images", "out")
    assert devices[-1] == torch.device("cpu")


def test_tao_executor_passes_its_leased_gpus_to_the_launcher(machine, monkeypatch, tmp_path):
    from taoflow.backends.tao import flow_executor
    from taoflow.backends.tao.commands import build_command
    from taoflow.backends.tao.launcher import TAO5
    requests = []

    class FakeResult:
        map, ap = 0.5, {"lpd": 0.5}

    monkeypatch.setattr(flow_executor.TaoExecutor, "run", lambda self, request: requests.append(request) or
                        FakeResult())
    ex = flow_executor.TaoFlowExecutor()
    spec = tmp_path / "spec.txt"
    with G.lease(1):  # another run holds GPU 0
        ex.train(spec, tmp_path / "results")
        ex.evaluate(spec, tmp_path / "model.hdf5", tmp_path / "eval")
    train_request, eval_request = requests
    assert (train_request.gpus, train_request.gpu_index) == (1, ("1",))
    assert eval_request.gpu_index == ("1",)
    argv = build_command(train_request, TAO5, key="k").task_argv
    assert argv[argv.index("--gpus") + 1] == "1" and argv[argv.index("--gpu_index") + 1] == "1"
    argv = build_command(eval_request, TAO5, key="k").task_argv
    assert argv[argv.index("--gpu_index") + 1] == "1"
    flow_executor.TaoFlowExecutor(gpus=2).train(spec, tmp_path / "results")
    assert (requests[-1].gpus, requests[-1].gpu_index) == (2, ("0", "1"))
    flow_executor.TaoFlowExecutor(gpus=0).train(spec, tmp_path / "results")
    assert (requests[-1].gpus, requests[-1].gpu_index) == (None, ())


def test_the_flow_hands_its_gpus_parameter_to_the_executors(monkeypatch):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from flows.executors import executor_for
    from taoflow.pipeline import RunConfig
    native = executor_for("native", RunConfig("ws", gpus=2, share_gpus=True))
    assert (native.gpus, native.share_gpus) == (2, True)
    tao = executor_for("tao", RunConfig("ws", gpus=0))
    assert (tao.gpus, tao.share_gpus) == (0, False)
    import inspect

    from flows.train_ssd import train_ssd
    params = inspect.signature(train_ssd.fn).parameters
    assert params["gpus"].default == 1 and params["share_gpus"].default is False
