"""What a spec means for the network: architecture, anchors, learning rate (TAO's rules, one place)."""

import math

import numpy as np
import torch

from .anchors import boxes_per_layer, generate_anchors
from .model import RESNET_BLOCKS, SSD, feature_map_sizes


def arch_from_spec(spec):
    """The architecture a spec asks for, as stored in checkpoints."""
    ssd = spec.effective.ssd_config
    aug = spec.effective.augmentation_config
    if ssd.arch != "resnet" or ssd.nlayers not in RESNET_BLOCKS:
        raise ValueError(f"the native backend builds resnet{sorted(RESNET_BLOCKS)}; the spec asks for "
                         f"{ssd.arch}{ssd.nlayers or ''} (use the TAO backend for other backbones)")
    return {"nlayers": ssd.nlayers, "n_classes": len(spec.classes) + 1,
            "boxes_per_layer": boxes_per_layer(spec.aspect_ratios, ssd.two_boxes_for_ar1),
            "input": [aug.output_channel, aug.output_height, aug.output_width]}


def build_model(spec):
    arch = arch_from_spec(spec)
    return SSD(arch["nlayers"], arch["n_classes"], arch["boxes_per_layer"], in_channels=arch["input"][0]), arch


def anchors_for(spec, nlayers):
    ssd = spec.effective.ssd_config
    aug = spec.effective.augmentation_config
    h, w = aug.output_height, aug.output_width
    return torch.from_numpy(generate_anchors(h, w, feature_map_sizes(nlayers, h, w), spec.aspect_ratios, spec.scales,
                                             ssd.two_boxes_for_ar1, spec.steps, spec.offsets, ssd.clip_boxes))


def soft_start_annealing_lr(step, total_steps, schedule, num_gpus=1):
    """TAO's SoftStartAnnealingLearningRateScheduler: log-linear warm-up, plateau, log-linear decay, per batch."""
    base, low = schedule.max_learning_rate * num_gpus, schedule.min_learning_rate * num_gpus
    progress = step / max(1, total_steps)
    if progress < schedule.soft_start:
        t = progress / schedule.soft_start
    elif progress > schedule.annealing:
        t = (1.0 - progress) / (1.0 - schedule.annealing)
    else:
        t = 1.0
    return float(np.exp(np.log(low) + t * (np.log(base) - np.log(low))))


def regularization(model, reg_type, weight):
    """Keras kernel regularizer over every conv kernel (TAO passes it to all Conv2D layers, heads included)."""
    if reg_type == 0 or weight == 0:
        return None
    total = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            total = total + (m.weight.abs().sum() if reg_type == 1 else (m.weight ** 2).sum())
    return weight * total


def iterations_per_epoch(n_images, batch_size, num_gpus=1):
    return math.ceil(n_images / batch_size / num_gpus)
