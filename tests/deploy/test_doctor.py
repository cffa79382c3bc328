"""`device doctor` verdicts on probe data of real device kinds (the simulated devices have no GPU)."""

from taoflow.deploy.doctor import diagnose, verdict
from tests.deploy.probes import cpu_device, nano, ready_nano


def by_item(checks):
    return {c.item: c for c in checks}


def test_a_nano_as_jetpack_ships_it_lacks_pycuda_trtexec_converter_plugins_swap():
    probe = nano()
    checks = by_item(diagnose(probe))
    assert checks["L4T"].found == "32.7.1 board t210ref, JetPack 4.6.x"
    assert "INT8 no (Maxwell)" in checks["GPU"].found
    assert checks["TensorRT"].state == "ok" and checks["tensorrt (Python)"].state == "ok"
    assert checks["pycuda"].state == "missing" and "pip3 install --user 'pycuda<2021.1'" in checks["pycuda"].advice
    assert checks["trtexec"].state == "missing" and "/usr/src/tensorrt/samples/trtexec" in checks["trtexec"].advice
    converter = checks["tao-converter"]
    assert converter.state == "warn" and "JetPack 4.6.x (TensorRT 8.2.1)" in converter.advice
    plugins = checks["NMS/BatchTile plugins"]
    assert plugins.state == "warn" and "TensorRT OSS release/8.2" in plugins.advice
    assert "BatchTilePlugin_TRT" in plugins.advice
    assert checks["swap"].state == "warn" and "mkswap" in checks["swap"].advice
    assert checks["power mode"].advice == "sudo nvpmodel -m 0 for full speed (MAXN)"
    assert checks["onnxruntime"].state == "missing"
    code, lines = verdict(probe, diagnose(probe))
    assert code == 1 and lines == ["ONNX packages: no"]
    assert all(c.advice for c in checks.values() if c.state in ("missing", "warn")), "every gap needs advice"


def test_a_ready_nano_passes_everything():
    probe = ready_nano()
    checks = diagnose(probe)
    assert {c.item: c.state for c in checks if c.state != "ok"} == {"onnxruntime": "info"}
    code, lines = verdict(probe, checks)
    assert code == 0 and lines == ["ONNX packages: yes, on tensorrt", "TensorRT engine builds: yes",
                                   ".etlt models: yes"]


def test_a_tao_converter_for_another_tensorrt_is_flagged():
    probe = ready_nano(tool_links={"tao-converter": {"nvinfer_major": "7", "missing": ["libnvinfer.so.7"]}})
    converter = by_item(diagnose(probe))["tao-converter"]
    assert converter.state == "missing" and converter.found.endswith("built for TensorRT 7")
    assert converter.advice == "replace it with the tao-converter build for JetPack 4.6.x (TensorRT 8.2.1)"
    missing_lib = ready_nano(tool_links={"tao-converter": {"nvinfer_major": None, "missing": ["libcrypto.so.1.1"]}})
    assert "cannot load libcrypto.so.1.1" in by_item(diagnose(missing_lib))["tao-converter"].found
    assert verdict(probe, diagnose(probe))[1][-1] == ".etlt models: no (tao-converter and the NMS/BatchTile plugins)"


def test_a_cpu_device_runs_onnx_on_onnxruntime():
    probe = cpu_device()
    checks = by_item(diagnose(probe))
    assert checks["TensorRT"].state == "info" and checks["GPU"].state == "info"
    assert "swap" not in checks  # nothing is built on a device without TensorRT
    assert verdict(probe, list(checks.values())) == (0, ["ONNX packages: yes, on onnxruntime"])


def test_a_module_that_fails_to_import_is_shown_with_its_error():
    probe = ready_nano(import_errors={"pycuda": "ImportError: libcuda.so.1: cannot open shared object file"})
    probe["modules"]["pycuda"] = None
    pycuda = by_item(diagnose(probe))["pycuda"]
    assert pycuda.state == "missing"
    assert pycuda.found == "installed, but import fails: ImportError: libcuda.so.1: cannot open shared object file"
