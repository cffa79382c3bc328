"""The dataset_convert spec (TAO's `-d` file, DatasetExportConfig): load and validate with file:line errors.

Rules follow TAO 5's kitti_converter_lib.py / build_converter.py: image_extension defaults to ".png" and is matched
case-sensitively, `random` partitioning needs exactly 2 partitions and 0 <= val_split < 100, and the data root is
`$DATA_BASE_PATH` (or ~/datasets) joined with root_directory_path, so absolute paths pass through unchanged.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from .checks import Checker
from .protos import dataset_export_pb2 as pb
from .textproto import parse_text, read_spec_text


@dataclass
class DatasetExportSpec:
    path: str
    raw: pb.DatasetExportConfig

    @property
    def kitti(self):
        return self.raw.kitti_config

    @property
    def image_extension(self):
        return self.kitti.image_extension or ".png"

    def root_dir(self):
        base = os.environ.get("DATA_BASE_PATH") or os.path.expanduser("~/datasets")
        return Path(os.path.abspath(os.path.join(base, self.kitti.root_directory_path)))

    def class_ids(self):
        """(classes, class2idx): ids 1..N over sorted lowercased targets; keys are lowercased source classes."""
        mapping = self.raw.target_class_mapping
        classes = sorted({v.lower() for v in mapping.values()})
        ids = {c: i + 1 for i, c in enumerate(classes)}
        return classes, {k.lower(): ids[v.lower()] for k, v in mapping.items()}


def load_dataset_export(path, require_mapping=True):
    text = read_spec_text(path)
    raw = parse_text(text, pb.DatasetExportConfig(), path)
    return validate_dataset_export(raw, text, path, require_mapping)


def parse_dataset_export_text(text, path="<spec>"):
    return validate_dataset_export(parse_text(text, pb.DatasetExportConfig(), path), text, path)


def validate_dataset_export(raw, text, path, require_mapping=True):
    chk = Checker(path, text)
    kind = raw.WhichOneof("convert_config_type")
    if kind is None:
        chk.fail("kitti_config", "missing; the spec needs a kitti_config block")
    elif kind == "coco_config":
        chk.fail("coco_config", "COCO conversion is not supported by taoflow; convert to KITTI labels first")
    else:
        k = raw.kitti_config
        p = "kitti_config"
        if not k.root_directory_path:
            chk.fail(f"{p}.root_directory_path", "is empty")
        if not k.image_dir_name or not k.label_dir_name:
            chk.fail(p, "needs image_dir_name and label_dir_name")
        if k.image_extension and not k.image_extension.startswith("."):
            chk.fail(f"{p}.image_extension", f"must start with a dot, e.g. \".jpg\"; got {k.image_extension!r}")
        if k.partition_mode == "random":
            if k.num_partitions != 2:
                chk.fail(f"{p}.num_partitions",
                         f"random partitioning needs exactly 2 partitions, got {k.num_partitions}")
            if not 0 <= k.val_split < 100:
                chk.fail(f"{p}.val_split", f"must satisfy 0 <= val_split < 100 (a percentage), got {k.val_split:g}")
        elif k.partition_mode == "sequence":
            if not k.kitti_sequence_to_frames_file:
                chk.fail(f"{p}.kitti_sequence_to_frames_file", "sequence partitioning needs this JSON file")
        else:
            chk.fail(f"{p}.partition_mode", f"must be \"random\" or \"sequence\", got {k.partition_mode!r}")
        if k.point_clouds_dir or k.calibrations_dir:
            chk.fail(p, "point clouds and calibrations are not used by SSD; remove them")
    if require_mapping and not raw.target_class_mapping:
        chk.fail("target_class_mapping", "is empty; map each dataset class to a target class (or pass -c)")
    sm = raw.sample_modifier_config
    if raw.HasField("sample_modifier_config") and sm.ByteSize():
        chk.fail("sample_modifier_config", "sample modification is not supported by taoflow; remove the block")
    chk.raise_if_any()
    return DatasetExportSpec(path=str(path), raw=raw)
