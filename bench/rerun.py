#!/usr/bin/env python3
"""Re-runs against a running Prefect server: identical inputs, then 1 % more images.

1. A first train-ssd run on generated CRPD data (tiny training specs: what is measured is the orchestration).
2. An identical second run: its wall time (target <= 5 s) and the number of heavy tasks that did work, read from
   the task-run states on the server (reused stages end in a state named Cached; target 0).
3. 1 % more images added to the dataset: the number of images converted again (asserted equal to the added ones).
Uses PREFECT_API_URL when set, else starts a local server. Ends with one line:
identical_rerun_s=... heavy_tasks_rerun=... images_reconverted=...
"""

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from taoflow.datasets.demo import generate_crpd  # noqa: E402
from taoflow.serve import start_local_server  # noqa: E402
from tests.flows.conftest import write_specs  # noqa: E402

HEAVY = {"convert", "split", "tfrecords", "train", "evaluate", "prune", "retrain", "export", "report"}


async def task_states(flow_run_id, expected, timeout=60):
    """(task name, state name) of the run's tasks, once `expected` of them exist and every one is final: Prefect 3
    records task runs and their states through its event pipeline, so the server may lag the flow's return."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            done = len(runs) >= expected and all(r.state is not None and r.state.is_final() for r in runs)
            if done or time.monotonic() > deadline:
                return [(r.name.rsplit("-", 1)[0], r.state.name if r.state else "None") for r in runs]
            await asyncio.sleep(0.5)


def run(flow, **kwargs):
    t0 = time.perf_counter()
    state = flow(return_state=True, **kwargs)
    seconds = time.perf_counter() - t0
    if not state.is_completed():
        sys.exit(f"flow run failed: {state.message}")
    return state.result(), state.state_details.flow_run_id, seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--workspace", default=None)
    args = p.parse_args()
    ws = Path(args.workspace or tempfile.mkdtemp(prefix="taoflow-rerun-"))
    os.environ.setdefault("DO_NOT_TRACK", "1")
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        server, api = start_local_server(ws / "server")
        os.environ["PREFECT_API_URL"] = api
        os.environ["PREFECT_HOME"] = str(ws / "client")
    try:
        from flows.train_ssd import train_ssd
        raw = ws / "raw"
        generate_crpd(raw, num_images=args.images, image_size=(320, 240), seed=3, progress=False)
        train_spec, retrain_spec = write_specs(ws / "specs")
        kwargs = dict(dataset_path=str(raw), workspace=str(ws / "ws"), train_spec=str(train_spec),
                      retrain_spec=str(retrain_spec), map_floor=0.0, clearml=False)
        _, _, first_s = run(train_ssd, **kwargs)
        print(f"first run: {first_s:.1f} s", flush=True)
        summary, run_id, identical_s = run(train_ssd, **kwargs)
        expected = len(summary["stages"]) + 1  # every stage's task, and the report's
        states = asyncio.run(task_states(run_id, expected))
        if len(states) < expected:
            sys.exit(f"the server recorded {len(states)} of the {expected} task runs: {states}")
        heavy_done = [name for name, state in states if name in HEAVY and state != "Cached"]
        print(f"identical re-run: {identical_s:.2f} s; task states: {sorted(states)}", flush=True)

        extra = ws / "extra"
        n_new = max(1, args.images // 100)
        generate_crpd(extra, num_images=n_new, image_size=(320, 240), seed=4, split_fractions=(1.0, 0.0, 0.0),
                      progress=False)
        for img in (extra / "train/images").iterdir():
            shutil.copy(img, raw / "train/images" / f"added_{img.name}")
            shutil.copy(extra / "train/labels" / f"{img.stem}.txt", raw / "train/labels" / f"added_{img.stem}.txt")
        summary, _, more_s = run(train_ssd, **kwargs)
        convert_key = summary["stages"]["convert"]["key"]
        meta = json.loads((ws / "ws/store/convert" / convert_key / ".meta.json").read_text())
        reconverted = meta["images_converted"]
        assert reconverted == n_new, f"{reconverted} images converted, expected only the {n_new} added"
        print(f"after adding {n_new} images ({100 * n_new / args.images:.0f} %): {reconverted} converted, "
              f"run took {more_s:.1f} s", flush=True)
        assert not heavy_done, f"heavy tasks did work on an identical re-run: {heavy_done}"
        print(f"identical_rerun_s={identical_s:.2f} heavy_tasks_rerun={len(heavy_done)} "
              f"images_reconverted={reconverted}")
    finally:
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()
