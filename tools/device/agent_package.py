"""Reading a model package on the device (docs/model-package.md): model.json, labels.txt, samples/expected.json.

Each check names the file and, where it can, the line, because a package that fails here was written by a host
tool or edited by hand and the user has to find the mistake from the deploy log alone.
"""

import hashlib
import os

from agent_common import AgentError, line_of, load_json, sha256_file

FORMAT = "taoflow-ssd/1"
OUTPUT_KINDS = ("decoded", "tao_nms")
RUNTIMES = ("tensorrt", "onnxruntime")
NMS_OUTPUTS = ("NMS", "NMS_1")  # a tao_nms graph's outputs: detections, keep count
NMS_PLUGIN = "NMSDynamic_TRT"  # the plugin a `graphs.tensorrt` entry names (TAO 5's SSD layout)
# What a graph's NMSDynamic_TRT attributes must say for the reference semantics the host computed expected.json
# with (TAO's SSD export; taoflow.contract.nms on the host): fixed values, then the ones model.json's nms sets.
PLUGIN_FIXED = {"shareLocation": 1, "varianceEncodedInTarget": 0, "backgroundLabelId": 0, "codeType": 1,
                "confSigmoid": 0, "isNormalized": 1, "inputOrder": [1, 2, 0]}
PLUGIN_FROM_NMS = (("confidenceThreshold", "confidence_threshold"), ("nmsThreshold", "iou_threshold"),
                   ("topK", "top_k"), ("keepTopK", "keep_top_k"))
PRECISIONS = ("fp32", "fp16", "int8")
# Files whose bytes decide what the device computes; the smoke result is bound to their digest.
CONTENT_FILES = ("model.onnx", "model.etlt", "model.engine", "model.json", "labels.txt", "samples/expected.json")
NMS_DEFAULTS = {"confidence_threshold": 0.01, "iou_threshold": 0.6, "top_k": 200, "keep_top_k": 200}


def _field(obj, key, types, path, text, where=""):
    if key not in obj:
        raise AgentError("missing field {}{}".format(where, key), path,
                         line_of(text, where.rstrip(".").split(".")[-1] or key))
    value = obj[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _tuple(types):
        raise AgentError("field {}{} has the wrong type: {!r}".format(where, key, value), path, line_of(text, key))
    return value


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def load_model_json(package):
    path = os.path.join(package, "model.json")
    meta, text = load_json(path, "model.json")
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise AgentError("format is {!r}; this agent reads {!r}".format(fmt, FORMAT), path, line_of(text, "format"))
    model_file = _field(meta, "model_file", str, path, text)
    if not os.path.isfile(os.path.join(package, model_file)):
        raise AgentError("model_file {} is not in the package".format(model_file), path, line_of(text, "model_file"))
    inp = _field(meta, "input", dict, path, text)
    for key in ("channels", "height", "width"):
        if _field(inp, key, int, path, text, "input.") <= 0:
            raise AgentError("input.{} must be positive".format(key), path, line_of(text, key))
    if inp["channels"] not in (1, 3):
        raise AgentError("input.channels must be 1 or 3", path, line_of(text, "channels"))
    # A grayscale export names its channel order GRAY (taoflow export writes it): one channel, one mean.
    orders = ("BGR", "RGB", "GRAY") if inp["channels"] == 1 else ("BGR", "RGB")
    checks = [("layout", ("NCHW",)), ("channel_order", orders), ("resize", ("stretch",)),
              ("dtype", ("float32",))]
    for key, allowed in checks:
        if inp.get(key, allowed[0]) not in allowed:
            raise AgentError("input.{} must be one of {}".format(key, ", ".join(allowed)), path, line_of(text, key))
    mean = _field(inp, "mean", list, path, text, "input.")
    if len(mean) not in (1, inp["channels"]) or not all(isinstance(m, (int, float)) for m in mean):
        raise AgentError("input.mean needs {} numbers".format(inp["channels"]), path, line_of(text, "mean"))
    _field(inp, "scale", (int, float), path, text, "input.")
    _field(inp, "name", str, path, text, "input.")
    classes = _field(meta, "classes", list, path, text)
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise AgentError("classes must be a non-empty list of names", path, line_of(text, "classes"))
    out = _field(meta, "output", dict, path, text)
    if out.get("kind") not in OUTPUT_KINDS:
        raise AgentError("output.kind must be one of {}".format(", ".join(OUTPUT_KINDS)), path,
                         line_of(text, "kind"))
    if out["kind"] == "decoded":
        _field(out, "boxes", str, path, text, "output.")
        _field(out, "scores", str, path, text, "output.")
    nms = dict(NMS_DEFAULTS)
    nms.update(meta.get("nms") or {})
    for key in ("confidence_threshold", "iou_threshold"):
        if not isinstance(nms[key], (int, float)) or not 0 <= nms[key] <= 1:
            raise AgentError("nms.{} must be a number in [0, 1]".format(key), path, line_of(text, key))
    for key in ("top_k", "keep_top_k"):
        if not isinstance(nms[key], int) or nms[key] <= 0:
            raise AgentError("nms.{} must be a positive integer".format(key), path, line_of(text, key))
    meta["nms"] = nms
    if meta.get("precision", "fp16") not in PRECISIONS:
        raise AgentError("precision must be one of {}".format(", ".join(PRECISIONS)), path,
                         line_of(text, "precision"))
    if "graphs" in meta:
        _check_graphs(package, meta, path, text)
    return meta


def _check_graphs(package, meta, path, text):
    """model.json `graphs` (docs/model-package.md): one graph per runtime, each a file in the package with an
    output this agent parses; a TensorRT plugin graph's attributes must agree with model.json's nms and classes."""
    graphs = meta["graphs"]
    if not isinstance(graphs, dict) or not graphs:
        raise AgentError("graphs must map runtimes ({}) to graphs".format(", ".join(RUNTIMES)), path,
                         line_of(text, "graphs"))
    for runtime, graph in sorted(graphs.items()):
        where = "graphs.{}.".format(runtime)
        if runtime not in RUNTIMES or not isinstance(graph, dict):
            raise AgentError("graphs.{} must be a graph of one of the runtimes {}".format(runtime, ", ".join(
                RUNTIMES)), path, line_of(text, runtime))
        model_file = _field(graph, "model_file", str, path, text, where)
        if not model_file.endswith(".onnx") or "/" in model_file or "\\" in model_file:
            raise AgentError("{}model_file must name an .onnx file beside model.json".format(where), path,
                             line_of(text, model_file))
        if not os.path.isfile(os.path.join(package, model_file)):
            raise AgentError("{}model_file {} is not in the package".format(where, model_file), path,
                             line_of(text, model_file))
        out = _field(graph, "output", dict, path, text, where)
        kind = out.get("kind")
        if kind not in OUTPUT_KINDS or runtime == "onnxruntime" and kind != "decoded":
            allowed = "decoded (ONNX Runtime has no NMS plugin)" if runtime == "onnxruntime" else " or ".join(
                OUTPUT_KINDS)
            raise AgentError("{}output.kind must be {}".format(where, allowed), path, line_of(text, runtime))
        if kind == "decoded":
            _field(out, "boxes", str, path, text, where + "output.")
            _field(out, "scores", str, path, text, where + "output.")
        else:
            names = [out.get("nms", NMS_OUTPUTS[0]), out.get("keep_count", NMS_OUTPUTS[1])]
            if names != list(NMS_OUTPUTS):
                raise AgentError("{}output names {}; a tao_nms graph's outputs are {}".format(
                    where, names, " and ".join(NMS_OUTPUTS)), path, line_of(text, runtime))
            _check_plugin(_field(graph, "plugin", dict, path, text, where), meta, where, path, text)


def _check_plugin(plugin, meta, where, path, text):
    attrs = plugin.get("attributes")
    if plugin.get("op") != NMS_PLUGIN or not isinstance(attrs, dict):
        raise AgentError("{}plugin must be {{\"op\": \"{}\", \"attributes\": {{...}}}}".format(where, NMS_PLUGIN),
                         path, line_of(text, "plugin"))
    want = dict(PLUGIN_FIXED, numClasses=len(meta["classes"]) + 1)
    for attr, key in PLUGIN_FROM_NMS:
        want[attr] = meta["nms"][key]
    for attr, value in sorted(want.items()):
        have = attrs.get(attr)
        same = (isinstance(have, (int, float)) and not isinstance(have, bool)
                and abs(float(have) - float(value)) <= 1e-6 * max(1.0, abs(float(value)))
                if isinstance(value, (int, float)) else have == value)
        if not same:
            raise AgentError("{}plugin.attributes.{} is {!r}; model.json's nms and classes say {!r}".format(
                where, attr, have, value), path, line_of(text, attr))


def select_graph(meta, runtime, plugins=None, model_file=None):
    """model.json as seen by one runtime: `model_file` and `output` of the graph it runs (`graphs`, else the
    top-level graph), with `graph` naming which one ("tensorrt", "onnxruntime" or "default").

    A TensorRT device takes `graphs.tensorrt` only when `plugins` (the creators its libnvinfer_plugin has, as the
    probe reads them) includes the graph's plugin; otherwise the top-level graph, which needs none. `model_file`
    picks the graph of that file instead (the one an existing engine was built from)."""
    graphs = meta.get("graphs") or {}
    chosen = None
    if model_file is not None:
        if model_file != meta["model_file"]:
            chosen = next((name for name, g in sorted(graphs.items()) if g["model_file"] == model_file), None)
            if chosen is None:
                raise AgentError("model.json offers no graph {} (graphs: {})".format(
                    model_file, ", ".join(g["model_file"] for g in graphs.values()) or "none"))
    elif runtime in graphs:
        plugin = (graphs[runtime].get("plugin") or {}).get("op")
        if plugin is None or plugin in (plugins or ()):
            chosen = runtime
    view = dict(meta)
    if chosen is not None:
        view.update(model_file=graphs[chosen]["model_file"], output=graphs[chosen]["output"])
    view["graph"] = chosen or "default"
    return view


def load_labels(package, classes):
    """labels.txt is 'background' then the classes (TAO's --gen_ds_config layout); it must agree with model.json."""
    path = os.path.join(package, "labels.txt")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f.read().splitlines()]
    except FileNotFoundError:
        raise AgentError("labels.txt is missing", path) from None
    while lines and not lines[-1]:
        lines.pop()
    if not lines or lines[0] != "background":
        raise AgentError("first label must be 'background'", path, 1)
    for number, (got, want) in enumerate(zip(lines[1:], classes), 2):
        if got != want:
            raise AgentError("label {!r} differs from model.json class {!r}".format(got, want), path, number)
    if len(lines) - 1 != len(classes):
        raise AgentError("{} classes here, {} in model.json".format(len(lines) - 1, len(classes)), path,
                         min(len(lines), len(classes) + 1) + 1)
    return lines


def load_expected(package, labels):
    path = os.path.join(package, "samples", "expected.json")
    expected, text = load_json(path, "samples/expected.json")
    for key in ("iou_threshold", "score_threshold"):
        value = expected.get(key)
        if not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise AgentError("{} must be a number in [0, 1]".format(key), path, line_of(text, key))
    images = expected.get("images")
    if not isinstance(images, dict) or not images:
        raise AgentError("images must map sample names to detections", path, line_of(text, "images"))
    for name, dets in images.items():
        if not os.path.isfile(os.path.join(package, "samples", name)):
            raise AgentError("sample image {} is not in samples/".format(name), path, line_of(text, name))
        if not isinstance(dets, list):
            raise AgentError("detections of {} must be a list".format(name), path, line_of(text, name))
        for det in dets:
            box = det.get("box") if isinstance(det, dict) else None
            if (not isinstance(box, list) or len(box) != 4 or det.get("label") not in labels[1:]
                    or not isinstance(det.get("confidence"), (int, float))):
                raise AgentError("detection {!r} of {} needs label (a model class), confidence and box "
                                 "[x1, y1, x2, y2]".format(det, name), path, line_of(text, name))
    return expected


def package_digest(package):
    """sha256 over (relative path, sha256) of the content files, the graphs model.json offers and the sample images
    present in the package."""
    names = [n for n in CONTENT_FILES if os.path.isfile(os.path.join(package, n))]
    names += [n for n in _graph_files(package) if n not in names and os.path.isfile(os.path.join(package, n))]
    samples = os.path.join(package, "samples")
    if os.path.isdir(samples):
        names += sorted("samples/" + n for n in os.listdir(samples)
                        if n != "expected.json" and os.path.isfile(os.path.join(samples, n)))
    h = hashlib.sha256()
    for name in names:
        h.update("{}\0{}\n".format(name, sha256_file(os.path.join(package, name))).encode())
    return h.hexdigest()


def _graph_files(package):
    """The model files of model.json's `graphs` (none when it has none or cannot be read: load_model_json, which
    every command runs first, reports that)."""
    try:
        meta = load_json(os.path.join(package, "model.json"))[0]
    except AgentError:
        return []
    graphs = meta.get("graphs") if isinstance(meta, dict) else None
    if not isinstance(graphs, dict):
        return []
    names = [g.get("model_file") for _, g in sorted(graphs.items()) if isinstance(g, dict)]
    return [n for n in names if isinstance(n, str) and "/" not in n and "\\" not in n and not n.startswith(".")]
