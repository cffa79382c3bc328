"""Training data: TAO TFRecords, or raw KITTI folders, decoded once into a fixed-size cache, augmented per batch on
the training device.

TAO trains from TFRecords with DALI when `data_sources[0].tfrecords_path` is set, and otherwise from image/label
folders with a Keras Sequence (`image_directory_path` + `label_directory_path`, as in TAO's `_seq`/`_qat` sample
specs). Both land in the same DetectionCache here. Folders are read the way TAO's sequence reads them
(cv/common/dataio/detection_data_sequence.py): `<label dir>/<image stem>.txt`, lowercased classes mapped through
target_class_mapping (others skipped), difficult = occlusion != 0 (left out unless include_difficult_in_training),
boxes normalised by the image size, clipped to [0, 1], dropped when 1e-3 or less wide or high. Images are found by
extension (.jpg .jpeg .png, any case, mixed in one folder; TAO's are case-sensitive), as for validation. Louder than
TAO, as kitti_eval_data is: an image without a label file, or a label line TAO would crash on or silently skip, is a
DataError naming file and line instead of a skipped image. Training data read this way goes through the same
augmentation as TFRecords (TAO's DALI chain), not the slightly different one of TAO's Keras sequence.

TAO resizes every image to the network input without keeping the aspect ratio, so caching each image stretched to a
fixed size (a multiple of the input) changes nothing geometrically: boxes stay normalised. Decoding once instead of
per epoch is what keeps a GPU fed (a 1080p JPEG decodes at ~30 images/s per core). Augmentation follows TAO's SSD
chain (cv/ssd/builders/dalipipeline_builder.py, data_augmentation_chain_original_ssd.py): photometric jitter only
when the spec sets it, zoom-out with probability 0.5 up to zoom_out_max_scale, SSD random crop with minimum-IoU
choices {none, 0, 0.1, 0.3, 0.5, 0.7, 0.9}, resize, horizontal flip with probability random_flip. Crop, zoom-out,
resize and flip are one affine map per image, applied to the whole batch with a single grid_sample.
"""

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ...datasets.tfrecord_io import read_records
from ...errors import DataError
from ...spec.protos import tf_example_pb2

CROP_MIN_IOUS = (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)  # None = keep the whole image
CROP_TRIALS = 50
MIN_BOX_SIZE = 1e-3  # TAO's sequence drops normalised boxes this narrow or short (_filter_invalid_labels)


@dataclass
class DetectionCache:
    images: torch.Tensor  # uint8 (N, C, Hc, Wc)
    boxes: list  # per image float32 (K, 4) normalised corners
    labels: list  # per image int64 (K,) 1-based class ids
    difficult: list  # per image bool (K,)
    ids: list  # frame ids

    def __len__(self):
        return len(self.ids)


def _decode(args):
    """(C, Hc, Wc) uint8 image, or the reason it cannot be decoded as text (the caller names the file)."""
    encoded, cache_hw, channels = args
    if isinstance(encoded, str):  # a raw-KITTI image path: read in the worker thread, not all up front
        try:
            with open(encoded, "rb") as f:
                encoded = f.read()
        except OSError as e:
            return f"cannot read it: {e.strerror or e}"
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    try:
        img = cv2.imdecode(np.frombuffer(encoded, np.uint8), flag)
        if img is None:
            return "OpenCV cannot decode it (not a complete JPEG or PNG)"
        img = cv2.resize(img, (cache_hw[1], cache_hw[0]), interpolation=cv2.INTER_AREA)
    except cv2.error as e:  # e.g. a header claiming more pixels than OpenCV accepts (CV_IO_MAX_IMAGE_PIXELS)
        return f"OpenCV cannot decode it: {_cv2_reason(e)}"
    except MemoryError:
        return "not enough memory to decode it (its header claims a very large image)"
    return img[None] if channels == 1 else img.transpose(2, 0, 1)


def _cv2_reason(err):
    """The useful part of a cv2.error: its message without OpenCV's source location, on one line."""
    text = " ".join(str(err).split())
    marker = "error: "
    return text[text.index(marker) + len(marker):] if marker in text else text


def tfrecord_files(pattern):
    files = sorted(f for f in glob.glob(pattern) if not os.path.basename(f).startswith("idx-")
                   and not f.endswith(".json"))
    if not files:
        raise DataError(f"no TFRecord files match tfrecords_path {pattern!r}")
    return files


def load_tfrecords(patterns, cache_hw, channels=3, include_difficult=True, workers=None):
    """Read every record of the given tfrecords_path globs and decode the images once."""
    examples = []
    for pattern in patterns:
        for path in tfrecord_files(pattern):
            for payload in read_records(path):
                ex = tf_example_pb2.Example.FromString(payload)
                examples.append((path, ex.features.feature))
    if not examples:
        raise DataError(f"the TFRecords matching {patterns} hold no images")
    boxes, labels, difficult, ids, jobs, where = [], [], [], [], [], []
    for _path, f in examples:
        coords = [np.asarray(f[k].float_list.value, np.float32) for k in
                  ("target/coordinates_x1", "target/coordinates_y1", "target/coordinates_x2", "target/coordinates_y2")]
        b = np.stack(coords, 1) if len(coords[0]) else np.zeros((0, 4), np.float32)
        lab = np.asarray(f["target/object_class_id"].float_list.value, np.float32).astype(np.int64)
        diff = np.asarray(f["target/occlusion"].int64_list.value, np.int64) != 0
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        if not include_difficult:
            keep &= ~diff
        boxes.append(np.clip(b[keep], 0, 1))
        labels.append(lab[keep])
        difficult.append(diff[keep])
        ids.append(f["frame/id"].bytes_list.value[0].decode("utf-8", "replace"))
        jobs.append((f["frame/encoded"].bytes_list.value[0], cache_hw, channels))
        where.append((f"image {ids[-1]!r} stored in this TFRecord file", _path))
    return DetectionCache(_decode_all(jobs, where, workers), boxes, labels, difficult, ids)


def _decode_all(jobs, where, workers):
    # cv2 releases the GIL while decoding, so threads scale without copying bytes between processes.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        decoded = list(pool.map(_decode, jobs, chunksize=16))
    for (what, path), img in zip(where, decoded):
        if isinstance(img, str):
            raise DataError(f"cannot decode {what}: {img}", path=path)
    return torch.from_numpy(np.stack(decoded))


def load_kitti_folders(sources, target_class_mapping, cache_hw, channels=3, include_difficult=True, workers=None):
    """Read every (image_directory_path, label_directory_path) source the way TAO's training sequence does."""
    from .kitti_eval_data import load_kitti_eval_data

    boxes, labels, difficult, ids, jobs, where = [], [], [], [], [], []
    for image_dir, label_dir in sources:
        _, samples = load_kitti_eval_data(image_dir, label_dir, target_class_mapping, what="training")
        for sample in samples:
            b = np.asarray(sample.boxes, np.float64).reshape(-1, 4) / ([sample.width, sample.height] * 2)
            b = np.clip(b, 0, 1).astype(np.float32)
            keep = (b[:, 2] - b[:, 0] > MIN_BOX_SIZE) & (b[:, 3] - b[:, 1] > MIN_BOX_SIZE)
            if not include_difficult:
                keep &= ~sample.difficult
            boxes.append(b[keep])
            labels.append(sample.labels[keep])
            difficult.append(sample.difficult[keep])
            ids.append(str(sample.image_path))
            jobs.append((str(sample.image_path), cache_hw, channels))
            where.append(("image", sample.image_path))
    if not ids:
        raise DataError(f"the training data sources {[str(i) for i, _ in sources]} hold no images")
    return DetectionCache(_decode_all(jobs, where, workers), boxes, labels, difficult, ids)


def load_training_data(dataset_config, cache_hw, channels=3, workers=None):
    """The spec's training data: TFRecords when the sources give tfrecords_path, else KITTI folders (TAO's rule)."""
    sources = list(dataset_config.data_sources)
    if not sources:
        raise DataError("dataset_config has no data_sources to train on")
    include_difficult = dataset_config.include_difficult_in_training
    if sources[0].tfrecords_path:
        return load_tfrecords([s.tfrecords_path for s in sources if s.tfrecords_path], cache_hw, channels,
                              include_difficult, workers)
    folders = [(s.image_directory_path, s.label_directory_path) for s in sources]
    return load_kitti_folders(folders, dict(dataset_config.target_class_mapping), cache_hw, channels,
                              include_difficult, workers)


class EpochSampler:
    """Which training images this rank takes in each epoch, and the generator that augments them; the contract of
    torch's DistributedSampler (drop_last=False).

    set_epoch(e) shuffles the N images with a generator seeded by (seed, e): the same order on every rank. With
    several ranks the order is padded by repeating its start to a multiple of the world size and rank r takes every
    world-th image from position r, so the shards are disjoint (but for at most world - 1 repeated images), hold
    every image between them and are equally long: every rank runs ceil(ceil(N / world) / batch) steps, which is
    TAO's ceil(N / batch / world), and no rank waits in a collective for a step another never takes. A rank draws its
    augmentation from its own generator (seed, e, world, rank), so two ranks never crop alike; one process keeps the
    shuffling generator for it, as training did before it was sharded (single-process results are unchanged).
    """

    def __init__(self, n, seed, rank=0, world=1):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of {world} ranks")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.indices, self.rng = None, None

    def __len__(self):
        return -(-self.n // self.world)

    def set_epoch(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n)
        if self.world > 1:
            order = np.resize(order, len(self) * self.world)[self.rank::self.world]
            rng = np.random.default_rng([self.seed, epoch, self.world, self.rank])
        self.indices, self.rng = order, rng

    def steps(self, batch_size):
        return -(-len(self) // batch_size)

    def batch(self, step, batch_size):
        return self.indices[step * batch_size:(step + 1) * batch_size]


def sample_views(rng, boxes_list, aug):
    """Choose each image's view as a window in image-normalised coordinates (beyond [0,1] when zooming out).

    Vectorised over the batch and the CROP_TRIALS candidate crops, so sampling a batch costs about a millisecond
    and never starves a GPU. Returns (windows (B,4), keep masks per image, flips (B,)).
    """
    B = len(boxes_list)
    windows = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (B, 1))
    if aug.zoom_out_max_scale > 1:
        zoom = rng.random(B) < 0.5
        s = rng.uniform(aug.zoom_out_min_scale, aug.zoom_out_max_scale, B)
        left, top = -rng.random(B) * (s - 1), -rng.random(B) * (s - 1)
        zoomed = np.stack([left, top, left + s, top + s], 1)
        windows[zoom] = zoomed[zoom]
    min_iou = np.array([-1.0 if v is None else v for v in CROP_MIN_IOUS])[rng.integers(len(CROP_MIN_IOUS), size=B)]
    scale = rng.uniform(aug.random_crop_min_scale, aug.random_crop_max_scale, (B, CROP_TRIALS))
    ar = rng.uniform(aug.random_crop_min_ar, aug.random_crop_max_ar, (B, CROP_TRIALS))
    w, h = scale * np.sqrt(ar), scale / np.sqrt(ar)
    x0 = rng.random((B, CROP_TRIALS)) * np.clip(1 - w, 0, None)
    y0 = rng.random((B, CROP_TRIALS)) * np.clip(1 - h, 0, None)
    span = (windows[:, 2:] - windows[:, :2])[:, None, :]  # crops are drawn inside the (zoomed) canvas
    crops = np.concatenate([windows[:, None, :2] + np.stack([x0, y0], -1) * span,
                            windows[:, None, :2] + np.stack([x0 + w, y0 + h], -1) * span], -1)  # (B, T, 4)
    G = max([len(b) for b in boxes_list] + [1])
    gt = np.zeros((B, G, 4))
    has = np.zeros((B, G), bool)
    for i, b in enumerate(boxes_list):
        gt[i, :len(b)], has[i, :len(b)] = b, True
    centers = (gt[..., :2] + gt[..., 2:]) / 2  # (B, G, 2)
    inside = np.all((centers[:, None] > crops[:, :, None, :2]) & (centers[:, None] < crops[:, :, None, 2:]), -1)
    inside &= has[:, None, :]  # (B, T, G)
    lt = np.maximum(gt[:, None, :, :2], crops[:, :, None, :2])
    rb = np.minimum(gt[:, None, :, 2:], crops[:, :, None, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_g = ((gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1]))[:, None, :]
    area_c = ((crops[..., 2] - crops[..., 0]) * (crops[..., 3] - crops[..., 1]))[:, :, None]
    iou = np.where(has[:, None, :], inter / np.maximum(area_g + area_c - inter, 1e-12), -1.0)
    ok = (w <= 1) & (h <= 1) & ((inside.any(-1) & (iou.max(-1) >= min_iou[:, None])) | ~has.any(-1)[:, None])
    keeps = []
    for i, b in enumerate(boxes_list):
        trials = np.flatnonzero(ok[i])
        if min_iou[i] >= 0 and trials.size:  # TAO retries up to CROP_TRIALS times, else keeps the whole view
            windows[i] = crops[i, trials[0]]
            keeps.append(inside[i, trials[0], :len(b)] if len(b) else np.zeros(0, bool))
        else:
            keeps.append(np.ones(len(b), bool))
    flips = rng.random(B) < aug.random_flip
    return windows, keeps, flips


def view_boxes(boxes, window, flip):
    """Boxes as seen through the window, clipped to it, in the output's normalised coordinates."""
    size = np.tile(window[2:] - window[:2], 2)
    out = np.clip((boxes - np.tile(window[:2], 2)) / size, 0, 1)
    if flip:
        out = np.stack([1 - out[:, 2], out[:, 1], 1 - out[:, 0], out[:, 3]], 1)
    return out.astype(np.float32)


def photometric(images, rng, aug):
    """TAO's DALI colour jitter, only for the factors the spec sets (0 = off); images float BGR 0..255, (B,3,H,W)."""
    B = images.shape[0]
    dev = images.device
    if aug.brightness:
        delta = torch.tensor(rng.uniform(-aug.brightness, aug.brightness, B), dtype=images.dtype, device=dev)
        images = images + delta[:, None, None, None]
    if aug.contrast:
        f = torch.tensor(rng.uniform(1 - aug.contrast, 1 + aug.contrast, B), dtype=images.dtype, device=dev)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * f[:, None, None, None] + mean
    if aug.saturation and images.shape[1] == 3:
        f = torch.tensor(rng.uniform(1 - aug.saturation, 1 + aug.saturation, B), dtype=images.dtype, device=dev)
        gray = (0.114 * images[:, 0] + 0.587 * images[:, 1] + 0.299 * images[:, 2])[:, None]
        images = (images - gray) * f[:, None, None, None] + gray
    if aug.hue and images.shape[1] == 3:
        # Rotate chroma in YIQ space: a cheap, differentiable-free hue shift by up to `hue` degrees.
        theta = torch.tensor(np.deg2rad(rng.uniform(-aug.hue, aug.hue, B)), dtype=images.dtype, device=dev)
        bgr = images
        r, g, b = bgr[:, 2], bgr[:, 1], bgr[:, 0]
        y = 0.299 * r + 0.587 * g + 0.114 * b
        i = 0.596 * r - 0.274 * g - 0.322 * b
        q = 0.211 * r - 0.523 * g + 0.312 * b
        c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        i, q = i * c - q * s, i * s + q * c
        images = torch.stack([y - 1.106 * i + 1.703 * q, y - 0.272 * i - 0.647 * q, y + 0.956 * i + 0.621 * q], 1)
    return images.clamp(0, 255)


def render_batch(cache_images, windows, flips, out_hw, mean, device):
    """Crop/zoom/flip/resize a batch of cached uint8 images with one affine grid_sample; subtract the mean."""
    src = cache_images.to(device, non_blocking=True).float()
    B = src.shape[0]
    w = torch.tensor(np.asarray(windows), dtype=torch.float32, device=device)
    size = w[:, 2:] - w[:, :2]
    theta = torch.zeros(B, 2, 3, device=device)
    sign = torch.from_numpy(np.where(np.asarray(flips), -1.0, 1.0).astype(np.float32)).to(device)
    theta[:, 0, 0] = size[:, 0] * sign
    theta[:, 0, 2] = 2 * w[:, 0] + size[:, 0] - 1
    theta[:, 1, 1] = size[:, 1]
    theta[:, 1, 2] = 2 * w[:, 1] + size[:, 1] - 1
    grid = F.affine_grid(theta, (B, src.shape[1], out_hw[0], out_hw[1]), align_corners=False)
    m = torch.tensor(mean, dtype=torch.float32, device=device)[None, :, None, None]
    # Subtract the mean before sampling so the zoom-out canvas (zero padding) is filled with the mean colour.
    return F.grid_sample(src - m, grid, mode="bilinear", padding_mode="zeros", align_corners=False), m


def make_batch(cache, indices, rng, aug, out_hw, mean, device, train=True):
    """(images (B,C,H,W) mean-subtracted float, gt boxes (B,G,4), labels (B,G), valid (B,G)) on device."""
    indices = np.asarray(indices)
    if train:
        windows, keeps, flips = sample_views(rng, [cache.boxes[i] for i in indices], aug)
    else:
        windows = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (len(indices), 1))
        keeps = [np.ones(len(cache.boxes[i]), bool) for i in indices]
        flips = np.zeros(len(indices), bool)
    boxes, labels = [], []
    for i, window, keep, flip in zip(indices, windows, keeps, flips):
        b = view_boxes(cache.boxes[i][keep], window, flip)
        ok = (b[:, 2] - b[:, 0] > 1e-4) & (b[:, 3] - b[:, 1] > 1e-4)
        boxes.append(b[ok])
        labels.append(cache.labels[i][keep][ok])
    src = cache.images[torch.as_tensor(indices, device=cache.images.device)]
    images, m = render_batch(src, windows, flips, out_hw, mean, device)
    if train and (aug.brightness or aug.contrast or aug.saturation or aug.hue):
        images = photometric(images + m, rng, aug) - m
    G = max(1, max(len(b) for b in boxes))
    gt = np.zeros((len(indices), G, 4), np.float32)
    lab = np.zeros((len(indices), G), np.int64)
    valid = np.zeros((len(indices), G), bool)
    for k, (b, lb) in enumerate(zip(boxes, labels)):
        gt[k, :len(b)], lab[k, :len(b)], valid[k, :len(b)] = b, lb, True
    return (images, torch.from_numpy(gt).to(device, non_blocking=True),
            torch.from_numpy(lab).to(device, non_blocking=True), torch.from_numpy(valid).to(device, non_blocking=True))
