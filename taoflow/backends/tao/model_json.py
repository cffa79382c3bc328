"""model.json (docs/model-package.md) for TAO's own exports, so the deploy stage takes them like native ones.

TAO writes the model (TAO 5: ONNX ending in the NMSDynamic_TRT plugin; TAO 3/4: an encrypted UFF .etlt ending in
NMS_TRT) and, with --gen_ds_config, labels.txt and nvinfer_config.txt. Everything a device needs beyond that is
fixed by the export's spec and by TAO's exporter (ssd/export/onnx_exporter.py, ssd_exporter.py; the contract doc
§6-§7): input `Input` NCHW at the spec's output size, caffe-mode BGR means, no scaling, plain resize; outputs `NMS`
[N, 1, keep_top_k, 7] and `NMS_1` (kept count); the plugin's topK = 2 x nms_config.top_k, keepTopK = top_k.
"""

import json
from pathlib import Path

from ... import __version__
from ...contract.model_package import FORMAT, nms_settings
from ...fsutil import sha256_file, write_text_atomic
from ...spec import load_experiment


def tao_model_json(spec_path, model_file, precision="fp16", checkpoint=None):
    """The model.json dict for a TAO export `model_file` made with `spec_path`."""
    spec = load_experiment(spec_path, task="export")
    aug, nms = spec.effective.augmentation_config, spec.effective.nms_config
    network = spec.effective.WhichOneof("network")
    config = getattr(spec.effective, network)
    model_file = Path(model_file)
    channels = aug.output_channel
    source = {"exporter": "tao", "spec_sha256": sha256_file(spec_path), "taoflow_version": __version__}
    if checkpoint is not None:
        source.update(checkpoint=str(checkpoint), checkpoint_sha256=sha256_file(checkpoint))
    return {
        "format": FORMAT,
        "model_file": model_file.name,
        "arch": f"{'dssd' if spec.is_dssd else 'ssd'}-{config.arch}{config.nlayers or ''}",
        "input": {"name": "Input", "layout": "NCHW", "channels": channels, "height": aug.output_height,
                  "width": aug.output_width, "channel_order": "BGR" if channels == 3 else "GRAY",
                  "mean": [float(m) for m in spec.image_mean()], "scale": 1.0, "resize": "stretch",
                  "dtype": "float32",
                  # TAO 5's ONNX has a dynamic batch axis by default; a UFF .etlt has an implicit one
                  "dynamic_batch": model_file.suffix == ".onnx"},
        "classes": list(spec.classes),
        "output": {"kind": "tao_nms"},  # outputs NMS and NMS_1, the names TAO's exporter gives the plugin's
        "nms": nms_settings(nms.confidence_threshold, nms.clustering_iou_threshold, nms.top_k),
        "precision": precision,
        "source": source,
    }


def write_tao_model_json(spec_path, model_file, precision="fp16", checkpoint=None):
    """Write model.json beside `model_file` (atomically); return its path."""
    path = Path(model_file).parent / "model.json"
    meta = tao_model_json(spec_path, model_file, precision, checkpoint)
    write_text_atomic(path, json.dumps(meta, indent=2) + "\n")
    return path


def main(argv=None):
    import argparse

    from ...errors import TaoflowError

    p = argparse.ArgumentParser(prog="python -m taoflow.backends.tao.model_json",
                                description="Write model.json beside a TAO SSD export (.onnx or .etlt) made outside "
                                            "taoflow, so `taoflow fleet deploy` can package it.")
    p.add_argument("-e", "--experiment_spec", required=True, help="the spec the model was exported with")
    p.add_argument("-m", "--model", required=True, help="the exported .onnx or .etlt")
    p.add_argument("--data_type", default="fp16", choices=("fp32", "fp16", "int8"),
                   help="precision the devices build the engine in (default fp16)")
    args = p.parse_args(argv)
    if not Path(args.model).is_file():
        p.exit(2, f"error: {args.model}: no such file\n")
    try:
        print(write_tao_model_json(args.experiment_spec, args.model, args.data_type))
    except TaoflowError as e:
        p.exit(2, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
