"""One typed configuration for model, anchors, matching, loss, data, training and evaluation.

Recipes in `configs/*.json` are data: each gives only the fields it changes from the defaults
below. `load_config` resolves a recipe (anchor presets included), applies dotted overrides,
validates every field and returns a frozen-shape `Config`; `to_json` / `from_json` round-trip it
losslessly, which is how the trainer saves the resolved config into the model directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

CONFIG_FILENAME = "config.json"
RECIPE_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending field."""


@dataclasses.dataclass
class ModelConfig:
    architecture: str = "ssd300"  # "ssd300" or "ssd512"
    input_size: int = 300
    num_classes: int = 21  # object classes + background (label 0)
    width_multiplier: float = 1.0  # scales backbone and extra-layer channels
    extra_batch_norm: bool = False  # batch norm after each extra-layer conv
    l2_norm_scale_init: float = 20.0


@dataclasses.dataclass
class AnchorConfig:
    """Default boxes. `preset` fixes the per-location order and where sizes come from.

    seed:  sizes from `scales` / `extra_scales` (fractions of the image); at each location the
           extra square box comes first, then one box per aspect ratio in the listed order.
    caffe: sizes from `min_sizes` / `max_sizes` (pixels); at each location the square of
           min_size, then the square of sqrt(min_size * max_size), then the other ratios.
    Fields left empty in a recipe are filled from the preset's table for the input size.
    """

    preset: str = "seed"
    feature_map_sizes: list[int] = dataclasses.field(default_factory=list)
    steps: list[float] = dataclasses.field(default_factory=list)  # pixels between centres
    offset: float = 0.5  # centre offset in units of a step
    boxes_per_location: list[int] = dataclasses.field(default_factory=list)
    aspect_ratios: list[list[float]] = dataclasses.field(default_factory=list)
    scales: list[float] = dataclasses.field(default_factory=list)
    extra_scales: list[float] = dataclasses.field(default_factory=list)
    min_sizes: list[float] = dataclasses.field(default_factory=list)
    max_sizes: list[float] = dataclasses.field(default_factory=list)
    clip: bool = False


@dataclasses.dataclass
class MatchingConfig:
    positive_threshold: float = 0.5  # IoU at or above which a default box is positive
    negative_threshold: float = 0.5  # IoU below which an unmatched box is background
    variances: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])
    use_difficult: bool = False  # Caffe keeps difficult objects as targets; the seed drops them


@dataclasses.dataclass
class LossConfig:
    negative_ratio: float = 3.0
    smooth_l1_beta: float = 1.0
    weight_decay: float = 5e-4
    decay_biases: bool = True  # the seed decays kernels and biases
    norm_scale_decay_multiplier: float = 0.1  # the conv4_3 scale is decayed at 0.1x


@dataclasses.dataclass
class DataConfig:
    class_names: list[str] = dataclasses.field(default_factory=lambda: list(VOC_CLASSES))
    mean_rgb: list[float] = dataclasses.field(default_factory=lambda: [123.68, 116.78, 103.94])
    augmentation: str = "paper"  # "paper", "seed" or "none"
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
    optimizer: str = "momentum"
    momentum: float = 0.9
    learning_rate: float = 1e-3
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


@dataclasses.dataclass
class EvalConfig:
    batch_size: int = 8
    score_threshold: float = 0.01
    pre_nms_top_k: int = 400
    nms_iou_threshold: float = 0.45
    max_detections: int = 200
    min_box_size: float = 0.0  # the seed drops boxes under 0.03 of the image
    metric: str = "voc07"  # "voc07" (11-point) or "voc12" (all points)


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    anchors: AnchorConfig = dataclasses.field(default_factory=AnchorConfig)
    matching: MatchingConfig = dataclasses.field(default_factory=MatchingConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


# --- anchor presets ------------------------------------------------------------------------

_ARCHITECTURES = {
    # input size, source feature map sizes, steps (pixels)
    "ssd300": (300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300]),
    "ssd512": (512, [64, 32, 16, 8, 4, 2, 1], [8, 16, 32, 64, 128, 256, 512]),
}
_R4 = [1.0, 2.0, 0.5]
_SEED_R6 = [1.0, 2.0, 3.0, 0.5, 1.0 / 3.0]
_CAFFE_R6 = [1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]
_CAFFE_SIZES = {
    "ssd300": ([30.0, 60.0, 111.0, 162.0, 213.0, 264.0], [60.0, 111.0, 162.0, 213.0, 264.0, 315.0]),
    "ssd512": ([35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
               [76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6]),
}
_BOXES_PER_LOCATION = {"ssd300": [4, 6, 6, 6, 4, 4], "ssd512": [4, 6, 6, 6, 6, 4, 4]}
_SEED_SCALES_300 = ([0.1, 0.2, 0.375, 0.55, 0.725, 0.9],
                    [0.1414, 0.2739, 0.4541, 0.6315, 0.8078, 0.9836])


def _preset_values(preset: str, architecture: str) -> dict[str, Any]:
    input_size, sizes, steps = _ARCHITECTURES[architecture]
    counts = _BOXES_PER_LOCATION[architecture]
    if preset == "seed":
        ratios = [list(_R4) if n == 4 else list(_SEED_R6) for n in counts]
        if architecture == "ssd300":
            scales, extra = _SEED_SCALES_300
        else:  # the seed has no SSD512: use the Caffe sizes as fractions of the input
            mins, maxs = _CAFFE_SIZES[architecture]
            scales = [m / input_size for m in mins]
            extra = [math.sqrt(a * b) / input_size for a, b in zip(mins, maxs)]
        return dict(feature_map_sizes=list(sizes), steps=[float(s) for s in steps],
                    boxes_per_location=list(counts), aspect_ratios=ratios,
                    scales=list(scales), extra_scales=list(extra))
    ratios = [list(_R4) if n == 4 else list(_CAFFE_R6) for n in counts]
    mins, maxs = _CAFFE_SIZES[architecture]
    return dict(feature_map_sizes=list(sizes), steps=[float(s) for s in steps],
                boxes_per_location=list(counts), aspect_ratios=ratios,
                min_sizes=list(mins), max_sizes=list(maxs))


def _fill_anchor_preset(config: Config) -> None:
    anchors = config.anchors
    if anchors.preset not in ("seed", "caffe"):
        raise ConfigError(f"anchors.preset: must be 'seed' or 'caffe', got {anchors.preset!r}")
    if config.model.architecture not in _ARCHITECTURES:
        return  # reported by validation
    for name, value in _preset_values(anchors.preset, config.model.architecture).items():
        if not getattr(anchors, name):
            setattr(anchors, name, value)


# --- dict <-> dataclass with type checks ---------------------------------------------------

def _check_value(value: Any, annotation: Any, field: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(value, inner, field)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(v, args[0], f"{field}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{field}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{field}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{field}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{field}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{field}: unsupported type {annotation}")


def _update_dataclass(obj: Any, values: Mapping[str, Any], prefix: str) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        field = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{field}: unknown field (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _update_dataclass(current, value, field + ".")
        else:
            setattr(obj, key, _check_value(value, hints[key], field))


def from_dict(values: Mapping[str, Any]) -> Config:
    """Builds a validated Config from a (possibly partial) nested mapping."""
    config = Config()
    _update_dataclass(config, values, "")
    _fill_anchor_preset(config)
    validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_json(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2)


def from_json(text: str) -> Config:
    return from_dict(json.loads(text))


def apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Sets dotted fields (e.g. {"model.num_classes": 4}) in a nested dict, in place."""
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {part} is not a section")
        node[parts[-1]] = value
    return values


def parse_override(text: str) -> tuple[str, Any]:
    """Parses 'section.field=value' from the command line; the value is JSON when it parses."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.field=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        return path
    candidate = RECIPE_DIR / f"{name_or_path}.json"
    if not candidate.exists():
        known = sorted(p.stem for p in RECIPE_DIR.glob("*.json"))
        raise ConfigError(f"unknown recipe {name_or_path!r}; known recipes: {', '.join(known)}")
    return candidate


def load_config(name_or_path: str | os.PathLike,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Loads a recipe by name (e.g. "ssd300_voc0712") or path and applies dotted overrides."""
    path = recipe_path(name_or_path)
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from e
    apply_overrides(values, dict(overrides or {}))
    try:
        return from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def save_config(config: Config, model_dir: str | os.PathLike) -> Path:
    path = Path(model_dir) / CONFIG_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(to_json(config))
    os.replace(tmp, path)
    return path


def load_saved_config(model_dir: str | os.PathLike) -> Config:
    path = Path(model_dir) / CONFIG_FILENAME
    if not path.exists():
        raise ConfigError(f"{path}: no saved config (is {model_dir} a model directory?)")
    return load_config(path)


# --- validation ----------------------------------------------------------------------------

def shape_fields(config: Config) -> dict[str, Any]:
    """The fields that fix the model's variable shapes; a resumed run may not change them."""
    return {
        "model.architecture": config.model.architecture,
        "model.input_size": config.model.input_size,
        "model.num_classes": config.model.num_classes,
        "model.width_multiplier": config.model.width_multiplier,
        "model.extra_batch_norm": config.model.extra_batch_norm,
        "anchors.feature_map_sizes": config.anchors.feature_map_sizes,
        "anchors.boxes_per_location": config.anchors.boxes_per_location,
    }


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


def _positive_list(values: list[float], field: str) -> None:
    for i, v in enumerate(values):
        _require(v > 0 and math.isfinite(v), f"{field}[{i}]", f"must be positive, got {v}")


def validate(config: Config) -> None:
    m, a, mt, lo, d, t, e = (config.model, config.anchors, config.matching, config.loss,
                             config.data, config.train, config.eval)
    _require(m.architecture in _ARCHITECTURES, "model.architecture",
             f"must be one of {sorted(_ARCHITECTURES)}, got {m.architecture!r}")
    expected_size = _ARCHITECTURES[m.architecture][0]
    _require(m.input_size == expected_size, "model.input_size",
             f"{m.architecture} takes {expected_size}x{expected_size} inputs, got {m.input_size}")
    _require(m.num_classes >= 2, "model.num_classes", f"must be >= 2 (background + 1), got {m.num_classes}")
    _require(0 < m.width_multiplier <= 4, "model.width_multiplier", f"must be in (0, 4], got {m.width_multiplier}")
    _require(m.l2_norm_scale_init > 0, "model.l2_norm_scale_init", "must be positive")

    expected_maps = _ARCHITECTURES[m.architecture][1]
    n = len(expected_maps)
    _require(a.feature_map_sizes == expected_maps, "anchors.feature_map_sizes",
             f"{m.architecture} has source maps {expected_maps}, got {a.feature_map_sizes}")
    _require(len(a.steps) == n, "anchors.steps", f"needs {n} values, got {len(a.steps)}")
    _positive_list(a.steps, "anchors.steps")
    for i in range(1, len(a.steps)):
        _require(a.steps[i] > a.steps[i - 1], f"anchors.steps[{i}]",
                 f"steps must increase, got {a.steps[i - 1]} then {a.steps[i]}")
    _require(0 <= a.offset <= 1, "anchors.offset", f"must be in [0, 1], got {a.offset}")
    _require(len(a.aspect_ratios) == n, "anchors.aspect_ratios", f"needs {n} lists, got {len(a.aspect_ratios)}")
    _require(len(a.boxes_per_location) == n, "anchors.boxes_per_location",
             f"needs {n} values, got {len(a.boxes_per_location)}")
    for i, ratios in enumerate(a.aspect_ratios):
        field = f"anchors.aspect_ratios[{i}]"
        _require(len(ratios) >= 1, field, "needs at least one ratio")
        _positive_list(ratios, field)
        # both presets add one extra square box to the ratio boxes
        _require(a.boxes_per_location[i] == len(ratios) + 1, f"anchors.boxes_per_location[{i}]",
                 f"is {a.boxes_per_location[i]} but aspect_ratios[{i}] = {ratios} "
                 f"gives {len(ratios) + 1} boxes (one per ratio plus the extra square)")
        if a.preset == "caffe":
            _require(ratios[0] == 1.0, field, "the caffe preset puts the ratio-1 box first")
    if a.preset == "seed":
        _require(len(a.scales) == n, "anchors.scales", f"needs {n} values, got {len(a.scales)}")
        _require(len(a.extra_scales) == n, "anchors.extra_scales", f"needs {n} values, got {len(a.extra_scales)}")
        _positive_list(a.scales, "anchors.scales")
        _positive_list(a.extra_scales, "anchors.extra_scales")
    else:
        _require(len(a.min_sizes) == n, "anchors.min_sizes", f"needs {n} values, got {len(a.min_sizes)}")
        _require(len(a.max_sizes) == n, "anchors.max_sizes", f"needs {n} values, got {len(a.max_sizes)}")
        _positive_list(a.min_sizes, "anchors.min_sizes")
        _positive_list(a.max_sizes, "anchors.max_sizes")
        for i, (lo_, hi) in enumerate(zip(a.min_sizes, a.max_sizes)):
            _require(hi > lo_, f"anchors.max_sizes[{i}]", f"must exceed min_sizes[{i}] ({lo_}), got {hi}")

    _require(0 < mt.positive_threshold <= 1, "matching.positive_threshold", "must be in (0, 1]")
    _require(0 <= mt.negative_threshold <= mt.positive_threshold, "matching.negative_threshold",
             "must be in [0, positive_threshold]")
    _require(len(mt.variances) == 4, "matching.variances", f"needs 4 values, got {len(mt.variances)}")
    _positive_list(mt.variances, "matching.variances")

    _require(lo.negative_ratio > 0, "loss.negative_ratio", f"must be positive, got {lo.negative_ratio}")
    _require(lo.smooth_l1_beta > 0, "loss.smooth_l1_beta", "must be positive")
    _require(lo.weight_decay >= 0, "loss.weight_decay", "must be >= 0")
    _require(lo.norm_scale_decay_multiplier >= 0, "loss.norm_scale_decay_multiplier", "must be >= 0")

    _require(len(d.class_names) == m.num_classes - 1, "model.num_classes",
             f"is {m.num_classes} but data.class_names has {len(d.class_names)} names "
             f"(num_classes counts the background too)")
    _require(len(set(d.class_names)) == len(d.class_names), "data.class_names", "has duplicates")
    _require(len(d.mean_rgb) == 3, "data.mean_rgb", "needs 3 values")
    _require(d.augmentation in ("paper", "tf1", "none"), "data.augmentation",
             f"must be 'paper', 'tf1' or 'none', got {d.augmentation!r}")
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

    _require(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _require(t.max_steps >= 1, "train.max_steps", "must be >= 1")
    _require(t.optimizer in ("momentum", "sgd", "adam"), "train.optimizer", "must be momentum, sgd or adam")
    _require(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)")
    _require(t.learning_rate > 0, "train.learning_rate", f"must be positive, got {t.learning_rate}")
    _require(len(t.lr_factors) == len(t.lr_boundaries) + 1, "train.lr_factors",
             f"needs one more value than train.lr_boundaries ({len(t.lr_boundaries) + 1}), "
             f"got {len(t.lr_factors)}")
    for i in range(1, len(t.lr_boundaries)):
        _require(t.lr_boundaries[i] > t.lr_boundaries[i - 1], f"train.lr_boundaries[{i}]",
                 "boundaries must increase")
    _positive_list(t.lr_factors, "train.lr_factors")
    _require(t.lr_floor >= 0, "train.lr_floor", "must be >= 0")
    for name in ("save_checkpoints_steps", "save_summary_steps", "log_step_count_steps",
                 "image_summary_steps", "save_checkpoints_secs"):
        _require(getattr(t, name) >= 0, f"train.{name}", "must be >= 0")
    _require(t.keep_checkpoint_max >= 1, "train.keep_checkpoint_max", "must be >= 1")
    _require(t.mixed_precision in ("none", "float16", "bfloat16"), "train.mixed_precision",
             f"must be none, float16 or bfloat16, got {t.mixed_precision!r}")

    _require(e.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _require(0 <= e.score_threshold < 1, "eval.score_threshold", "must be in [0, 1)")
    _require(e.pre_nms_top_k >= 1, "eval.pre_nms_top_k", "must be >= 1")
    _require(0 < e.nms_iou_threshold <= 1, "eval.nms_iou_threshold", "must be in (0, 1]")
    _require(e.max_detections >= 1, "eval.max_detections", "must be >= 1")
    _require(0 <= e.min_box_size < 1, "eval.min_box_size", "must be in [0, 1)")
    _require(e.metric in ("voc07", "voc12"), "eval.metric", f"must be voc07 or voc12, got {e.metric!r}")
