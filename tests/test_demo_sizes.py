"""The demo summary's model sizes come from the report rows (unpruned / pruned / retrained)."""

from taoflow.demo import DEMO_PRUNE, _model_sizes


def test_model_sizes_and_ratios_from_report_rows():
    rows = [{"model": "unpruned", "params": 1000, "gflops": 2.0}, {"model": "pruned", "params": 400, "gflops": 1.0},
            {"model": "retrained", "params": 400, "gflops": 1.0}]
    out = _model_sizes(rows)
    assert out["params"] == {"unpruned": 1000, "pruned": 400, "retrained": 400}
    assert out["gflops"]["retrained"] == 1.0
    assert out["params_ratio"] == 0.4 and out["gflops_ratio"] == 0.5


def test_model_sizes_absent_for_tao_models():
    assert _model_sizes([]) == {}
    assert _model_sizes([{"model": "unpruned", "params": None, "gflops": None},
                         {"model": "retrained", "params": None, "gflops": None}]) == {}


def test_demo_prunes_harder_than_the_flow_default():
    assert DEMO_PRUNE["prune_threshold"] > 0.1 and DEMO_PRUNE["prune_criterion"] == "intersection"
