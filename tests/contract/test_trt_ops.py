"""The TensorRT parser and plugin tables, per release (taoflow.contract.trt_ops: the sources are in its docstring)."""

import pytest

from taoflow.contract.trt_ops import (PLUGIN_RELEASES, TARGET_RELEASES, parser_problems, plugin_in_release,
                                      trt_max_opset, trt_supported_ops, unsupported_ops, version_tuple)


@pytest.mark.parametrize("plugin, present, absent", [
    # JetPack 4.6 / 4.6.1 and TensorRT 10 have TAO 5's NMS plugin; 7.2 (JetPack 4.5) did not; 11.0 dropped it
    ("NMSDynamic_TRT", ["8.0.1", "8.2.1", "8.6.1", "10.3.0", "10.13.3"], ["7.1.3", "7.2.3", "11.0"]),
    ("NMS_TRT", ["5.1.5", "7.1.3", "8.0.1", "8.2.1", "10.3.0"], ["5.0", "11.0"]),
    ("BatchTilePlugin_TRT", ["6.0.1", "8.0.1", "10.3.0"], ["5.1.5", "11.1"]),
    ("BatchedNMSDynamic_TRT", ["7.2.1", "8.2.1", "10.0.0"], ["7.1.3", "11.0"]),
    ("EfficientNMS_TRT", ["8.0.1", "8.2.1", "10.3.0", "11.0"], ["7.2.3"]),
])
def test_which_releases_register_each_plugin_creator(plugin, present, absent):
    assert [plugin_in_release(plugin, v) for v in present] == [True] * len(present)
    assert [plugin_in_release(plugin, v) for v in absent] == [False] * len(absent)


def test_an_unknown_creator_is_in_no_release():
    assert not plugin_in_release("MyNMS_TRT", "8.2.1") and "MyNMS_TRT" not in PLUGIN_RELEASES


def test_the_target_releases_are_jetpack_4_and_tensorrt_10():
    assert [version_tuple(v) for v in TARGET_RELEASES] == [(8, 0), (8, 2), (10, 3)]


def test_parser_problems_name_ops_plugins_and_opset():
    ops = {"Conv", "ScatterND", "NMSDynamic_TRT"}
    assert parser_problems(ops, 13, "8.2.1", plugins=["NMSDynamic_TRT"]) == []
    assert parser_problems(ops, 13, "8.0.1", plugins=["NMSDynamic_TRT"]) == [
        "TensorRT 8.0.1's ONNX parser does not support ScatterND"]
    assert parser_problems({"Conv", "NMSDynamic_TRT"}, 15, "7.2.3", plugins=["NMSDynamic_TRT"]) == [
        "TensorRT 7.2.3's plugin library has no NMSDynamic_TRT (it is in TensorRT 8.0 to 10.x)",
        "ONNX opset 15 is newer than TensorRT 7.2.3 parses (11); export with --target_opset 11"]
    # a device's own library decides where the probe read it: the release table is then not consulted
    assert parser_problems({"Conv", "NMSDynamic_TRT"}, 13, "11.0", plugins=["NMSDynamic_TRT"],
                           check_release=False) == []
    # a plugin op not handed to a plugin (a decoded graph has none) is an op the parser lacks
    assert parser_problems({"Conv", "NMSDynamic_TRT"}, 13, "8.2.1") == [
        "TensorRT 8.2.1's ONNX parser does not support NMSDynamic_TRT"]


def test_operator_support_and_opsets_follow_the_release():
    assert "Celu" not in trt_supported_ops("7.1.3") and "Celu" in trt_supported_ops("8.0.1")
    assert "NonMaxSuppression" not in trt_supported_ops("10.3.0")
    assert [trt_max_opset(v) for v in ("7.1.3", "8.0.1", "8.2.1", "10.3.0")] == [11, 13, 13, 17]
    assert unsupported_ops({"Conv", "NonMaxSuppression", "NMSDynamic_TRT"}) == ["NonMaxSuppression"]
