from taoflow import gates
from taoflow.deploy import DeployError


def _device(current, maps):
    return {"ssd": {"current": current, "versions": [
        {"version": v, "passport": {"format": "taoflow-device-passport/1",
                      "lineage": {"metrics": {"mAP": m}} if m is not None else None}} for v, m in maps.items()]}}


def test_deployed_map_is_the_best_current_model_and_skips_unreachable_devices():
    status = {"a": _device("v2", {"v1": 0.9, "v2": 0.80}), "b": _device("v1", {"v1": 0.85}),
              "c": DeployError("connection refused", "c"), "d": {}, "e": _device("v1", {"v1": None})}
    best, seen, unreachable = gates.deployed_map(status, "ssd")
    assert best == 0.85 and seen == ["a", "b"] and unreachable == ["c"]


def test_no_regression_allows_the_configured_drop_only():
    assert gates.no_regression(0.84, 0.85, 0.02)["passed"]
    assert not gates.no_regression(0.82, 0.85, 0.02)["passed"]
    assert gates.no_regression(0.1, None, 0.02)["passed"]
