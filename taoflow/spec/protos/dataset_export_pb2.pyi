from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetExportConfig(_message.Message):
    __slots__ = ("coco_config", "kitti_config", "sample_modifier_config", "image_directory_path", "target_class_mapping")
    class TargetClassMappingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COCO_CONFIG_FIELD_NUMBER: _ClassVar[int]
    KITTI_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_MODIFIER_CONFIG_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIRECTORY_PATH_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_MAPPING_FIELD_NUMBER: _ClassVar[int]
    coco_config: COCOConfig
    kitti_config: KITTIConfig
    sample_modifier_config: SampleModifierConfig
    image_directory_path: str
    target_class_mapping: _containers.ScalarMap[str, str]
    def __init__(self, coco_config: _Optional[_Union[COCOConfig, _Mapping]] = ..., kitti_config: _Optional[_Union[KITTIConfig, _Mapping]] = ..., sample_modifier_config: _Optional[_Union[SampleModifierConfig, _Mapping]] = ..., image_directory_path: _Optional[str] = ..., target_class_mapping: _Optional[_Mapping[str, str]] = ...) -> None: ...

class KITTIConfig(_message.Message):
    __slots__ = ("root_directory_path", "image_dir_name", "label_dir_name", "point_clouds_dir", "calibrations_dir", "kitti_sequence_to_frames_file", "image_extension", "num_partitions", "num_shards", "partition_mode", "val_split")
    ROOT_DIRECTORY_PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIR_NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_DIR_NAME_FIELD_NUMBER: _ClassVar[int]
    POINT_CLOUDS_DIR_FIELD_NUMBER: _ClassVar[int]
    CALIBRATIONS_DIR_FIELD_NUMBER: _ClassVar[int]
    KITTI_SEQUENCE_TO_FRAMES_FILE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_EXTENSION_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_MODE_FIELD_NUMBER: _ClassVar[int]
    VAL_SPLIT_FIELD_NUMBER: _ClassVar[int]
    root_directory_path: str
    image_dir_name: str
    label_dir_name: str
    point_clouds_dir: str
    calibrations_dir: str
    kitti_sequence_to_frames_file: str
    image_extension: str
    num_partitions: int
    num_shards: int
    partition_mode: str
    val_split: float
    def __init__(self, root_directory_path: _Optional[str] = ..., image_dir_name: _Optional[str] = ..., label_dir_name: _Optional[str] = ..., point_clouds_dir: _Optional[str] = ..., calibrations_dir: _Optional[str] = ..., kitti_sequence_to_frames_file: _Optional[str] = ..., image_extension: _Optional[str] = ..., num_partitions: _Optional[int] = ..., num_shards: _Optional[int] = ..., partition_mode: _Optional[str] = ..., val_split: _Optional[float] = ...) -> None: ...

class COCOConfig(_message.Message):
    __slots__ = ("root_directory_path", "img_dir_names", "annotation_files", "num_partitions", "num_shards")
    ROOT_DIRECTORY_PATH_FIELD_NUMBER: _ClassVar[int]
    IMG_DIR_NAMES_FIELD_NUMBER: _ClassVar[int]
    ANNOTATION_FILES_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    root_directory_path: str
    img_dir_names: _containers.RepeatedScalarFieldContainer[str]
    annotation_files: _containers.RepeatedScalarFieldContainer[str]
    num_partitions: int
    num_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, root_directory_path: _Optional[str] = ..., img_dir_names: _Optional[_Iterable[str]] = ..., annotation_files: _Optional[_Iterable[str]] = ..., num_partitions: _Optional[int] = ..., num_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class SampleModifierConfig(_message.Message):
    __slots__ = ("filter_samples_containing_only", "dominant_target_classes", "minimum_target_class_imbalance", "num_duplicates", "max_training_samples", "source_to_target_class_mapping")
    class MinimumTargetClassImbalanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class SourceToTargetClassMappingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FILTER_SAMPLES_CONTAINING_ONLY_FIELD_NUMBER: _ClassVar[int]
    DOMINANT_TARGET_CLASSES_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_TARGET_CLASS_IMBALANCE_FIELD_NUMBER: _ClassVar[int]
    NUM_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAINING_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TO_TARGET_CLASS_MAPPING_FIELD_NUMBER: _ClassVar[int]
    filter_samples_containing_only: _containers.RepeatedScalarFieldContainer[str]
    dominant_target_classes: _containers.RepeatedScalarFieldContainer[str]
    minimum_target_class_imbalance: _containers.ScalarMap[str, float]
    num_duplicates: int
    max_training_samples: int
    source_to_target_class_mapping: _containers.ScalarMap[str, str]
    def __init__(self, filter_samples_containing_only: _Optional[_Iterable[str]] = ..., dominant_target_classes: _Optional[_Iterable[str]] = ..., minimum_target_class_imbalance: _Optional[_Mapping[str, float]] = ..., num_duplicates: _Optional[int] = ..., max_training_samples: _Optional[int] = ..., source_to_target_class_mapping: _Optional[_Mapping[str, str]] = ...) -> None: ...
