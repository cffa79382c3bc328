"""Native checkpoints (`.pth`): weights plus everything needed to rebuild the exact (possibly pruned) network.

A checkpoint records the architecture (depth, classes, boxes per layer, every conv's width), the class names, the
input shape and the anchor settings it was trained with, so evaluate/prune/export never guess. They are not
encrypted: TAO's `-k` key is accepted on the command line for compatibility but native artifacts do not use it.
"""

import hashlib
import os
from pathlib import Path

import torch

from ...errors import TaoflowError
from .model import SSD

FORMAT = "taoflow-ssd-checkpoint/1"


def save_checkpoint(path, model, arch, classes, epoch=None, optimizer=None, global_step=None, spec_text=None,
                    extra=None):
    state = {"format": FORMAT, "arch": dict(arch, widths=model.current_widths()), "classes": list(classes),
             "model": model.state_dict(), "epoch": epoch, "global_step": global_step, "spec": spec_text}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    state.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a truncated checkpoint behind


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise TaoflowError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle/zip errors: not a checkpoint at all
        raise TaoflowError(f"{path} is not a taoflow checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TaoflowError(f"{path} is not a taoflow native checkpoint (TAO .tlt/.hdf5 models need the TAO backend)")
    return state


def build_from_checkpoint(state):
    a = state["arch"]
    model = SSD(a["nlayers"], a["n_classes"], a["boxes_per_layer"], widths=a["widths"], in_channels=a["input"][0])
    model.load_state_dict(state["model"])
    return model


def check_matches_spec(state, arch, path):
    """A checkpoint must fit the spec it is used with: same depth, classes, anchors and input."""
    def norm(v):
        return list(v) if isinstance(v, (list, tuple)) else v

    a = state["arch"]
    for key in ("nlayers", "n_classes", "boxes_per_layer", "input"):
        if norm(a[key]) != norm(arch[key]):
            raise TaoflowError(f"{path} does not match the spec: checkpoint has {key}={a[key]}, spec gives "
                               f"{arch[key]}")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
