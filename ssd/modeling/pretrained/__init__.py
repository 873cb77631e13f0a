"""Backbone initialization from ImageNet-trained weights (Keras files, TF-slim checkpoints).

`initialize_for_config(model, config, source)` is the entry point for any backbone: VGG16 in
`vgg16`, MobileNetV2 in `mobilenet_v2`, both on Keras' weight cache (`keras_cache`).
"""

from __future__ import annotations

import os

import keras

from ssd.config.architectures import MOBILENET_V2, VGG16
from ssd.modeling.pretrained.keras_cache import PretrainedError
from ssd.modeling.pretrained.mobilenet_v2 import initialize_mobilenet_v2_backbone
from ssd.modeling.pretrained.vgg16 import initialize_backbone

__all__ = ["PretrainedError", "initialize_for_config"]

_MODEL_CONFIG = "config.json"  # what a model directory of this project holds (ssd.config.loading)


def _detection_model_dir(source: str) -> str | None:
    """The model directory `source` names (itself, or the one holding a checkpoint prefix), if
    it is one of this project's."""
    for directory in (source, os.path.dirname(source)):
        if directory and os.path.isfile(os.path.join(directory, _MODEL_CONFIG)):
            return directory
    return None


def initialize_for_config(model: keras.Model, config, source: str) -> dict:
    """Loads the pretrained backbone of `config.model.backbone` into `model` (built by
    `ssd.modeling.build.build_model(config)`) and reports what was done, as `initialize_backbone` does.

    vgg16: `initialize_backbone`; mobilenet_v2: `ssd.modeling.pretrained.mobilenet_v2.
    initialize_mobilenet_v2_backbone` at the config's width multiplier. Raises PretrainedError
    for a source that cannot be used (a missing file, ImageNet weights offline).
    """
    model_dir = _detection_model_dir(source)
    if model_dir is not None:
        raise PretrainedError(
            f"--pretrained={source} is a detection model ({model_dir} holds its {_MODEL_CONFIG}); "
            f"--pretrained takes backbone weights only. Start from the whole detector with "
            f"--fine_tune_checkpoint={source} instead.")
    backbone = config.model.backbone
    if backbone == MOBILENET_V2:
        return initialize_mobilenet_v2_backbone(model, source, config.model.width_multiplier)
    if backbone == VGG16:
        return initialize_backbone(model, source)
    raise PretrainedError(f"model.backbone {backbone!r}: no pretrained weights known")
