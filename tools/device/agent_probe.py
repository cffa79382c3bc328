"""`probe`: what this device has, as the engine-compatibility key and the preflight need it.

Every probe is independent and returns None when the thing is absent or unreadable: a Nano without pycuda, a
dev box without /etc/nv_tegra_release or a container without nvpmodel still gets a full report, never a crash.

The probe reads files; it imports nothing by default. Importing numpy, OpenCV and onnxruntime costs 0.3-0.5 CPU s
on an x86 core and seconds on a Nano's A57, and `import tensorrt` maps libnvinfer onto a device that is busy
serving; every rollout probes every device. Python modules are found with importlib's finder and versioned from
their install metadata. A module that is installed but broken fails later in `build`/`smoke`, which import it for
real and say why; `probe --imports` (what `taoflow device doctor` runs) imports each one and reports the error.
"""

import glob
import hashlib
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys

import agent_store
from agent_common import AgentError, load_json

LIB_DIRS = ["/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/local/cuda/lib64", "/usr/lib64",
            "/usr/lib"]
INCLUDE_DIRS = ["/usr/include/aarch64-linux-gnu", "/usr/include/x86_64-linux-gnu", "/usr/include",
                "/usr/local/cuda/include"]
TRTEXEC_PATHS = ["/usr/src/tensorrt/bin/trtexec"]
# Tegra SoC -> CUDA compute capability of its GPU (engines are built per architecture).
TEGRA_SM = {"tegra210": "5.3", "tegra186": "6.2", "tegra194": "7.2", "tegra234": "8.7"}


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _output(argv, timeout_s=10):
    try:
        return subprocess.check_output(argv, stderr=subprocess.STDOUT, universal_newlines=True,
                                       timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None


def parse_l4t(text):
    """'# R32 (release), REVISION: 7.1, GCID: ..., BOARD: t210ref, ...' -> {'release': '32.7.1', ...}."""
    if not text:
        return None
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return None
    board = re.search(r"BOARD:\s*([\w-]+)", text)
    return {"release": "{}.{}".format(m.group(1), m.group(2)), "board": board.group(1) if board else None}


def parse_nvpmodel(text):
    """`nvpmodel -q` prints 'NV Power Mode: MAXN' then the mode id."""
    if not text:
        return None
    m = re.search(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)", text)
    if m:
        return {"name": m.group(1), "id": int(m.group(2))}
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    return {"name": m.group(1), "id": None} if m else None


def parse_version_header(text, prefix):
    """#define <prefix>MAJOR 8 / MINOR / PATCH(LEVEL) -> '8.2.1' (NvInferVersion.h, cudnn_version.h)."""
    if not text:
        return None
    parts = []
    for field in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(r"#define\s+{}{}(?:LEVEL)?\s+(\d+)".format(prefix, field), text)
        if not m:
            return None
        parts.append(m.group(1))
    return ".".join(parts)


def tensorrt_version(imports=False):
    """TensorRT's version from its header or the library's file name (both ship with JetPack), else the Python
    bindings' metadata (a pip wheel on a dev box bundles its own libraries); `imports` asks the bindings."""
    if imports:
        try:
            import tensorrt
            return tensorrt.__version__
        except Exception:  # ImportError, or a broken install raising anything while loading libnvinfer
            pass
    for d in INCLUDE_DIRS:
        v = parse_version_header(_read(os.path.join(d, "NvInferVersion.h")), "NV_TENSORRT_")
        if v:
            return v
    v = _lib_version("libnvinfer.so.")
    if v or imports:
        return v
    v = installed_version("tensorrt")
    return v if v and v != UNKNOWN else None


def _lib_version(stem):
    for d in LIB_DIRS:
        for path in sorted(glob.glob(os.path.join(d, stem + "*.*.*"))):
            return path.split(".so.", 1)[1]
    return None


def cuda_version():
    text = _read("/usr/local/cuda/version.txt")  # CUDA 10.x (JetPack 4): 'CUDA Version 10.2.300'
    if text:
        m = re.search(r"CUDA Version\s+([\d.]+)", text)
        if m:
            return m.group(1)
    text = _read("/usr/local/cuda/version.json")  # CUDA 11+
    if text:
        m = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([\d.]+)"', text)
        if m:
            return m.group(1)
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc:
        m = re.search(r"release [\d.]+, V([\d.]+)", _output([nvcc, "--version"]) or "")
        if m:
            return m.group(1)
    return None


def cudnn_version():
    for d in INCLUDE_DIRS:
        for name in ("cudnn_version.h", "cudnn.h"):  # cuDNN 8 moved the defines to cudnn_version.h
            v = parse_version_header(_read(os.path.join(d, name)), "CUDNN_")
            if v:
                return v
    return _lib_version("libcudnn.so.")


# Plugin creators a TAO SSD engine needs (NMS_TRT; BatchTilePlugin_TRT for .etlt graphs) and their relatives.
PLUGIN_NAMES = ("NMS_TRT", "NMSDynamic_TRT", "BatchTilePlugin_TRT", "BatchedNMS_TRT", "BatchedNMSDynamic_TRT")
_PLUGIN_RE = re.compile(b"(?<![A-Za-z0-9_])(" + b"|".join(n.encode() for n in PLUGIN_NAMES) + b")\x00")


def scan_library(path, chunk=1 << 20):
    """(sha256, plugin creator names found) of a shared library in one pass.

    Creator names are NUL-terminated string literals in the library's read-only data, so finding
    b"BatchTilePlugin_TRT\0" tells whether this build (stock JetPack or a TRT-OSS rebuild) has the plugin
    without loading it into the agent (loading needs CUDA and can abort the process on a broken install).
    """
    h = hashlib.sha256()
    found = set()
    tail = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
            data = tail + block
            found.update(m.group(1).decode() for m in _PLUGIN_RE.finditer(data))
            tail = data[-64:]
    return h.hexdigest(), sorted(found)


def plugin_library():
    """The resolved libnvinfer_plugin, its sha256 (a TRT-OSS rebuild changes it) and the SSD plugins it has."""
    dirs = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p] + LIB_DIRS
    for d in dirs:
        path = os.path.join(d, "libnvinfer_plugin.so")
        candidates = [path] if os.path.exists(path) else sorted(glob.glob(path + ".*"))
        for candidate in candidates:
            real = os.path.realpath(candidate)
            try:
                digest, plugins = scan_library(real)
            except OSError:
                continue
            return {"path": real, "sha256": digest, "plugins": plugins}
    return None


def gpu():
    model = _read("/proc/device-tree/model")
    compatible = _read("/proc/device-tree/compatible")
    if compatible:
        for soc, sm in TEGRA_SM.items():
            if soc in compatible:
                return {"name": (model or soc).strip("\x00 \n"), "compute_capability": sm, "soc": soc}
    out = _output(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    if out and "," in out:
        name, cc = [s.strip() for s in out.splitlines()[0].split(",", 1)]
        return {"name": name, "compute_capability": cc, "soc": None}
    return None


def memory():
    text = _read("/proc/meminfo")
    if not text:
        return None
    values = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            values[m.group(1)] = int(m.group(2)) // 1024
    return {"total_mb": values.get("MemTotal"), "available_mb": values.get("MemAvailable"),
            "swap_total_mb": values.get("SwapTotal"), "swap_free_mb": values.get("SwapFree")}


def disk(root):
    try:
        st = os.statvfs(root)
    except OSError:
        return None
    return {"path": root, "free_mb": st.f_bavail * st.f_frsize // (1 << 20),
            "total_mb": st.f_blocks * st.f_frsize // (1 << 20)}


# Distribution names a module is published under (metadata dir names, normalised to lower case and '_').
DISTRIBUTIONS = {"numpy": ("numpy",), "pycuda": ("pycuda",), "tensorrt": ("tensorrt",),
                 "onnxruntime": ("onnxruntime", "onnxruntime_gpu"),
                 "cv2": ("opencv_python", "opencv_python_headless", "opencv_contrib_python",
                         "opencv_contrib_python_headless")}
UNKNOWN = "unknown"  # installed without metadata: JetPack's apt OpenCV, a source build copied into place
_META_RE = re.compile(r"^(.+?)-(\d[^-]*?)(?:-py\d.*)?\.(?:dist-info|egg-info|egg)$")


def _normalise(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def metadata_version(location, name):
    """Version in the name of `name`'s .dist-info/.egg-info directory (or .egg) inside one sys.path entry."""
    dists = DISTRIBUTIONS.get(name, (name,))
    candidates = [os.path.basename(location)]  # a module inside pycuda-2019.1.2-py3.6-linux-aarch64.egg/
    try:
        candidates += sorted(os.listdir(location))
    except OSError:
        pass
    for entry in candidates:
        m = _META_RE.match(entry)
        if m and _normalise(m.group(1)) in dists:
            return m.group(2)
    return None


def installed_version(name):
    """Version of an importable top-level module, found without running it: UNKNOWN when it has no metadata,
    None when the interpreter would not find it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:  # a package: its directory sits in the sys.path entry
        where = list(spec.submodule_search_locations)[0]
    elif spec.origin:  # a single-file extension module such as cv2.cpython-36m-aarch64-linux-gnu.so
        where = spec.origin
    else:
        return UNKNOWN
    return metadata_version(os.path.dirname(os.path.abspath(where)), name) or UNKNOWN


def imported_version(name, errors):
    """Version of a module that really imports; its error goes into `errors` when it is installed but broken."""
    try:
        module = __import__(name)
    except Exception as e:  # pycuda raises non-ImportErrors when the CUDA driver is missing
        if installed_version(name) is not None:
            errors[name] = "{}: {}".format(type(e).__name__, e)
        return None
    return getattr(module, "__version__", None) or getattr(module, "VERSION_TEXT", None) or UNKNOWN


def module_version(name, errors=None):
    """installed_version, or imported_version when `errors` (a dict) is given."""
    return installed_version(name) if errors is None else imported_version(name, errors)


def onnxruntime_info(errors=None):
    version = module_version("onnxruntime", errors)
    if version is None:
        return None
    info = {"version": version}
    if errors is not None:  # imported: it can say which execution providers this build has
        import onnxruntime
        info["providers"] = list(onnxruntime.get_available_providers())
    return info


def tool_path(name, extra, root):
    found = shutil.which(name)
    if found:
        return found
    for path in extra + [os.path.join(root, "bin", name)]:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def parse_ldd(text):
    """`ldd` output -> {"nvinfer_major": "8" or None, "missing": [libraries not found]}: whether a tao-converter
    or trtexec build matches this device's TensorRT (a TRT 7 build on JetPack 4.6 shows libnvinfer.so.7 missing)."""
    if text is None or "not a dynamic executable" in text:
        return None
    major = re.search(r"libnvinfer\.so\.(\d+)", text)
    return {"nvinfer_major": major.group(1) if major else None,
            "missing": re.findall(r"^\s*(\S+)\s+=>\s+not found", text, re.M)}


def tool_links(tools):
    return {name: parse_ldd(_output(["ldd", path])) for name, path in sorted(tools.items()) if path}


def installed_models(root):
    """{model name: {"current": version or None, "passport": its passport}}: what a rollback would return to."""
    base = os.path.join(root, "models")
    if not os.path.isdir(base):
        return {}
    found = {}
    for name in sorted(os.listdir(base)):
        models = os.path.join(base, name)
        if agent_store.NAME_RE.match(name) and os.path.isdir(models):
            current = agent_store.current_version(models)
            passport = None
            if current is not None:
                try:
                    passport = load_json(os.path.join(models, current, "passport.json"))[0]
                except AgentError:  # missing or unreadable: the probe reports, it does not fail
                    passport = None
            found[name] = {"current": current, "passport": passport}
            service = agent_store.service_heartbeat(root, name)
            if service is not None:  # the detector service's heartbeat: the rollout's live gate reads it
                found[name]["service"] = service
    return found


def probe(root, imports=False):
    """The device report; with `imports`, modules count only if they import, and `import_errors` says why not."""
    errors = {} if imports else None
    trt = tensorrt_version(imports)
    ort = onnxruntime_info(errors)
    pycuda = module_version("pycuda", errors)
    runtimes = (["tensorrt"] if trt and pycuda else []) + (["onnxruntime"] if ort else [])
    tools = {"trtexec": tool_path("trtexec", TRTEXEC_PATHS, root),
             "tao-converter": tool_path("tao-converter", [], root)}
    report = {
        "l4t": parse_l4t(_read("/etc/nv_tegra_release")),
        "tensorrt": trt,
        "cuda": cuda_version(),
        "cudnn": cudnn_version(),
        "nvinfer_plugin": plugin_library(),
        "gpu": gpu(),
        "power_mode": parse_nvpmodel(_output(["nvpmodel", "-q"])),
        "memory": memory(),
        "disk": disk(root),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "machine": platform.machine(),
        "modules": {"numpy": module_version("numpy", errors), "cv2": module_version("cv2", errors),
                    "tensorrt": module_version("tensorrt", errors) if trt else None,
                    "pycuda": pycuda, "onnxruntime": ort},
        "tools": tools,
        "tool_links": tool_links(tools),
        "runtimes": runtimes,
        "models": installed_models(root),
        "imports_checked": imports,
    }
    if imports:
        report["import_errors"] = errors
    return report
