"""The NMS-plugin export: the graph TAO 5's SSD export builds (NMSDynamic_TRT appended with onnx-graphsurgeon), its
checks (ONNX Runtime against PyTorch up to the plugin, attributes against the spec, TensorRT's parser per release),
model.json's two graphs, and the DeepStream config its TAO SSD parser runs as is."""

import configparser
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from taoflow.backends.native.build import anchors_for, build_model
from taoflow.backends.native.checkpoint import save_checkpoint
from taoflow.backends.native.evaluate import load_model_for
from taoflow.backends.native.export import (DS_PARSE_FUNC, DS_PARSER_LIB, DS_PARSER_LIB_ENV, PluginInputs,
                                            check_plugin_graph, export_onnx, up_to_plugin)
from taoflow.contract.model_package import graphs_problems
from taoflow.contract.nms import nms_plugin
from taoflow.contract.trt_ops import TARGET_RELEASES, parser_problems
from taoflow.deploy.package_builder import PluginHostModel
from taoflow.errors import TaoflowError
from taoflow.etlt import onnx_facts
from taoflow.spec import load_experiment
from tests.backends.native.conftest import cli, write_spec


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained checkpoint of the tiny spec (export needs weights, not a good model) and its spec."""
    root = tmp_path_factory.mktemp("plugin-export")
    spec_path = write_spec(root / "spec.txt", root / "data")
    spec = load_experiment(spec_path, task="export")
    torch.manual_seed(3)
    model, arch = build_model(spec)
    save_checkpoint(root / "ssd.pth", model, arch, spec.classes, epoch=1)
    return spec_path, root / "ssd.pth"


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    spec_path, model_path = checkpoint
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    written = export_onnx(spec_path, model_path, out, gen_ds_config=True, data_type="fp16")
    return written, json.loads(out.with_name("model.json").read_text())


def _node(model):
    (node,) = [n for n in model.graph.node if n.op_type == "NMSDynamic_TRT"]
    return node, {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_the_plugin_graph_ends_as_tao5s_export(exported, checkpoint):
    written, meta = exported
    model = onnx.load(written["onnx_nms"])
    node, attrs = _node(model)
    spec = load_experiment(checkpoint[0], task="export")
    nms = spec.effective.nms_config
    assert node.name == "NMS" and list(node.input) == ["anchor_data", "loc_data", "conf_data"]
    assert [o.name for o in model.graph.output] == ["NMS", "NMS_1"]  # DeepStream's parser takes them by position
    # NMS_1 declared float like TAO's graph: the plugin's output type; an INT32 declaration would convert the bits
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT] * 2
    dims = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert dims == [["batch", 1, nms.top_k, 7], ["batch", 1, 1, 1]]
    assert attrs == {"shareLocation": 1, "varianceEncodedInTarget": 0, "backgroundLabelId": 0, "codeType": 1,
                     "confSigmoid": 0, "isNormalized": 1, "inputOrder": [1, 2, 0], "numClasses": 2,
                     "confidenceThreshold": pytest.approx(nms.confidence_threshold),
                     "nmsThreshold": pytest.approx(nms.clustering_iou_threshold), "topK": 2 * nms.top_k,
                     "keepTopK": nms.top_k, "scoreBits": nms.infer_nms_score_bits}
    # the parser converts attributes by their ONNX type and the creator asserts kINT32 / kFLOAT32 per field
    kinds = {a.name: a.type for a in node.attribute}
    assert kinds["confidenceThreshold"] == kinds["nmsThreshold"] == onnx.AttributeProto.FLOAT
    assert kinds["topK"] == kinds["keepTopK"] == onnx.AttributeProto.INT
    assert kinds["inputOrder"] == onnx.AttributeProto.INTS
    assert onnx.load(written["onnx"]).ir_version == model.ir_version  # both load where the decoded one does


def test_model_json_offers_both_graphs_and_keeps_the_decoded_one_on_top(exported):
    written, meta = exported
    assert meta["model_file"] == "model.onnx" and meta["output"]["kind"] == "decoded"  # what older agents run
    graphs = meta["graphs"]
    assert graphs["onnxruntime"] == {"model_file": "model.onnx", "output": meta["output"]}
    assert graphs["tensorrt"]["model_file"] == "model_nms.onnx"
    assert graphs["tensorrt"]["output"] == {"kind": "tao_nms", "nms": "NMS", "keep_count": "NMS_1"}
    _, attrs = _node(onnx.load(written["onnx_nms"]))

    def as_read(values):  # TensorRT reads the thresholds as float32
        return {k: np.float32(v) if isinstance(v, float) else v for k, v in values.items()}
    assert graphs["tensorrt"]["plugin"]["op"] == "NMSDynamic_TRT"
    assert as_read(graphs["tensorrt"]["plugin"]["attributes"]) == as_read(attrs)
    assert graphs_problems(meta, exists=lambda name: (os.path.exists(os.path.join(
        os.path.dirname(written["onnx"]), name)))) == []


def test_up_to_the_plugin_onnx_runtime_gives_pytorchs_inputs(exported, checkpoint):
    written, _ = exported
    spec, model, arch = load_model_for(checkpoint[0], checkpoint[1], task="export")
    inputs = PluginInputs(model, anchors_for(spec, arch["nlayers"]), spec.variances).eval()
    cut, _ = up_to_plugin(onnx.load(written["onnx_nms"]))
    batch = np.random.default_rng(5).normal(0, 60, (3, 3, 96, 96)).astype(np.float32)  # batch 3: dynamic axis
    got = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["anchor_data", "loc_data", "conf_data"], {"Input": batch})
    want = inputs.plugin_inputs(torch.from_numpy(batch))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    anchors, loc, conf = got
    count = loc.shape[1] // 4
    assert anchors.shape == (3, 2, count * 4, 1) and conf.shape == (3, count * 2, 1, 1)
    np.testing.assert_array_equal(anchors[2, 1, :8, 0], np.tile(spec.variances, 2).astype(np.float32))


def test_the_two_graphs_detect_the_same_with_the_plugins_semantics(exported, checkpoint):
    """The plugin decodes CENTER_SIZE with its priorbox's variances, then NMS: on the plugin graph's inputs that is
    the decoded graph's boxes and scores, so one expected.json serves TensorRT and ONNX Runtime devices. The
    untrained model predicts boxes far larger than their anchors: both graphs cap them alike (box_coder's
    MAX_LOG_RATIO; in the plugin graph a Min before the plugin)."""
    from taoflow.backends.native.box_coder import MAX_LOG_RATIO

    written, meta = exported
    spec = load_experiment(checkpoint[0], task="export")
    batch = np.random.default_rng(6).normal(0, 60, (2, 3, 96, 96)).astype(np.float32)
    boxes, scores = ort.InferenceSession(written["onnx"], providers=["CPUExecutionProvider"]).run(
        ["boxes", "scores"], {"Input": batch})
    plugin = PluginHostModel(open(written["onnx_nms"], "rb").read(), meta, written["onnx_nms"])
    p_boxes, p_scores = plugin.run(batch)
    loc = plugin.session.run(["loc_data"], {"Input": batch})[0].reshape(2, -1, 4)
    capped = np.isclose(loc[..., 2:] * np.float32(spec.variances[2:]), MAX_LOG_RATIO).any(-1)
    assert capped.any()  # the case is exercised
    np.testing.assert_allclose(p_scores, scores, atol=1e-6)
    np.testing.assert_allclose(p_boxes, boxes, atol=1e-4)
    nms = meta["nms"]
    args = (nms["confidence_threshold"], nms["iou_threshold"], nms["top_k"], nms["keep_top_k"])
    rows, keep = nms_plugin(boxes, scores, *args)
    p_rows, p_keep = nms_plugin(p_boxes, p_scores, *args)
    np.testing.assert_array_equal(keep, p_keep)
    np.testing.assert_allclose(rows, p_rows, atol=1e-4)


@pytest.mark.parametrize("release", TARGET_RELEASES)
def test_the_plugin_export_passes_the_parser_and_plugin_check_of(exported, release):
    """TensorRT 8.0 (JetPack 4.6), 8.2 (4.6.1+) and 10: every op parses and NMSDynamic_TRT is registered."""
    written, _ = exported
    for graph in ("onnx", "onnx_nms"):
        facts = onnx_facts(onnx.load(written[graph]))
        assert parser_problems(facts["ops"], facts["opset"], release, facts["plugins"]) == []
    assert onnx_facts(onnx.load(written["onnx_nms"]))["plugins"] == ["NMSDynamic_TRT"]


@pytest.mark.parametrize("release, missing", [("7.2.3", "TensorRT 7.2.3's plugin library has no NMSDynamic_TRT"),
                                              ("11.0", "TensorRT 11.0's plugin library has no NMSDynamic_TRT")])
def test_releases_without_the_creator_are_told_apart(exported, release, missing):
    facts = onnx_facts(onnx.load(exported[0]["onnx_nms"]))
    problems = parser_problems(facts["ops"], facts["opset"], release, facts["plugins"])
    assert any(p.startswith(missing) and "TensorRT 8.0 to 10.x" in p for p in problems), problems


def _checked(model, checkpoint, static=-1):
    spec, net, arch = load_model_for(checkpoint[0], checkpoint[1], task="export")
    nms_config = spec.effective.nms_config
    nms = {"confidence_threshold": 0.01, "iou_threshold": 0.6, "top_k": 2 * nms_config.top_k,
           "keep_top_k": nms_config.top_k}
    inputs = PluginInputs(net, anchors_for(spec, arch["nlayers"]), spec.variances).eval()
    check_plugin_graph(model, inputs, spec, nms, static, "model_nms.onnx")


def test_the_check_refuses_attributes_that_disagree_with_the_spec(exported, checkpoint):
    model = onnx.load(exported[0]["onnx_nms"])
    _checked(model, checkpoint)  # as exported: passes
    node, _ = _node(model)
    for attr in node.attribute:
        if attr.name == "nmsThreshold":
            attr.f = 0.5
        if attr.name == "topK":
            attr.CopyFrom(helper.make_attribute("topK", 100.0))  # a FLOAT where the creator asserts kINT32
    with pytest.raises(TaoflowError) as e:
        _checked(model, checkpoint)
    assert "nmsThreshold is 0.5, expected 0.6" in str(e.value) and "topK: must be an integer" in str(e.value)


def test_the_check_refuses_plugin_inputs_that_differ_from_pytorch(exported, checkpoint):
    model = onnx.load(exported[0]["onnx_nms"])
    (prior,) = [t for t in model.graph.initializer if t.name == "prior"]
    values = numpy_helper.to_array(prior).copy()
    values[0, 1] *= 2  # variances doubled: the plugin would decode every box wrong
    prior.CopyFrom(numpy_helper.from_array(values, "prior"))
    with pytest.raises(TaoflowError, match="anchor_data from ONNX Runtime differs from PyTorch's"):
        _checked(model, checkpoint)


def test_static_batch_export_and_nothing_is_overwritten(checkpoint, tmp_path):
    spec_path, model_path = checkpoint
    written = export_onnx(spec_path, model_path, tmp_path / "m.onnx", static_batch_size=2)
    model = onnx.load(written["onnx_nms"])
    assert written["onnx_nms"].endswith("m_nms.onnx")
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [2, 1, 50, 7]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 96, 96]
    (tmp_path / "again.onnx").unlink(missing_ok=True)
    (tmp_path / "again_nms.onnx").write_bytes(b"someone else's")
    with pytest.raises(TaoflowError, match="again_nms.onnx already exists"):
        export_onnx(spec_path, model_path, tmp_path / "again.onnx")
    assert not (tmp_path / "again.onnx").exists()
    assert (tmp_path / "again_nms.onnx").read_bytes() == b"someone else's"


def test_cli_prints_both_graphs(checkpoint, tmp_path):
    code, out = cli("export", "-e", checkpoint[0], "-m", checkpoint[1], "-o", tmp_path / "model.onnx")
    assert code == 0, out
    assert f"onnx_nms: {tmp_path / 'model_nms.onnx'}" in out and f"onnx: {tmp_path / 'model.onnx'}" in out


# -- DeepStream ----------------------------------------------------------------------------------------------------

def _ds_config(path):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(path.read_text())
    return parser


def test_gen_ds_config_is_what_deepstreams_tao_ssd_parser_runs_as_is(exported):
    """deepstream_tao_apps' SSD config with NvDsInferParseCustomNMSTLT (post_processor/
    nvdsinfer_custombboxparser_tao.cpp): exactly two output buffers, NMS rows [image_id, label, confidence,
    xmin, ymin, xmax, ymax] scaled by the network size, keep count as int, `label < num-detected-classes`
    asserted, threshold perClassThreshold[0] (pre-cluster-threshold)."""
    written, meta = exported
    out_dir = os.path.dirname(written["onnx"])
    config = _ds_config(Path(written["nvinfer_config"]))
    prop = config["property"]
    assert prop["onnx-file"] == "model_nms.onnx" and os.path.isfile(os.path.join(out_dir, prop["onnx-file"]))
    assert prop["output-blob-names"] == "NMS"
    assert prop["parse-bbox-func-name"] == DS_PARSE_FUNC == "NvDsInferParseCustomNMSTLT"
    assert os.path.isabs(prop["custom-lib-path"]) and prop["custom-lib-path"].endswith(
        "/post_processor/libnvds_infercustomparser_tao.so")
    assert prop["cluster-mode"] == "3"  # NMS is done in the graph
    assert float(prop["net-scale-factor"]) == meta["input"]["scale"] == 1.0  # caffe mode: no scaling
    assert [float(v) for v in prop["offsets"].split(";")] == pytest.approx(meta["input"]["mean"])
    assert prop["model-color-format"] == "1"  # BGR
    assert prop["infer-dims"] == "3;96;96" and prop["maintain-aspect-ratio"] == "0"
    assert prop["network-mode"] == "2"  # fp16
    labels = open(os.path.join(out_dir, prop["labelfile-path"])).read().split()
    assert labels == ["background"] + meta["classes"]
    # plugin labels run 1..len(classes) (background 0 dropped), and the parser asserts label < num-detected-classes
    assert int(prop["num-detected-classes"]) == len(labels) == meta["graphs"]["tensorrt"]["plugin"][
        "attributes"]["numClasses"]
    assert float(config["class-attrs-all"]["pre-cluster-threshold"]) > meta["nms"]["confidence_threshold"]
    model = onnx.load(written["onnx_nms"])
    assert [o.name for o in model.graph.output][0] == prop["output-blob-names"]
    assert len(model.graph.output) == 2  # the parser refuses any other count


def test_the_parser_library_can_be_named(exported, monkeypatch, tmp_path):
    from taoflow.backends.native.export import write_ds_config

    _, meta = exported
    assert _ds_config(Path(exported[0]["nvinfer_config"]))["property"][
        "custom-lib-path"] == DS_PARSER_LIB
    monkeypatch.setenv(DS_PARSER_LIB_ENV, "/opt/ds/lib/libnvds_infercustomparser_tao.so")
    written = write_ds_config(tmp_path, dict(meta, precision="int8"))
    prop = _ds_config(Path(written["nvinfer_config"]))["property"]
    assert prop["custom-lib-path"] == "/opt/ds/lib/libnvds_infercustomparser_tao.so"
    assert prop["network-mode"] == "1" and prop["int8-calib-file"] == "cal.bin"
