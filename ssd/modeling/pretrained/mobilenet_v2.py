"""Initializes SSDLite's MobileNetV2 backbone from ImageNet-trained MobileNetV2 weights.

Sources:
* "imagenet": Keras' MobileNetV2 ImageNet weights without the classifier,
  `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5`. Keras downloads it
  once into its cache; a file already there is read without any network access (shared with the
  VGG16 initializer: `ssd.modeling.pretrained.vgg16.fetch_keras_imagenet`). Keras publishes one file per
  training resolution `rows` (96, 128, 160, 192, 224), all with the same tensors; the model's own
  input size is used when it is one of them, else 224 (Keras' rule);
* a Keras MobileNetV2 weights file (legacy .h5/.hdf5, .weights.h5, .keras) of
  `keras.applications.MobileNetV2` at the model's width multiplier, with or without its
  classifier;
* "none": leave everything as initialized.

Every layer of Keras' MobileNetV2 up to `out_relu` is copied, batch-norm moving statistics
included: `ssd.modeling.ssdlite` keeps those layers under their Keras names. Extra layers and heads keep
their initialization. Keras' MobileNetV2 weights read RGB images scaled to [-1, 1]
(`keras.applications.mobilenet_v2.preprocess_input`, mode "tf"), the input SSDLite takes.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from ssd.modeling.pretrained.keras_cache import (KERAS_SUFFIXES, KerasImagenetFile, PretrainedError,
                                                 fetch_keras_imagenet, nothing_loaded)

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
IMAGENET_WIDTH_MULTIPLIERS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_ROWS = (96, 128, 160, 192, 224)
DEFAULT_ROWS = 224
CLASSIFIER_ROWS = 224  # the only input size Keras builds MobileNetV2 with its classifier at


def imagenet_rows(input_size: int) -> int:
    return input_size if input_size in IMAGENET_ROWS else DEFAULT_ROWS


def keras_imagenet_file(width_multiplier: float, input_size: int) -> KerasImagenetFile:
    """Keras' no-top ImageNet file (named as in keras/src/applications/mobilenet_v2.py)."""
    name = (f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(width_multiplier)}_"
            f"{imagenet_rows(input_size)}_no_top.h5")
    return KerasImagenetFile(
        "MobileNetV2", name, KERAS_BASE_URL + name, None,  # Keras checks no hash for these
        f"a Keras MobileNetV2 weights file (keras.applications.MobileNetV2 at width multiplier "
        f"{width_multiplier}; .h5, .weights.h5, .keras)")


def _mobilenet_v2(weights, width_multiplier: float, rows: int, include_top: bool = False):
    if keras.backend.image_data_format() != "channels_last":
        raise PretrainedError("Keras MobileNetV2 weights are read in channels_last layout; the "
                              f"Keras image_data_format is {keras.backend.image_data_format()}")
    return keras.applications.MobileNetV2(
        input_shape=(rows, rows, 3), alpha=width_multiplier, include_top=include_top,
        weights=weights)


def _read_keras_file(path: Path, width_multiplier: float) -> keras.Model:
    """A MobileNetV2 holding the file's weights; the file may or may not have the classifier."""
    errors = []
    for include_top, rows in ((False, DEFAULT_ROWS), (True, CLASSIFIER_ROWS)):
        network = _mobilenet_v2(None, width_multiplier, rows, include_top)
        try:
            network.load_weights(str(path))
            return network
        except Exception as e:  # Keras raises several types for foreign or truncated files
            errors.append(f"include_top={include_top}: {' '.join(str(e).split())}")
    raise PretrainedError(f"{path}: could not load as keras.applications.MobileNetV2 weights at "
                          f"width multiplier {width_multiplier} ({'; '.join(errors)})")


def _plan(model: keras.Model, network: keras.Model, source: str):
    """[(our layer, arrays)] for every MobileNetV2 layer with weights; checks every shape first."""
    plan = []
    for theirs in network.layers:
        if not theirs.weights or theirs.name == "predictions":  # the classifier has no place here
            continue
        try:
            ours = model.get_layer(theirs.name)
        except ValueError:
            raise PretrainedError(f"model {model.name!r} has no layer {theirs.name!r} of "
                                  f"MobileNetV2; is it SSDLite-MobileNetV2?") from None
        arrays = [w.numpy() for w in theirs.weights]
        if len(ours.weights) != len(arrays):
            raise PretrainedError(f"{source}: {theirs.name} has {len(arrays)} tensors, the "
                                  f"model's layer {len(ours.weights)}")
        for variable, array in zip(ours.weights, arrays):
            if tuple(variable.shape) != array.shape:
                raise PretrainedError(
                    f"{source}: {theirs.name} {variable.name} has shape {array.shape}, layer "
                    f"needs {tuple(variable.shape)}; is the model's width multiplier the one of "
                    f"the weights?")
        plan.append((ours, arrays))
    return plan


def _assign(model: keras.Model, network: keras.Model, source: str) -> dict:
    plan = _plan(model, network, source)
    for layer, arrays in plan:
        for variable, array in zip(layer.weights, arrays):
            variable.assign(np.asarray(array, dtype=variable.dtype))
    copied = [layer.name for layer, _ in plan]
    touched = set(copied)
    return {
        "source": source,
        "format": "keras",
        "copied": copied,
        "subsampled": [],
        "input_channels_flipped": [],
        "left_initialized": [la.name for la in model.layers
                             if la.weights and la.name not in touched],
    }


def initialize_mobilenet_v2_backbone(model: keras.Model, source: str,
                                     width_multiplier: float = 1.0) -> dict:
    """Loads MobileNetV2 weights into `model`'s backbone layers and reports what was done.

    `model` is an SSDLite-MobileNetV2 built at `width_multiplier`; `source` is "imagenet",
    "none" or a Keras MobileNetV2 weights file. Returns {"source", "format", "copied",
    "subsampled", "input_channels_flipped", "left_initialized"} with layer names, the report of
    `ssd.modeling.pretrained.vgg16.initialize_backbone`. Nothing is assigned unless every tensor fits.
    """
    source = str(source)
    if source == "none":
        return nothing_loaded(model)
    if source == "imagenet":
        if width_multiplier not in IMAGENET_WIDTH_MULTIPLIERS:
            raise PretrainedError(
                f"Keras publishes ImageNet MobileNetV2 weights for width multipliers "
                f"{', '.join(map(str, IMAGENET_WIDTH_MULTIPLIERS))} only; this model's is "
                f"{width_multiplier}")
        input_size = int(model.input_shape[1])
        file = keras_imagenet_file(width_multiplier, input_size)
        network = fetch_keras_imagenet(
            file, lambda path: _read_keras_file(path, width_multiplier),
            lambda: _mobilenet_v2("imagenet", width_multiplier, imagenet_rows(input_size)))
        return _assign(model, network, source)
    if source.endswith(KERAS_SUFFIXES):
        path = Path(source)
        if not path.is_file():
            raise PretrainedError(f"{path}: Keras weights file not found")
        return _assign(model, _read_keras_file(path, width_multiplier), source)
    raise PretrainedError(
        f"pretrained source {source!r}: no such Keras MobileNetV2 weights file (.h5, .hdf5, "
        f".keras); use 'imagenet', 'none' or a file path")
