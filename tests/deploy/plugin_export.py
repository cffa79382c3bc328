"""A native export with both graphs (model.onnx and model_nms.onnx) from an untrained checkpoint of the native
backend's tiny spec, and sample images: seconds, not a training run. An untrained SSD still detects plenty (its
softmax sits near 0.5), which is all the package builder and preflight need."""

import numpy as np
import torch


def untrained_export(root):
    """(export dir, image dir) under `root`."""
    import cv2

    from taoflow.backends.native.build import build_model
    from taoflow.backends.native.checkpoint import save_checkpoint
    from taoflow.backends.native.export import export_onnx
    from taoflow.spec import load_experiment
    from tests.backends.native.conftest import write_spec

    spec_path = write_spec(root / "spec.txt", root / "data")
    spec = load_experiment(spec_path, task="export")
    torch.manual_seed(11)
    model, arch = build_model(spec)
    save_checkpoint(root / "ssd.pth", model, arch, spec.classes, epoch=1)
    export_onnx(spec_path, root / "ssd.pth", root / "export" / "model.onnx", gen_ds_config=True, data_type="fp16")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(4)
    for i in range(6):
        cv2.imwrite(str(images / f"{i:03d}.png"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    return root / "export", images
