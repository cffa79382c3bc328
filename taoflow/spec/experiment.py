"""The SSD experiment spec (TAO's `-e` file): load, validate, resolve defaults, render.

TAO leaves every proto3 scalar at 0 when absent and substitutes its own default in code. Those substitutions and
TAO's validation ranges (nvidia_tao_tf1/cv/ssd/utils/spec_loader.py, ssd_arch.py, train.py, augmentation
builders) live here, in one table, so the native backend and the TAO backend read a spec identically.
"""

from dataclasses import dataclass, field

from .checks import Checker, literal_numbers
from .protos import ssd_experiment_pb2 as pb
from .textproto import parse_text, read_spec_text

ARCHS = ("resnet", "vgg", "darknet", "mobilenet_v1", "mobilenet_v2", "squeezenet", "googlenet",
         "efficientnet_b0", "efficientnet_b1")
EARLY_STOPPING_MONITORS = ("loss", "validation_loss", "val_loss")

# field path -> value TAO uses when the field is 0 / empty (proto3 cannot tell absent from 0).
DEFAULTS = {
    "ssd_config.alpha": 1.0,
    "ssd_config.neg_pos_ratio": 3.0,
    "ssd_config.pos_iou_thresh": 0.5,
    "ssd_config.neg_iou_thresh": 0.5,
    "augmentation_config.random_crop_min_scale": 0.3,
    "augmentation_config.random_crop_max_scale": 1.0,
    "augmentation_config.random_crop_min_ar": 0.5,
    "augmentation_config.random_crop_max_ar": 2.0,
    "augmentation_config.zoom_out_min_scale": 1.0,
    "augmentation_config.zoom_out_max_scale": 4.0,
    "eval_config.matching_iou_threshold": 0.5,
    "training_config.checkpoint_interval": 1,
    "training_config.max_queue_size": 20,
}
# Caffe-style BGR means TAO subtracts for every backbone when image_mean is not set (preprocess_input.py).
DEFAULT_IMAGE_MEAN = {"b": 103.939, "g": 116.779, "r": 123.68}
DEFAULT_GRAY_MEAN = {"l": 117.3786}

# What each task needs present in the spec (TAO's train needs everything; the others a subset).
REQUIRED = {
    "train": ("network", "training_config", "eval_config", "augmentation_config", "nms_config", "dataset_config"),
    "evaluate": ("network", "eval_config", "augmentation_config", "nms_config", "dataset_config"),
    "inference": ("network", "augmentation_config", "nms_config", "dataset_config"),
    "export": ("network", "augmentation_config", "nms_config", "dataset_config"),
    "prune": (),
    "any": (),
}


@dataclass
class ExperimentSpec:
    """A parsed spec: `raw` exactly as written (rendered back for TAO), `effective` with TAO's defaults applied."""

    path: str
    raw: pb.Experiment
    effective: pb.Experiment
    is_dssd: bool
    classes: list = field(default_factory=list)  # sorted target classes; class id = index + 1, 0 = background
    aspect_ratios: list = field(default_factory=list)  # per predictor layer (6 lists)
    scales: list = field(default_factory=list)  # 7 values
    variances: list = field(default_factory=list)
    steps: list = None
    offsets: list = None
    text: str = ""  # the spec file's text, for positions in later checks (check_native)

    @property
    def ssd(self):
        return self.effective.ssd_config

    def image_mean(self):
        """Per-channel mean in B, G, R order (or [l] for one channel), as TAO's preprocessing subtracts it."""
        aug = self.effective.augmentation_config
        if aug.output_channel == 1:
            return [dict(aug.image_mean).get("l", DEFAULT_GRAY_MEAN["l"])]
        means = dict(DEFAULT_IMAGE_MEAN, **dict(aug.image_mean))
        return [means["b"], means["g"], means["r"]]


def load_experiment(path, task="train"):
    """Parse and validate an SSD experiment spec for one task; raise SpecError naming file:line on any problem."""
    text = read_spec_text(path)
    raw = parse_text(text, pb.Experiment(), path)
    return validate_experiment(raw, text, path, task)


def parse_experiment_text(text, task="any", path="<spec>"):
    raw = parse_text(text, pb.Experiment(), path)
    return validate_experiment(raw, text, path, task)


def validate_experiment(raw, text, path, task):
    if task not in REQUIRED:
        raise ValueError(f"unknown task {task!r}")
    chk = Checker(path, text)
    for name in REQUIRED[task]:
        present = raw.WhichOneof("network") is not None if name == "network" else raw.HasField(name)
        if not present:
            what = "ssd_config (or dssd_config)" if name == "network" else name
            chk.fail(name, f"missing; `{task}` needs a {what} block")

    eff = pb.Experiment()
    eff.CopyFrom(raw)
    is_dssd = raw.WhichOneof("network") == "dssd_config"
    if is_dssd:  # TAO copies dssd_config into ssd_config and remembers the flavour.
        eff.ssd_config.CopyFrom(raw.dssd_config)
    _apply_defaults(eff)

    spec = ExperimentSpec(path=str(path), raw=raw, effective=eff, is_dssd=is_dssd, text=text)
    if raw.WhichOneof("network") is not None:
        _check_ssd_config(chk, spec, "dssd_config" if is_dssd else "ssd_config")
    if raw.HasField("augmentation_config"):
        _check_augmentation(chk, eff.augmentation_config)
    if raw.HasField("training_config"):
        _check_training(chk, eff.training_config, task)
    if raw.HasField("eval_config"):
        chk.require_range("eval_config.matching_iou_threshold", eff.eval_config.matching_iou_threshold, 0, 1)
    if raw.HasField("nms_config"):
        _check_nms(chk, eff.nms_config)
    if raw.HasField("dataset_config"):
        spec.classes = _check_dataset(chk, eff.dataset_config, task)
    if task == "train" and raw.training_config.HasField("early_stopping"):
        _check_early_stopping(chk, eff)
    chk.raise_if_any()
    return spec


def _check_early_stopping(chk, eff):
    """TAO's train.py raises for a validation_loss monitor without validation data or evaluated less than every
    epoch (Keras would otherwise compare against a metric missing on most epochs)."""
    if early_stopping_monitor(eff) != "validation_loss":
        return
    p = "training_config.early_stopping.monitor"
    usable_val = [v for v in eff.dataset_config.validation_data_sources
                  if v.image_directory_path and v.label_directory_path]
    if not usable_val:
        chk.fail(p, "validation_loss needs dataset_config.validation_data_sources (image and label directories)")
    if eff.eval_config.validation_period_during_training != 1:
        chk.fail(p, "validation_loss needs eval_config.validation_period_during_training: 1 (TAO's rule)")


def early_stopping_monitor(eff):
    """The metric early stopping watches, with TAO's alias val_loss -> validation_loss; None when not set."""
    if not eff.training_config.HasField("early_stopping"):
        return None
    monitor = eff.training_config.early_stopping.monitor
    return "validation_loss" if monitor == "val_loss" else monitor


def _apply_defaults(eff):
    for dotted, default in DEFAULTS.items():
        msg_name, fname = dotted.split(".")
        msg = getattr(eff, msg_name)
        if getattr(msg, fname) == 0:
            setattr(msg, fname, default)


def _numbers(chk, field_path, text, what):
    try:
        value = literal_numbers(text)
    except ValueError as e:
        chk.fail(field_path, f"{e}; expected {what}")
        return None
    return value


def _check_ssd_config(chk, spec, name):
    c = spec.effective.ssd_config
    p = name
    if c.arch not in ARCHS:
        chk.fail(f"{p}.arch", f"unknown arch {c.arch!r}; TAO SSD supports {', '.join(ARCHS)}")
    if c.arch == "resnet" and c.nlayers not in (10, 18, 34, 50, 101):
        chk.fail(f"{p}.nlayers", f"resnet needs nlayers in 10, 18, 34, 50, 101; got {c.nlayers}")

    if c.aspect_ratios:
        ars = _numbers(chk, f"{p}.aspect_ratios", c.aspect_ratios, "6 lists of aspect ratios")
        if ars is not None and (len(ars) != 6 or not all(isinstance(a, list) and a for a in ars)):
            chk.fail(f"{p}.aspect_ratios", "must be a list of 6 non-empty lists, one per predictor layer")
        elif ars is not None:
            spec.aspect_ratios = ars
    elif c.aspect_ratios_global:
        ars = _numbers(chk, f"{p}.aspect_ratios_global", c.aspect_ratios_global, "a list of aspect ratios")
        if ars is not None and (not isinstance(ars, list) or not ars or any(isinstance(a, list) for a in ars)):
            chk.fail(f"{p}.aspect_ratios_global", "must be a flat, non-empty list of numbers")
        elif ars is not None:
            spec.aspect_ratios = [list(ars) for _ in range(6)]
    else:
        chk.fail(p, "needs aspect_ratios or aspect_ratios_global")
    if any(a <= 0 for layer in spec.aspect_ratios for a in layer):
        chk.fail(f"{p}.aspect_ratios_global", "aspect ratios must be > 0")

    if c.scales:
        scales = _numbers(chk, f"{p}.scales", c.scales, "7 scales")
        if scales is not None and (len(scales) != 7 or any(isinstance(s, list) or s <= 0 for s in scales)):
            chk.fail(f"{p}.scales", "must be 7 positive numbers (6 predictor layers + 1 for the second ar=1 box)")
        elif scales is not None:
            spec.scales = scales
    elif c.min_scale > 0 and c.max_scale > c.min_scale:
        spec.scales = [c.min_scale + (c.max_scale - c.min_scale) * i / 6 for i in range(7)]
    else:
        chk.fail(f"{p}.min_scale", "needs scales, or 0 < min_scale < max_scale")

    variances = _numbers(chk, f"{p}.variances", c.variances or "[0.1, 0.1, 0.2, 0.2]", "4 variances")
    if variances is not None and (len(variances) != 4 or any(isinstance(v, list) or v <= 0 for v in variances)):
        chk.fail(f"{p}.variances", "must be 4 numbers > 0, e.g. \"[0.1, 0.1, 0.2, 0.2]\"")
    elif variances is not None:
        spec.variances = variances
    if c.steps:
        steps = _numbers(chk, f"{p}.steps", c.steps, "6 steps")
        if steps is not None and len(steps) != 6:
            chk.fail(f"{p}.steps", "must have 6 values (or (h, w) pairs), one per predictor layer")
        else:
            spec.steps = steps
    if c.offsets:
        offsets = _numbers(chk, f"{p}.offsets", c.offsets, "6 offsets")
        flat = [o for v in (offsets or []) for o in (v if isinstance(v, list) else [v])]
        if offsets is not None and (len(offsets) != 6 or not all(0 < o < 1 for o in flat)):
            chk.fail(f"{p}.offsets", "must have 6 values, each in (0, 1)")
        else:
            spec.offsets = offsets
    for fname in ("pos_iou_thresh", "neg_iou_thresh"):
        chk.require_range(f"{p}.{fname}", getattr(c, fname), 0, 1, hi_open=False)
    if c.neg_iou_thresh > c.pos_iou_thresh:
        chk.fail(f"{p}.neg_iou_thresh", "must not exceed pos_iou_thresh")
    if c.alpha <= 0 or c.neg_pos_ratio <= 0:
        chk.fail(f"{p}.alpha", "alpha and neg_pos_ratio must be > 0")
    if any(b > 4 for b in c.freeze_blocks):
        chk.fail(f"{p}.freeze_blocks", "block ids are 0..4 for the backbones taoflow supports")


def _check_augmentation(chk, a):
    p = "augmentation_config"
    for fname in ("output_width", "output_height"):
        if getattr(a, fname) <= 32:
            chk.fail(f"{p}.{fname}", f"must be > 32, got {getattr(a, fname)}")
    if a.output_channel not in (1, 3):
        chk.fail(f"{p}.output_channel", f"must be 1 or 3, got {a.output_channel}")
    if not 0 < a.random_crop_min_scale <= a.random_crop_max_scale <= 1:
        chk.fail(f"{p}.random_crop_min_scale", "need 0 < random_crop_min_scale <= random_crop_max_scale <= 1")
    if not 0 < a.random_crop_min_ar <= a.random_crop_max_ar:
        chk.fail(f"{p}.random_crop_min_ar", "need 0 < random_crop_min_ar <= random_crop_max_ar")
    if not 1 <= a.zoom_out_min_scale <= a.zoom_out_max_scale:
        chk.fail(f"{p}.zoom_out_min_scale", "need 1 <= zoom_out_min_scale <= zoom_out_max_scale")
    chk.require_range(f"{p}.random_flip", a.random_flip, 0, 1, lo_open=False, hi_open=False)
    if not 0 <= a.brightness <= 255 or not 0 <= a.hue <= 180:
        chk.fail(f"{p}.brightness", "brightness must be in [0, 255] and hue in [0, 180]")
    if a.contrast < 0 or a.saturation < 0:
        chk.fail(f"{p}.contrast", "contrast and saturation must be >= 0")
    allowed = {"l"} if a.output_channel == 1 else {"b", "g", "r"}
    for key in a.image_mean:
        if key not in allowed:
            chk.fail(f"{p}.image_mean", f"key {key!r} not allowed; use {', '.join(sorted(allowed))}")


def _check_training(chk, t, task):
    p = "training_config"
    if t.batch_size_per_gpu == 0:
        chk.fail(f"{p}.batch_size_per_gpu", "must be > 0")
    if t.num_epochs == 0:
        chk.fail(f"{p}.num_epochs", "must be > 0")
    if task == "train" and t.learning_rate.WhichOneof("learning_rate") != "soft_start_annealing_schedule":
        chk.fail(f"{p}.learning_rate", "SSD training needs soft_start_annealing_schedule (TAO's SSD ignores others)")
    s = t.learning_rate.soft_start_annealing_schedule
    if t.learning_rate.HasField("soft_start_annealing_schedule"):
        q = f"{p}.learning_rate.soft_start_annealing_schedule"
        chk.require_range(f"{q}.soft_start", s.soft_start, 0, 1)
        chk.require_range(f"{q}.annealing", s.annealing, 0, 1)
        if s.soft_start >= s.annealing:
            chk.fail(f"{q}.annealing", "must be greater than soft_start")
        if not 0 < s.min_learning_rate <= s.max_learning_rate:
            chk.fail(f"{q}.min_learning_rate", "need 0 < min_learning_rate <= max_learning_rate")
    if task == "train" and not t.HasField("regularizer"):
        chk.fail(f"{p}.regularizer", "missing; SSD training needs a regularizer block (type NO_REG, L1 or L2)")
    if t.regularizer.type != pb.RegularizerConfig.NO_REG:
        chk.require_range(f"{p}.regularizer.weight", t.regularizer.weight, 0, 1)
    if t.HasField("early_stopping") and t.early_stopping.monitor not in EARLY_STOPPING_MONITORS:
        chk.fail(f"{p}.early_stopping.monitor", f"must be one of {', '.join(EARLY_STOPPING_MONITORS)}")


def _check_nms(chk, n):
    p = "nms_config"
    chk.require_range(f"{p}.confidence_threshold", n.confidence_threshold, 0, 1)
    chk.require_range(f"{p}.clustering_iou_threshold", n.clustering_iou_threshold, 0, 1)
    if n.top_k == 0:
        chk.fail(f"{p}.top_k", "must be > 0")


def _check_dataset(chk, d, task):
    p = "dataset_config"
    if not d.target_class_mapping:
        chk.fail(f"{p}.target_class_mapping", "is empty; map each dataset class to a target class")
    for i, src in enumerate(d.data_sources):
        if not src.tfrecords_path and not (src.image_directory_path and src.label_directory_path):
            chk.fail(f"{p}.data_sources", "needs tfrecords_path, or image_directory_path and label_directory_path", i)
    if task == "train" and not d.data_sources:
        chk.fail(f"{p}.data_sources", "missing; training needs at least one data source")
    # TAO drops validation sources with an empty image or label path before validating.
    usable_val = [v for v in d.validation_data_sources if v.image_directory_path and v.label_directory_path]
    if task == "evaluate" and not usable_val:
        chk.fail(f"{p}.validation_data_sources", "needs image_directory_path and label_directory_path (raw KITTI)")
    if d.type and d.type not in ("kitti", "coco"):
        chk.fail(f"{p}.type", "must be kitti or coco")
    return sorted({v.lower() for v in d.target_class_mapping.values()})



# ------------------------------------------------------------------------------------------------ native backend

# Backbones taoflow's native backend builds (taoflow.backends.native.model.RESNET_BLOCKS).
NATIVE_RESNET_DEPTHS = (10, 18, 34, 50)
TAO_BACKEND_HINT = 'use the TAO backend (backend="tao" in the train-ssd flow, or TAO\'s own `tao model ssd`)'


def check_native(spec, task="train"):
    """What taoflow's native backend would otherwise silently get wrong in a valid TAO spec.

    Fields that would change the trained model (QAT, DSSD heads, other backbones, COCO data, mixed data source
    kinds) raise one SpecError naming file:line of each; fields that cannot change the model (a logging or loader
    knob, or one TAO's SSD itself ignores) come back as warning lines `file:line: field: ... ignored ...` for the
    caller to log. The lists below are the documentation; each entry says why.
    """
    chk = Checker(spec.path, spec.text)
    warnings = []

    def warn(field, message, index=0):
        line, _ = chk.locator.find(field, index)
        warnings.append(f"{spec.path}:{line}: {field}: {message}" if line else f"{spec.path}: {field}: {message}")

    raw = spec.raw
    if raw.WhichOneof("network") == "dssd_config":
        chk.fail("dssd_config", f"the native backend builds SSD, not DSSD (its prediction modules and "
                                f"deconvolution layers); {TAO_BACKEND_HINT}, or rename the block ssd_config")
    net = "dssd_config" if spec.is_dssd else "ssd_config"
    ssd = spec.effective.ssd_config
    if raw.WhichOneof("network") is not None and (ssd.arch != "resnet" or ssd.nlayers not in NATIVE_RESNET_DEPTHS):
        chk.fail(f"{net}.arch", f"the native backend builds resnet {', '.join(map(str, NATIVE_RESNET_DEPTHS))}; "
                                f"the spec asks for {ssd.arch}{ssd.nlayers or ''}: {TAO_BACKEND_HINT}")
    d = raw.dataset_config
    if d.type == "coco":
        chk.fail("dataset_config.type", "the native backend reads KITTI labels (TFRecords or image/label folders), "
                                        f"not COCO; convert to KITTI or {TAO_BACKEND_HINT}")
    if task == "train":
        t = raw.training_config
        if t.enable_qat:
            chk.fail("training_config.enable_qat", "the native backend does not do quantization-aware training; "
                                                   f"{TAO_BACKEND_HINT}, or set enable_qat: false")
        kinds = {bool(src.tfrecords_path) for src in d.data_sources}
        if len(kinds) > 1:
            first_raw = next(i for i, src in enumerate(d.data_sources) if not src.tfrecords_path)
            chk.fail("dataset_config.data_sources", "mixes tfrecords_path sources with image/label directory "
                     "sources; TAO picks one reader from the first source and fails on the others. Use one kind "
                     "(convert the folders with `taoflow tfrecords`, or list folders only)", first_raw)
        for i, src in enumerate(d.data_sources):
            if src.root_path:
                warn("dataset_config.data_sources.root_path", "ignored, as TAO's SSD ignores it; give absolute "
                     "paths (or paths relative to the working directory)", i)
        if t.HasField("optimizer"):
            warn("training_config.optimizer", "ignored: SSD training uses SGD with momentum 0.9, in TAO as here")
        if t.HasField("cost_scaling") and t.cost_scaling.enabled:
            warn("training_config.cost_scaling", "ignored, as TAO's SSD ignores it (use --use_amp for mixed "
                                                 "precision)")
        if t.model_ema:
            warn("training_config.model_ema", "ignored, as TAO's SSD ignores it")
        for name in ("resume_model_path", "pretrain_model_path", "pruned_model_path"):
            if getattr(t, name):
                warn(f"training_config.{name}", "ignored, as TAO's SSD ignores it; pass the model with -m")
        for name in ("n_workers", "max_queue_size", "use_multiprocessing"):
            if getattr(t, name):
                warn(f"training_config.{name}", "ignored: a Keras loader setting; the native backend decodes "
                     "every image once into a cache")
        if t.HasField("visualizer") and (t.visualizer.enabled or t.visualizer.HasField("clearml_config")
                                         or t.visualizer.HasField("wandb_config")):
            warn("training_config.visualizer", "ignored: the native backend writes no TensorBoard events and "
                 "starts no ClearML/W&B task of its own (the train-ssd flow tracks runs in ClearML)")
    if task == "evaluate" and raw.eval_config.visualize_pr_curve:
        warn("eval_config.visualize_pr_curve", "ignored: the native evaluate writes no PR_curve.png (the "
                                               "train-ssd flow's report plots PR curves)")
    chk.raise_if_any()
    return warnings
