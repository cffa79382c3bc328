"""`build`: runtime choice, the exact tao-converter / trtexec command lines, key masking, the ONNX Runtime no-op."""

import json
import shutil

import pytest
from agent_build import (build, choose_runtime, tensorrt_argv, trtexec_workspace_flag, workspace_mb,
                         _check_precision)
from agent_common import AgentError, redact, redact_argv
from agent_package import load_model_json

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
