"""A tiny raw CRPD dataset and tiny specs so the whole train-ssd flow runs in seconds; Prefect runs with a
temporary local server in its own PREFECT_HOME."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.clearml_offline import all_bytes as all_file_bytes  # noqa: E402,F401 (the flow tests' secret scans)

TRAIN = """random_seed: 7
ssd_config { aspect_ratios_global: "[1.0, 2.0, 0.5, 3.0, 1.0/3.0]" scales: "[0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95]"
  two_boxes_for_ar1: true variances: "[0.1, 0.1, 0.2, 0.2]" arch: "resnet" nlayers: 10 }
training_config { batch_size_per_gpu: 4 num_epochs: EPOCHS
  learning_rate { soft_start_annealing_schedule { min_learning_rate: 1e-4 max_learning_rate: 0.005 soft_start: 0.2
  annealing: 0.7 } } regularizer { type: REG } checkpoint_interval: 1 }
eval_config { validation_period_during_training: 1 average_precision_mode: SAMPLE batch_size: 8 }
nms_config { confidence_threshold: 0.01 clustering_iou_threshold: 0.6 top_k: 50 }
augmentation_config { output_width: 96 output_height: 96 output_channel: 3 }
dataset_config { data_sources { tfrecords_path: "records/train-fold-000-of-002-shard-*" }
  target_class_mapping { key: "lpd" value: "lpd" }
  validation_data_sources { image_directory_path: "val/image" label_directory_path: "val/label" } }
"""


def write_specs(directory, epochs=2):
    directory.mkdir(parents=True, exist_ok=True)
    train = directory / "train.txt"
    train.write_text(TRAIN.replace("EPOCHS", str(epochs)).replace("type: REG", "type: L1 weight: 3e-4"))
    retrain = directory / "retrain.txt"
    retrain.write_text(TRAIN.replace("EPOCHS", "1").replace("type: REG", "type: NO_REG"))
    return train, retrain


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ.update(PREFECT_HOME=str(home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90")
    os.environ.pop("PREFECT_API_URL", None)
    yield home
    # Stop the temporary server the flows started while pytest's capture is open (flows/prefect_server.py says why).
    from flows.prefect_server import stop_temporary_servers
    stop_temporary_servers()


@pytest.fixture(scope="session")
def raw_crpd(tmp_path_factory):
    from taoflow.datasets.demo import generate_crpd
    root = tmp_path_factory.mktemp("raw") / "crpd"
    generate_crpd(root, num_images=40, image_size=(160, 120), seed=11, progress=False)
    return root
