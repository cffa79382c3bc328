"""`ssd inference`: annotated images and 16-field KITTI prediction labels, as TAO 4/5 write them.

TAO 5 writes `<results_dir>/images_annotated/` and `<results_dir>/labels/`; TAO 3/4 took `-o <annotated dir>`
and `-l <label dir>`. Boxes are in original-image pixels (plain resize, so x scales by width, y by height) and only
detections with confidence >= the threshold (-t, default 0.3) are written.
"""

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ...errors import TaoflowError
from .build import anchors_for
from .evaluate import load_model_for, predict, preprocess, read_image
from ...contract.nms import nms_plugin, parse_nms_output
from .predictions import ANNOTATED_DIR, LABELS_DIR, write_inference_outputs

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def list_inputs(image_dir):
    path = Path(image_dir)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TaoflowError(f"image path not found: {path}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise TaoflowError(f"no .jpg/.jpeg/.png images in {path}")
    return files


def detect(model, spec, anchors, paths, threshold, device, batch_size=8):
    """Yield (path, image, detections in original pixels) for each image."""
    aug = spec.effective.augmentation_config
    c, h, w = aug.output_channel, aug.output_height, aug.output_width
    nms = spec.effective.nms_config
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = [read_image(p) for p in chunk]
        batch = torch.from_numpy(np.stack([preprocess(im, c, h, w, spec.image_mean()) for im in images])).to(device)
        boxes, scores = predict(model, batch, anchors, spec.variances)
        out, keep = nms_plugin(boxes, scores, nms.confidence_threshold, nms.clustering_iou_threshold, None,
                               nms.top_k)  # TAO's checkpoint inference: TF combined NMS, no per-class cap
        for i, (p, im) in enumerate(zip(chunk, images)):
            yield p, im, parse_nms_output(out, keep, i, im.shape[1], im.shape[0], spec.classes, threshold)


def run_inference(spec_path, model_path, image_dir, results_dir=None, out_image_dir=None, out_label_dir=None,
                  threshold=0.3, device="cpu", batch_size=8):
    if results_dir is None and not (out_image_dir and out_label_dir):
        raise TaoflowError("give -r/--results_dir (TAO 5) or both -o and -l (TAO 3/4)")
    spec, model, arch = load_model_for(spec_path, model_path, task="inference")
    model.to(device)
    anchors = anchors_for(spec, arch["nlayers"]).to(device)
    paths = list_inputs(image_dir)
    # Write into a temporary results dir, then move the two folders where TAO 5 or TAO 3/4 expect them.
    anchor_dir = Path(results_dir) if results_dir else Path(out_label_dir).parent
    anchor_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".inference-", dir=anchor_dir))
    try:
        count = 0
        for path, image, dets in detect(model, spec, anchors, paths, threshold, device, batch_size):
            write_inference_outputs(staging, path, dets, image, spec.classes)
            count += len(dets)
        targets = ({LABELS_DIR: Path(results_dir) / LABELS_DIR, ANNOTATED_DIR: Path(results_dir) / ANNOTATED_DIR}
                   if results_dir else {LABELS_DIR: Path(out_label_dir), ANNOTATED_DIR: Path(out_image_dir)})
        for name, target in targets.items():
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staging / name), str(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("inference on %d images: %d detections at threshold %s", len(paths), count, threshold)
    return {"images": len(paths), "detections": count, **{k: str(v) for k, v in targets.items()}}


def inference_cli(args):
    from .train import pick_device
    result = run_inference(args.experiment_spec, args.model_path, args.image_dir, args.results_dir,
                           args.out_image_dir, args.out_label_dir, args.threshold,
                           pick_device(args.gpus, args.gpu_index), args.batch_size)
    print(f"{result['images']} images, {result['detections']} detections: labels in {result[LABELS_DIR]}, "
          f"annotated images in {result[ANNOTATED_DIR]}")
    return 0
