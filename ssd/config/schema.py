"""The configuration's schema: one typed dataclass per section, and the error it raises.

Loading, recipes and overrides are in `ssd.config.loading` (which re-exports these names); the checks of
every field's value in `ssd.config.validation`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ssd.errors import UserError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# the 80 COCO object categories in the order of COCO's category ids (1..90, with gaps)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# class lists a recipe (or an override) may name instead of listing: "data.class_names": "coco"
NAMED_CLASS_LISTS = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}

# the values of `anchors.preset` and `data.augmentation` that name the TF1 reference recipe
TF1 = "tf1"
TFOD = "tfod"  # the TF Object Detection API's ssd_anchor_generator (SSDLite)
ANCHOR_PRESETS = (TF1, "caffe", TFOD)
AUGMENTATIONS = ("paper", TF1, TFOD, "none")
EVAL_METRICS = ("voc07", "voc12", "coco")
OPTIMIZERS = ("momentum", "sgd", "adam", "rmsprop")
LR_SCHEDULES = ("piecewise", "exponential")
CLASSIFICATION_LOSSES = ("softmax", "sigmoid")  # loss.classification
HARD_EXAMPLE_MINERS = ("ssd", TFOD)  # loss.hard_example_mining


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message names the offending field."""


@dataclasses.dataclass
class ModelConfig:
    # "ssd300", "ssd512", "ssdlite320" or "ssdlite300" (ssd.config.architectures)
    architecture: str = "ssd300"
    # "vgg16" or "mobilenet_v2"; a recipe that leaves it out gets its architecture's backbone
    backbone: str = "vgg16"
    input_size: int = 300
    # object classes + background (label 0); derived from data.class_names when left out
    num_classes: int = 21
    width_multiplier: float = 1.0  # scales backbone and extra-layer channels
    extra_batch_norm: bool = False  # vgg16: batch norm after each extra-layer conv
    extra_padding: str = "caffe"  # vgg16 stride-2 extra convs: "caffe" (pad 1 all round) or "same" (TF1: bottom/right)
    l2_norm_scale_init: float = 20.0  # vgg16: conv4_3's normalization scale
    # mobilenet_v2: the moving-average momentum of every batch norm, the backbone's included;
    # null keeps the defaults (Keras' 0.999 in the backbone, the TF Object Detection API's 0.9997
    # elsewhere). 0.9997 everywhere is the API's `ssdlite_mobilenet_v2_coco` (its
    # `mobilenet_v2.training_scope(bn_decay=0.9997)` for the backbone). Made for long runs: a short
    # run needs less (ssd.modeling.ssdlite)
    batch_norm_momentum: float | None = None


@dataclasses.dataclass
class AnchorConfig:
    """Default boxes. `preset` fixes the per-location order and where sizes come from.

    tf1:   the TF1 reference implementation's anchors: sizes from `scales` / `extra_scales`
           (fractions of the image); at each location the extra square box comes first, then one
           box per aspect ratio in the listed order.
    caffe: the paper's Caffe anchors: sizes from `min_sizes` / `max_sizes` (pixels, truncated to
           whole pixels as Caffe's PriorBox layer does: 35.84 gives 35); at each location the
           square of min_size, then the square of sqrt(min_size * max_size), then the other ratios.
    tfod:  the TF Object Detection API's anchors (ssdlite_mobilenet_v2): sizes from `scales` /
           `extra_scales` like tf1, but at each location one box per aspect ratio in the listed
           order comes first and the extra square last. Its table: scales linear from 0.2 to 0.95
           over the maps, ratios 1, 2, 1/2, 3, 1/3 and an extra square of sqrt(s_k * s_k+1)
           (s_n+1 = 1); the lowest map has 3 boxes ("reduce boxes in lowest layer"): ratios 2 and
           1/2 at s_1 and a square of 0.1 (the API puts that square first, here it is last,
           unless `lowest_square_first`).
    Fields left empty in a recipe are filled from the preset's table for the architecture.
    """

    preset: str = "tf1"  # "tf1", "caffe" or "tfod"
    feature_map_sizes: list[int] = dataclasses.field(default_factory=list)
    steps: list[float] = dataclasses.field(default_factory=list)  # pixels between centres
    offset: float = 0.5  # centre offset in units of a step
    aspect_ratios: list[list[float]] = dataclasses.field(default_factory=list)
    scales: list[float] = dataclasses.field(default_factory=list)
    extra_scales: list[float] = dataclasses.field(default_factory=list)
    min_sizes: list[float] = dataclasses.field(default_factory=list)
    max_sizes: list[float] = dataclasses.field(default_factory=list)
    clip: bool = False
    # tfod only: the lowest map's extra square (the 0.1 box) comes first at each location, as
    # the API's `create_ssd_anchors(reduce_boxes_in_lowest_layer=True)` orders it: (0.1, 1),
    # (s_1, 2), (s_1, 1/2). Needed to read the heads of an API-trained model; false keeps the
    # uniform "extra square last" of earlier models.
    lowest_square_first: bool = False

    @property
    def boxes_per_location(self) -> list[int]:
        """Boxes at each location of each source map: every preset adds one extra square box to
        the boxes of the aspect ratios (Caffe's ratio-1 box is its min_size square)."""
        return [len(ratios) + 1 for ratios in self.aspect_ratios]


@dataclasses.dataclass
class MatchingConfig:
    positive_threshold: float = 0.5  # IoU at or above which a default box is positive
    negative_threshold: float = 0.5  # IoU below which an unmatched box is background
    variances: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])
    use_difficult: bool = False  # Caffe keeps difficult objects as targets; TF1 drops them


@dataclasses.dataclass
class LossConfig:
    """The training loss (ssd.modeling.losses, ssd.modeling.mining). The TF Object Detection
    API's `ssdlite_mobilenet_v2_coco` is classification "sigmoid" with hard_example_mining "tfod"."""

    # "softmax" (SSD) or "sigmoid" (the API's weighted_sigmoid with its background class); the
    # detection scores follow it (ssd.modeling.postprocess.object_class_scores)
    classification: str = "softmax"
    # "ssd" (SSD's hard negatives) or "tfod" (the API's hard_example_miner, loss_type CLASSIFICATION)
    hard_example_mining: str = "ssd"
    negative_ratio: float = 3.0  # negatives per positive at most (the API's max_negatives_per_positive)
    miner_num_hard_examples: int = 3000  # "tfod": the API's num_hard_examples
    miner_iou_threshold: float = 0.99  # "tfod": the API's iou_threshold
    min_negatives_per_image: int = 3  # "tfod": the API's min_negatives_per_image
    smooth_l1_beta: float = 1.0
    weight_decay: float = 5e-4
    decay_biases: bool = True  # the TF1 reference decays kernels and biases; Caffe does not
    # the conv4_3 L2-norm scale's share of weight decay: the TF1 original's 0.1; Caffe's Normalize
    # layer has no decay_mult, so the Caffe recipes decay it like any weight (1)
    norm_scale_decay_multiplier: float = 0.1
    # mobilenet_v2: whether the backbone's depthwise kernels (Keras' `*_depthwise` layers) are
    # decayed. The TF Object Detection API's MobileNetV2 (`mobilenet_v2.training_scope`) gives
    # `slim.separable_conv2d` no regularizer, so false is the API; its SSDLite extra layers and
    # heads decay their depthwise kernels (its conv_hyperparams), here always.
    decay_backbone_depthwise_kernels: bool = True


@dataclasses.dataclass
class DataConfig:
    class_names: list[str] = dataclasses.field(default_factory=lambda: list(VOC_CLASSES))
    mean_rgb: list[float] = dataclasses.field(default_factory=lambda: [123.68, 116.78, 103.94])
    # the model input convention, "caffe_bgr_mean" or "tf_rgb_unit" (ssd.data.preprocessing); it must
    # be the backbone's, and a recipe that leaves it out gets it. mean_rgb is the zoom-out
    # canvas colour in both, and the subtracted mean in caffe_bgr_mean.
    preprocessing: str = "caffe_bgr_mean"
    # "paper", "tf1", "tfod" (the TF Object Detection API's random_horizontal_flip + ssd_random_crop
    # with its defaults, ssd.data.augment.tfod_crop; reads none of the fields below but
    # flip_probability) or "none"
    augmentation: str = "paper"
    photometric: bool = True
    expansion_probability: float = 0.5
    max_expansion: float = 4.0
    crop_min_ious: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    crop_max_trials: int = 50
    crop_min_scale: float = 0.3
    crop_max_aspect_ratio: float = 2.0
    flip_probability: float = 0.5
    random_interpolation: bool = True
    shuffle_buffer: int = 2048
    max_boxes: int = 100  # ground-truth boxes kept per image (eval padding)
    num_parallel_calls: int = -1  # -1: tf.data.AUTOTUNE
    seed: int | None = None  # set for reproducible batches


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 32  # global, split across replicas
    max_steps: int = 120_000
    optimizer: str = "momentum"  # "momentum", "sgd", "adam" or "rmsprop"
    momentum: float = 0.9  # momentum and rmsprop (the API's momentum_optimizer_value)
    # rmsprop, as TF1's RMSPropOptimizer (ssd.engine.optimizers): the moving average's decay and
    # the epsilon added under the square root; the TF Object Detection API's SSDLite: 0.9, 1.0
    rmsprop_decay: float = 0.9
    rmsprop_epsilon: float = 1.0
    learning_rate: float = 1e-3
    # "piecewise": learning_rate * lr_factors[i] between lr_boundaries; "exponential": the API's
    # exponential_decay_learning_rate, learning_rate * lr_decay_factor ** (step / lr_decay_steps),
    # the exponent floored with lr_decay_staircase. Both never below lr_floor.
    lr_schedule: str = "piecewise"
    lr_decay_steps: int = 800_720
    lr_decay_factor: float = 0.95
    lr_decay_staircase: bool = True
    # biases learn at this multiple of the learning rate (Caffe: 2); SGD and momentum only
    bias_lr_multiplier: float = 1.0
    lr_boundaries: list[int] = dataclasses.field(default_factory=lambda: [500, 80_000, 100_000])
    lr_factors: list[float] = dataclasses.field(default_factory=lambda: [0.1, 1.0, 0.1, 0.01])
    lr_floor: float = 1e-6
    save_checkpoints_steps: int = 1000
    save_checkpoints_secs: int = 0  # 0: by steps only
    keep_checkpoint_max: int = 5
    save_summary_steps: int = 100
    log_step_count_steps: int = 100
    image_summary_steps: int = 2000
    seed: int | None = None
    mixed_precision: str = "none"  # "none", "float16" or "bfloat16"
    jit_compile: bool = False
    # training steps per call of the step function: >1 saves the host's per-step cost (small
    # models, fast GPUs); logs, summaries and checkpoints still happen at their exact steps
    steps_per_loop: int = 1


@dataclasses.dataclass
class EvalConfig:
    batch_size: int = 8
    score_threshold: float = 0.01
    pre_nms_top_k: int = 400
    nms_iou_threshold: float = 0.45
    max_detections: int = 200
    min_box_size: float = 0.0  # the TF1 reference drops boxes under 0.03 of the image
    metric: str = "voc07"  # "voc07" (11-point), "voc12" (all points) or "coco" (AP@[.5:.95])


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    anchors: AnchorConfig = dataclasses.field(default_factory=AnchorConfig)
    matching: MatchingConfig = dataclasses.field(default_factory=MatchingConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def shape_fields(config: Config) -> dict[str, Any]:
    """The fields that fix the model's variable shapes; a resumed run may not change them."""
    return {
        "model.architecture": config.model.architecture,
        "model.backbone": config.model.backbone,
        "model.input_size": config.model.input_size,
        "model.num_classes": config.model.num_classes,
        "model.width_multiplier": config.model.width_multiplier,
        "model.extra_batch_norm": config.model.extra_batch_norm,
        "anchors.feature_map_sizes": config.anchors.feature_map_sizes,
        "anchors.boxes_per_location": config.anchors.boxes_per_location,
    }
