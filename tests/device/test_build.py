"""`build`: runtime choice, the exact tao-converter / trtexec command lines, key masking, the ONNX Runtime no-op."""

import hashlib
import json
import shutil

import agent_probe
import pytest
from agent_build import (build, choose_runtime, tensorrt_argv, trtexec_workspace_flag, workspace_mb,
                         _check_precision)
from agent_common import AgentError, redact, redact_argv
from agent_package import load_model_json
from agent_smoke import engine_graph, open_model

from tests.device.plugin_package import plugin_package

ORT = {"version": "1.10.0", "providers": ["CPUExecutionProvider"]}


@pytest.fixture
def pkg(selftest_package, tmp_path):
    return shutil.copytree(selftest_package, tmp_path / "pkg")


def test_choose_runtime():
    assert choose_runtime("auto", "model.onnx", "8.2.1", ORT) == "tensorrt"
    assert choose_runtime("auto", "model.onnx", None, ORT) == "onnxruntime"
    with pytest.raises(AgentError, match="no TensorRT on this device"):
        choose_runtime("tensorrt", "model.onnx", None, ORT)
    with pytest.raises(AgentError, match="no TensorRT on this device: a .etlt"):
        choose_runtime("auto", "model.etlt", None, ORT)
    with pytest.raises(AgentError, match="no onnxruntime"):
        choose_runtime("auto", "model.onnx", None, None)


def test_workspace_is_sized_to_free_memory():
    assert workspace_mb({"available_mb": 2400}) == 600      # a Nano with 2.4 GB free
    assert workspace_mb({"available_mb": 100}) == 64
    assert workspace_mb({"available_mb": 64000}) == 2048
    assert workspace_mb({"available_mb": 2400}, requested=256) == 256


def test_trtexec_workspace_flag_per_tensorrt_version():
    assert trtexec_workspace_flag("8.0.1", 512) == "--workspace=512"        # JetPack 4.6
    assert trtexec_workspace_flag("8.2.1", 512) == "--workspace=512"        # JetPack 4.6.1+
    assert trtexec_workspace_flag("8.5.2", 512) == "--memPoolSize=workspace:512"
    assert trtexec_workspace_flag("10.3.0", 512) == "--memPoolSize=workspace:512"


def test_int8_is_refused_on_maxwell():
    with pytest.raises(AgentError, match="INT8 needs compute capability"):
        _check_precision("int8", {"name": "NVIDIA Jetson Nano", "compute_capability": "5.3"})
    _check_precision("int8", {"name": "Xavier NX", "compute_capability": "7.2"})
    _check_precision("fp16", {"name": "NVIDIA Jetson Nano", "compute_capability": "5.3"})


def test_trtexec_command_for_onnx(pkg):
    meta = load_model_json(str(pkg))
    argv = tensorrt_argv(meta, "/p", "/p/.tmp", {"trtexec": "/usr/src/tensorrt/bin/trtexec"}, "8.2.1", 4, 600,
                         None)
    assert argv == ["/usr/src/tensorrt/bin/trtexec", "--onnx=/p/model.onnx", "--saveEngine=/p/.tmp",
                    "--workspace=600", "--fp16", "--minShapes=Input:1x3x64x64", "--optShapes=Input:4x3x64x64",
                    "--maxShapes=Input:4x3x64x64"]
    with pytest.raises(AgentError, match="trtexec not found"):
        tensorrt_argv(meta, "/p", "/p/.tmp", {}, "8.2.1", 1, 600, None)


def test_tao_converter_command_for_etlt_and_key_masking(pkg):
    meta = load_model_json(str(pkg))
    (pkg / "model.etlt").write_bytes(b"etlt")
    meta.update(model_file="model.etlt")
    meta["input"].update(height=300, width=300)
    tools = {"tao-converter": "/opt/taoflow/bin/tao-converter"}
    argv = tensorrt_argv(meta, str(pkg), "/tmp/e", tools, "8.0.1", 1, 600, "s3cr3t-key")
    assert argv == ["/opt/taoflow/bin/tao-converter", "-k", "s3cr3t-key", "-d", "3,300,300", "-o", "NMS", "-m",
                    "1", "-e", "/tmp/e", "-t", "fp16", "-w", str(600 << 20), "-i", "nchw", f"{pkg}/model.etlt"]
    assert "s3cr3t-key" not in json.dumps(redact_argv(argv, "s3cr3t-key"))
    assert redact("error: bad key s3cr3t-key", "s3cr3t-key") == "error: bad key ***"
    with pytest.raises(AgentError, match="TAOFLOW_ETLT_KEY"):
        tensorrt_argv(meta, str(pkg), "/tmp/e", tools, "8.0.1", 1, 600, None)
    with pytest.raises(AgentError, match="tao-converter not found"):
        tensorrt_argv(meta, str(pkg), "/tmp/e", {}, "8.0.1", 1, 600, "k")


def test_onnxruntime_build_is_a_verified_noop_and_reused(pkg, tmp_path):
    record = build(str(tmp_path), str(pkg))
    assert record["runtime"] == "onnxruntime" and record["engine"] is None and record["runtime_version"]
    assert json.loads((pkg / "build.json").read_text())["model_sha256"] == record["model_sha256"]
    assert build(str(tmp_path), str(pkg))["reused"] is True


def test_onnxruntime_build_fails_on_a_broken_model(pkg, tmp_path):
    (pkg / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(AgentError, match="onnxruntime cannot load the model"):
        build(str(tmp_path), str(pkg))
    assert not (pkg / "build.json").exists()


# -- which graph TensorRT builds (model.json `graphs`) -----------------------------------------------------------
FAKE_TRTEXEC = """#!/bin/sh
# records its argv and writes the engine it was asked for, as trtexec --saveEngine does
echo "$@" > "$(dirname "$0")/trtexec.args"
for a in "$@"; do case "$a" in --saveEngine=*) printf 'engine' > "${a#--saveEngine=}";; esac; done
"""


@pytest.fixture
def tensorrt_device(tmp_path, monkeypatch):
    """A TensorRT 8.2.1 device (JetPack 4.6.1) whose trtexec is a recorder; set_plugins(list) sets what the probe
    reads from its libnvinfer_plugin."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "trtexec").write_text(FAKE_TRTEXEC)
    (root / "bin" / "trtexec").chmod(0o755)
    monkeypatch.setattr(agent_probe, "tensorrt_version", lambda imports=False: "8.2.1")
    monkeypatch.setattr(agent_probe, "memory", lambda: {"available_mb": 2400, "swap_free_mb": 1900})
    monkeypatch.setattr(agent_probe, "gpu", lambda: {"name": "NVIDIA Jetson Nano", "compute_capability": "5.3"})
    scans = []

    def set_plugins(plugins):
        def library():
            scans.append(plugins)
            return None if plugins is None else {"path": "/usr/lib/libnvinfer_plugin.so.8", "plugins": plugins}
        monkeypatch.setattr(agent_probe, "plugin_library", library)
    set_plugins(None)
    return root, set_plugins, scans


def test_tensorrt_builds_the_plugin_graph_where_the_library_has_the_plugin(selftest_package, tmp_path,
                                                                          tensorrt_device):
    root, set_plugins, _ = tensorrt_device
    pkg = plugin_package(selftest_package, tmp_path / "pkg")
    set_plugins(["NMSDynamic_TRT", "NMS_TRT"])
    record = build(str(root), str(pkg))
    assert "--onnx={}/model_nms.onnx".format(pkg) in (root / "bin" / "trtexec.args").read_text().split()
    assert (record["graph"], record["graph_file"]) == ("tensorrt", "model_nms.onnx")
    # the package's model stays what the host compares (Package.model_sha256 of the top-level model_file)
    assert record["model_file"] == "model.onnx"
    assert record["model_sha256"] == hashlib_sha256(pkg / "model.onnx")
    assert record["graph_sha256"] == hashlib_sha256(pkg / "model_nms.onnx")
    assert (pkg / "model.engine").read_bytes() == b"engine"
    view = engine_graph(str(pkg), load_model_json(str(pkg)))  # what smoke and detect open the engine as
    assert (view["model_file"], view["output"]["kind"]) == ("model_nms.onnx", "tao_nms")


@pytest.mark.parametrize("plugins", [["NMS_TRT", "BatchedNMS_TRT"], None])
def test_without_the_plugin_tensorrt_builds_the_decoded_graph(selftest_package, tmp_path, tensorrt_device,
                                                              plugins):
    root, set_plugins, _ = tensorrt_device
    pkg = plugin_package(selftest_package, tmp_path / "pkg")
    set_plugins(plugins)
    record = build(str(root), str(pkg))
    assert "--onnx={}/model.onnx".format(pkg) in (root / "bin" / "trtexec.args").read_text().split()
    assert (record["graph"], record["graph_file"]) == ("default", "model.onnx")
    view = engine_graph(str(pkg), load_model_json(str(pkg)))
    assert (view["model_file"], view["output"]["kind"]) == ("model.onnx", "decoded")


def test_a_retried_build_is_reused_only_for_the_same_graph(selftest_package, tmp_path, tensorrt_device):
    root, set_plugins, _ = tensorrt_device
    pkg = plugin_package(selftest_package, tmp_path / "pkg")
    set_plugins(["NMSDynamic_TRT"])
    build(str(root), str(pkg))
    assert build(str(root), str(pkg))["reused"] is True
    set_plugins(["NMS_TRT"])  # another plugin library: the engine of the plugin graph is not this device's
    assert "reused" not in build(str(root), str(pkg))


def test_an_engine_fanned_out_without_build_json_opens_as_the_graph_this_library_selects(
        selftest_package, tmp_path, tensorrt_device):
    """The rest of a group gets the canary's model.engine only; the plugin library is part of the engine key, so the
    same library selects the same graph."""
    _, set_plugins, scans = tensorrt_device
    pkg = plugin_package(selftest_package, tmp_path / "pkg")
    meta = load_model_json(str(pkg))
    set_plugins(["NMSDynamic_TRT"])
    assert engine_graph(str(pkg), meta)["model_file"] == "model_nms.onnx"
    set_plugins(["NMS_TRT"])
    assert engine_graph(str(pkg), meta)["model_file"] == "model.onnx"
    (pkg / "build.json").write_text(json.dumps({"runtime": "tensorrt", "graph_file": "model_nms.onnx"}))
    del scans[:]
    assert engine_graph(str(pkg), meta)["model_file"] == "model_nms.onnx" and scans == []  # no library read


def test_old_packages_build_their_one_graph_without_reading_the_library(selftest_package, tmp_path,
                                                                        tensorrt_device):
    root, _, scans = tensorrt_device
    pkg = shutil.copytree(selftest_package, tmp_path / "pkg")
    record = build(str(root), str(pkg))
    assert (record["graph"], record["graph_file"]) == ("default", "model.onnx") and scans == []


def test_onnxruntime_takes_its_own_graph(selftest_package, tmp_path):
    pkg = plugin_package(selftest_package, tmp_path / "pkg")
    record = build(str(tmp_path / "root"), str(pkg))
    assert record["runtime"] == "onnxruntime" and (record["graph"], record["graph_file"]) == ("onnxruntime",
                                                                                            "model.onnx")
    model = open_model(str(pkg), load_model_json(str(pkg)))
    try:
        assert model.name == "onnxruntime" and model.graph == "onnxruntime"
    finally:
        model.close()


def hashlib_sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()
