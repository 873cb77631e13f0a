"""Checks every field of a `Config`, one function per section; each error names its field."""

from __future__ import annotations

import math

from ssd.config.architectures import (ARCHITECTURES, BACKBONE_PREPROCESSING, BACKBONES, MOBILENET_V2,
                               PREPROCESSINGS, feature_map_sizes)
from ssd.config.schema import (ANCHOR_PRESETS, AUGMENTATIONS, CLASSIFICATION_LOSSES, EVAL_METRICS,
                               HARD_EXAMPLE_MINERS, LR_SCHEDULES, OPTIMIZERS, TFOD,
                               AnchorConfig, Config, ConfigError, DataConfig, EvalConfig,
                               LossConfig, MatchingConfig, ModelConfig, TrainConfig)


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


def _require_length(values: list, n: int, field: str) -> None:
    _require(len(values) == n, field, f"needs {n} values, got {len(values)}")


def _positive_list(values: list[float], field: str) -> None:
    for i, v in enumerate(values):
        _require(v > 0 and math.isfinite(v), f"{field}[{i}]", f"must be positive, got {v}")


def _choice(value: str, choices: tuple[str, ...], field: str) -> None:
    _require(value in choices, field,
             f"must be {', '.join(repr(c) for c in choices[:-1])} or {choices[-1]!r}, got {value!r}")


def validate_model(m: ModelConfig) -> None:
    _require(m.architecture in ARCHITECTURES, "model.architecture",
             f"must be one of {sorted(ARCHITECTURES)}, got {m.architecture!r}")
    _choice(m.backbone, BACKBONES, "model.backbone")
    backbone = ARCHITECTURES[m.architecture].backbone
    _require(m.backbone == backbone, "model.backbone",
             f"model.architecture {m.architecture} is built on {backbone}, got {m.backbone!r} "
             f"(leave model.backbone out to get the architecture's)")
    _require(not (m.extra_batch_norm and m.backbone == MOBILENET_V2), "model.extra_batch_norm",
             "is a vgg16 option; SSDLite's extra layers always have batch norm, leave it false")
    if m.batch_norm_momentum is not None:
        _require(0 <= m.batch_norm_momentum < 1, "model.batch_norm_momentum",
                 f"must be in [0, 1), got {m.batch_norm_momentum}")
        _require(m.backbone == MOBILENET_V2, "model.batch_norm_momentum",
                 "is a mobilenet_v2 option; leave it null for vgg16")
    expected_size = ARCHITECTURES[m.architecture].input_size
    _require(m.input_size == expected_size, "model.input_size",
             f"{m.architecture} takes {expected_size}x{expected_size} inputs, got {m.input_size}")
    _require(m.num_classes >= 2, "model.num_classes", f"must be >= 2 (background + 1), got {m.num_classes}")
    _require(0 < m.width_multiplier <= 4, "model.width_multiplier", f"must be in (0, 4], got {m.width_multiplier}")
    _require(m.l2_norm_scale_init > 0, "model.l2_norm_scale_init", "must be positive")
    _choice(m.extra_padding, ("caffe", "same"), "model.extra_padding")


def _validate_anchor_sizes(a: AnchorConfig, n: int, architecture: str) -> None:
    sizes = ("min_sizes", "max_sizes") if a.preset == "caffe" else ("scales", "extra_scales")
    for name in sizes:
        _require(bool(getattr(a, name)), f"anchors.{name}",
                 f"the {a.preset!r} preset has no table for {architecture}: give the sizes, or "
                 f"use a preset that has one")
    if a.preset == "caffe":
        _require_length(a.min_sizes, n, "anchors.min_sizes")
        _require_length(a.max_sizes, n, "anchors.max_sizes")
        _positive_list(a.min_sizes, "anchors.min_sizes")
        _positive_list(a.max_sizes, "anchors.max_sizes")
        for i, low in enumerate(a.min_sizes):
            # the boxes use whole pixels (Caffe's truncation): under 1 pixel would be no box
            _require(low >= 1, f"anchors.min_sizes[{i}]", f"must be at least 1 pixel, got {low}")
        for i, (low, high) in enumerate(zip(a.min_sizes, a.max_sizes)):
            _require(high > low, f"anchors.max_sizes[{i}]", f"must exceed min_sizes[{i}] ({low}), got {high}")
    else:
        _require_length(a.scales, n, "anchors.scales")
        _require_length(a.extra_scales, n, "anchors.extra_scales")
        _positive_list(a.scales, "anchors.scales")
        _positive_list(a.extra_scales, "anchors.extra_scales")


def validate_anchors(a: AnchorConfig, m: ModelConfig) -> None:
    """Needs a valid `model` section: the architecture fixes the number of source maps."""
    _choice(a.preset, ANCHOR_PRESETS, "anchors.preset")
    expected_maps = feature_map_sizes(m.architecture, m.input_size)
    n = len(expected_maps)
    _require(a.feature_map_sizes == expected_maps, "anchors.feature_map_sizes",
             f"{m.architecture} has source maps {expected_maps}, got {a.feature_map_sizes}")
    _require_length(a.steps, n, "anchors.steps")
    _positive_list(a.steps, "anchors.steps")
    for i in range(1, len(a.steps)):
        _require(a.steps[i] > a.steps[i - 1], f"anchors.steps[{i}]",
                 f"steps must increase, got {a.steps[i - 1]} then {a.steps[i]}")
    _require(0 <= a.offset <= 1, "anchors.offset", f"must be in [0, 1], got {a.offset}")
    _require(len(a.aspect_ratios) == n, "anchors.aspect_ratios", f"needs {n} lists, got {len(a.aspect_ratios)}")
    for i, ratios in enumerate(a.aspect_ratios):
        field = f"anchors.aspect_ratios[{i}]"
        _require(len(ratios) >= 1, field, "needs at least one ratio")
        _positive_list(ratios, field)
        if a.preset == "caffe":
            _require(ratios[0] == 1.0, field, "the caffe preset puts the ratio-1 box first")
    _require(not a.lowest_square_first or a.preset == TFOD, "anchors.lowest_square_first",
             f"orders the {TFOD!r} preset's boxes; leave it false with preset {a.preset!r}")
    _validate_anchor_sizes(a, n, m.architecture)


def validate_matching(mt: MatchingConfig) -> None:
    _require(0 < mt.positive_threshold <= 1, "matching.positive_threshold", "must be in (0, 1]")
    _require(0 <= mt.negative_threshold <= mt.positive_threshold, "matching.negative_threshold",
             "must be in [0, positive_threshold]")
    _require_length(mt.variances, 4, "matching.variances")
    _positive_list(mt.variances, "matching.variances")


def validate_loss_for_model(lo: LossConfig, m: ModelConfig) -> None:
    _require(lo.decay_backbone_depthwise_kernels or m.backbone == MOBILENET_V2,
             "loss.decay_backbone_depthwise_kernels",
             f"is a mobilenet_v2 option ({m.backbone} has no depthwise kernels); leave it true")


def validate_loss(lo: LossConfig) -> None:
    _choice(lo.classification, CLASSIFICATION_LOSSES, "loss.classification")
    _choice(lo.hard_example_mining, HARD_EXAMPLE_MINERS, "loss.hard_example_mining")
    _require(lo.negative_ratio > 0 and math.isfinite(lo.negative_ratio), "loss.negative_ratio",
             f"must be positive, got {lo.negative_ratio}")
    _require(lo.miner_num_hard_examples >= 1, "loss.miner_num_hard_examples",
             f"must be >= 1, got {lo.miner_num_hard_examples}")
    _require(0 < lo.miner_iou_threshold <= 1, "loss.miner_iou_threshold",
             f"must be in (0, 1], got {lo.miner_iou_threshold}")
    _require(lo.min_negatives_per_image >= 0, "loss.min_negatives_per_image",
             f"must be >= 0, got {lo.min_negatives_per_image}")
    _require(lo.smooth_l1_beta > 0, "loss.smooth_l1_beta", "must be positive")
    _require(lo.weight_decay >= 0, "loss.weight_decay", "must be >= 0")
    _require(lo.norm_scale_decay_multiplier >= 0, "loss.norm_scale_decay_multiplier", "must be >= 0")


def validate_class_count(m: ModelConfig, d: DataConfig) -> None:
    _require(len(d.class_names) == m.num_classes - 1, "model.num_classes",
             f"is {m.num_classes} but data.class_names has {len(d.class_names)} names "
             f"(num_classes counts the background too; leave it out and it follows the class list)")


def validate_preprocessing(m: ModelConfig, d: DataConfig) -> None:
    """The input convention is the one the backbone's pretrained weights were trained with."""
    _choice(d.preprocessing, PREPROCESSINGS, "data.preprocessing")
    expected = BACKBONE_PREPROCESSING[m.backbone]
    _require(d.preprocessing == expected, "data.preprocessing",
             f"model.backbone {m.backbone} takes {expected!r} inputs, got {d.preprocessing!r} "
             f"(leave data.preprocessing out to get the backbone's)")


def validate_data(d: DataConfig) -> None:
    _require(len(set(d.class_names)) == len(d.class_names), "data.class_names", "has duplicates")
    _require(len(d.mean_rgb) == 3, "data.mean_rgb", "needs 3 values")
    _choice(d.augmentation, AUGMENTATIONS, "data.augmentation")
    for name in ("expansion_probability", "flip_probability"):
        value = getattr(d, name)
        _require(0 <= value <= 1, f"data.{name}", f"must be a probability, got {value}")
    _require(d.max_expansion >= 1, "data.max_expansion", f"must be >= 1, got {d.max_expansion}")
    for i, v in enumerate(d.crop_min_ious):
        _require(0 <= v <= 1, f"data.crop_min_ious[{i}]", f"must be in [0, 1], got {v}")
    _require(d.crop_max_trials >= 1, "data.crop_max_trials", "must be >= 1")
    _require(0 < d.crop_min_scale <= 1, "data.crop_min_scale", "must be in (0, 1]")
    _require(d.crop_max_aspect_ratio >= 1, "data.crop_max_aspect_ratio", "must be >= 1")
    _require(d.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1")
    _require(d.max_boxes >= 1, "data.max_boxes", "must be >= 1")
    _require(d.num_parallel_calls == -1 or d.num_parallel_calls >= 1, "data.num_parallel_calls",
             "must be -1 (autotune) or >= 1")


def _validate_schedule(t: TrainConfig) -> None:
    _require(t.learning_rate > 0, "train.learning_rate", f"must be positive, got {t.learning_rate}")
    _require(len(t.lr_factors) == len(t.lr_boundaries) + 1, "train.lr_factors",
             f"needs one more value than train.lr_boundaries ({len(t.lr_boundaries) + 1}), "
             f"got {len(t.lr_factors)}")
    for i in range(1, len(t.lr_boundaries)):
        _require(t.lr_boundaries[i] > t.lr_boundaries[i - 1], f"train.lr_boundaries[{i}]",
                 "boundaries must increase")
    _positive_list(t.lr_factors, "train.lr_factors")
    _require(t.lr_floor >= 0, "train.lr_floor", "must be >= 0")
    _choice(t.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
    _require(t.lr_decay_steps >= 1, "train.lr_decay_steps", f"must be >= 1, got {t.lr_decay_steps}")
    _require(0 < t.lr_decay_factor <= 1, "train.lr_decay_factor",
             f"must be in (0, 1], got {t.lr_decay_factor}")


def validate_train(t: TrainConfig) -> None:
    _require(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _require(t.max_steps >= 1, "train.max_steps", "must be >= 1")
    _choice(t.optimizer, OPTIMIZERS, "train.optimizer")
    _require(t.bias_lr_multiplier > 0 and math.isfinite(t.bias_lr_multiplier),
             "train.bias_lr_multiplier", f"must be positive, got {t.bias_lr_multiplier}")
    # scaling a gradient by k is k x the learning rate for SGD, but Adam and RMSProp divide it out
    _require(t.bias_lr_multiplier == 1 or t.optimizer in ("momentum", "sgd"),
             "train.bias_lr_multiplier",
             f"is {t.bias_lr_multiplier}, but {t.optimizer!r} steps do not scale with the gradient, "
             f"so only 1 works with train.optimizer {t.optimizer!r} (use 'momentum' or 'sgd')")
    _require(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)")
    _require(0 <= t.rmsprop_decay < 1, "train.rmsprop_decay",
             f"must be in [0, 1), got {t.rmsprop_decay}")
    _require(t.rmsprop_epsilon > 0, "train.rmsprop_epsilon",
             f"must be positive, got {t.rmsprop_epsilon}")
    _validate_schedule(t)
    for name in ("save_checkpoints_steps", "save_summary_steps", "log_step_count_steps",
                 "image_summary_steps", "save_checkpoints_secs"):
        _require(getattr(t, name) >= 0, f"train.{name}", "must be >= 0")
    _require(t.keep_checkpoint_max >= 1, "train.keep_checkpoint_max", "must be >= 1")
    _require(t.steps_per_loop >= 1, "train.steps_per_loop", f"must be >= 1, got {t.steps_per_loop}")
    _require(t.mixed_precision in ("none", "float16", "bfloat16"), "train.mixed_precision",
             f"must be none, float16 or bfloat16, got {t.mixed_precision!r}")


def validate_eval(e: EvalConfig) -> None:
    _require(e.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _require(0 <= e.score_threshold < 1, "eval.score_threshold", "must be in [0, 1)")
    _require(e.pre_nms_top_k >= 1, "eval.pre_nms_top_k", "must be >= 1")
    _require(0 < e.nms_iou_threshold <= 1, "eval.nms_iou_threshold", "must be in (0, 1]")
    _require(e.max_detections >= 1, "eval.max_detections", "must be >= 1")
    _require(0 <= e.min_box_size < 1, "eval.min_box_size", "must be in [0, 1)")
    _choice(e.metric, EVAL_METRICS, "eval.metric")


def validate(config: Config) -> None:
    """Raises ConfigError naming the first field whose value cannot be used."""
    validate_model(config.model)
    validate_anchors(config.anchors, config.model)
    validate_matching(config.matching)
    validate_loss(config.loss)
    validate_loss_for_model(config.loss, config.model)
    validate_class_count(config.model, config.data)
    validate_data(config.data)
    validate_preprocessing(config.model, config.data)
    validate_train(config.train)
    validate_eval(config.eval)
