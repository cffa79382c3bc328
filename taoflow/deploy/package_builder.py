"""Build a deployable model package (docs/model-package.md) from an export directory.

export dir (the model, model.json, labels.txt, optionally nvinfer_config.txt and cal.bin) + candidate sample
images + a passport -> a package directory with samples/ and samples/expected.json, written atomically.

expected.json holds what a correct device must reproduce on the samples:
- a native export (output kind `decoded`): the detections the host computes with the exported ONNX through ONNX
  Runtime, the way the device computes them (model.json's preprocessing, TensorRT NMS-plugin semantics with the
  package's own nms settings, the plugin's output layout, boxes in original-image pixels) but by the host's
  implementation (taoflow.contract.nms), not by the agent's code: a bug on either side then fails the
  smoke test instead of being copied into the expectation. When the export also offers a plugin graph for
  TensorRT devices (model.json `graphs.tensorrt`, ending in NMSDynamic_TRT), that graph runs too, up to the plugin
  in ONNX Runtime and the plugin's decoding and NMS by the reference, and must give the same detections on every
  candidate image: one expected.json serves both graphs;
- TAO's own export (output kind `tao_nms`: NMS is a TensorRT plugin): when the host can read the graph (a .etlt
  decoded with its key, or a plain TAO 5 ONNX given without labels), the graph up to the plugin node runs in ONNX
  Runtime and the plugin's decoding and NMS (its own attributes from the node) run in taoflow's reference
  implementation; otherwise (no key, or a TAO 3/4 UFF payload) the detections TAO's `ssd inference` wrote for those
  images as KITTI label files, from the model that was exported (`reference_labels`).

A `.etlt` (TAO's, or a native `export --etlt`) is decoded on the host with NVIDIA's codec (taoflow.etlt) and the
decoded ONNX's operators, plugins, opset and IR version go into the package's model.json (`etlt`), so preflight
checks them against each group's TensorRT as for a plain ONNX. `etlt_devices="onnxruntime"` packages a native .etlt
export for ONNX Runtime devices instead: they cannot build a .etlt (no TensorRT, and the codec does not install on
their Python 3.6), so the package ships the ONNX decoded on the host (checked against the payload's sha256).
"""

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np

from .. import etlt as codec
from ..contract.model_package import FORMAT, graph_files, graph_for, graphs_problems
from ..contract.nms import NMS_PLUGIN, TAO_FIXED_ATTRIBUTES, nms_plugin, parse_nms_output
from ..fsutil import atomic_dir, sha256_file
from .errors import DeployError
from .package import load_package

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
OPTIONAL_FILES = ("nvinfer_config.txt", "cal.bin")
PASSPORT_FORMAT = "taoflow-passport/1"
# Host detections this far below score_threshold are kept in expected.json: a device detection that scores a
# little higher than the host's must find its partner there, or the rule would count it as unexpected.
RECORD_MARGIN = 0.1


def read_export(export_dir):
    """model.json of an export dir, checked for what the host needs to run it; labels.txt must agree."""
    export_dir = Path(export_dir)
    path = export_dir / "model.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if any(export_dir.glob("*.etlt")) or any(export_dir.glob("*.onnx")):
            # TAO's own export made outside taoflow: taoflow's TAO backend writes model.json beside it
            raise DeployError("no model.json: this looks like TAO's own export; write it with `python -m "
                              "taoflow.backends.tao.model_json -e SPEC -m MODEL` (taoflow's TAO backend does so "
                              "on export)", path=path) from None
        raise DeployError("no model.json: export with `taoflow-ssd export ... --gen_ds_config`", path=path) from None
    except json.JSONDecodeError as e:
        raise DeployError(f"invalid JSON: {e.msg}", path=path, line=e.lineno) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DeployError(f"not a {FORMAT} model.json", path=path)
    for field, message in graphs_problems(meta, exists=lambda name: (export_dir / name).is_file()):
        raise DeployError(f"{field}: {message}", path=path)
    model_file, kind = str(meta.get("model_file", "")), (meta.get("output") or {}).get("kind")
    native_etlt = model_file.endswith(".etlt") and isinstance(meta.get("etlt"), dict)
    if kind == "decoded" and not (model_file.endswith(".onnx") or native_etlt):
        raise DeployError(f"output kind 'decoded' is taoflow's ONNX export; model_file {model_file!r} is not .onnx "
                          f"(nor a .etlt of `export --etlt`, whose model.json has an `etlt` section)", path=path)
    if kind == "tao_nms" and not model_file.endswith((".onnx", ".etlt")):
        raise DeployError(f"output kind 'tao_nms' is TAO's .onnx or .etlt export, not {model_file!r}", path=path)
    if kind not in ("decoded", "tao_nms"):
        raise DeployError(f"output kind {kind!r}: model packages hold 'decoded' (taoflow) or 'tao_nms' (TAO) "
                          f"models", path=path)
    if not (export_dir / model_file).is_file():
        raise DeployError(f"model_file {model_file} is not in {export_dir}", path=path)
    labels_path = export_dir / "labels.txt"
    if not labels_path.is_file():
        raise DeployError("no labels.txt: export with --gen_ds_config", path=labels_path)
    labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if labels != ["background"] + list(meta.get("classes") or []):
        raise DeployError(f"labels.txt {labels} disagrees with model.json classes {meta.get('classes')}",
                          path=labels_path)
    return meta


def preprocess(image_bgr, inp):
    """One BGR image -> float32 [C, H, W] per model.json: plain resize, channel order, minus mean, times scale."""
    resized = cv2.resize(image_bgr, (int(inp["width"]), int(inp["height"])), interpolation=cv2.INTER_LINEAR)
    if int(inp["channels"]) == 1:
        pixels = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif inp.get("channel_order", "BGR") == "RGB":
        pixels = resized[:, :, ::-1]
    else:
        pixels = resized
    mean = np.asarray(inp["mean"], np.float32).reshape(1, 1, -1)
    return ((pixels.astype(np.float32) - mean) * np.float32(inp.get("scale", 1.0))).transpose(2, 0, 1)


def _session(model, path):
    """An ONNX Runtime CPU session of a model file or its bytes."""
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(model if isinstance(model, bytes) else str(model),
                                            providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise DeployError(f"onnxruntime cannot load the model: {str(e).splitlines()[0]}", path=path) from None


class HostModel:
    """The exported ONNX in ONNX Runtime (CPU) followed by the NMS plugin's semantics and layout.

    `model`: the model file, or its bytes (a .etlt decoded on the host; `path` names the file for errors)."""

    def __init__(self, model, meta, path=None):
        import onnxruntime

        model_path = path or model
        self.meta = meta
        self.version = onnxruntime.__version__
        self.session = _session(model, model_path)
        dim = self.session.get_inputs()[0].shape[0]
        self.static = isinstance(dim, int) and dim > 0  # a static-batch export runs in its batch, zero-padded
        self.batch = dim if self.static else 8
        nms = meta.get("nms") or {}
        self.nms = (nms.get("confidence_threshold", 0.01), nms.get("iou_threshold", 0.6), nms.get("top_k", 200),
                    nms.get("keep_top_k", 200))
        if self.nms[3] > self.nms[2]:
            raise DeployError(f"nms keep_top_k {self.nms[3]} > top_k {self.nms[2]}: TensorRT's NMS plugin writes no "
                              f"output then; re-export", path=model_path)

    def detect(self, images, floor):
        """[(name, BGR image)] -> {name: detections with confidence >= floor, in original-image pixels}."""
        inp = self.meta["input"]
        found = {}
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            size = self.batch if self.static else len(chunk)
            batch = np.zeros((size, int(inp["channels"]), int(inp["height"]), int(inp["width"])), np.float32)
            for i, (_, image) in enumerate(chunk):
                batch[i] = preprocess(image, inp)
            boxes, scores = self.run(batch)
            rows, keep = nms_plugin(boxes, scores, *self.nms)
            for i, (name, image) in enumerate(chunk):
                height, width = image.shape[:2]
                dets = parse_nms_output(rows, keep, i, width, height, self.meta["classes"], floor)
                found[name] = [{"label": d["label"], "confidence": round(d["confidence"], 4),
                                "box": [round(v, 2) for v in d["box"]]} for d in dets]
        return found

    def run(self, batch):
        """float32 [N, C, H, W] -> (boxes [N, A, 4] normalised corners, scores [N, A, C+1])."""
        out = self.meta["output"]
        return self.session.run([out["boxes"], out["scores"]], {self.meta["input"]["name"]: batch})


# The NMS plugin nodes TAO's SSD exports end in (TAO 5 ONNX and taoflow's plugin graph: NMSDynamic_TRT; NMS_TRT in
# older graphs), and the attribute values TAO's exporter sets that the host's reference implementation assumes
# (taoflow.contract.nms; any inputOrder permutation is followed).
NMS_PLUGINS = (NMS_PLUGIN, "NMS_TRT")
TAO_NMS_ATTRS = {k: v for k, v in TAO_FIXED_ATTRIBUTES.items() if k != "inputOrder"}
# Detections of the plugin graph and of the decoded graph, both on the host in float32, may differ by rounding only.
GRAPH_CONFIDENCE_TOLERANCE = 0.01


class PluginHostModel(HostModel):
    """TAO's graph ending in the NMS plugin: the graph up to the plugin in ONNX Runtime, then the plugin's own work
    on the host — CENTER_SIZE decoding of loc_data against the priors and variances in its priorbox input
    (TensorRT's decodeBBoxes with varianceEncodedInTarget=0), then taoflow's reference NMS with the node's
    confidenceThreshold, nmsThreshold, topK and keepTopK — laid out as the plugin's output."""

    def __init__(self, onnx_bytes, meta, path):
        import onnx
        import onnxruntime
        from onnx import helper

        try:
            model = onnx.load_model_from_string(onnx_bytes)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError: not an ONNX model
            raise DeployError("not an ONNX model", path=path) from None
        nodes = [n for n in model.graph.node if n.op_type in NMS_PLUGINS]
        if len(nodes) != 1:
            raise DeployError(f"the graph has {len(nodes)} NMS plugin nodes ({' or '.join(NMS_PLUGINS)}); the host "
                              f"computes expectations for a graph that ends in exactly one", path=path)
        node = nodes[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        odd = {k: attrs.get(k) for k, v in TAO_NMS_ATTRS.items() if k in attrs and attrs[k] != v}
        if odd:
            raise DeployError(f"{node.op_type} attributes {odd} differ from TAO's SSD export "
                              f"({ {k: TAO_NMS_ATTRS[k] for k in odd} }): the host's reference NMS does not "
                              f"implement them", path=path)
        order = list(attrs.get("inputOrder") or [0, 1, 2])
        if sorted(order) != [0, 1, 2] or len(node.input) != 3:
            raise DeployError(f"{node.op_type} needs 3 inputs (loc, conf, priorbox) and an inputOrder permutation; "
                              f"this one has inputs {list(node.input)}, inputOrder {order}", path=path)
        self.loc, self.conf, self.prior = (node.input[i] for i in order)
        self.num_classes = int(attrs.get("numClasses", len(meta["classes"]) + 1))
        if self.num_classes != len(meta["classes"]) + 1:
            raise DeployError(f"{node.op_type} has numClasses {self.num_classes}, model.json has "
                              f"{len(meta['classes'])} classes + background", path=path)
        kept = [n for n in model.graph.node if n is not node]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        del model.graph.output[:]
        model.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                                  for name in (self.loc, self.conf, self.prior))
        self.meta = meta
        self.version = onnxruntime.__version__
        self.session = _session(model.SerializeToString(), path)
        self.plugin = node.op_type
        self.nms = (float(attrs.get("confidenceThreshold", 0.01)), float(attrs.get("nmsThreshold", 0.6)),
                    int(attrs.get("topK", 400)), int(attrs.get("keepTopK", 200)))
        dim = self.session.get_inputs()[0].shape[0]
        self.static = isinstance(dim, int) and dim > 0
        self.batch = dim if self.static else 8
        if self.nms[3] > self.nms[2]:
            raise DeployError(f"{node.op_type} keepTopK {self.nms[3]} > topK {self.nms[2]}: TensorRT's NMS plugin "
                              f"writes no output then", path=path)

    def run(self, batch):
        loc, conf, prior = self.session.run([self.loc, self.conf, self.prior],
                                            {self.session.get_inputs()[0].name: batch})
        n = batch.shape[0]
        loc = loc.reshape(n, -1, 4).astype(np.float32)
        scores = conf.reshape(n, -1, self.num_classes).astype(np.float32)
        prior = prior.reshape(prior.shape[0], 2, -1, 4)[0].astype(np.float32)  # [0]: boxes, [1]: variances
        anchors, variances = prior[0], prior[1]
        if anchors.shape[0] != loc.shape[1] or scores.shape[1] != loc.shape[1]:
            raise DeployError(f"{self.plugin} inputs disagree: {loc.shape[1]} boxes, {scores.shape[1]} score rows, "
                              f"{anchors.shape[0]} priors")
        pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        pcx, pcy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        with np.errstate(over="ignore"):
            cx = variances[:, 0] * loc[..., 0] * pw + pcx
            cy = variances[:, 1] * loc[..., 1] * ph + pcy
            w = np.exp(variances[:, 2] * loc[..., 2]) * pw
            h = np.exp(variances[:, 3] * loc[..., 3]) * ph
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).astype(np.float32)
        return boxes, scores


def check_plugin_graph(graph_path, meta, candidates, detections, floor, score_threshold, iou_threshold):
    """The export's plugin graph must detect what its decoded graph detects on the candidates (both on the host:
    the plugin graph up to NMSDynamic_TRT in ONNX Runtime, then the reference decoding and NMS with the node's own
    attributes), or the one expected.json would be wrong for the TensorRT devices that run it. Returns what
    expected.json's `host.graphs` records; raises DeployError naming the differences."""
    try:
        graph = graph_path.read_bytes()
    except OSError as e:
        raise DeployError(f"cannot read the plugin graph: {e.strerror}", path=graph_path) from None
    model = PluginHostModel(graph, meta, graph_path)
    found = model.detect([(p.name, im) for p, im in candidates], floor)
    problems = []
    for name in sorted(detections):
        for src, dst, where in ((detections[name], found[name], graph_path.name),
                                (found[name], detections[name], meta["model_file"])):
            problems += [f"{name}: {d['label']} {d['box']} ({d['confidence']}) has no partner in {where}"
                         for d in _unpartnered(src, dst, score_threshold, iou_threshold)]
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise DeployError(f"{graph_path.name} ({model.plugin}) and {meta['model_file']} disagree on the sample "
                          f"candidates: {'; '.join(problems[:10])}{more}", path=graph_path)
    return {graph_path.name: f"up to {model.plugin} in onnxruntime, then taoflow's reference decoding and NMS: "
                             f"the same detections as {meta['model_file']} on {len(candidates)} images"}


def _unpartnered(src, dst, score_threshold, iou_threshold):
    """Detections of `src` above score_threshold with no partner in `dst`: same label, confidence within
    GRAPH_CONFIDENCE_TOLERANCE, and the same box (IoU >= iou_threshold, or corners within half a pixel: a box
    clipped flat at the image border has no area to overlap with)."""
    alone, used = [], set()
    for det in sorted(src, key=lambda d: -d["confidence"]):
        partner = next((i for i, other in enumerate(dst) if i not in used and other["label"] == det["label"]
                        and abs(other["confidence"] - det["confidence"]) <= GRAPH_CONFIDENCE_TOLERANCE
                        and (max(abs(a - b) for a, b in zip(other["box"], det["box"])) <= 0.5
                             or _iou(other["box"], det["box"]) >= iou_threshold)), None)
        if partner is not None:
            used.add(partner)
        elif det["confidence"] > score_threshold:
            alone.append(det)
    return alone


def _iou(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def read_kitti_detections(path, classes):
    """TAO `ssd inference` label file -> detections: `<class> 0 0 0 x1 y1 x2 y2 0 0 0 0 0 0 0 <confidence>` per
    line, boxes in original-image pixels (the contract doc §5)."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 16:
            raise DeployError(f"a TAO inference label line has 16 fields (class, 14 KITTI values, confidence); "
                              f"this one has {len(fields)}", path=path, line=number)
        if fields[0] not in classes:
            raise DeployError(f"class {fields[0]!r} is not one of the model's classes {classes}", path=path,
                              line=number)
        try:
            box, confidence = [float(v) for v in fields[4:8]], float(fields[15])
        except ValueError:
            raise DeployError("box and confidence must be numbers", path=path, line=number) from None
        found.append({"label": fields[0], "confidence": round(confidence, 4), "box": [round(v, 2) for v in box]})
    return sorted(found, key=lambda d: -d["confidence"])


def reference_detections(candidates, labels_dir, classes):
    """{image name: detections} from TAO's inference labels for the candidates that have a label file (TAO writes
    one per image it ran; an image without one was not run and proves nothing)."""
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise DeployError(f"reference label directory {labels_dir} not found")
    found = {}
    for path, _ in candidates:
        label = labels_dir / f"{path.stem}.txt"
        if label.is_file():
            found[path.name] = read_kitti_detections(label, classes)
    if not found:
        raise DeployError(f"no label file in {labels_dir} matches a sample image (TAO's inference writes "
                          f"<image stem>.txt per image)")
    return found


def list_images(images):
    """Candidate sample images: a directory's .jpg/.jpeg/.png files, or a list of files; sorted by name."""
    if isinstance(images, (str, Path)):
        folder = Path(images)
        if not folder.is_dir():
            raise DeployError(f"sample image directory {folder} not found")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    else:
        paths = sorted((Path(p) for p in images), key=lambda p: p.name)
    paths = [p for p in paths if not p.name.startswith(".")]  # load_package never ships dot files
    names = [p.name for p in paths]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise DeployError(f"two sample images are named {duplicate}; samples/ is one flat directory")
    if not paths:
        raise DeployError(f"no .jpg/.jpeg/.png sample images in {images}")
    return paths


def evenly_spaced(items, count):
    """`count` of `items` spread from the first to the last (all of them when there are no more)."""
    if len(items) <= count:
        return list(items)
    if count <= 1:
        return list(items[:max(count, 0)])
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def pick_samples(detections, count, score_threshold):
    """Names of the smoke set: images where the host detects something above score_threshold, spread over the
    candidates, plus one image with no such detection (it proves the device adds nothing). A smoke set of empty
    images would only prove that the model loads."""
    names = sorted(detections)
    positive = [n for n in names if any(d["confidence"] > score_threshold for d in detections[n])]
    negative = [n for n in names if n not in set(positive)]
    want_negative = 1 if negative and count > 1 else 0
    chosen = evenly_spaced(positive, count - want_negative)
    chosen += evenly_spaced(negative, count - len(chosen))
    return sorted(chosen)


def expected_text(expected):
    """expected.json with one detection per line: reviewable in a diff, and the agent's errors name a line."""
    head = json.dumps({k: v for k, v in expected.items() if k != "images"}, ensure_ascii=False)[1:-1]
    images = []
    for name, dets in expected["images"].items():
        rows = ",\n".join("    " + json.dumps(d, ensure_ascii=False) for d in dets)
        images.append(f"  {json.dumps(name, ensure_ascii=False)}: " + (f"[\n{rows}\n  ]" if dets else "[]"))
    return "{" + head + ',\n "images": {\n' + ",\n".join(images) + "\n }}\n"


def open_etlt(export_dir, meta, key):
    """Decode the export's .etlt with `key` (taoflow.etlt.Decoded); None without a key. A native export's model.json
    records the payload's sha256, so a wrong key is told apart from the model for certain."""
    if not key:
        return None
    expect = (meta.get("etlt") or {}).get("payload_sha256")
    try:
        return codec.decode_bytes(export_dir / meta["model_file"], key, expect_sha256=expect)
    except codec.CodecUnavailable as e:
        raise DeployError(f"cannot open {meta['model_file']} on the host: {e}") from None
    except codec.EtltError as e:
        raise DeployError(e.message, path=e.path) from None


def etlt_facts(decoded):
    """What preflight needs of a decoded .etlt, for the package's model.json (`etlt`)."""
    facts = {"payload": decoded.payload, "input_name": decoded.input_name, "payload_sha256": decoded.sha256}
    if decoded.payload == "onnx":
        f = decoded.facts
        facts.update(ops=sorted(set(f["ops"]) | set(f["plugins"])), plugins=f["plugins"], opset=f["opset"],
                     ir_version=f["ir_version"], inputs=f["inputs"], outputs=f["outputs"])
    return facts


def build_package(export_dir, dest, images, *, passport=None, count=8, score_threshold=0.3, iou_threshold=0.5,
                  max_candidates=64, replace=False, reference_labels=None, reference_threshold=0.3, etlt_key=None,
                  etlt_devices="tensorrt"):
    """Write a model package to `dest` and return it loaded (taoflow.deploy.Package).

    `images`: a directory (e.g. the validation images) or a list of image files; up to `max_candidates` of them,
    spread over the sorted list, are run on the host and `count` become samples/. `passport`: the dict the
    pipeline made (content keys from raw data to this export), written as passport.json.
    `reference_labels`: for TAO's own export, the `labels/` directory TAO's `ssd inference` wrote for these images
    with the exported model, at `reference_threshold` (its -t); used when the host cannot run the graph (a .etlt
    without its key, a UFF payload); ignored for a native export, which the host runs.
    `etlt_key`: the key of a .etlt export (default $TAO_MODEL_KEY), to decode it on the host (never written
    anywhere). `etlt_devices`: "tensorrt" ships the .etlt (built on the device by tao-converter); "onnxruntime"
    ships a native .etlt export's ONNX decoded on the host, for ONNX Runtime devices.
    """
    export_dir = Path(export_dir)
    if etlt_devices not in ("tensorrt", "onnxruntime"):
        raise DeployError(f"etlt_devices {etlt_devices!r}: choose tensorrt or onnxruntime")
    export = _Export(export_dir, read_export(export_dir), etlt_key, etlt_devices)
    export.check_runnable(reference_labels)
    if export.tao and export.host_graph is None and score_threshold < reference_threshold + RECORD_MARGIN:
        # expected.json must hold detections down to score_threshold - RECORD_MARGIN, and TAO wrote none below
        # its own threshold
        log.info("score threshold %.2f -> %.2f: TAO's inference labels stop at %.2f", score_threshold,
                 reference_threshold + RECORD_MARGIN, reference_threshold)
        score_threshold = round(reference_threshold + RECORD_MARGIN, 4)
    if passport is not None and not isinstance(passport, dict):
        raise DeployError(f"passport must be a dict, not {type(passport).__name__}")
    if count < 1 or not 0 <= score_threshold <= 1 or not 0 < iou_threshold <= 1:
        raise DeployError("count must be >= 1 and score/iou thresholds in [0, 1]")
    candidates = read_candidates(images, max_candidates)
    detections, host = export.host_detections(candidates, max(0.0, score_threshold - RECORD_MARGIN), score_threshold,
                                              iou_threshold, reference_labels, reference_threshold)
    chosen = pick_samples(detections, count, score_threshold)
    if not any(d["confidence"] > score_threshold for n in chosen for d in detections[n]):
        log.warning("no sample image has a host detection above %s: the smoke test will only prove that the "
                    "model runs and detects nothing", score_threshold)
    expected = {"iou_threshold": iou_threshold, "score_threshold": score_threshold,
                "images": {name: detections[name] for name in chosen},
                "host": dict(host, model_sha256=export.shipped_sha256())}
    by_name = {p.name: p for p, _ in candidates}
    with atomic_dir(dest, replace=replace) as tmp:
        export.write_model(tmp)
        (tmp / "samples").mkdir()
        for name in chosen:
            shutil.copy2(by_name[name], tmp / "samples" / name)
        (tmp / "samples" / "expected.json").write_text(expected_text(expected), encoding="utf-8")
        lineage = passport if passport is not None else {"format": PASSPORT_FORMAT, "stages": {}}
        (tmp / "passport.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("model package %s: %d samples, %d expected detections above %s", dest, len(chosen),
             sum(1 for n in chosen for d in detections[n] if d["confidence"] > score_threshold), score_threshold)
    return load_package(dest)


def read_candidates(images, max_candidates):
    """[(path, BGR image)] of up to max_candidates readable images spread over the sorted list."""
    candidates = []
    for path in evenly_spaced(list_images(images), max_candidates):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("skipping %s: not a readable image", path)
            continue
        candidates.append((path, image))
    if not candidates:
        raise DeployError(f"none of the sample images in {images} could be read")
    return candidates


class _Export:
    """An export as the package builder sees it: what it is (native or TAO's, plain or .etlt), what the host can
    run of it to compute the smoke expectations, and which files ship."""

    def __init__(self, export_dir, meta, etlt_key, etlt_devices):
        self.dir, self.meta = export_dir, meta
        self.tao = meta["output"]["kind"] == "tao_nms"
        self.model_path = export_dir / meta["model_file"]
        self.is_etlt = self.model_path.suffix == ".etlt"
        self.decoded = open_etlt(export_dir, meta, etlt_key or codec.key_from_env()) if self.is_etlt else None
        self.ship_onnx = self.is_etlt and etlt_devices == "onnxruntime"
        # the host runs the graph: always for a native export; for TAO's, when it decoded an ONNX .etlt (ending in
        # the NMS plugin, which the host replaces by its reference implementation)
        self.host_graph = self.decoded.data if self.tao and self.decoded is not None and \
            self.decoded.payload == "onnx" else None

    def check_runnable(self, reference_labels):
        """Refuse an export whose smoke expectations nothing can compute, or that cannot ship as asked."""
        model_path, decoded = self.model_path, self.decoded
        if self.is_etlt and decoded is None and not self.tao:
            raise DeployError(f"{model_path} is encrypted: give its key (etlt_key, or $TAO_MODEL_KEY) so the host "
                              f"can decode it and compute the smoke expectations")
        if self.ship_onnx and (self.tao or decoded is None or decoded.payload != "onnx"):
            raise DeployError(f"{model_path}: only a native .etlt export (an ONNX payload without the NMS plugin) "
                              f"can be shipped decoded to ONNX Runtime devices; TAO's graph needs TensorRT's NMS "
                              f"plugin")
        if self.tao and self.host_graph is None and reference_labels is None:
            why = {None: "", "uff": " (a UFF payload: TAO 3/4)"}.get(decoded and decoded.payload, "")
            hint = "" if decoded is not None or not self.is_etlt else \
                "; or the .etlt's key (ONNX payload), to run it on the host"
            raise DeployError(f"{model_path} is TAO's export{why}, which only TensorRT runs: give the labels TAO's "
                              f"`ssd inference` wrote for the sample images (reference_labels){hint}")

    def host_detections(self, candidates, floor, score_threshold, iou_threshold, reference_labels,
                        reference_threshold):
        """({image name: detections down to floor}, the host record of expected.json): TAO's inference labels,
        or the graph run on the host (for a native export also its plugin graph, which must agree)."""
        if self.tao and self.host_graph is None:
            return (reference_detections(candidates, reference_labels, list(self.meta["classes"])),
                    {"runtime": "tao ssd inference", "threshold": reference_threshold})
        if self.tao:
            model = PluginHostModel(self.host_graph, self.meta, self.model_path)
            return (model.detect([(p.name, im) for p, im in candidates], floor),
                    {"runtime": "onnxruntime", "runtime_version": model.version,
                     "graph": f"up to {model.plugin}, then taoflow's reference decoding and NMS with its attributes"})
        model = HostModel(self.decoded.data if self.decoded is not None else self.model_path, self.meta,
                          self.model_path)
        detections = model.detect([(p.name, im) for p, im in candidates], floor)
        host = {"runtime": "onnxruntime", "runtime_version": model.version}
        plugin_graph = graph_for(self.meta, "tensorrt") if "graphs" in self.meta else None
        if plugin_graph is not None and plugin_graph["output"]["kind"] == "tao_nms":
            host["graphs"] = check_plugin_graph(self.dir / plugin_graph["model_file"], self.meta, candidates,
                                                detections, floor, score_threshold, iou_threshold)
        return detections, host

    def shipped_sha256(self):
        return self.decoded.sha256 if self.ship_onnx else sha256_file(self.model_path)

    def write_model(self, tmp):
        """The model file(s), model.json (with what the host learnt from a decoded .etlt, never the key), labels
        and the optional files into the package directory being written."""
        meta = self.meta
        if self.decoded is not None:
            meta = dict(meta, etlt=dict(meta.get("etlt") or {}, **etlt_facts(self.decoded)))
        shipped = meta["model_file"]
        if self.ship_onnx:
            shipped = str(Path(meta["model_file"]).with_suffix(".onnx"))
            meta = dict(meta, model_file=shipped, etlt=dict(meta["etlt"], decoded_on_host=True,
                                                             etlt_file=self.model_path.name,
                                                             etlt_sha256=sha256_file(self.model_path)))
            (tmp / shipped).write_bytes(self.decoded.data)
        else:
            shutil.copy2(self.model_path, tmp / shipped)
        for name in graph_files(meta)[1:]:  # the other graphs model.json offers (the plugin graph)
            shutil.copy2(self.dir / name, tmp / name)
        for name in ("labels.txt",) + OPTIONAL_FILES + (() if self.is_etlt else ("model.json",)):
            if (self.dir / name).is_file():
                shutil.copy2(self.dir / name, tmp / name)
        if self.is_etlt:
            (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
