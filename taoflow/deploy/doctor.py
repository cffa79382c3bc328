"""`taoflow device doctor`: what a device has and lacks for taoflow deploys, with one line of advice per gap.

Pure functions over the agent's probe report, so every verdict is testable with a Nano-like probe dict. A real
Jetson Nano on JetPack 4.6 typically has TensorRT 8.0/8.2 and its Python bindings, numpy and OpenCV, but no
pycuda (pip-built), trtexec only as a sample to compile, no tao-converter (an NGC download per JetPack), the
libnvinfer_plugin JetPack ships (TAO's docs have .etlt SSD users replace it with a TensorRT OSS build for
BatchTilePlugin_TRT; the probe reads which plugin creators the library really has), and 2 GB of zram swap, which
a 4 GB board needs more of for engine builds.
"""

from dataclasses import dataclass

from .preflight import ETLT_PLUGINS, MIN_BUILD_MEMORY_MB, version_tuple

# L4T release (major, minor) -> (JetPack, TensorRT it ships): what the tao-converter and plugin builds must match.
JETPACK = {(32, 4): ("4.4", "7.1.3"), (32, 5): ("4.5", "7.1.3"), (32, 6): ("4.6", "8.0.1"),
           (32, 7): ("4.6.x", "8.2.1"), (35, 1): ("5.0.2", "8.4.1"), (35, 2): ("5.1", "8.5.2"),
           (35, 3): ("5.1.1", "8.5.2"), (35, 4): ("5.1.2", "8.5.2"), (35, 5): ("5.1.3", "8.5.2"),
           (36, 3): ("6.0", "8.6.2"), (36, 4): ("6.1+", "10.3")}
MIN_SWAP_MB = 2048   # a 4 GB Nano building an SSD engine next to a running desktop needs about this much
MIN_DISK_MB = 1024


@dataclass
class Check:
    item: str
    state: str       # ok | missing (blocks deploys) | warn (limits them) | info
    found: str
    advice: str = ""


def jetpack(probe):
    release = version_tuple((probe.get("l4t") or {}).get("release"))
    return JETPACK.get(release) if release else None


def diagnose(probe):
    """[Check] for one probe report, in the order a person would fix things."""
    checks = []
    add = checks.append
    modules, tools = probe.get("modules") or {}, probe.get("tools") or {}
    errors = probe.get("import_errors") or {}
    links = probe.get("tool_links") or {}

    def absent(module):  # installed but failing to import says more than "absent", and needs another fix
        return f"installed, but import fails: {errors[module]}" if module in errors else "absent"

    runtimes = probe.get("runtimes") or []
    trt = probe.get("tensorrt")
    jp = jetpack(probe)
    jp_text = f"JetPack {jp[0]} (TensorRT {jp[1]})" if jp else "this JetPack"

    l4t = probe.get("l4t")
    add(Check("L4T", "ok" if l4t else "info", f"{l4t['release']} board {l4t.get('board')}" + (
        f", JetPack {jp[0]}" if jp else "") if l4t else "not a Jetson (no /etc/nv_tegra_release)"))
    py = (probe.get("python") or {}).get("version")
    add(Check("Python", "ok" if py and version_tuple(py) >= (3, 6) else "missing", py or "unknown",
              "" if py and version_tuple(py) >= (3, 6) else "the agent needs Python 3.6+ as `python` in the inventory"))
    for module, advice in (("numpy", "sudo apt install python3-numpy"), ("cv2", "sudo apt install python3-opencv")):
        add(Check(module, "ok" if modules.get(module) else "missing", modules.get(module) or absent(module),
                  "" if modules.get(module) else advice))

    gpu = probe.get("gpu")
    cc = version_tuple((gpu or {}).get("compute_capability"))
    if gpu:
        note = "; fp16 yes, INT8 no (Maxwell): deploy fp16 exports" if cc and cc < (6, 1) else ""
        add(Check("GPU", "ok", f"{gpu.get('name')} sm_{gpu.get('compute_capability')}{note}"))
    else:
        add(Check("GPU", "info", "no CUDA GPU found", "models run on onnxruntime (CPU) here"))

    if trt:
        add(Check("TensorRT", "ok", trt))
        has_module = modules.get("tensorrt")
        add(Check("tensorrt (Python)", "ok" if has_module else "missing", has_module or absent("tensorrt"),
                  "" if has_module else "sudo apt install python3-libnvinfer (JetPack's TensorRT bindings)"))
        pycuda = modules.get("pycuda")
        add(Check("pycuda", "ok" if pycuda else "missing", pycuda or absent("pycuda"), "" if pycuda else
                  "PATH=/usr/local/cuda/bin:$PATH pip3 install --user 'pycuda<2021.1' (TensorRT 8.x samples' pin)"))
        checks += _build_tools(tools, links, trt, jp_text)
        checks.append(_plugins(probe.get("nvinfer_plugin"), trt))
    else:
        state = "info" if "onnxruntime" in runtimes else "missing"
        add(Check("TensorRT", state, "absent", "install JetPack's TensorRT (sudo apt install nvidia-tensorrt); "
                  "without it models run on onnxruntime (CPU)" if gpu or l4t else "CPU device: onnxruntime runs"))
    ort = (modules.get("onnxruntime") or {}).get("version")
    if ort:
        add(Check("onnxruntime", "ok", ort))
    else:
        add(Check("onnxruntime", "info" if "tensorrt" in runtimes else "missing", absent("onnxruntime"),
                  "only needed without TensorRT: pip3 install onnxruntime (1.10.0 is the last for Python 3.6)"))
    checks += _resources(probe, bool(trt))
    power = probe.get("power_mode")
    if power and l4t and power.get("name") != "MAXN":
        add(Check("power mode", "info", power.get("name"), "sudo nvpmodel -m 0 for full speed (MAXN)"))
    return checks


def _build_tools(tools, links, trt, jp_text):
    found = []
    trtexec = tools.get("trtexec")
    found.append(Check("trtexec", "ok" if trtexec else "missing", trtexec or "absent", "" if trtexec else
                       "cd /usr/src/tensorrt/samples/trtexec && sudo make (builds /usr/src/tensorrt/bin/trtexec)"))
    converter = tools.get("tao-converter")
    if not converter:
        found.append(Check("tao-converter", "warn", "absent", f"only for .etlt models: download the aarch64 "
                           f"tao-converter for {jp_text} from NGC into <device root>/bin/ and chmod +x it"))
        return found
    link = links.get("tao-converter") or {}
    major = str(version_tuple(trt, 1)[0])
    if link.get("nvinfer_major") and link["nvinfer_major"] != major:
        found.append(Check("tao-converter", "missing", f"{converter}, built for TensorRT {link['nvinfer_major']}",
                           f"replace it with the tao-converter build for {jp_text}"))
    elif link.get("missing"):
        found.append(Check("tao-converter", "missing", f"{converter}, cannot load {', '.join(link['missing'])}",
                           f"replace it with the tao-converter build for {jp_text}"))
    else:
        found.append(Check("tao-converter", "ok", converter))
    return found


def _plugins(library, trt):
    if library is None:
        return Check("libnvinfer_plugin", "missing", "absent", "reinstall TensorRT (libnvinfer-plugin8)")
    have = library.get("plugins") or []
    lacking = [p for p in ETLT_PLUGINS if p not in have]
    found = f"{library.get('path')} ({', '.join(have) or 'no SSD plugins'})"
    if not lacking:
        return Check("NMS/BatchTile plugins", "ok", found)
    minor = ".".join(str(v) for v in version_tuple(trt))
    return Check("NMS/BatchTile plugins", "warn", found,
                 f"only for .etlt/TAO NMS engines: build libnvinfer_plugin from TensorRT OSS release/{minor} "
                 f"(lacks {', '.join(lacking)}) and replace {library.get('path')}")


def _resources(probe, builds):
    found = []
    memory = probe.get("memory") or {}
    swap = memory.get("swap_total_mb")
    if swap is not None and builds:
        ok = swap >= MIN_SWAP_MB
        found.append(Check("swap", "ok" if ok else "warn", f"{swap} MiB", "" if ok else
                           "engine builds need swap: sudo fallocate -l 4G /swapfile && sudo chmod 600 /swapfile && "
                           "sudo mkswap /swapfile && sudo swapon /swapfile (and add it to /etc/fstab)"))
    free = (memory.get("available_mb") or 0) + (memory.get("swap_free_mb") or 0)
    if memory:
        ok = free >= MIN_BUILD_MEMORY_MB or not builds
        found.append(Check("free RAM + swap", "ok" if ok else "warn", f"{free} MiB", "" if ok else
                           f"a build needs {MIN_BUILD_MEMORY_MB} MiB: stop services (sudo systemctl isolate "
                           f"multi-user.target drops the desktop)"))
    disk = probe.get("disk")
    if disk:
        ok = disk["free_mb"] >= MIN_DISK_MB
        found.append(Check("free disk", "ok" if ok else "warn", f"{disk['free_mb']} MiB under {disk['path']}",
                           "" if ok else "free space there: fewer kept versions (keep) or remove files"))
    return found


def verdict(probe, checks):
    """(exit code, lines): 0 when the device can take taoflow's ONNX packages, 1 when something blocks that."""
    runtimes = probe.get("runtimes") or []
    state = {c.item: c.state for c in checks}
    onnx = bool(runtimes) and all(state.get(m) == "ok" for m in ("numpy", "cv2", "Python"))
    lines = [f"ONNX packages: {'yes, on ' + ' and '.join(runtimes) if onnx else 'no'}"]
    if "tensorrt" in runtimes:
        lines.append(f"TensorRT engine builds: {'yes' if state.get('trtexec') == 'ok' else 'no (trtexec)'}")
        etlt = state.get("tao-converter") == "ok" and state.get("NMS/BatchTile plugins") == "ok"
        lines.append(f".etlt models: {'yes' if etlt else 'no (tao-converter and the NMS/BatchTile plugins)'}")
    return (0 if onnx else 1), lines
