"""Package validation (file:line errors) and the probe's parsers of real Jetson file formats."""

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from agent_common import AgentError
from agent_package import load_expected, load_labels, load_model_json, package_digest, select_graph
from agent_probe import (UNKNOWN, installed_version, metadata_version, parse_l4t, parse_ldd, parse_nvpmodel,
                         parse_version_header, probe, scan_library)

from tests.device.conftest import AGENT_DIR
from tests.device.plugin_package import plugin_package


@pytest.fixture
def pkg(selftest_package, tmp_path):
    return shutil.copytree(selftest_package, tmp_path / "pkg")


def edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


def test_selftest_package_validates(pkg):
    meta = load_model_json(str(pkg))
    labels = load_labels(str(pkg), meta["classes"])
    assert labels == ["background", "car", "plate"]
    assert set(load_expected(str(pkg), labels)["images"]) == {"two_objects.png", "one_car.png", "empty.png"}


def test_model_json_syntax_error_names_file_and_line(pkg):
    (pkg / "model.json").write_text('{\n  "format": "taoflow-ssd/1",\n  "model_file": model.onnx\n}\n')
    with pytest.raises(AgentError) as e:
        load_model_json(str(pkg))
    assert e.value.path.endswith("model.json") and e.value.line == 3


@pytest.mark.parametrize("change, key, message", [
    (lambda m: m["input"].update(channel_order="RBG"), "channel_order", "channel_order must be one of"),
    (lambda m: m["input"].update(height=0), "height", "input.height must be positive"),
    (lambda m: m["output"].update(kind="yolo"), "kind", "output.kind"),
    (lambda m: m["input"].update(mean=[1, 2]), "mean", "input.mean needs 3"),
    (lambda m: m.update(model_file="missing.onnx"), "model_file", "not in the package"),
    (lambda m: m["nms"].update(iou_threshold=1.5), "iou_threshold", "nms.iou_threshold"),
])
def test_model_json_field_errors_point_at_the_line(pkg, change, key, message):
    edit_json(pkg / "model.json", change)
    lines = (pkg / "model.json").read_text().splitlines()
    with pytest.raises(AgentError, match=message) as e:
        load_model_json(str(pkg))
    assert f'"{key}"' in lines[e.value.line - 1]


def test_labels_must_agree_with_model_json(pkg):
    (pkg / "labels.txt").write_text("background\ncar\nbus\n")
    with pytest.raises(AgentError, match="'bus' differs") as e:
        load_labels(str(pkg), ["car", "plate"])
    assert e.value.line == 3


def test_expected_json_errors(pkg):
    edit_json(pkg / "samples" / "expected.json", lambda e: e["images"].update({"nope.png": []}))
    with pytest.raises(AgentError, match="nope.png is not in samples"):
        load_expected(str(pkg), ["background", "car", "plate"])
    edit_json(pkg / "samples" / "expected.json", lambda e: (e["images"].pop("nope.png"), e["images"].update(
        {"empty.png": [{"label": "truck", "confidence": 0.9, "box": [0, 0, 1, 1]}]})))
    with pytest.raises(AgentError, match="needs label"):
        load_expected(str(pkg), ["background", "car", "plate"])


@pytest.fixture
def two_graphs(selftest_package, tmp_path):
    return plugin_package(selftest_package, tmp_path / "two")


def test_a_package_with_both_graphs_validates_and_each_runtime_takes_its_own(two_graphs):
    meta = load_model_json(str(two_graphs))
    assert meta["model_file"] == "model.onnx" and meta["output"]["kind"] == "decoded"
    trt = select_graph(meta, "tensorrt", plugins=["NMS_TRT", "NMSDynamic_TRT"])
    assert (trt["graph"], trt["model_file"], trt["output"]["kind"]) == ("tensorrt", "model_nms.onnx", "tao_nms")
    # a plugin library without the creator (or none found): the top-level graph, which needs no plugin
    for plugins in (["NMS_TRT", "BatchTilePlugin_TRT"], None):
        view = select_graph(meta, "tensorrt", plugins=plugins)
        assert (view["graph"], view["model_file"], view["output"]["kind"]) == ("default", "model.onnx", "decoded")
    ort = select_graph(meta, "onnxruntime")
    assert (ort["graph"], ort["model_file"], ort["output"]["kind"]) == ("onnxruntime", "model.onnx", "decoded")
    # the graph an engine was built from
    assert select_graph(meta, "tensorrt", model_file="model_nms.onnx")["output"]["kind"] == "tao_nms"
    assert select_graph(meta, "tensorrt", model_file="model.onnx")["graph"] == "default"
    with pytest.raises(AgentError, match="model.json offers no graph other.onnx"):
        select_graph(meta, "tensorrt", model_file="other.onnx")
    assert meta["input"] is trt["input"] and "graphs" in trt  # one input, one preprocessing for every graph


def test_an_old_package_runs_its_one_graph_everywhere(pkg):
    meta = load_model_json(str(pkg))
    for runtime, plugins in (("tensorrt", ["NMSDynamic_TRT"]), ("onnxruntime", None)):
        view = select_graph(meta, runtime, plugins)
        assert (view["graph"], view["model_file"], view["output"]) == ("default", "model.onnx", meta["output"])


@pytest.mark.parametrize("change, key, message", [
    (lambda g: g.update(bogus=g["tensorrt"]), "bogus", "graphs.bogus must be a graph of one of the runtimes"),
    (lambda g: g["tensorrt"].update(model_file="gone.onnx"), "gone.onnx", "model_file gone.onnx is not in"),
    (lambda g: g["tensorrt"].update(model_file="../model.onnx"), "../model.onnx", "must name an .onnx file"),
    (lambda g: g["onnxruntime"].update(output={"kind": "tao_nms"}), "onnxruntime", "ONNX Runtime has no NMS"),
    (lambda g: g["tensorrt"]["output"].update(nms="detections"), "tensorrt", "outputs are NMS and NMS_1"),
    (lambda g: g["tensorrt"].pop("plugin"), "tensorrt", "missing field graphs.tensorrt.plugin"),
    (lambda g: g["tensorrt"]["plugin"]["attributes"].update(nmsThreshold=0.45), "nmsThreshold",
     "nmsThreshold is 0.45; model.json's nms and classes say 0.6"),
    (lambda g: g["tensorrt"]["plugin"]["attributes"].update(numClasses=2), "numClasses", "numClasses is 2"),
    (lambda g: g["tensorrt"]["plugin"]["attributes"].update(inputOrder=[0, 1, 2]), "inputOrder", "inputOrder"),
])
def test_graph_errors_point_at_the_line(two_graphs, change, key, message):
    edit_json(two_graphs / "model.json", lambda m: change(m["graphs"]))
    lines = (two_graphs / "model.json").read_text().splitlines()
    with pytest.raises(AgentError, match=message) as e:
        load_model_json(str(two_graphs))
    assert e.value.line is not None and f'"{key}"' in lines[e.value.line - 1]


def test_the_digest_covers_every_graph(two_graphs):
    before = package_digest(str(two_graphs))
    (two_graphs / "model_nms.onnx").write_bytes(b"another plugin graph")
    assert package_digest(str(two_graphs)) != before


def test_package_digest_changes_with_content_but_not_with_device_outputs(pkg):
    before = package_digest(str(pkg))
    (pkg / "smoke.json").write_text("{}")
    (pkg / "passport.json").write_text("{}")
    assert package_digest(str(pkg)) == before
    (pkg / "samples" / "one_car.png").write_bytes(b"x")
    assert package_digest(str(pkg)) != before


def test_parse_l4t_nv_tegra_release():
    text = ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 "
            "17:05:08 UTC 2022\n# KERNEL_VARIANT: oot\n")
    assert parse_l4t(text) == {"release": "32.7.1", "board": "t210ref"}
    assert parse_l4t("garbage") is None and parse_l4t(None) is None


def test_parse_nvpmodel_query():
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert parse_nvpmodel("NVPM WARN: ...\nNV Power Mode: 5W\n1\n") == {"name": "5W", "id": 1}
    assert parse_nvpmodel("") is None


def test_parse_version_headers():
    trt = "#define NV_TENSORRT_MAJOR 8 //!< major\n#define NV_TENSORRT_MINOR 2\n#define NV_TENSORRT_PATCH 1\n"
    assert parse_version_header(trt, "NV_TENSORRT_") == "8.2.1"
    cudnn = "#define CUDNN_MAJOR 8\n#define CUDNN_MINOR 2\n#define CUDNN_PATCHLEVEL 1\n"
    assert parse_version_header(cudnn, "CUDNN_") == "8.2.1"
    assert parse_version_header("#define CUDNN_MAJOR 8\n", "CUDNN_") is None


def test_probe_reports_absent_things_as_null(tmp_path):
    report = probe(str(tmp_path))
    assert report["python"]["version"] and report["disk"]["free_mb"] > 0 and report["memory"]["total_mb"] > 0
    assert "onnxruntime" in report["runtimes"]
    for key in ("l4t", "tensorrt", "nvinfer_plugin", "power_mode"):  # not a Jetson: null, not a crash
        assert report[key] is None, key
    assert report["tools"] == {"trtexec": None, "tao-converter": None}


def test_module_versions_come_from_install_metadata_without_importing(tmp_path, monkeypatch):
    site = tmp_path / "site"
    for name in ("numpy-1.13.3.egg-info", "opencv_python_headless-4.5.4.60.dist-info",
                 "onnxruntime_gpu-1.10.0.dist-info", "tensorrt-8.2.1.8.dist-info"):
        (site / name).mkdir(parents=True)  # apt egg-info, pip wheels, JetPack's bindings
    assert metadata_version(str(site), "numpy") == "1.13.3"
    assert metadata_version(str(site), "cv2") == "4.5.4.60"
    assert metadata_version(str(site), "onnxruntime") == "1.10.0"
    assert metadata_version(str(site), "tensorrt") == "8.2.1.8"
    assert metadata_version(str(site), "pycuda") is None
    assert metadata_version(str(site / "pycuda-2019.1.2-py3.6-linux-aarch64.egg"), "pycuda") == "2019.1.2"

    # A module that would crash if run is still found and versioned; one without metadata is UNKNOWN.
    (site / "crashmod").mkdir()
    (site / "crashmod" / "__init__.py").write_text("raise RuntimeError('CUDA driver missing')\n")
    (site / "crashmod-2.0.dist-info").mkdir()
    (site / "bare_ext.py").write_text("raise RuntimeError('never run')\n")
    monkeypatch.syspath_prepend(str(site))
    assert installed_version("crashmod") == "2.0" and "crashmod" not in sys.modules
    assert installed_version("bare_ext") == UNKNOWN and installed_version("no_such_module_here") is None


def test_probe_imports_nothing_unless_asked_and_then_reports_broken_modules(tmp_path):
    site = tmp_path / "site"
    (site / "pycuda").mkdir(parents=True)
    (site / "pycuda" / "__init__.py").write_text("raise RuntimeError('cuInit failed: no CUDA-capable device')\n")
    (site / "pycuda-2020.1.dist-info").mkdir()
    script = ("import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import agent_probe as a; "
              "r = a.probe(sys.argv[3], imports=sys.argv[4] == '1'); "
              "r['loaded'] = sorted(m for m in ('numpy', 'cv2', 'onnxruntime', 'pycuda') if m in sys.modules); "
              "print(json.dumps(r))")

    def run(imports):
        out = subprocess.run([sys.executable, "-c", script, str(AGENT_DIR), str(site), str(tmp_path), imports],
                             capture_output=True, text=True, check=True, timeout=120).stdout
        return json.loads(out)

    light = run("0")
    assert light["loaded"] == [] and light["imports_checked"] is False and "import_errors" not in light
    assert light["modules"]["pycuda"] == "2020.1" and light["modules"]["onnxruntime"]["version"]
    deep = run("1")
    assert deep["loaded"] == ["cv2", "numpy", "onnxruntime"] and deep["modules"]["pycuda"] is None
    assert deep["import_errors"] == {"pycuda": "RuntimeError: cuInit failed: no CUDA-capable device"}
    assert deep["modules"]["onnxruntime"]["providers"] and deep["runtimes"] == ["onnxruntime"]


def test_plugin_creators_are_found_in_the_library_bytes(tmp_path):
    lib = tmp_path / "libnvinfer_plugin.so.8.2.1"
    # Creator names as the compiler lays out string literals; one straddles the scan's chunk boundary.
    blob = b"\x7fELF" + b"\0" * 40 + b"BatchedNMS_TRT\0NMS_TRT\0xNMSDynamic_TRT\0" + b"\0" * 17
    blob += b"BatchTilePlugin_TRT\0NMS_TRT_extra\0"
    lib.write_bytes(blob)
    digest, found = scan_library(str(lib), chunk=64)
    assert found == ["BatchTilePlugin_TRT", "BatchedNMS_TRT", "NMS_TRT"]
    assert digest == hashlib.sha256(blob).hexdigest()


def test_ldd_output_tells_which_tensorrt_a_tool_was_built_for():
    trt7 = ("\tlinux-vdso.so.1 (0x0000ffff)\n\tlibnvinfer.so.7 => not found\n"
            "\tlibnvinfer_plugin.so.7 => not found\n\tlibc.so.6 => /lib/aarch64-linux-gnu/libc.so.6 (0x0000ffff)\n")
    assert parse_ldd(trt7) == {"nvinfer_major": "7", "missing": ["libnvinfer.so.7", "libnvinfer_plugin.so.7"]}
    ok = "\tlibnvinfer.so.8 => /usr/lib/aarch64-linux-gnu/libnvinfer.so.8 (0x0000ffff)\n"
    assert parse_ldd(ok) == {"nvinfer_major": "8", "missing": []}
    assert parse_ldd("\tnot a dynamic executable\n") is None and parse_ldd(None) is None


def test_probe_lists_installed_models_with_their_passports(pkg, tmp_path):
    from agent_smoke import smoke
    from agent_store import activate, staging_dir

    root = str(tmp_path / "root")
    shutil.copytree(str(pkg), staging_dir(root, "lpd", "v1"))
    smoke(root, staging_dir(root, "lpd", "v1"), iterations=1)
    activate(root, "lpd", "v1", wave=0)
    models = probe(root)["models"]
    assert models["lpd"]["current"] == "v1" and models["lpd"]["passport"]["wave"] == 0


def test_grayscale_exports_may_name_their_channel_order_gray(pkg):
    def gray(meta):
        meta["input"].update(channels=1, channel_order="GRAY", mean=[117.0])
    edit_json(pkg / "model.json", gray)
    assert load_model_json(str(pkg))["input"]["channel_order"] == "GRAY"
    edit_json(pkg / "model.json", lambda m: m["input"].update(channels=3, mean=[1.0, 2.0, 3.0]))
    with pytest.raises(AgentError, match="input.channel_order must be one of BGR, RGB"):
        load_model_json(str(pkg))
