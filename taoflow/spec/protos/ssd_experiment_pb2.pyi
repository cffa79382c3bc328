from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Experiment(_message.Message):
    __slots__ = ("random_seed", "dataset_config", "augmentation_config", "training_config", "eval_config", "nms_config", "ssd_config", "dssd_config")
    RANDOM_SEED_FIELD_NUMBER: _ClassVar[int]
    DATASET_CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATION_CONFIG_FIELD_NUMBER: _ClassVar[int]
    TRAINING_CONFIG_FIELD_NUMBER: _ClassVar[int]
    EVAL_CONFIG_FIELD_NUMBER: _ClassVar[int]
    NMS_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SSD_CONFIG_FIELD_NUMBER: _ClassVar[int]
    DSSD_CONFIG_FIELD_NUMBER: _ClassVar[int]
    random_seed: int
    dataset_config: DatasetConfig
    augmentation_config: AugmentationConfig
    training_config: TrainingConfig
    eval_config: EvalConfig
    nms_config: NMSConfig
    ssd_config: SSDConfig
    dssd_config: SSDConfig
    def __init__(self, random_seed: _Optional[int] = ..., dataset_config: _Optional[_Union[DatasetConfig, _Mapping]] = ..., augmentation_config: _Optional[_Union[AugmentationConfig, _Mapping]] = ..., training_config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., eval_config: _Optional[_Union[EvalConfig, _Mapping]] = ..., nms_config: _Optional[_Union[NMSConfig, _Mapping]] = ..., ssd_config: _Optional[_Union[SSDConfig, _Mapping]] = ..., dssd_config: _Optional[_Union[SSDConfig, _Mapping]] = ...) -> None: ...

class SSDConfig(_message.Message):
    __slots__ = ("aspect_ratios", "aspect_ratios_global", "scales", "min_scale", "max_scale", "two_boxes_for_ar1", "steps", "clip_boxes", "variances", "offsets", "mean_color", "arch", "nlayers", "pred_num_channels", "alpha", "neg_pos_ratio", "pos_iou_thresh", "freeze_blocks", "freeze_bn", "neg_iou_thresh")
    ASPECT_RATIOS_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIOS_GLOBAL_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    MIN_SCALE_FIELD_NUMBER: _ClassVar[int]
    MAX_SCALE_FIELD_NUMBER: _ClassVar[int]
    TWO_BOXES_FOR_AR1_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CLIP_BOXES_FIELD_NUMBER: _ClassVar[int]
    VARIANCES_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    MEAN_COLOR_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    NLAYERS_FIELD_NUMBER: _ClassVar[int]
    PRED_NUM_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    NEG_POS_RATIO_FIELD_NUMBER: _ClassVar[int]
    POS_IOU_THRESH_FIELD_NUMBER: _ClassVar[int]
    FREEZE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FREEZE_BN_FIELD_NUMBER: _ClassVar[int]
    NEG_IOU_THRESH_FIELD_NUMBER: _ClassVar[int]
    aspect_ratios: str
    aspect_ratios_global: str
    scales: str
    min_scale: float
    max_scale: float
    two_boxes_for_ar1: bool
    steps: str
    clip_boxes: bool
    variances: str
    offsets: str
    mean_color: str
    arch: str
    nlayers: int
    pred_num_channels: int
    alpha: float
    neg_pos_ratio: float
    pos_iou_thresh: float
    freeze_blocks: _containers.RepeatedScalarFieldContainer[int]
    freeze_bn: bool
    neg_iou_thresh: float
    def __init__(self, aspect_ratios: _Optional[str] = ..., aspect_ratios_global: _Optional[str] = ..., scales: _Optional[str] = ..., min_scale: _Optional[float] = ..., max_scale: _Optional[float] = ..., two_boxes_for_ar1: _Optional[bool] = ..., steps: _Optional[str] = ..., clip_boxes: _Optional[bool] = ..., variances: _Optional[str] = ..., offsets: _Optional[str] = ..., mean_color: _Optional[str] = ..., arch: _Optional[str] = ..., nlayers: _Optional[int] = ..., pred_num_channels: _Optional[int] = ..., alpha: _Optional[float] = ..., neg_pos_ratio: _Optional[float] = ..., pos_iou_thresh: _Optional[float] = ..., freeze_blocks: _Optional[_Iterable[int]] = ..., freeze_bn: _Optional[bool] = ..., neg_iou_thresh: _Optional[float] = ...) -> None: ...

class AugmentationConfig(_message.Message):
    __slots__ = ("output_width", "output_height", "output_channel", "random_crop_min_scale", "random_crop_max_scale", "random_crop_min_ar", "random_crop_max_ar", "zoom_out_min_scale", "zoom_out_max_scale", "brightness", "contrast", "saturation", "hue", "random_flip", "image_mean")
    class ImageMeanEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    OUTPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    RANDOM_CROP_MIN_SCALE_FIELD_NUMBER: _ClassVar[int]
    RANDOM_CROP_MAX_SCALE_FIELD_NUMBER: _ClassVar[int]
    RANDOM_CROP_MIN_AR_FIELD_NUMBER: _ClassVar[int]
    RANDOM_CROP_MAX_AR_FIELD_NUMBER: _ClassVar[int]
    ZOOM_OUT_MIN_SCALE_FIELD_NUMBER: _ClassVar[int]
    ZOOM_OUT_MAX_SCALE_FIELD_NUMBER: _ClassVar[int]
    BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    SATURATION_FIELD_NUMBER: _ClassVar[int]
    HUE_FIELD_NUMBER: _ClassVar[int]
    RANDOM_FLIP_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MEAN_FIELD_NUMBER: _ClassVar[int]
    output_width: int
    output_height: int
    output_channel: int
    random_crop_min_scale: float
    random_crop_max_scale: float
    random_crop_min_ar: float
    random_crop_max_ar: float
    zoom_out_min_scale: float
    zoom_out_max_scale: float
    brightness: int
    contrast: float
    saturation: float
    hue: int
    random_flip: float
    image_mean: _containers.ScalarMap[str, float]
    def __init__(self, output_width: _Optional[int] = ..., output_height: _Optional[int] = ..., output_channel: _Optional[int] = ..., random_crop_min_scale: _Optional[float] = ..., random_crop_max_scale: _Optional[float] = ..., random_crop_min_ar: _Optional[float] = ..., random_crop_max_ar: _Optional[float] = ..., zoom_out_min_scale: _Optional[float] = ..., zoom_out_max_scale: _Optional[float] = ..., brightness: _Optional[int] = ..., contrast: _Optional[float] = ..., saturation: _Optional[float] = ..., hue: _Optional[int] = ..., random_flip: _Optional[float] = ..., image_mean: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvalConfig(_message.Message):
    __slots__ = ("validation_period_during_training", "average_precision_mode", "batch_size", "matching_iou_threshold", "visualize_pr_curve")
    class AP_MODE(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SAMPLE: _ClassVar[EvalConfig.AP_MODE]
        INTEGRATE: _ClassVar[EvalConfig.AP_MODE]
    SAMPLE: EvalConfig.AP_MODE
    INTEGRATE: EvalConfig.AP_MODE
    VALIDATION_PERIOD_DURING_TRAINING_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_PRECISION_MODE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MATCHING_IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VISUALIZE_PR_CURVE_FIELD_NUMBER: _ClassVar[int]
    validation_period_during_training: int
    average_precision_mode: EvalConfig.AP_MODE
    batch_size: int
    matching_iou_threshold: float
    visualize_pr_curve: bool
    def __init__(self, validation_period_during_training: _Optional[int] = ..., average_precision_mode: _Optional[_Union[EvalConfig.AP_MODE, str]] = ..., batch_size: _Optional[int] = ..., matching_iou_threshold: _Optional[float] = ..., visualize_pr_curve: _Optional[bool] = ...) -> None: ...

class NMSConfig(_message.Message):
    __slots__ = ("confidence_threshold", "clustering_iou_threshold", "top_k", "infer_nms_score_bits", "force_on_cpu")
    CONFIDENCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLUSTERING_IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    INFER_NMS_SCORE_BITS_FIELD_NUMBER: _ClassVar[int]
    FORCE_ON_CPU_FIELD_NUMBER: _ClassVar[int]
    confidence_threshold: float
    clustering_iou_threshold: float
    top_k: int
    infer_nms_score_bits: int
    force_on_cpu: bool
    def __init__(self, confidence_threshold: _Optional[float] = ..., clustering_iou_threshold: _Optional[float] = ..., top_k: _Optional[int] = ..., infer_nms_score_bits: _Optional[int] = ..., force_on_cpu: _Optional[bool] = ...) -> None: ...

class DataSource(_message.Message):
    __slots__ = ("label_directory_path", "image_directory_path", "root_path", "tfrecords_path")
    LABEL_DIRECTORY_PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIRECTORY_PATH_FIELD_NUMBER: _ClassVar[int]
    ROOT_PATH_FIELD_NUMBER: _ClassVar[int]
    TFRECORDS_PATH_FIELD_NUMBER: _ClassVar[int]
    label_directory_path: str
    image_directory_path: str
    root_path: str
    tfrecords_path: str
    def __init__(self, label_directory_path: _Optional[str] = ..., image_directory_path: _Optional[str] = ..., root_path: _Optional[str] = ..., tfrecords_path: _Optional[str] = ...) -> None: ...

class DatasetConfig(_message.Message):
    __slots__ = ("data_sources", "target_class_mapping", "validation_data_sources", "include_difficult_in_training", "type")
    class TargetClassMappingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DATA_SOURCES_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_MAPPING_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATA_SOURCES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DIFFICULT_IN_TRAINING_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    data_sources: _containers.RepeatedCompositeFieldContainer[DataSource]
    target_class_mapping: _containers.ScalarMap[str, str]
    validation_data_sources: _containers.RepeatedCompositeFieldContainer[DataSource]
    include_difficult_in_training: bool
    type: str
    def __init__(self, data_sources: _Optional[_Iterable[_Union[DataSource, _Mapping]]] = ..., target_class_mapping: _Optional[_Mapping[str, str]] = ..., validation_data_sources: _Optional[_Iterable[_Union[DataSource, _Mapping]]] = ..., include_difficult_in_training: _Optional[bool] = ..., type: _Optional[str] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("batch_size_per_gpu", "num_epochs", "learning_rate", "regularizer", "optimizer", "cost_scaling", "checkpoint_interval", "enable_qat", "resume_model_path", "pretrain_model_path", "pruned_model_path", "max_queue_size", "n_workers", "use_multiprocessing", "early_stopping", "visualizer", "model_ema")
    BATCH_SIZE_PER_GPU_FIELD_NUMBER: _ClassVar[int]
    NUM_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    REGULARIZER_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    COST_SCALING_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    ENABLE_QAT_FIELD_NUMBER: _ClassVar[int]
    RESUME_MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    PRETRAIN_MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    PRUNED_MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    N_WORKERS_FIELD_NUMBER: _ClassVar[int]
    USE_MULTIPROCESSING_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_FIELD_NUMBER: _ClassVar[int]
    VISUALIZER_FIELD_NUMBER: _ClassVar[int]
    MODEL_EMA_FIELD_NUMBER: _ClassVar[int]
    batch_size_per_gpu: int
    num_epochs: int
    learning_rate: LearningRateConfig
    regularizer: RegularizerConfig
    optimizer: OptimizerConfig
    cost_scaling: CostScalingConfig
    checkpoint_interval: int
    enable_qat: bool
    resume_model_path: str
    pretrain_model_path: str
    pruned_model_path: str
    max_queue_size: int
    n_workers: int
    use_multiprocessing: bool
    early_stopping: EarlyStopping
    visualizer: VisualizerConfig
    model_ema: bool
    def __init__(self, batch_size_per_gpu: _Optional[int] = ..., num_epochs: _Optional[int] = ..., learning_rate: _Optional[_Union[LearningRateConfig, _Mapping]] = ..., regularizer: _Optional[_Union[RegularizerConfig, _Mapping]] = ..., optimizer: _Optional[_Union[OptimizerConfig, _Mapping]] = ..., cost_scaling: _Optional[_Union[CostScalingConfig, _Mapping]] = ..., checkpoint_interval: _Optional[int] = ..., enable_qat: _Optional[bool] = ..., resume_model_path: _Optional[str] = ..., pretrain_model_path: _Optional[str] = ..., pruned_model_path: _Optional[str] = ..., max_queue_size: _Optional[int] = ..., n_workers: _Optional[int] = ..., use_multiprocessing: _Optional[bool] = ..., early_stopping: _Optional[_Union[EarlyStopping, _Mapping]] = ..., visualizer: _Optional[_Union[VisualizerConfig, _Mapping]] = ..., model_ema: _Optional[bool] = ...) -> None: ...

class EarlyStopping(_message.Message):
    __slots__ = ("monitor", "min_delta", "patience")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    monitor: str
    min_delta: float
    patience: int
    def __init__(self, monitor: _Optional[str] = ..., min_delta: _Optional[float] = ..., patience: _Optional[int] = ...) -> None: ...

class LearningRateConfig(_message.Message):
    __slots__ = ("soft_start_annealing_schedule", "soft_start_cosine_annealing_schedule")
    SOFT_START_ANNEALING_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SOFT_START_COSINE_ANNEALING_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    soft_start_annealing_schedule: SoftStartAnnealingScheduleConfig
    soft_start_cosine_annealing_schedule: SoftStartCosineAnnealingScheduleConfig
    def __init__(self, soft_start_annealing_schedule: _Optional[_Union[SoftStartAnnealingScheduleConfig, _Mapping]] = ..., soft_start_cosine_annealing_schedule: _Optional[_Union[SoftStartCosineAnnealingScheduleConfig, _Mapping]] = ...) -> None: ...

class SoftStartAnnealingScheduleConfig(_message.Message):
    __slots__ = ("min_learning_rate", "max_learning_rate", "soft_start", "annealing")
    MIN_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SOFT_START_FIELD_NUMBER: _ClassVar[int]
    ANNEALING_FIELD_NUMBER: _ClassVar[int]
    min_learning_rate: float
    max_learning_rate: float
    soft_start: float
    annealing: float
    def __init__(self, min_learning_rate: _Optional[float] = ..., max_learning_rate: _Optional[float] = ..., soft_start: _Optional[float] = ..., annealing: _Optional[float] = ...) -> None: ...

class SoftStartCosineAnnealingScheduleConfig(_message.Message):
    __slots__ = ("max_learning_rate", "soft_start", "min_learning_rate")
    MAX_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SOFT_START_FIELD_NUMBER: _ClassVar[int]
    MIN_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    max_learning_rate: float
    soft_start: float
    min_learning_rate: float
    def __init__(self, max_learning_rate: _Optional[float] = ..., soft_start: _Optional[float] = ..., min_learning_rate: _Optional[float] = ...) -> None: ...

class RegularizerConfig(_message.Message):
    __slots__ = ("type", "weight")
    class RegularizationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NO_REG: _ClassVar[RegularizerConfig.RegularizationType]
        L1: _ClassVar[RegularizerConfig.RegularizationType]
        L2: _ClassVar[RegularizerConfig.RegularizationType]
    NO_REG: RegularizerConfig.RegularizationType
    L1: RegularizerConfig.RegularizationType
    L2: RegularizerConfig.RegularizationType
    TYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    type: RegularizerConfig.RegularizationType
    weight: float
    def __init__(self, type: _Optional[_Union[RegularizerConfig.RegularizationType, str]] = ..., weight: _Optional[float] = ...) -> None: ...

class OptimizerConfig(_message.Message):
    __slots__ = ("adam", "sgd", "rmsprop")
    ADAM_FIELD_NUMBER: _ClassVar[int]
    SGD_FIELD_NUMBER: _ClassVar[int]
    RMSPROP_FIELD_NUMBER: _ClassVar[int]
    adam: AdamOptimizerConfig
    sgd: SGDOptimizerConfig
    rmsprop: RMSpropOptimizerConfig
    def __init__(self, adam: _Optional[_Union[AdamOptimizerConfig, _Mapping]] = ..., sgd: _Optional[_Union[SGDOptimizerConfig, _Mapping]] = ..., rmsprop: _Optional[_Union[RMSpropOptimizerConfig, _Mapping]] = ...) -> None: ...

class AdamOptimizerConfig(_message.Message):
    __slots__ = ("epsilon", "beta1", "beta2", "amsgrad")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    AMSGRAD_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    beta1: float
    beta2: float
    amsgrad: bool
    def __init__(self, epsilon: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., amsgrad: _Optional[bool] = ...) -> None: ...

class SGDOptimizerConfig(_message.Message):
    __slots__ = ("momentum", "nesterov")
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    momentum: float
    nesterov: bool
    def __init__(self, momentum: _Optional[float] = ..., nesterov: _Optional[bool] = ...) -> None: ...

class RMSpropOptimizerConfig(_message.Message):
    __slots__ = ("rho", "momentum", "epsilon", "centered")
    RHO_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    CENTERED_FIELD_NUMBER: _ClassVar[int]
    rho: float
    momentum: float
    epsilon: float
    centered: bool
    def __init__(self, rho: _Optional[float] = ..., momentum: _Optional[float] = ..., epsilon: _Optional[float] = ..., centered: _Optional[bool] = ...) -> None: ...

class CostScalingConfig(_message.Message):
    __slots__ = ("enabled", "initial_exponent", "increment", "decrement")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    INITIAL_EXPONENT_FIELD_NUMBER: _ClassVar[int]
    INCREMENT_FIELD_NUMBER: _ClassVar[int]
    DECREMENT_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    initial_exponent: float
    increment: float
    decrement: float
    def __init__(self, enabled: _Optional[bool] = ..., initial_exponent: _Optional[float] = ..., increment: _Optional[float] = ..., decrement: _Optional[float] = ...) -> None: ...

class VisualizerConfig(_message.Message):
    __slots__ = ("enabled", "num_images", "weight_histograms", "wandb_config", "clearml_config")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    WANDB_CONFIG_FIELD_NUMBER: _ClassVar[int]
    CLEARML_CONFIG_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    num_images: int
    weight_histograms: bool
    wandb_config: WandBConfig
    clearml_config: ClearMLConfig
    def __init__(self, enabled: _Optional[bool] = ..., num_images: _Optional[int] = ..., weight_histograms: _Optional[bool] = ..., wandb_config: _Optional[_Union[WandBConfig, _Mapping]] = ..., clearml_config: _Optional[_Union[ClearMLConfig, _Mapping]] = ...) -> None: ...

class WandBConfig(_message.Message):
    __slots__ = ("enabled", "key", "project", "entity", "reinit", "name", "tags", "wandb_dir", "notes", "mode")
    class MODE(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ONLINE: _ClassVar[WandBConfig.MODE]
        OFFLINE: _ClassVar[WandBConfig.MODE]
        DISABLED: _ClassVar[WandBConfig.MODE]
    ONLINE: WandBConfig.MODE
    OFFLINE: WandBConfig.MODE
    DISABLED: WandBConfig.MODE
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    REINIT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    WANDB_DIR_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    key: str
    project: str
    entity: str
    reinit: bool
    name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    wandb_dir: str
    notes: str
    mode: WandBConfig.MODE
    def __init__(self, enabled: _Optional[bool] = ..., key: _Optional[str] = ..., project: _Optional[str] = ..., entity: _Optional[str] = ..., reinit: _Optional[bool] = ..., name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., wandb_dir: _Optional[str] = ..., notes: _Optional[str] = ..., mode: _Optional[_Union[WandBConfig.MODE, str]] = ...) -> None: ...

class ClearMLConfig(_message.Message):
    __slots__ = ("project", "task", "tags", "reuse_last_task_id", "continue_last_task", "deferred_init")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    REUSE_LAST_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_LAST_TASK_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_INIT_FIELD_NUMBER: _ClassVar[int]
    project: str
    task: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    reuse_last_task_id: bool
    continue_last_task: bool
    deferred_init: bool
    def __init__(self, project: _Optional[str] = ..., task: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., reuse_last_task_id: _Optional[bool] = ..., continue_last_task: _Optional[bool] = ..., deferred_init: _Optional[bool] = ...) -> None: ...
