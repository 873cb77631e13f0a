"""Fine-tuning: the first start of a run initialized from a detection checkpoint of this project.

    python train.py ... --model_dir=NEW --fine_tune_checkpoint=DIR_OR_CKPT \
        [--fine_tune_checkpoint_type=detection|backbone]

(the names of the TF Object Detection API). The source is a model directory written by train.py
(its `config.json` and checkpoints; the newest intact checkpoint is used) or a checkpoint prefix
inside one (`<dir>/ckpt-N`, whose config is `<dir>/config.json`). A network is built from the
source config, the checkpoint is restored into it (`ssd.modeling.checkpoints.restore_checkpoint`,
which refuses a checkpoint that does not fit its own config), and its weights are copied into the
new run's model layer by layer (the layer names of `ssd.modeling.vgg16_ssd` / `ssdlite`):

  detection (default): the backbone (VGG16 conv1_1 .. fc7 and the conv4_3 scale, or the
    MobileNetV2 layers), the extra layers and the box heads are copied whole (SSDLite: the class
    heads' depthwise layers too, which have no class dimension). The last convolution of each
    class head is copied per class: the background and every class present in both class lists
    (`match_classes`) get the source's kernel and bias channels, the other classes keep the new
    model's fresh initialization.
  backbone: the backbone only; everything else keeps its initialization.

Class head layout: output channel a * num_classes + k is box a, class k (`vgg16_ssd._head`), so
the copy maps channel a * C_source + k_source to a * C_target + k_target for every box a.

Class names match with case, spaces and underscores ignored ("Potted Plant" = "potted_plant" =
"pottedplant"), then through `CLASS_SYNONYMS`, which names the COCO and VOC spellings of the same
class (airplane/aeroplane, motorcycle/motorbike, couch/sofa, tv/tvmonitor, dining table/
diningtable, potted plant/pottedplant): every VOC class has a COCO counterpart, so a COCO model
fine-tuned to VOC starts with all 20 classes copied. An exact (normalized) match wins over a
synonym.

Compatibility (`check_compatible`, one-line FineTuneError naming both sides): detection needs
the same architecture, backbone, input size, width multiplier, extra-layer batch norm and boxes
per location; backbone needs the same backbone and width multiplier (a VGG16 of SSD300 may start
an SSD512). Default boxes of other sizes or ratios with the same counts are allowed with a
warning: the box heads were trained for the source's boxes.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import re
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from ssd.config import loading as config_lib
from ssd.config.architectures import MOBILENET_V2, get_architecture
from ssd.errors import UserError
from ssd.modeling import checkpoints

DETECTION = "detection"
BACKBONE = "backbone"
CHECKPOINT_TYPES = (DETECTION, BACKBONE)

BACKGROUND = "background"

# The same class under the names of COCO (first) and of PASCAL VOC, compared after
# `normalize_class_name`. Extend it for other data sets' spellings.
CLASS_SYNONYMS = (
    ("airplane", "aeroplane"),
    ("motorcycle", "motorbike"),
    ("couch", "sofa"),
    ("tv", "tvmonitor"),
    ("dining table", "diningtable"),
    ("potted plant", "pottedplant"),
)

# layer groups
BACKBONE_LAYERS = "backbone"
EXTRA_LAYERS = "extra layers"
BOX_HEADS = "box heads"
CLASS_HEADS = "class heads"  # class-agnostic parts of a class head (SSDLite's depthwise)
CLASS_OUTPUTS = "class outputs"  # the convolution with num_classes channels per box

_HEAD = re.compile(r"(cls|loc|cls_head|box_head)_(\d+)(_dw|_dw_bn|_pw)?")

# fields that must be equal, per checkpoint type
_DETECTION_FIELDS = ("model.architecture", "model.backbone", "model.input_size",
                     "model.width_multiplier", "model.extra_batch_norm", "anchors.boxes_per_location")
_BACKBONE_FIELDS = ("model.backbone", "model.width_multiplier")
_ANCHOR_FIELDS = ("preset", "steps", "offset", "aspect_ratios", "scales", "extra_scales",
                  "min_sizes", "max_sizes", "clip")


class FineTuneError(UserError, ValueError):
    """A fine-tune checkpoint that cannot initialize the model; one line naming both sides."""


# --- class names -------------------------------------------------------------------------------

def normalize_class_name(name: str) -> str:
    """Lower case without spaces and underscores: "Potted_Plant" -> "pottedplant"."""
    return re.sub(r"[\s_]+", "", str(name)).lower()


_SYNONYM_OF = {normalize_class_name(n): group[0] for group in CLASS_SYNONYMS for n in group}


def canonical_class_name(name: str) -> str:
    """The normalized name, or its synonym group's first (COCO) name when it has one."""
    key = normalize_class_name(name)
    return normalize_class_name(_SYNONYM_OF.get(key, key))


def match_classes(source_names: Sequence[str], target_names: Sequence[str]) -> dict[int, int]:
    """{target label: source label} for the target classes found among the source's (labels
    1-based as in the models, background 0 -> 0 always). A normalized exact match wins over a
    synonym; each source class serves one target class at most."""
    mapping = {0: 0}
    used = set()
    for key_of in (normalize_class_name, canonical_class_name):
        keys = {}
        for index, name in enumerate(source_names, start=1):
            keys.setdefault(key_of(name), index)
        for index, name in enumerate(target_names, start=1):
            source = keys.get(key_of(name))
            if index not in mapping and source is not None and source not in used:
                mapping[index] = source
                used.add(source)
    return dict(sorted(mapping.items()))


def class_channel_pairs(boxes: int, source_classes: int, target_classes: int,
                        mapping: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(target channels, source channels) of a class head with `boxes` boxes per location:
    channel a * classes + k for every box a and every (target k, source k) of `mapping`."""
    target, source = [], []
    for box in range(boxes):
        for target_label, source_label in mapping.items():
            target.append(box * target_classes + target_label)
            source.append(box * source_classes + source_label)
    return np.array(target, np.int64), np.array(source, np.int64)


# --- the source ----------------------------------------------------------------------------------

def resolve_source(path: str) -> tuple[str, str]:
    """(checkpoint prefix, its model directory) of a model directory or a checkpoint inside one."""
    path = str(path).rstrip("/") or "/"
    if tf.io.gfile.isdir(path):
        model_dir = path
        if not checkpoints.listed_checkpoints(path):
            raise FineTuneError(f"fine-tune checkpoint {path}: the directory lists no checkpoint "
                                f"(no 'checkpoint' file naming an existing ckpt-N); give a model "
                                f"directory written by train.py or a checkpoint prefix inside one")
        try:
            prefix = checkpoints.find_checkpoint(path)
        except checkpoints.DamagedCheckpointError as e:
            raise FineTuneError(f"fine-tune checkpoint: {e}") from e
    else:
        prefix = path.removesuffix(".index")
        if not checkpoints.checkpoint_exists(prefix):
            raise FineTuneError(f"fine-tune checkpoint {path}: no such model directory or "
                                f"checkpoint (no {prefix}.index)")
        model_dir = os.path.dirname(prefix) or "."
    if not tf.io.gfile.exists(os.path.join(model_dir, config_lib.CONFIG_FILENAME)):
        raise FineTuneError(f"fine-tune checkpoint {prefix}: {model_dir} has no "
                            f"{config_lib.CONFIG_FILENAME}, so its model is unknown; give a model "
                            f"directory written by train.py or a checkpoint inside one")
    return prefix, model_dir


def _field(config: config_lib.Config, dotted: str):
    return config_lib.shape_fields(config)[dotted]


def check_compatible(source: config_lib.Config, target: config_lib.Config, checkpoint_type: str,
                     where: str) -> list[str]:
    """Raises FineTuneError for the first field that differs; returns warnings (anchors)."""
    if checkpoint_type not in CHECKPOINT_TYPES:
        raise FineTuneError(f"fine_tune_checkpoint_type {checkpoint_type!r}: use one of "
                            f"{', '.join(CHECKPOINT_TYPES)}")
    for field in _DETECTION_FIELDS if checkpoint_type == DETECTION else _BACKBONE_FIELDS:
        theirs, ours = _field(source, field), _field(target, field)
        if theirs != ours:
            what = field.split(".")[-1].replace("_", " ")
            raise FineTuneError(
                f"fine-tune checkpoint {where} is of another {what}: it was trained with "
                f"{field}={theirs!r}, this run's config has {field}={ours!r} "
                f"(fine_tune_checkpoint_type={checkpoint_type})")
    warnings = []
    if checkpoint_type == DETECTION:
        for name in _ANCHOR_FIELDS:
            theirs, ours = getattr(source.anchors, name), getattr(target.anchors, name)
            if theirs != ours:
                warnings.append(f"anchors.{name} differs ({theirs!r} in the fine-tune checkpoint's "
                                f"config, {ours!r} here): the box heads were trained for other "
                                f"default boxes and start off for these")
        if source.matching.variances != target.matching.variances:
            warnings.append(f"matching.variances differ ({source.matching.variances} vs "
                            f"{target.matching.variances}): the box heads' encoding changes")
    return warnings


# --- layers -------------------------------------------------------------------------------------

def layer_group(name: str, config: config_lib.Config) -> str:
    """Which part of the network a layer (by name) belongs to (module docstring)."""
    match = _HEAD.fullmatch(name)
    if match:
        kind, _, part = match.groups()
        if kind in ("cls", "cls_head"):
            return CLASS_OUTPUTS if part in (None, "_pw") else CLASS_HEADS
        return BOX_HEADS
    if config.model.backbone == MOBILENET_V2:
        return EXTRA_LAYERS if name.startswith("extra_") else BACKBONE_LAYERS
    extras = {n for e in get_architecture(config.model.architecture).extra_layers
              for n in (e.name, f"{e.name}_bn")}
    return EXTRA_LAYERS if name in extras else BACKBONE_LAYERS


def restored_groups(checkpoint_type: str) -> tuple[str, ...]:
    if checkpoint_type == BACKBONE:
        return (BACKBONE_LAYERS,)
    return (BACKBONE_LAYERS, EXTRA_LAYERS, BOX_HEADS, CLASS_HEADS, CLASS_OUTPUTS)


# --- the report -----------------------------------------------------------------------------------

@dataclasses.dataclass
class FineTuneReport:
    checkpoint: str
    step: int
    checkpoint_type: str
    restored: dict[str, list[str]]  # group -> layer names copied
    copied_classes: list[tuple[str, str]]  # (source name, target name), background first
    fresh_classes: list[str]  # target classes left at their initialization
    left_initialized: list[str]  # layers not restored at all
    warnings: list[str]

    def log_lines(self) -> list[str]:
        groups = "; ".join(f"{group}: {', '.join(names)}" for group, names in self.restored.items()
                           if names)
        lines = [f"fine-tune checkpoint {self.checkpoint} (step {self.step}, "
                 f"type {self.checkpoint_type}): restored {groups}"]
        if self.checkpoint_type == DETECTION:
            lines.append("fine-tune classes copied (source -> target): " + ", ".join(
                f"{s} -> {t}" for s, t in self.copied_classes))
            lines.append("fine-tune classes initialized fresh: "
                         + (", ".join(self.fresh_classes) or "none"))
        lines.append("fine-tune left at their initialization: "
                     + (", ".join(self.left_initialized) or "nothing"))
        return lines


# --- fine-tuning ---------------------------------------------------------------------------------

def _source_model(config: config_lib.Config, prefix: str) -> tuple[keras.Model, int]:
    from ssd.inference.detector import build_inference_model  # float32, as checkpoints hold

    model = build_inference_model(config)
    try:
        step = checkpoints.restore_checkpoint(model, prefix, config)
    except checkpoints.CheckpointError as e:
        raise FineTuneError(f"fine-tune checkpoint: {str(e).splitlines()[0]}") from e
    return model, step


def _plan(model, source_model, config, source_config, checkpoint_type, mapping, where):
    """[(variable, value)] for every variable to assign, and the restored layer names by group."""
    groups = restored_groups(checkpoint_type)
    plan, restored, left = [], {g: [] for g in groups}, []
    for layer in model.layers:
        if not layer.weights:
            continue
        group = layer_group(layer.name, config)
        if group not in groups:
            left.append(layer.name)
            continue
        try:
            theirs = source_model.get_layer(layer.name)
        except ValueError:
            raise FineTuneError(f"fine-tune checkpoint {where} has no layer {layer.name!r} "
                                f"(this run's model has it)") from None
        if group == CLASS_OUTPUTS:
            boxes = layer.kernel.shape[-1] // config.model.num_classes
            ours_idx, theirs_idx = class_channel_pairs(
                boxes, source_config.model.num_classes, config.model.num_classes, mapping)
            for mine, their in ((layer.kernel, theirs.kernel), (layer.bias, theirs.bias)):
                if tuple(mine.shape[:-1]) != tuple(their.shape[:-1]):
                    raise FineTuneError(
                        f"fine-tune checkpoint {where}: {mine.path} has shape {tuple(their.shape)} "
                        f"there and {tuple(mine.shape)} in this run's model")
                value = np.array(mine.numpy())
                value[..., ours_idx] = their.numpy()[..., theirs_idx]
                plan.append((mine, value))
        else:
            for mine, their in zip(layer.weights, theirs.weights):
                if tuple(mine.shape) != tuple(their.shape):
                    raise FineTuneError(
                        f"fine-tune checkpoint {where}: {mine.path} has shape {tuple(their.shape)} "
                        f"there and {tuple(mine.shape)} in this run's model")
                plan.append((mine, their.numpy()))
        restored[group].append(layer.name)
    return plan, restored, left


def initialize_from_checkpoint(model: keras.Model, config: config_lib.Config, path: str,
                               checkpoint_type: str = DETECTION) -> FineTuneReport:
    """Initializes `model` (built from `config`) from the detection checkpoint at `path` (module
    docstring). Nothing is assigned unless everything fits. Raises FineTuneError."""
    prefix, source_dir = resolve_source(path)
    try:
        source_config = config_lib.load_saved_config(source_dir)
    except config_lib.ConfigError as e:
        raise FineTuneError(f"fine-tune checkpoint {prefix}: its config: {e}") from e
    warnings = check_compatible(source_config, config, checkpoint_type, prefix)
    source_names = list(source_config.data.class_names)
    target_names = list(config.data.class_names)
    mapping = match_classes(source_names, target_names) if checkpoint_type == DETECTION else {}
    source_model, step = _source_model(source_config, prefix)
    try:
        plan, restored, left = _plan(model, source_model, config, source_config, checkpoint_type,
                                     mapping, prefix)
    finally:
        del source_model
        gc.collect()
    for variable, value in plan:
        variable.assign(np.asarray(value, dtype=variable.dtype))
    label_names = [BACKGROUND] + target_names
    source_label_names = [BACKGROUND] + source_names
    copied = [(source_label_names[s], label_names[t]) for t, s in mapping.items()]
    fresh = [] if checkpoint_type != DETECTION else [
        name for label, name in enumerate(target_names, start=1) if label not in mapping]
    return FineTuneReport(prefix, step, checkpoint_type, restored, copied, fresh, left, warnings)
