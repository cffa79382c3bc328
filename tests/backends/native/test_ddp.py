"""Multi-process training (`taoflow-ssd train --gpus N`) on CPUs: the ranks talk over gloo.

Each rank's writes, all-reduces and (on request) an injected failure are observed from inside the rank processes by
a sitecustomize module put on their PYTHONPATH (PROBE below): the launcher and the ranks run as users run them."""

import csv
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from taoflow.backends.native import launch
from taoflow.backends.native.build import iterations_per_epoch, soft_start_annealing_lr
from taoflow.backends.native.checkpoint import load_checkpoint
from taoflow.backends.native.data import EpochSampler
from taoflow.backends.native.train import train
from taoflow.errors import TaoflowError
from taoflow.gpus import training_placement
from taoflow.spec import load_experiment

from .conftest import cli, write_spec

REPO = Path(__file__).resolve().parents[3]
BATCH = 4  # TINY_SPEC's batch_size_per_gpu
PROBE = '''
import os

_rank = os.environ.get("RANK")
if _rank is not None:
    import builtins

    _log, _results = os.environ["PROBE_LOG"], os.environ["PROBE_RESULTS"]
    _open, _replace = builtins.open, os.replace

    def _note(what):
        with _open(_log, "a") as f:
            f.write(f"{_rank} {what}\\n")

    def _recording_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and str(file).startswith(_results) and set(mode) & set("wax+"):
            _note(f"write {file}")
        return _open(file, mode, *args, **kwargs)

    def _recording_replace(src, dst, *args, **kwargs):
        if str(dst).startswith(_results):
            _note(f"write {dst}")
        return _replace(src, dst, *args, **kwargs)

    builtins.open, os.replace = _recording_open, _recording_replace

    from taoflow.backends.native import step as _step
    _average = _step.average_gradients

    def _counting_average(params, world):
        _note("all-reduce")
        return _average(params, world)

    _step.average_gradients = _counting_average

    if os.environ.get("PROBE_FAIL"):  # "<rank>:<epoch>:raise|hang"
        _fail_rank, _fail_epoch, _how = os.environ["PROBE_FAIL"].split(":")
        if _fail_rank == _rank:
            from taoflow.backends.native import data as _data
            _set_epoch = _data.EpochSampler.set_epoch

            def _failing_set_epoch(self, epoch):
                if epoch == int(_fail_epoch):
                    if _how == "hang":
                        import time
                        time.sleep(600)
                    raise ValueError("injected failure")
                return _set_epoch(self, epoch)

            _data.EpochSampler.set_epoch = _failing_set_epoch
'''


def run_ranks(tmp_path, *argv, gpus=2, env=None, timeout=240):
    """`taoflow-ssd train ... --gpus N` in a fresh process; returns (completed process, probe log lines)."""
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(PROBE)
    log = tmp_path / "probe.log"
    results = Path(argv[argv.index("-r") + 1])
    full_env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "TAOFLOW_GPUS")}
    full_env.update(PYTHONPATH=os.pathsep.join([str(probe), str(REPO)]), PROBE_LOG=str(log),
                    PROBE_RESULTS=str(results), OMP_NUM_THREADS="1", **(env or {}))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "taoflow.backends.native", "train", *map(str, argv),
                          "--gpus", str(gpus)], capture_output=True, text=True, timeout=timeout, env=full_env)
    out.seconds = time.monotonic() - t0
    return out, (log.read_text().splitlines() if log.exists() else [])


def n_training_images(spec):
    from taoflow.backends.native.data import load_training_data
    return len(load_training_data(load_experiment(spec).effective.dataset_config, (8, 8)))


# ---------------------------------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n", [1, 2, 5, 12, 13, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_disjoint_complete_and_equally_long(n, world):
    for epoch in (1, 2):
        shards = []
        for rank in range(world):
            sampler = EpochSampler(n, seed=7, rank=rank, world=world)
            sampler.set_epoch(epoch)
            shards.append(list(sampler.indices))
        assert len({len(s) for s in shards}) == 1  # every rank as many images, so as many steps
        everything = [i for s in shards for i in s]
        assert set(everything) == set(range(n))  # complete
        assert len(everything) - n == (-n) % world  # disjoint but for the padding
        for batch in (1, 2, 4, 5):
            steps = EpochSampler(n, 7, 0, world).steps(batch)
            assert steps == iterations_per_epoch(n, batch, world)  # TAO's count


def test_epochs_reshuffle_and_ranks_share_one_order():
    orders = []
    for epoch in (1, 2):
        per_rank = []
        for rank in range(2):
            sampler = EpochSampler(10, seed=3, rank=rank, world=2)
            sampler.set_epoch(epoch)
            per_rank.append(sampler.indices)
        merged = np.empty(10, int)
        merged[0::2], merged[1::2] = per_rank  # rank r holds positions r, r + 2, ... of one shared order
        orders.append(merged)
    assert np.array_equal(orders[0], np.random.default_rng([3, 1]).permutation(10))
    assert not np.array_equal(orders[0], orders[1])


def test_one_process_keeps_the_unsharded_order_and_augmentation_stream():
    sampler = EpochSampler(9, seed=5)
    sampler.set_epoch(4)
    rng = np.random.default_rng([5, 4])
    assert np.array_equal(sampler.indices, rng.permutation(9))
    assert sampler.rng.random() == rng.random()  # augmentation continues the shuffling generator, as before


def test_ranks_augment_with_their_own_generators():
    draws = []
    for rank in range(2):
        sampler = EpochSampler(8, seed=5, rank=rank, world=2)
        sampler.set_epoch(1)
        draws.append(sampler.rng.random(4))
    assert not np.allclose(draws[0], draws[1])


# ---------------------------------------------------------------------------------------------------- placement


def test_each_rank_gets_its_own_gpu_and_too_few_gpus_is_bad_input():
    p = training_placement(2, {"CUDA_VISIBLE_DEVICES": "3,5,6", "PATH": ""})
    assert p.ids == ["3", "5"] and p.ordinals == [0, 1]
    p = training_placement(2, {"TAOFLOW_GPUS": "1,2", "PATH": ""})
    assert p.ids == ["1", "2"] and p.ordinals == [1, 2]
    assert not training_placement(2, {"PATH": ""})  # no GPU at all: the ranks run on the CPU
    with pytest.raises(TaoflowError, match="--gpus 2 needs 2 GPUs, but only 1 is visible"):
        training_placement(2, {"CUDA_VISIBLE_DEVICES": "0", "PATH": ""})


def test_rank_environment():
    p = training_placement(2, {"CUDA_VISIBLE_DEVICES": "4,7", "PATH": ""})
    env = launch.rank_env({"PATH": "/bin"}, 1, 2, 29500, p)
    assert env["RANK"] == env["LOCAL_RANK"] == "1" and env["WORLD_SIZE"] == "2" and env["MASTER_PORT"] == "29500"
    assert env["CUDA_VISIBLE_DEVICES"] == "4,7"  # all ranks see both GPUs; rank 1 trains on cuda:1
    assert env["NCCL_NVLS_ENABLE"] == "0"  # no NVLink multicast
    assert launch.rank_env({"NCCL_NVLS_ENABLE": "1"}, 0, 2, 1, p)["NCCL_NVLS_ENABLE"] == "1"  # a user's choice


@pytest.mark.parametrize("argv, expect", [
    (["--gpus", "2"], "--gpus 2 needs 2 GPUs, but only 1 is visible (0"),
    (["--gpus", "2", "--gpu_index", "1"], "--gpus 2 needs as many distinct --gpu_index values"),
])
def test_more_ranks_than_gpus_is_refused_before_anything_is_written(tiny_data, tmp_path, monkeypatch, argv, expect):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("TAOFLOW_GPUS", raising=False)
    spec = write_spec(tmp_path / "spec.txt", tiny_data)
    code, out = cli("train", "-e", spec, "-r", tmp_path / "r", *argv)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expect in errors[0] and "Traceback" not in out, out
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------- two ranks


@pytest.fixture(scope="module")
def two_ranks(tiny_data, tmp_path_factory):
    """Two epochs on two gloo ranks, validated every epoch, checkpoint every epoch."""
    tmp = tmp_path_factory.mktemp("ddp")
    spec = write_spec(tmp / "spec.txt", tiny_data)
    out, probe = run_ranks(tmp, "-e", spec, "-r", tmp / "run")
    assert out.returncode == 0, out.stderr[-3000:]
    return spec, tmp / "run", out, probe


def test_every_rank_takes_the_same_number_of_steps(two_ranks):
    spec, _, _, probe = two_ranks
    per_step = Counter(line.split()[0] for line in probe if line.endswith("all-reduce"))
    steps = iterations_per_epoch(n_training_images(spec), BATCH, 2)
    assert per_step == {"0": 2 * steps, "1": 2 * steps}  # one gradient all-reduce per step, two epochs


def test_only_rank_0_validates_writes_and_logs(two_ranks):
    _, run, out, probe = two_ranks
    writes = [line.split(maxsplit=2) for line in probe if " write " in line]
    assert writes and {rank for rank, _, _ in writes} == {"0"}
    written = {Path(path).name for _, _, path in writes}
    assert {"ssd_resnet10_epoch_001.pth", "ssd_resnet10_epoch_002.pth", "ssd_training_log_resnet10.csv",
            "status.json", "experiment_spec.txt"} <= written
    assert out.stdout.count("Validation loss:") == 2  # rank 0 validated each epoch; rank 1 never did
    assert out.stdout.count("Training finished") == 1
    assert "[INFO] [rank 1/2]" not in out.stderr and "[INFO] [rank 0/2]" in out.stderr
    rows = list(csv.DictReader(open(run / "ssd_training_log_resnet10.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(math.isfinite(float(r["mAP"])) for r in rows)
    assert sorted(p.name for p in (run / "weights").iterdir()) == ["ssd_resnet10_epoch_001.pth",
                                                                    "ssd_resnet10_epoch_002.pth"]


def test_two_ranks_scale_the_learning_rate_as_tao_does(two_ranks):
    spec, run, _, _ = two_ranks
    steps = iterations_per_epoch(n_training_images(spec), BATCH, 2)
    state = load_checkpoint(run / "weights/ssd_resnet10_epoch_002.pth")
    assert state["world_size"] == 2 and state["global_step"] == 2 * steps
    schedule = load_experiment(spec).effective.training_config.learning_rate.soft_start_annealing_schedule
    last_lr = float(list(csv.DictReader(open(run / "ssd_training_log_resnet10.csv")))[-1]["lr"])
    assert last_lr == pytest.approx(soft_start_annealing_lr(2 * steps - 1, 2 * steps, schedule, num_gpus=2))
    assert last_lr != pytest.approx(soft_start_annealing_lr(2 * steps - 1, 2 * steps, schedule, num_gpus=1))


def test_a_two_rank_checkpoint_resumes_in_one_process(two_ranks, tmp_path):
    spec, run, _, _ = two_ranks
    result = train(spec, tmp_path / "one", resume_model=run / "weights/ssd_resnet10_epoch_001.pth",
                   initial_epoch=2, device="cpu")
    one_rank_steps = iterations_per_epoch(n_training_images(spec), BATCH, 1)
    assert result["steps"] == 2 * one_rank_steps  # the schedule restarted at epoch 2 of a one-process run
    assert load_checkpoint(result["checkpoint"])["world_size"] == 1


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_on_two_ranks(trained, tiny_data, tmp_path):
    spec, _ = trained
    first = tiny_data / "run/weights/ssd_resnet10_epoch_001.pth"
    assert load_checkpoint(first).get("world_size", 1) == 1
    out, _ = run_ranks(tmp_path, "-e", spec, "-r", tmp_path / "resumed", "-m", first, "--initial_epoch", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming a checkpoint of 1 rank(s) with 2" in out.stderr
    state = load_checkpoint(tmp_path / "resumed/weights/ssd_resnet10_epoch_002.pth")
    assert state["world_size"] == 2
    assert state["global_step"] == 2 * iterations_per_epoch(n_training_images(spec), BATCH, 2)
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "resumed/ssd_training_log_resnet10.csv"))] == ["2"]


def test_a_failing_rank_ends_the_run_with_exit_1(tiny_data, tmp_path):
    spec = write_spec(tmp_path / "spec.txt", tiny_data)
    out, _ = run_ranks(tmp_path, "-e", spec, "-r", tmp_path / "run", env={"PROBE_FAIL": "1:1:raise"}, timeout=120)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "error: [rank 1/2] unexpected ValueError: injected failure" in out.stderr
    assert "train: rank 1 of 2 failed (exit 1)" in out.stderr  # named, not rank 0 that lost it
    assert "Traceback" not in out.stderr and "Training finished" not in out.stdout
    assert not list((tmp_path / "run/weights").iterdir())


@pytest.mark.slow
def test_a_silent_rank_times_out_instead_of_hanging(tiny_data, tmp_path):
    spec = write_spec(tmp_path / "spec.txt", tiny_data)
    out, _ = run_ranks(tmp_path, "-e", spec, "-r", tmp_path / "run", timeout=120,
                       env={"PROBE_FAIL": "1:2:hang", "TAOFLOW_DIST_TIMEOUT_S": "10"})
    assert out.returncode == 1, out.stderr[-3000:]
    assert "train: rank 0 of 2 lost the other ranks" in out.stderr and "stopped the other 1 rank" in out.stderr
    assert out.seconds < 100  # the hung rank sleeps 600 s: it was ended, not waited for
    assert [p.name for p in (tmp_path / "run/weights").iterdir()] == ["ssd_resnet10_epoch_001.pth"]


AVERAGE = """
import os, sys, torch, torch.distributed as dist
from taoflow.backends.native.step import average_gradients
dist.init_process_group("gloo")
rank = dist.get_rank()
conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
conv.weight.grad = torch.full_like(conv.weight, rank + 1.0)  # channels_last, as the parameter
conv.bias.grad = None if rank == 0 else torch.full_like(conv.bias, 4.0)  # no gradient on rank 0: zeros
average_gradients(list(conv.parameters()), 2)
assert conv.weight.grad.stride() == conv.weight.stride(), (conv.weight.grad.stride(), conv.weight.stride())
assert torch.equal(conv.weight.grad, torch.full_like(conv.weight, 1.5)), conv.weight.grad
assert torch.equal(conv.bias.grad, torch.full_like(conv.bias, 2.0)), conv.bias.grad
dist.destroy_process_group()
"""


def test_gradients_are_averaged_over_ranks_in_the_parameters_layout():
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(launch.free_port()),
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", AVERAGE], env=dict(env, RANK=str(r)), stderr=subprocess.PIPE,
                              text=True) for r in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors


# ---------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gradient_all_reduce_inside_the_compiled_cuda_graph_step(tiny_data, tmp_path, monkeypatch):
    """On one GPU, a one-rank NCCL group: the compiled, CUDA-graphed step with the gradient all-reduce trains as
    the same step without it (what every rank of a multi-GPU run does, minus the other ranks)."""
    import copy

    import torch.distributed as dist

    from taoflow.backends.native import step as S
    from taoflow.backends.native.build import anchors_for, build_model
    from taoflow.backends.native.data import load_tfrecords, make_batch

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(launch.free_port()))
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    device = torch.device("cuda:0")
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    try:
        spec = load_experiment(write_spec(tmp_path / "spec.txt", tiny_data))
        torch.manual_seed(0)
        model, arch = build_model(spec)
        model = model.to(device).to(memory_format=torch.channels_last)
        plain = copy.deepcopy(model)
        anchors = anchors_for(spec, arch["nlayers"]).to(device)
        cache = load_tfrecords([spec.effective.dataset_config.data_sources[0].tfrecords_path], (96, 96))
        rng = np.random.default_rng(0)
        batches = [make_batch(cache, rng.choice(len(cache), BATCH, replace=False), rng,
                              spec.effective.augmentation_config, (96, 96), spec.image_mean(), device)
                   for _ in range(4)]
        max_boxes = max(len(b) for b in cache.boxes)
        scaler = S.make_scaler(device, True)
        syncs = []

        def sync(params):
            syncs.append(len(params))
            S.average_gradients(params, 1)
        synced = S.TrainStep(model, model, S.make_optimizer(model.parameters(), device), scaler, anchors, spec,
                             device, True, BATCH, max_boxes, sync=sync)
        assert synced.compiled and synced.cuda_graphs
        reference = S.TrainStep(plain, plain, S.make_optimizer(plain.parameters(), device), scaler, anchors, spec,
                                device, True, BATCH, max_boxes, compile=False)
        before = [p.detach().clone() for p in model.parameters()]
        got = torch.stack([synced(batch, 1e-2) for batch in batches]).float()
        want = torch.stack([reference(batch, 1e-2) for batch in batches]).float()
        assert torch.isfinite(got).all() and syncs == [len(list(model.parameters()))] * len(batches)
        # Same training up to bf16 and compiled-kernel rounding; a gradient overwritten by a graph replay would not be.
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2)
        moved = torch.cat([(a - b).flatten() for a, b in zip(model.parameters(), before)])
        moved_ref = torch.cat([(a - b).flatten() for a, b in zip(plain.parameters(), before)])
        assert torch.nn.functional.cosine_similarity(moved, moved_ref, dim=0) > 0.99
        assert 0.9 < float(moved.norm() / moved_ref.norm()) < 1.1
    finally:
        dist.destroy_process_group()
