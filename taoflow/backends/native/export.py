"""`ssd export`: the graphs TensorRT 8.0/8.2/10 and ONNX Runtime run, plus the model package sidecars.

Two graphs of one network (legacy TorchScript exporter, opset 13 by default, input `Input` NCHW with a dynamic batch):

- the decoded graph (`-o`, e.g. model.onnx): box decoding and softmax in the graph, outputs `boxes` [N, A, 4]
  normalised corners and `scores` [N, A, C+1]. NMS runs after the network on the device's CPU in TAO's NMS-plugin
  layout (ONNX NonMaxSuppression is experimental in TensorRT's parser, and no plugin exists in ONNX Runtime). Any
  runtime runs it; ONNX Runtime devices do.
- the plugin graph (model_nms.onnx beside it), as TAO 5's SSD export builds it: the network up to TensorRT's NMS
  plugin (loc_data, conf_data as a softmax, anchor_data with the priors and variances), then an `NMSDynamic_TRT`
  node appended with onnx-graphsurgeon, attributes from the spec's nms_config (taoflow.contract.nms), outputs NMS
  [N, 1, keep_top_k, 7] and NMS_1 (the keep count): NMS on the GPU. TensorRT devices whose plugin library has the
  creator take it; DeepStream runs it with its TAO SSD parser (`--gen_ds_config`).

Before anything is written: the graph up to the plugin runs in ONNX Runtime and must give the PyTorch network's
plugin inputs on the same batch; the node's attributes are read back and compared with the spec's NMS settings; and
both graphs go through TensorRT's ONNX-parser and plugin check for each release in taoflow.contract.trt_ops
(8.0, 8.2, 10). model.json names the decoded graph at its top level (what every agent runs) and both graphs under
`graphs` (docs/model-package.md).

`--etlt -k KEY` (`etlt_key`) writes the decoded ONNX encoded as TAO's exports are: a `.etlt` whose header has an
empty input name (an ONNX payload) followed by the payload encrypted by NVIDIA's codec (taoflow.etlt, run in its own
Python 3.10/3.12). model.json names the .etlt and records the payload's sha256, so whoever decodes it (the package
builder, `taoflow etlt decode`) can tell a wrong key from the right model; devices build it with tao-converter. An
encrypted export ships no plain plugin graph beside it (that would give the weights away).
"""

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from ...contract import model_package as mp
from ...contract.nms import NMS_OUTPUTS, NMS_PLUGIN, NMS_PLUGIN_NODE, PLUGIN_INPUTS, attribute_problems, \
    plugin_attributes
from ...contract.trt_ops import TARGET_RELEASES, parser_problems
from ...errors import TaoflowError
from ...fsutil import write_text_atomic
from .box_coder import MAX_LOG_RATIO, decode
from .build import anchors_for
from .checkpoint import file_sha256
from .evaluate import load_model_for, preprocess, read_image

log = logging.getLogger(__name__)
MAX_OPSET = 13  # TensorRT 8.0/8.2's parser: opsets up to 13
# The plugin's inputs from ONNX Runtime against PyTorch's on the same batch: the largest difference relative to
# the tensor's largest magnitude (floored at 1e-2) within this. Two float32 runtimes differ by ~1e-5 of that on
# noise images, where activations are larger than on photos; a wrong layout, order or variance by O(1).
PARITY_TOLERANCE = 1e-3
PARITY_BATCH = 2  # images in the check batch of a dynamic-batch export (the batch axis is exercised too)
# DeepStream: TAO's SSD parser NvDsInferParseCustomNMSTLT is built by NVIDIA-AI-IOT/deepstream_tao_apps
# (post_processor/Makefile -> libnvds_infercustomparser_tao.so); nvinfer resolves a relative custom-lib-path
# against the config's directory, so the config names it absolutely: $TAOFLOW_DS_PARSER_LIB, else a checkout of
# deepstream_tao_apps in the DeepStream sources tree (where its Makefile's DS_SRC_PATH points).
DS_PARSER_LIB_ENV = "TAOFLOW_DS_PARSER_LIB"
DS_PARSER_LIB = "/opt/nvidia/deepstream/deepstream/sources/deepstream_tao_apps/post_processor/" \
                "libnvds_infercustomparser_tao.so"
DS_PARSE_FUNC = "NvDsInferParseCustomNMSTLT"
DS_CLUSTER_NONE = 3  # nvinfer cluster-mode 3: no clustering (NMS already ran in the plugin)
# nvinfer's [class-attrs-all] pre-cluster-threshold, which the parser reads as perClassThreshold[0]: TAO's
# `ssd inference -t` default and the threshold of deepstream_tao_apps' SSD config.
DS_PRE_CLUSTER_THRESHOLD = 0.3
DS_NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer network-mode


class ExportHead(torch.nn.Module):
    """The trained network plus the anchor decoding and softmax the device would otherwise have to re-implement."""

    def __init__(self, model, anchors, variances):
        super().__init__()
        self.model = model
        self.register_buffer("anchors", anchors)
        self.register_buffer("variances", torch.tensor(variances, dtype=torch.float32))

    def forward(self, x):
        conf, loc = self.model(x)
        return decode(loc, self.anchors, self.variances), torch.softmax(conf, dim=-1)


class PluginInputs(torch.nn.Module):
    """The trained network with its outputs laid out as TensorRT's NMS plugin reads them (TAO's exporter:
    Reshape((-1, 1, 1)) of mbox_loc and mbox_conf_softmax): loc_data [N, A*4, 1, 1], conf_data [N, A*C, 1, 1].
    anchor_data, `prior` [1, 2, A*4, 1] tiled to the batch, is added in the graph (export_plugin_graph).

    The size offsets are capped at MAX_LOG_RATIO / variance first (a Min): the plugin then decodes exactly what
    box_coder.decode (the decoded graph, evaluate, inference) decodes, where TAO's plugin graph would let an
    untrained or fp16 output overflow exp() into boxes that NMS then compares."""

    def __init__(self, model, anchors, variances):
        super().__init__()
        self.model = model
        count = anchors.shape[0]
        variance = torch.tensor(variances, dtype=torch.float32)
        self.register_buffer("prior", torch.stack([anchors.reshape(-1), variance.repeat(count)]).reshape(
            1, 2, count * 4, 1))
        self.register_buffer("max_size_offset", MAX_LOG_RATIO / variance[2:])

    def forward(self, x):
        conf, loc = self.model(x)
        n = x.shape[0]
        loc = torch.cat([loc[..., :2], torch.minimum(loc[..., 2:], self.max_size_offset)], -1)
        return loc.reshape(n, -1, 1, 1), torch.softmax(conf, dim=-1).reshape(n, -1, 1, 1)

    def plugin_inputs(self, x):
        """(anchor_data, loc_data, conf_data) as numpy, the plugin's inputs in TAO's order."""
        with torch.no_grad():
            loc, conf = self(x)
        return self.prior.repeat(x.shape[0], 1, 1, 1).numpy(), loc.numpy(), conf.numpy()


def export_onnx(spec_path, model_path, output_file=None, opset=MAX_OPSET, data_type="fp32", static_batch_size=-1,
                gen_ds_config=False, cal_image_dir=None, cal_data_file=None, batches=10, batch_size=16,
                etlt_key=None, keep_onnx=False, ds_parser_lib=None):
    """Export a checkpoint; return the paths written ({"onnx", "onnx_nms", "model_json", ...}).

    `etlt_key`: write `<output>.etlt` (the ONNX encoded with this key, as TAO does) instead of `.onnx`; with
    `keep_onnx` the plain ONNX it was encoded from stays beside it as `<stem>.onnx` (the flow keeps it on the host
    for its parity gate; it is never shipped: model.json names the .etlt). `ds_parser_lib`: the DeepStream library
    with NvDsInferParseCustomNMSTLT that nvinfer_config.txt names (default $TAOFLOW_DS_PARSER_LIB or DS_PARSER_LIB).
    """
    import onnx

    if opset > MAX_OPSET:
        raise TaoflowError(f"--target_opset {opset} is above {MAX_OPSET}, the newest TensorRT 8.x on Jetson parses")
    if data_type == "int8" and not cal_image_dir and not cal_data_file:
        raise TaoflowError("--data_type int8 needs --cal_image_dir (images to calibrate with) or --cal_data_file")
    if etlt_key is not None and not etlt_key:
        raise TaoflowError("--etlt needs the model key: -k KEY or $TAO_MODEL_KEY")
    suffix = ".etlt" if etlt_key else ".onnx"
    output = Path(output_file or f"{os.path.splitext(model_path)[0]}{suffix}")
    if not etlt_key and output.suffix == ".etlt":
        raise TaoflowError(f"-o {output} is a .etlt: add --etlt (and the key: -k KEY or $TAO_MODEL_KEY)")
    if etlt_key and output.suffix == ".onnx":
        output = output.with_suffix(".etlt")
    if output.suffix != suffix:
        output = output.with_name(output.name + suffix)
    plain = output.with_suffix(".onnx") if etlt_key and keep_onnx else None
    plugin_path = None if etlt_key else output.with_name(mp.plugin_graph_name(output.name))
    for path in filter(None, (output, plain, plugin_path)):
        if path.exists():
            raise TaoflowError(f"{path} already exists; export never overwrites a model (choose another -o)")
    spec, model, arch = load_model_for(spec_path, model_path, task="export")
    output.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = arch["input"]
    anchors = anchors_for(spec, arch["nlayers"])
    head = ExportHead(model.eval(), anchors, spec.variances).eval()
    batch = 1 if static_batch_size <= 0 else static_batch_size
    dummy = torch.zeros(batch, c, h, w)
    nms_config = spec.effective.nms_config
    nms = mp.nms_settings(nms_config.confidence_threshold, nms_config.clustering_iou_threshold, nms_config.top_k)
    dynamic = None if static_batch_size > 0 else {"Input": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}}
    tmp = output.with_name(f".{output.stem}.onnx.tmp-{os.getpid()}")
    plugin_tmp = None if plugin_path is None else plugin_path.with_name(f".{plugin_path.name}.tmp-{os.getpid()}")
    try:
        _torch_export(head, dummy, tmp, opset, ["boxes", "scores"], dynamic)
        onnx_model = onnx.load(str(tmp))
        onnx.checker.check_model(onnx_model)
        _check_parsers(onnx_model, output.name)
        if plugin_tmp is not None:
            inputs = PluginInputs(model, anchors, spec.variances).eval()
            plugin_graph = export_plugin_graph(inputs, dummy, plugin_tmp, opset, static_batch_size <= 0, nms,
                                               len(spec.classes), nms_config.infer_nms_score_bits)
            check_plugin_graph(plugin_graph, inputs, spec, nms, static_batch_size, plugin_path.name)
        if etlt_key:
            from ...etlt import encode_file
            payload_sha256 = file_sha256(tmp)
            encode_file(tmp, output, etlt_key)  # atomic: a failed encoding leaves no .etlt
            if plain is not None:
                os.replace(tmp, plain)
        else:
            os.replace(plugin_tmp, plugin_path)
            os.replace(tmp, output)
    finally:
        for path in filter(None, (tmp, plugin_tmp)):
            if path.exists():
                path.unlink()

    written = {"etlt": str(output)} if etlt_key else {"onnx": str(output), "onnx_nms": str(plugin_path)}
    if plain is not None:
        written["onnx"] = str(plain)
    sidecar = {
        "format": mp.FORMAT,
        "model_file": output.name,
        "arch": f"resnet{arch['nlayers']}",
        "input": {"name": "Input", "layout": "NCHW", "channels": c, "height": h, "width": w,
                  "channel_order": "BGR" if c == 3 else "GRAY", "mean": [float(m) for m in spec.image_mean()],
                  "scale": 1.0, "resize": "stretch", "dtype": "float32", "dynamic_batch": static_batch_size <= 0},
        "classes": list(spec.classes),
        "output": dict(mp.DECODED_OUTPUT),
        "nms": nms,
        "precision": data_type,
        "opset": opset,
        "num_anchors": int(head.anchors.shape[0]),
        "source": {"checkpoint": str(model_path), "checkpoint_sha256": file_sha256(model_path),
                   "spec_sha256": file_sha256(spec_path), "taoflow_version": __version__},
    }
    if plugin_path is not None:
        sidecar["graphs"] = {
            "tensorrt": {"model_file": plugin_path.name, "output": dict(mp.TAO_NMS_OUTPUT),
                         "plugin": {"op": NMS_PLUGIN, "attributes": plugin_attributes(
                             nms, len(spec.classes), nms_config.infer_nms_score_bits)}},
            "onnxruntime": {"model_file": output.name, "output": dict(mp.DECODED_OUTPUT)}}
    if etlt_key:
        # TAO's layout (an empty input name: ONNX payload); the payload's sha256 tells a wrong key from the model
        sidecar["etlt"] = {"codec": "eff_tao_encryption", "payload": "onnx", "input_name": "",
                           "payload_sha256": payload_sha256}
    problems = mp.graphs_problems(sidecar, exists=lambda name: (output.parent / name).is_file())
    if problems:  # the contract's own reader must accept what was written
        raise TaoflowError("; ".join(f"model.json {field}: {message}" for field, message in problems))
    write_text_atomic(output.parent / "model.json", json.dumps(sidecar, indent=2) + "\n")
    written["model_json"] = str(output.parent / "model.json")
    if gen_ds_config:
        written.update(write_ds_config(output.parent, sidecar, ds_parser_lib))
    if data_type == "int8" and cal_image_dir:
        written["cal_data_file"] = _write_calibration(cal_image_dir, cal_data_file or output.parent / "cal_data.npy",
                                                      spec, c, h, w, batches * batch_size)
    log.info("exported %s%s (opset %d, %d anchors, %s)", output,
             f" and {plugin_path.name} ({NMS_PLUGIN})" if plugin_path else "", opset, sidecar["num_anchors"],
             data_type)
    return written


def _torch_export(module, dummy, path, opset, output_names, dynamic):
    with warnings.catch_warnings():
        # The legacy TorchScript exporter is deprecated but is the one that still writes opset <= 13.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (dummy,), str(path), dynamo=False, opset_version=opset, input_names=["Input"],
                          output_names=list(output_names), dynamic_axes=dynamic, do_constant_folding=True)


def _check_parsers(onnx_model, name):
    """The graph must pass TensorRT's ONNX-parser and plugin check for every target release."""
    from ...etlt import onnx_facts
    facts = onnx_facts(onnx_model)
    problems = [p for release in TARGET_RELEASES
                for p in parser_problems(facts["ops"], facts["opset"], release, facts["plugins"])]
    if problems:
        raise TaoflowError(f"{name}: {'; '.join(problems)}")
    return facts


def export_plugin_graph(inputs, dummy, path, opset, dynamic_batch, nms, num_classes, score_bits):
    """Export `inputs` (PluginInputs) to ONNX, add anchor_data and TensorRT's NMS plugin node with onnx-graphsurgeon;
    write the result to `path` and return it (onnx.ModelProto).

    anchor_data is Tile(prior, [N, 1, 1, 1]) with N read from loc_data's shape (Shape, Gather, Concat, Tile: parser
    ops of every target release), so it has the batch axis the dynamic plugin takes its output batch from."""
    import onnx
    import onnx_graphsurgeon as gs

    anchor_name, loc_name, conf_name = PLUGIN_INPUTS
    dynamic = {n: {0: "batch"} for n in ("Input", loc_name, conf_name)} if dynamic_batch else None
    _torch_export(inputs, dummy, path, opset, [loc_name, conf_name], dynamic)
    exported = onnx.load(str(path))
    graph = gs.import_onnx(exported)
    tensors = graph.tensors()
    batch = "batch" if dynamic_batch else dummy.shape[0]
    prior = gs.Constant("prior", inputs.prior.numpy().astype(np.float32))
    loc_shape = gs.Variable("loc_data_shape", dtype=np.int64, shape=[4])
    count = gs.Variable("batch_count", dtype=np.int64, shape=[1])
    repeats = gs.Variable("anchor_repeats", dtype=np.int64, shape=[4])
    anchor_data = gs.Variable(anchor_name, dtype=np.float32, shape=[batch, *prior.shape[1:]])
    graph.nodes += [
        gs.Node("Shape", "anchor_data/Shape", inputs=[tensors[loc_name]], outputs=[loc_shape]),
        gs.Node("Gather", "anchor_data/Gather", attrs={"axis": 0},
                inputs=[loc_shape, gs.Constant("batch_axis", np.array([0], np.int64))], outputs=[count]),
        gs.Node("Concat", "anchor_data/Concat", attrs={"axis": 0},
                inputs=[count, gs.Constant("prior_repeats", np.array([1, 1, 1], np.int64))], outputs=[repeats]),
        gs.Node("Tile", "anchor_data/Tile", inputs=[prior, repeats], outputs=[anchor_data])]
    detections = gs.Variable(NMS_OUTPUTS[0], dtype=np.float32, shape=[batch, 1, int(nms["keep_top_k"]), 7])
    # float32, as the plugin declares it (its int32 bits are the count): see taoflow.contract.nms
    keep_count = gs.Variable(NMS_OUTPUTS[1], dtype=np.float32, shape=[batch, 1, 1, 1])
    by_name = {anchor_name: anchor_data, loc_name: tensors[loc_name], conf_name: tensors[conf_name]}
    graph.nodes.append(gs.Node(op=NMS_PLUGIN, name=NMS_PLUGIN_NODE, inputs=[by_name[n] for n in PLUGIN_INPUTS],
                               outputs=[detections, keep_count],
                               attrs=plugin_attributes(nms, num_classes, score_bits)))
    graph.outputs = [detections, keep_count]
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    model.ir_version = exported.ir_version  # graphsurgeon writes its onnx's newest; keep what the devices load
    onnx.save(model, str(path))
    return model


def up_to_plugin(plugin_model):
    """The plugin graph cut before its NMS node: outputs are the node's inputs (ONNX Runtime runs it)."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(plugin_model)
    (node,) = [n for n in model.graph.node if n.op_type == NMS_PLUGIN]
    kept = [n for n in model.graph.node if n is not node]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    known = {v.name: v for v in model.graph.value_info}  # graphsurgeon records the shapes it knows
    del model.graph.output[:]
    model.graph.output.extend(known.get(name) or helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [])
                              for name in node.input)
    return model, node


def check_plugin_graph(plugin_model, inputs, spec, nms, static_batch_size, name):
    """The checks a plugin graph passes before it is written: its structure and attributes (against the spec's NMS
    settings), TensorRT's parser and plugin check, and the plugin's inputs computed by ONNX Runtime against the
    PyTorch network's on the same batch. Raises TaoflowError naming what differs."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    cut, node = up_to_plugin(plugin_model)
    onnx.checker.check_model(cut)  # the standard ops; the plugin op has no ONNX schema
    if [o.name for o in plugin_model.graph.output] != list(NMS_OUTPUTS) or list(node.input) != list(PLUGIN_INPUTS):
        raise TaoflowError(f"{name}: the graph must end in {NMS_PLUGIN}({', '.join(PLUGIN_INPUTS)}) with outputs "
                           f"{' and '.join(NMS_OUTPUTS)} in that order (DeepStream's parser takes them by position)")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    problems = attribute_problems(attrs, nms, len(spec.classes))
    if problems:
        raise TaoflowError(f"{name}: {NMS_PLUGIN} attributes disagree with the spec's nms_config: "
                           f"{'; '.join(problems)}")
    _check_parsers(plugin_model, name)

    aug = spec.effective.augmentation_config
    c, h, w = aug.output_channel, aug.output_height, aug.output_width
    count = static_batch_size if static_batch_size > 0 else PARITY_BATCH
    rng = np.random.default_rng(0)
    mean = np.asarray(spec.image_mean(), np.float32).reshape(1, -1, 1, 1)
    batch = (rng.uniform(0, 255, (count, c, h, w)).astype(np.float32) - mean).astype(np.float32)  # noise images
    session = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(list(PLUGIN_INPUTS), {"Input": batch})
    want = inputs.plugin_inputs(torch.from_numpy(batch))
    worst = 0.0
    for tensor, g, e in zip(PLUGIN_INPUTS, got, want):
        if g.shape != e.shape:
            raise TaoflowError(f"{name}: {tensor} from ONNX Runtime has shape {list(g.shape)}, PyTorch's "
                               f"{list(e.shape)}")
        err = float(np.max(np.abs(g - e), initial=0.0)) / max(float(np.max(np.abs(e), initial=0.0)), 1e-2)
        if not err <= PARITY_TOLERANCE:
            raise TaoflowError(f"{name}: {tensor} from ONNX Runtime differs from PyTorch's by {err:.2e} of its "
                               f"largest value (tolerance {PARITY_TOLERANCE})")
        worst = max(worst, err)
    anchors, loc, conf = want
    n, classes = loc.shape[0], len(spec.classes) + 1
    if conf.shape[1] != loc.shape[1] // 4 * classes or anchors.shape[2] != loc.shape[1]:
        raise TaoflowError(f"{name}: plugin input sizes disagree: loc_data {list(loc.shape)}, conf_data "
                           f"{list(conf.shape)} for {classes} classes, anchor_data {list(anchors.shape)}")
    log.info("%s: plugin inputs match PyTorch on %d images (%d anchors; largest difference %.1e of the largest "
             "value)", name, n, loc.shape[1] // 4, worst)


def write_ds_config(out_dir, sidecar, parser_lib=None):
    """labels.txt and a DeepStream nvinfer config for the export in `out_dir` (model.json `sidecar`).

    For a plugin graph (model.json `graphs.tensorrt`): the config DeepStream's TAO SSD parser runs as is
    (deepstream_tao_apps configs/nvinfer/ssd_tao/pgie_ssd_tao_config.txt: onnx-file, output-blob-names=NMS,
    parse-bbox-func-name=NvDsInferParseCustomNMSTLT, custom-lib-path; caffe-mode preprocessing as net-scale-factor
    and offsets; num-detected-classes counting the background, because the parser asserts label <
    num-detected-classes and labels run 1..N; cluster-mode 3, NMS being done). Without one (a .etlt export) the
    decoded graph's preprocessing only: DeepStream has no parser for its boxes/scores outputs.
    """
    out_dir = Path(out_dir)
    labels = out_dir / "labels.txt"
    write_text_atomic(labels, "\n".join(["background"] + list(sidecar["classes"])) + "\n")
    inp, nms = sidecar["input"], sidecar["nms"]
    plugin = (sidecar.get("graphs") or {}).get("tensorrt")
    precision = sidecar.get("precision", "fp32")
    common = [
        f"labelfile-path={labels.name}",
        "net-scale-factor=" + f"{float(inp['scale']):g}",
        "offsets=" + ";".join(f"{m:g}" for m in inp["mean"]),
        f"model-color-format={1 if inp['channels'] == 3 else 2}",
        f"infer-dims={inp['channels']};{inp['height']};{inp['width']}",
        "maintain-aspect-ratio=0",
        f"num-detected-classes={len(sidecar['classes']) + 1}",
    ]
    if plugin is not None:
        lines = ["[property]", "gpu-id=0", f"onnx-file={plugin['model_file']}", *common,
                 "batch-size=1", f"network-mode={DS_NETWORK_MODE[precision]}",
                 *(["int8-calib-file=cal.bin"] if precision == "int8" else []),
                 "network-type=0", "gie-unique-id=1", "is-classifier=0",
                 f"output-blob-names={plugin['output']['nms']}",
                 f"parse-bbox-func-name={DS_PARSE_FUNC}",
                 f"custom-lib-path={parser_lib or os.environ.get(DS_PARSER_LIB_ENV) or DS_PARSER_LIB}",
                 f"cluster-mode={DS_CLUSTER_NONE}",
                 "", "[class-attrs-all]", f"pre-cluster-threshold={DS_PRE_CLUSTER_THRESHOLD}"]
    else:
        model = sidecar["model_file"]
        model_line = [f"onnx-file={model}"] if model.endswith(".onnx") else [
            f"tlt-encoded-model={model}", "# tlt-model-key=<the model key: never written here>"]
        lines = ["[property]",
                 "# taoflow's decoded outputs (boxes;scores): DeepStream has no parser for them; the plugin graph of",
                 "# a plain ONNX export (model_nms.onnx) is the one DeepStream runs",
                 *model_line, *common, "output-blob-names=boxes;scores", "cluster-mode=2",
                 "", "[class-attrs-all]", f"pre-cluster-threshold={nms['confidence_threshold']}",
                 f"nms-iou-threshold={nms['iou_threshold']}", f"topk={nms['keep_top_k']}"]
    config = out_dir / "nvinfer_config.txt"
    write_text_atomic(config, "\n".join(lines) + "\n")
    return {"labels": str(labels), "nvinfer_config": str(config)}


def _write_calibration(image_dir, out_path, spec, c, h, w, count):
    """Preprocessed calibration batches for a TensorRT INT8 calibrator on the device (float32 [N, C, H, W])."""
    exts = (".jpg", ".jpeg", ".png")
    files = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in exts)[:count]
    if not files:
        raise TaoflowError(f"no calibration images in {image_dir}")
    data = np.stack([preprocess(read_image(p), c, h, w, spec.image_mean()) for p in files])
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp.npy")
    np.save(tmp, data)
    os.replace(tmp, out_path)
    return str(out_path)


def export_cli(args):
    if not args.experiment_spec:
        raise TaoflowError("native export needs -e/--experiment_spec (the anchors and input size come from it)")
    key = None
    if getattr(args, "etlt", False):
        key = args.key or os.environ.get("TAO_MODEL_KEY")
        if not key:
            raise TaoflowError("--etlt needs the model key: -k KEY or $TAO_MODEL_KEY")
    written = export_onnx(args.experiment_spec, args.model, args.output_file, args.target_opset, args.data_type,
                          args.static_batch_size, args.gen_ds_config, args.cal_image_dir, args.cal_data_file,
                          args.batches, args.batch_size, etlt_key=key)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0
