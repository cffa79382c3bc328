"""What pruning bought, as the demo reports it: the model sizes in the run's summary and `taoflow demo --json`
(params, gflops, params_ratio, gflops_ratio), the sentence under the report's model table, and the CRPD demo's
prune settings reaching the flow."""

import math
from pathlib import Path
from types import SimpleNamespace

from taoflow import report as R
from taoflow import runs
from taoflow.demo import DEMO_PRUNE, _flow_arguments, model_sizes

NAN = math.nan
ROWS = [{"model": "unpruned", "params": 1000, "gflops": 2.0, "cpu_latency_ms": 9.0, "mAP": 0.8, "AP_lpd": 0.8},
        {"model": "pruned", "params": 200, "gflops": 0.5, "cpu_latency_ms": 3.0, "mAP": NAN, "AP_lpd": NAN},
        {"model": "retrained", "params": 200, "gflops": 0.5, "cpu_latency_ms": 3.0, "mAP": 0.9, "AP_lpd": 0.9}]
TAO_ROWS = [dict(r, params=None, gflops=None, cpu_latency_ms=None) for r in ROWS]  # .tlt/.hdf5: not loadable here


def test_model_sizes_and_the_retrained_models_ratios():
    out = model_sizes(ROWS)
    assert out["params"] == {"unpruned": 1000, "pruned": 200, "retrained": 200}
    assert out["gflops"] == {"unpruned": 2.0, "pruned": 0.5, "retrained": 0.5}
    assert out["params_ratio"] == 0.2 and out["gflops_ratio"] == 0.25


def test_model_sizes_absent_when_not_measurable():
    assert model_sizes([]) == {}
    assert model_sizes(TAO_ROWS) == {}
    assert model_sizes(ROWS[:2]) == {}  # no retrained row


def test_run_summary_carries_the_report_rows_sizes():
    stage = SimpleNamespace(key="k", cached=False, seconds=1.0)
    out = runs.summary({"metrics": {"mAP": 0.9}}, {"gates": [], "rows": ROWS}, {"train": stage}, "m.onnx", Path("run"))
    assert out["models"] == [{k: r[k] for k in ("model", "params", "gflops", "cpu_latency_ms")} for r in ROWS]
    assert model_sizes(out["models"])["gflops_ratio"] == 0.25


def test_report_says_what_pruning_bought_under_the_model_table():
    md = R.summary_markdown({"id": "p", "stages": {}}, ROWS, [], {}).splitlines()
    line = "Pruned and retrained vs unpruned: 20% of the parameters, 25% of the GFLOPs, 3.0x as fast on this CPU " \
           "(batch 1)."
    assert line in md
    assert md.index(line) > md.index("| retrained | 200 | 0.500 | 0.9000 | 0.9000 | 3.0 |")  # under the table
    assert not any(ln.startswith("Pruned and retrained") for ln in R.summary_markdown(
        {"id": "p", "stages": {}}, TAO_ROWS, [], {}).splitlines())


def test_crpd_demo_prunes_with_its_own_settings_and_traffic_with_the_flows(tmp_path):
    args = _flow_arguments("crpd", tmp_path, 2, 0, 1, False, None, None)
    assert {k: args[k] for k in DEMO_PRUNE} == DEMO_PRUNE
    assert DEMO_PRUNE["prune_criterion"] == "union"  # intersection cut block 4's residual trunk (taoflow/demo.py)
    traffic = _flow_arguments("traffic", tmp_path, 2, 0, 1, False, (414, 125), None)
    assert not set(DEMO_PRUNE) & set(traffic)


def test_the_demo_deployment_prunes_as_taoflow_demo(tmp_path):
    from taoflow.serve import build_deployments
    demo = next(d for d in build_deployments(tmp_path / "ws", ["demo"]) if d.name == "demo").parameters
    assert {k: demo[k] for k in DEMO_PRUNE} == DEMO_PRUNE
