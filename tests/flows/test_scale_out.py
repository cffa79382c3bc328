"""Scale-out (slow): a real Prefect server, a `process` work pool, `prefect deploy --all` from the repository's own
prefect.yaml, and two workers in separate processes with separate working directories and lease directories (two
"machines") on one shared workspace. Three train-ssd/demo runs are submitted at once: two datasets, one of them
twice. All complete; each stage output is computed once (the duplicate's twin stages: one computed, one reused);
the store passes its integrity check. The second variant disables flock (TAOFLOW_STORE_LOCK=file), as on an NFS
`nolock` mount where flock would not exclude the other machine."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from taoflow.serve import start_local_server
from taoflow.store import Store

from .conftest import REPO, write_specs

pytestmark = pytest.mark.slow

STORE_TASKS = {"convert", "split", "tfrecords", "train", "evaluate", "prune", "retrain", "export", "build_report"}
STORE_OUTPUTS_PER_DATASET = 10  # convert split tfrecords train evaluate prune retrain evaluate_retrained export report

QUERY = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
out = {}
with get_client(sync_client=True) as client:
    for run_id in sys.argv[1:]:
        run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        out[run_id] = {"state": run.state.type.value, "deployment": str(run.deployment_id),
                       "parameters": run.parameters,
                       "tasks": [[t.task_key.rsplit("-", 1)[0], t.name, t.state.type.value if t.state else None,
                                  t.state.name if t.state else None] for t in tasks]}
print(json.dumps(out))
"""


def prefect(env, *args, cwd=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def stop(proc):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Prefect server with the taoflow-gpu process pool and prefect.yaml's deployments."""
    root = tmp_path_factory.mktemp("cluster")
    server, api = start_local_server(root / "server")
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_HOME=str(root / "client"), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", COLUMNS="400")
    try:
        pool = prefect(env, "work-pool", "create", "taoflow-gpu", "--type", "process")
        assert pool.returncode == 0, pool.stdout + pool.stderr
        table = (REPO / "prefect.yaml").read_bytes()
        had_dot_prefect = (REPO / ".prefect").exists()
        deploy = prefect(env, "--no-prompt", "deploy", "--all", cwd=REPO)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        # deploying from the checkout leaves it as it was (others may be editing it: only what deploy could touch)
        assert (REPO / "prefect.yaml").read_bytes() == table and (REPO / ".prefect").exists() == had_dot_prefect
        listed = prefect(env, "deployment", "ls").stdout
        for name in ("train-ssd/demo", "train-ssd/crpd", "train-ssd/kitti", "train-ssd/traffic",
                     "deploy-ssd/fleet"):
            assert name in listed, listed
        yield {"env": env, "root": root, "api": api}
    finally:
        stop(server)


@pytest.fixture(scope="module")
def second_dataset(tmp_path_factory):
    from taoflow.datasets.demo import generate_crpd
    root = tmp_path_factory.mktemp("raw2") / "crpd_b"
    generate_crpd(root, num_images=40, image_size=(160, 120), seed=23, progress=False)
    return root


def start_worker(cluster, machine, extra_env):
    """`prefect worker start` on a "machine": its own working directory, Prefect home and GPU lease directory."""
    machine.mkdir(parents=True)
    env = dict(cluster["env"], PREFECT_HOME=str(machine / "prefect-home"), TAOFLOW_CHECKOUT=str(REPO),
               TAOFLOW_HOST_ID=machine.name, TAOFLOW_GPUS="0,1", TAOFLOW_GPU_LOCK_DIR=str(machine / "gpu-leases"),
               PREFECT_WORKER_QUERY_SECONDS="1", **extra_env)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    log = open(machine / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "taoflow-gpu", "--type",
                             "process", "--name", machine.name, "--limit", "2"], env=env, cwd=machine, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc


@pytest.mark.parametrize("lock", ["flock", "file"])
def test_two_workers_on_one_shared_workspace(cluster, tmp_path, raw_crpd, second_dataset, lock):
    env = cluster["env"]
    shared = tmp_path / "shared-workspace"
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    extra = {"TAOFLOW_STORE_LOCK": lock}
    workers = [start_worker(cluster, m, extra) for m in machines]
    try:
        train, retrain = write_specs(tmp_path / "specs")
        common = {"workspace": str(shared), "train_spec": str(train), "retrain_spec": str(retrain),
                  "map_floor": 0.0, "clearml": False}
        datasets = [raw_crpd, second_dataset, raw_crpd]  # the third duplicates the first
        submits = [subprocess.Popen([sys.executable, "-m", "prefect", "deployment", "run", "train-ssd/demo",
                                     "--params", json.dumps(dict(common, dataset_path=str(d)))], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for d in datasets]
        run_ids = []
        for submit in submits:
            out, _ = submit.communicate(timeout=120)
            assert submit.returncode == 0, out
            run_ids.append(re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1))

        deadline = time.time() + 270
        while True:
            query = subprocess.run([sys.executable, "-c", QUERY, *run_ids], env=env, capture_output=True, text=True,
                                   timeout=120)
            assert query.returncode == 0, query.stderr
            runs = json.loads(query.stdout)
            states = {r: runs[r]["state"] for r in run_ids}
            if all(s in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for s in states.values()):
                break
            for w, m in zip(workers, machines):
                assert w.poll() is None, (m / "worker.log").read_text()[-3000:]
            assert time.time() < deadline, f"{states}\n" + "\n".join(
                (m / "worker.log").read_text()[-3000:] for m in machines)
            time.sleep(2)
        logs = {m.name: (m / "worker.log").read_text() for m in machines}
        assert set(states.values()) == {"COMPLETED"}, f"{states}\n" + "\n".join(v[-4000:] for v in logs.values())
        # both machines ran flow runs (a run both workers tried to take is aborted on one: Prefect's own race)
        ran_on = {m: [r for r in run_ids if f"/flow-run/{r}" in text] for m, text in logs.items()}
        assert all(ran_on.values()) and sorted(sum(ran_on.values(), [])) == sorted(run_ids), ran_on

        # every stage output was computed exactly once: the twins split each stage (one computes, one reuses),
        # the other dataset computes all of its own
        computed = {}
        for r in run_ids:
            stages = [t for t in runs[r]["tasks"] if t[0] in STORE_TASKS]
            assert len(stages) == STORE_OUTPUTS_PER_DATASET and all(t[2] == "COMPLETED" for t in stages), stages
            computed[r] = Counter(t[0] for t in stages if t[3] != "Cached")
        first, other, duplicate = run_ids
        assert sum(computed[other].values()) == STORE_OUTPUTS_PER_DATASET
        assert computed[first] + computed[duplicate] == Counter(
            {"convert": 1, "split": 1, "tfrecords": 1, "train": 1, "evaluate": 2, "prune": 1, "retrain": 1,
             "export": 1, "build_report": 1}), (computed[first], computed[duplicate])
        store = Store(shared)
        outputs = [p for stage in store.root.iterdir() if stage.is_dir() for p in stage.iterdir()
                   if not p.name.startswith(".")]
        assert len(outputs) == 2 * STORE_OUTPUTS_PER_DATASET
        assert sum(sum(c.values()) for c in computed.values()) == len(outputs)  # nothing computed twice
        assert store.check() == []
        check = subprocess.run([sys.executable, "-m", "taoflow.store", str(shared)], capture_output=True, text=True)
        assert check.returncode == 0 and "OK" in check.stdout, check.stdout
        assert len(list((shared / "runs").glob("*/passport.json"))) == 2  # the duplicate made the same model
        # the lock kind asked for, and nothing of it left behind
        assert bool(list(store.root.glob("*/.lock-*"))) == (lock == "flock")
        assert not list(store.root.glob("*/.lease-*"))
        # GPU placement: a run that trained leased a GPU of its own machine, in that machine's lease directory
        machine_of = {r: m for m, rs in ran_on.items() for r in rs}
        for r in run_ids:
            if computed[r]["train"]:
                assert (tmp_path / machine_of[r] / "gpu-leases" / "gpu-0.lock").is_file(), machine_of
    finally:
        for w in workers:
            stop(w)
