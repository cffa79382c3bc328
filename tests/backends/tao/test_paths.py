"""Host <-> container translation, container-side specs, and the mounts file document."""

import json
import os
import stat

import pytest

from taoflow.backends.tao import CONTAINER_ROOT, ContainerSpec, PathMap
from taoflow.backends.tao.mounts import clearml_envs, docker_options, mounts_document, write_mounts_file
from taoflow.backends.tao.paths import mount_dir
from taoflow.errors import SpecError, TaoflowError
from taoflow.spec import load_dataset_export, load_experiment

from .conftest import SPECS


@pytest.fixture
def tree(tmp_path):
    for sub in ("ws/results/train", "ws/specs", "data/crpd/val/image", "elsewhere/models"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "elsewhere/models/resnet18.hdf5").write_bytes(b"w")
    os.symlink(tmp_path / "data", tmp_path / "data-link")
    return tmp_path


def test_round_trip_through_explicit_and_mirrored_mounts(tree):
    pm = PathMap([(tree / "ws", "/workspace/tao-experiments")])
    pm.need([tree / "data/crpd/val/image", tree / "elsewhere/models", tree / "data"])
    paths = [tree / "ws", tree / "ws/results/train/weights/ssd_resnet18_epoch_001.hdf5", tree / "data/crpd/val",
             tree / "elsewhere/models/resnet18.hdf5", tree / "data/not-yet/created.txt"]
    for p in paths:
        c = pm.to_container(p)
        assert c.startswith(("/workspace/tao-experiments", CONTAINER_ROOT + "/"))
        assert pm.to_host(c) == p.resolve()
    assert pm.to_container(tree / "ws/results") == "/workspace/tao-experiments/results"
    assert pm.to_container(tree / "data/crpd") == f"{CONTAINER_ROOT}{tree.resolve()}/data/crpd"
    # only outermost automatic mounts; nothing inside the explicit one
    assert pm.mounts == [(str((tree / "ws").resolve()), "/workspace/tao-experiments"),
                         (str((tree / "data").resolve()), f"{CONTAINER_ROOT}{(tree / 'data').resolve()}"),
                         (str((tree / "elsewhere/models").resolve()),
                          f"{CONTAINER_ROOT}{(tree / 'elsewhere/models').resolve()}")]


def test_symlinked_paths_translate_like_the_launcher_mounts_them(tree):
    # the launcher realpaths mount sources, so a path through a symlink must map to the same container path
    pm = PathMap([(tree / "data-link", "/data")])
    assert pm.mounts[0][0] == str((tree / "data").resolve())
    assert pm.to_container(tree / "data/crpd/val") == "/data/crpd/val"
    assert pm.to_container(tree / "data-link/crpd/val") == "/data/crpd/val"
    assert pm.to_host("/data/crpd/val") == (tree / "data/crpd/val").resolve()


def test_identity_map_without_docker(tree):
    pm = PathMap([(tree / "ws", "/workspace")], identity=True)
    pm.need([tree / "data"])
    assert pm.mounts == []
    assert pm.to_container(tree / "ws/x") == str(tree / "ws/x")
    assert pm.to_host(str(tree / "ws/x")) == tree / "ws/x"


def test_mount_errors(tree):
    with pytest.raises(TaoflowError, match="does not exist"):
        PathMap([(tree / "missing", "/m")])
    with pytest.raises(TaoflowError, match="absolute container path"):
        PathMap([(tree / "ws", "relative/dir")])
    with pytest.raises(TaoflowError, match="refusing to mount the host's /"):
        PathMap().need(["/"])
    (tree / "odd:name").mkdir()
    with pytest.raises(TaoflowError, match="containing ':'"):
        PathMap().need([tree / "odd:name"])
    with pytest.raises(TaoflowError, match="outside every mount"):
        PathMap([(tree / "ws", "/ws")]).to_host("/opt/nvidia/whatever")


def test_translate_text_shows_host_paths(tree):
    pm = PathMap([(tree / "ws", "/workspace/tao-experiments")])
    text = f"cannot open /workspace/tao-experiments/results/x and {CONTAINER_ROOT}/srv/data/y"
    assert pm.translate_text(text) == f"cannot open {(tree / 'ws').resolve()}/results/x and /srv/data/y"


def test_mount_dir_for_files_dirs_globs_and_missing(tree):
    assert mount_dir(tree / "elsewhere/models/resnet18.hdf5") == tree / "elsewhere/models"
    assert mount_dir(tree / "data/crpd") == tree / "data/crpd"
    assert mount_dir(f"{tree}/data/crpd/val/image/*.jpg") == tree / "data/crpd/val/image"
    assert mount_dir(f"{tree}/ws/results/new.onnx") == tree / "ws/results"
    assert mount_dir(f"{tree}/nope/deeper/file") is None


def test_container_spec_resolves_relative_paths_then_translates(tree, data_root):
    spec = ContainerSpec(SPECS / "ssd_train_resnet18_crpd.txt", "train", data_root=data_root)
    assert f"{data_root}/crpd/tfrecords/crpd_train-fold-000-of-002-shard-*" in spec.host_paths
    pm = PathMap([(data_root, "/workspace/data")])
    pm.need(spec.mount_dirs())
    out = spec.write(tree / "ws/specs/train.txt", pm)
    rendered = load_experiment(out, task="train")
    ds = rendered.raw.dataset_config
    assert ds.data_sources[0].tfrecords_path == "/workspace/data/crpd/tfrecords/crpd_train-fold-000-of-002-shard-*"
    assert ds.validation_data_sources[0].image_directory_path == "/workspace/data/crpd/split/val/image"
    assert pm.mounts == [(str(data_root.resolve()), "/workspace/data")]
    # everything but the paths is the user's spec as written
    original = load_experiment(SPECS / "ssd_train_resnet18_crpd.txt").raw
    original.dataset_config.ClearField("data_sources")
    original.dataset_config.ClearField("validation_data_sources")
    ds.ClearField("data_sources")
    ds.ClearField("validation_data_sources")
    assert rendered.raw == original


def test_container_spec_for_dataset_convert_and_relative_path_errors(tree, data_root, monkeypatch):
    spec = ContainerSpec(SPECS / "ssd_tfrecords_crpd.txt", "dataset_convert", data_root=data_root)
    pm = PathMap()
    pm.need(spec.mount_dirs())
    out = load_dataset_export(spec.write(tree / "ws/specs/convert.txt", pm))
    assert out.kitti.root_directory_path == f"{CONTAINER_ROOT}{data_root.resolve()}/crpd/split/training"
    # TAO's rule for root_directory_path without a data root: $DATA_BASE_PATH, applied on the host
    monkeypatch.setenv("DATA_BASE_PATH", str(data_root))
    spec = ContainerSpec(SPECS / "ssd_tfrecords_crpd.txt", "dataset_convert")
    assert f"{data_root}/crpd/split/training" in spec.host_paths
    with pytest.raises(SpecError, match="relative path .* pass data_root="):
        ContainerSpec(SPECS / "ssd_train_resnet18_crpd.txt", "train")


def test_mounts_document_and_file(tree, monkeypatch):
    pm = PathMap([(tree / "ws", "/workspace/tao-experiments")])
    env = {"CLEARML_API_HOST": "https://api.clear.ml", "CLEARML_API_SECRET_KEY": "s3cr3t", "HOME": "/h",
           "CLEARMLX": "no"}
    doc = mounts_document(pm, clearml_envs(env), docker_options({"shm_size": "16G", "ulimits": {"memlock": -1}},
                                                                ("user", "shm_size", "ulimits")))
    assert doc["Envs"] == [{"variable": "CLEARML_API_HOST", "value": "https://api.clear.ml"},
                           {"variable": "CLEARML_API_SECRET_KEY", "value": "s3cr3t"}]
    assert doc["DockerOptions"] == {"shm_size": "16G", "ulimits": {"memlock": -1},
                                    "user": f"{os.getuid()}:{os.getgid()}"}
    path = write_mounts_file(tree / "run/mounts.json", doc)
    assert json.loads(path.read_text()) == doc
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_docker_options_restricted_to_what_the_launcher_accepts():
    tao4_keys = ("user", "ports", "shm_size", "ulimits", "privileged", "network")
    with pytest.raises(TaoflowError, match="tty not accepted by this TAO launcher"):
        docker_options({"tty": False}, tao4_keys)
    with pytest.raises(TaoflowError, match="ulimits must be a dict"):
        docker_options({"ulimits": "memlock=-1"}, tao4_keys)
    assert docker_options({"user": "0:0"}, tao4_keys) == {"user": "0:0"}
