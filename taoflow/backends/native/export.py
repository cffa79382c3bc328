"""`ssd export`: ONNX that TensorRT 8.0/8.2 on a Jetson builds and ONNX Runtime runs, plus the model package sidecars.

The graph (legacy TorchScript exporter, opset 13 by default, input `Input` NCHW with a dynamic batch) ends with box
decoding and softmax, so its outputs are `boxes` [N, A, 4] normalised corners and `scores` [N, A, C+1]. NMS is not
in the graph: ONNX NonMaxSuppression is experimental in TensorRT's parser and TAO's NMSDynamic_TRT plugin does not
exist in ONNX Runtime. The device runs NMS after the network and lays the result out exactly as TAO's NMS plugin
output, so one parser handles TAO engines and taoflow models (docs/model-package.md). Every exported op is checked
against the TensorRT parser's supported list before the file is written.

`--etlt -k KEY` (`etlt_key`) writes that same ONNX encoded as TAO's exports are: a `.etlt` whose header has an empty
input name (an ONNX payload) followed by the payload encrypted by NVIDIA's codec (taoflow.etlt, run in its own
Python 3.10/3.12). model.json names the .etlt and records the payload's sha256, so whoever decodes it (the package
builder, `taoflow etlt decode`) can tell a wrong key from the right model; devices build it with tao-converter.
"""

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from ...errors import TaoflowError
from ...fsutil import write_text_atomic
from .box_coder import decode
from .build import anchors_for
from .checkpoint import file_sha256
from .evaluate import load_model_for, preprocess, read_image
from .trt_ops import unsupported_ops

log = logging.getLogger(__name__)
MAX_OPSET = 13  # TensorRT 8.0/8.2's parser: opsets up to 13


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


def export_onnx(spec_path, model_path, output_file=None, opset=MAX_OPSET, data_type="fp32", static_batch_size=-1,
                gen_ds_config=False, cal_image_dir=None, cal_data_file=None, batches=10, batch_size=16,
                etlt_key=None, keep_onnx=False):
    """Export a checkpoint; return the paths written.

    `etlt_key`: write `<output>.etlt` (the ONNX encoded with this key, as TAO does) instead of `.onnx`; with
    `keep_onnx` the plain ONNX it was encoded from stays beside it as `<stem>.onnx` (the flow keeps it on the host
    for its parity gate; it is never shipped: model.json names the .etlt).
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
    for path in filter(None, (output, plain)):
        if path.exists():
            raise TaoflowError(f"{path} already exists; export never overwrites a model (choose another -o)")
    spec, model, arch = load_model_for(spec_path, model_path, task="export")
    output.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = arch["input"]
    head = ExportHead(model.eval(), anchors_for(spec, arch["nlayers"]), spec.variances).eval()
    batch = 1 if static_batch_size <= 0 else static_batch_size
    dummy = torch.zeros(batch, c, h, w)
    dynamic = None if static_batch_size > 0 else {"Input": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}}
    tmp = output.with_name(f".{output.stem}.onnx.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings():
            # The legacy TorchScript exporter is deprecated but is the one that still writes opset <= 13.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(head, (dummy,), str(tmp), dynamo=False, opset_version=opset, input_names=["Input"],
                              output_names=["boxes", "scores"], dynamic_axes=dynamic, do_constant_folding=True)
        onnx_model = onnx.load(str(tmp))
        onnx.checker.check_model(onnx_model)
        bad = unsupported_ops(onnx_model)
        if bad:
            raise TaoflowError(f"the exported graph uses ops TensorRT's ONNX parser rejects: {', '.join(bad)}")
        if etlt_key:
            from ...etlt import encode_file
            payload_sha256 = file_sha256(tmp)
            encode_file(tmp, output, etlt_key)  # atomic: a failed encoding leaves no .etlt
            if plain is not None:
                os.replace(tmp, plain)
        else:
            os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()

    written = {"etlt": str(output)} if etlt_key else {"onnx": str(output)}
    if plain is not None:
        written["onnx"] = str(plain)
    nms = spec.effective.nms_config
    sidecar = {
        "format": "taoflow-ssd/1",
        "model_file": output.name,
        "arch": f"resnet{arch['nlayers']}",
        "input": {"name": "Input", "layout": "NCHW", "channels": c, "height": h, "width": w,
                  "channel_order": "BGR" if c == 3 else "GRAY", "mean": [float(m) for m in spec.image_mean()],
                  "scale": 1.0, "resize": "stretch", "dtype": "float32", "dynamic_batch": static_batch_size <= 0},
        "classes": list(spec.classes),
        "output": {"kind": "decoded", "boxes": "boxes", "scores": "scores"},
        # TAO's exported engines run NMS with topK = 2 * top_k candidates per class and keepTopK = top_k.
        "nms": {"confidence_threshold": nms.confidence_threshold, "iou_threshold": nms.clustering_iou_threshold,
                "top_k": 2 * nms.top_k, "keep_top_k": nms.top_k},
        "precision": data_type,
        "opset": opset,
        "num_anchors": int(head.anchors.shape[0]),
        "source": {"checkpoint": str(model_path), "checkpoint_sha256": file_sha256(model_path),
                   "spec_sha256": file_sha256(spec_path), "taoflow_version": __version__},
    }
    if etlt_key:
        # TAO's layout (an empty input name: ONNX payload); the payload's sha256 tells a wrong key from the model
        sidecar["etlt"] = {"codec": "eff_tao_encryption", "payload": "onnx", "input_name": "",
                           "payload_sha256": payload_sha256}
    write_text_atomic(output.parent / "model.json", json.dumps(sidecar, indent=2) + "\n")
    written["model_json"] = str(output.parent / "model.json")
    if gen_ds_config:
        written.update(_write_ds_config(output, spec, sidecar))
    if data_type == "int8" and cal_image_dir:
        written["cal_data_file"] = _write_calibration(cal_image_dir, cal_data_file or output.parent / "cal_data.npy",
                                                      spec, c, h, w, batches * batch_size)
    log.info("exported %s (opset %d, %d anchors, %s)", output, opset, sidecar["num_anchors"], data_type)
    return written


def _write_ds_config(output, spec, sidecar):
    labels = output.parent / "labels.txt"
    write_text_atomic(labels, "\n".join(["background"] + list(spec.classes)) + "\n")
    inp, nms = sidecar["input"], sidecar["nms"]
    config = output.parent / "nvinfer_config.txt"
    # DeepStream cannot parse taoflow's decoded outputs with its built-in NMS parser; the config records the
    # preprocessing a custom parser would need (TAO's own SSD configs use the NMS plugin's NvDsInferParseCustomNMSTLT).
    model_line = [f"onnx-file={output.name}"] if output.suffix == ".onnx" else [
        f"tlt-encoded-model={output.name}", "# tlt-model-key=<the model key: never written here>"]
    write_text_atomic(config, "\n".join([
        "[property]",
        *model_line,
        f"labelfile-path={labels.name}",
        "net-scale-factor=1.0",
        "offsets=" + ";".join(f"{m:g}" for m in inp["mean"]),
        f"model-color-format={1 if inp['channels'] == 3 else 2}",
        f"infer-dims={inp['channels']};{inp['height']};{inp['width']}",
        "maintain-aspect-ratio=0",
        f"num-detected-classes={len(spec.classes) + 1}",
        "output-blob-names=boxes;scores",
        "cluster-mode=2",
        "",
        "[class-attrs-all]",
        f"pre-cluster-threshold={nms['confidence_threshold']}",
        f"nms-iou-threshold={nms['iou_threshold']}",
        f"topk={nms['keep_top_k']}",
    ]) + "\n")
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
