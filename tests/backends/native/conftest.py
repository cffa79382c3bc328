"""A tiny dataset through the real data stage, and a tiny spec, shared by the native backend tests."""

import os

import pytest

from taoflow.datasets.crpd import convert_crpd
from taoflow.datasets.demo import generate_crpd
from taoflow.datasets.split import split_dataset
from taoflow.datasets.tfrecords import dataset_convert
from taoflow.spec import parse_dataset_export_text

TINY_SPEC = """
random_seed: 7
ssd_config {{
  aspect_ratios_global: "[1.0, 2.0, 0.5, 3.0, 1.0/3.0]"
  scales: "[0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95]"
  two_boxes_for_ar1: true
  variances: "[0.1, 0.1, 0.2, 0.2]"
  arch: "resnet"
  nlayers: 10
}}
training_config {{
  batch_size_per_gpu: 4
  num_epochs: {epochs}
  learning_rate {{ soft_start_annealing_schedule {{ min_learning_rate: 1e-4 max_learning_rate: 0.005 soft_start: 0.2
                                                     annealing: 0.7 }} }}
  regularizer {{ type: L1 weight: 3e-4 }}
  checkpoint_interval: 1
}}
eval_config {{ validation_period_during_training: 1 average_precision_mode: SAMPLE batch_size: 8 }}
nms_config {{ confidence_threshold: 0.01 clustering_iou_threshold: 0.6 top_k: 50 }}
augmentation_config {{ output_width: 96 output_height: 96 output_channel: 3 }}
dataset_config {{
  data_sources {{ tfrecords_path: "{data}/tfrecords/t-fold-000-of-002-shard-*" }}
  target_class_mapping {{ key: "lpd" value: "lpd" }}
  validation_data_sources {{ image_directory_path: "{data}/split/val/image"
                             label_directory_path: "{data}/split/val/label" }}
}}
"""


def make_tiny_data(root):
    """16 synthetic CRPD images through the real data stage: root/split (75/25) and root/tfrecords/t-fold-*."""
    generate_crpd(root / "raw", num_images=16, image_size=(160, 120), seed=5, split_fractions=(1.0, 0.0, 0.0),
                  progress=False)
    convert_crpd(root / "raw", root / "kitti", progress=False)
    split_dataset(root / "kitti/train/image", root / "kitti/train/label", root / "split", val_split=25,
                  progress=False)
    spec = parse_dataset_export_text(f"""kitti_config {{ root_directory_path: "{root / 'split/training'}"
        image_dir_name: "image" label_dir_name: "label" image_extension: ".jpg" partition_mode: "random"
        num_partitions: 2 val_split: 0 num_shards: 2 }}
        target_class_mapping {{ key: "lpd" value: "lpd" }}""")
    dataset_convert(spec, root / "tfrecords" / "t", progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("native"))


def write_spec(path, data, epochs=2):
    path.write_text(TINY_SPEC.format(data=data, epochs=epochs))
    return path


@pytest.fixture(scope="session")
def trained(tiny_data):
    """A 2-epoch model (train() with validation each epoch), shared by evaluate/export/prune/inference tests."""
    from taoflow.backends.native.evaluate import validation_fn
    from taoflow.backends.native.train import train

    spec = write_spec(tiny_data / "spec.txt", tiny_data)
    result = train(spec, tiny_data / "run", device="cpu", evaluate_fn=validation_fn)
    return spec, result


def cli(*argv):
    """Run taoflow-ssd in-process; return (exit code, stdout+stderr) like a user would see them."""
    import contextlib
    import io

    from taoflow.backends.native.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


os.environ.setdefault("OMP_NUM_THREADS", "2")
