"""Initializes SSD's VGG16 backbone from ImageNet-trained VGG16 weights.

`initialize_backbone(model, source)`; `ssd.modeling.pretrained.initialize_for_config` picks it
for a VGG16 config.

Sources:
* "imagenet": Keras' own VGG16 ImageNet weights. Keras downloads them once into its cache,
  `keras_cache_file()`; a file already there is read without any network access, so an offline
  machine works once the file has been copied there from another machine;
* a Keras weights file (.weights.h5, legacy .h5/.hdf5, .keras) of
  `keras.applications.VGG16(include_top=True)`;
* a TF-slim `vgg_16` checkpoint (path, prefix or directory), fc6/fc7 either full or reduced;
* "none": leave everything as initialized.

conv1_1 .. conv5_3 are copied. fc6/fc7 are "reduced" as in the original SSD: keep every 4th
output unit (0, 4, 8, ...), every 3rd spatial tap of fc6's 7x7 kernel (0, 3, 6; the 3x3 result
then runs with dilation 6), and fc7's input units matching fc6's kept outputs. Already reduced
weights are copied. Heads, extra layers and the conv4_3 scale keep their initialization.

The cache-or-download step and its offline error are `ssd.modeling.pretrained.keras_cache`.

Input channel order. The network consumes BGR, mean-subtracted images.
* Keras' VGG16 weights are the Caffe VGG16 weights: `keras.applications.vgg16.preprocess_input`
  uses mode "caffe", which flips RGB to BGR and subtracts the BGR mean [103.939, 116.779, 123.68]
  (keras/src/applications/imagenet_utils.py). Their conv1_1 already reads BGR: copied as is.
* TF-slim's vgg_16 was trained on RGB images (its vgg_preprocessing subtracts
  _R_MEAN, _G_MEAN, _B_MEAN = 123.68, 116.78, 103.94 from an RGB-decoded image): conv1_1's input
  channels are reversed so that it reads BGR.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ssd.modeling.pretrained.keras_cache import (KERAS_SUFFIXES, KerasImagenetFile, PretrainedError,
                                                 fetch_keras_imagenet, nothing_loaded)

CONV_LAYERS = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
)
FULL_FC6 = (7, 7, 512, 4096)
FULL_FC7 = (1, 1, 4096, 4096)
REDUCED_FC6 = (3, 3, 512, 1024)
REDUCED_FC7 = (1, 1, 1024, 1024)
UNIT_STRIDE = 4  # keep every 4th fc unit: 4096 -> 1024
TAP_STRIDE = 3  # keep fc6 taps 0, 3, 6 of 7

# Keras' VGG16 ImageNet file (keras/src/applications/vgg16.py, include_top=True): its name in
# the cache, where Keras downloads it from, and the md5 Keras checks it against.
KERAS_VGG16_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
KERAS_VGG16_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                   + KERAS_VGG16_FILE)
KERAS_VGG16_MD5 = "64373286793e3c8b2b4e3219cbf3544b"

_SLIM_SCOPE = "vgg_16/"
_TF2_CHECKPOINT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def reduce_fc6(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[7, 7, 512, 4096] -> [3, 3, 512, 1024]: taps 0, 3, 6 and every 4th output unit."""
    return kernel[::TAP_STRIDE, ::TAP_STRIDE, :, ::UNIT_STRIDE], bias[::UNIT_STRIDE]


def reduce_fc7(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[1, 1, 4096, 4096] -> [1, 1, 1024, 1024]: every 4th input and output unit."""
    return kernel[:, :, ::UNIT_STRIDE, ::UNIT_STRIDE], bias[::UNIT_STRIDE]


# --- reading the sources: name -> (kernel [kh, kw, in, out], bias), fc layers as convolutions --

def _keras_vgg16_arrays(vgg: keras.Model, source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    def layer(name):
        try:
            return vgg.get_layer(name)
        except ValueError:
            raise PretrainedError(f"{source}: the Keras model has no layer {name!r}; need "
                                  f"keras.applications.VGG16 with include_top=True") from None

    arrays = {}
    for ours in CONV_LAYERS:
        block, index = ours[4:].split("_")
        conv = layer(f"block{block}_conv{index}")
        arrays[ours] = (conv.kernel.numpy(), conv.bias.numpy())
    fc1, fc2 = layer("fc1"), layer("fc2")
    fc1_kernel = fc1.kernel.numpy()
    if fc1_kernel.shape != (7 * 7 * 512, 4096):
        raise PretrainedError(f"{source}: fc1 kernel has shape {fc1_kernel.shape}, "
                              f"expected (25088, 4096) of VGG16 at 224x224")
    # Flatten of the channels_last [7, 7, 512] pool5 output enumerates (h, w, c) row-major,
    # so rows of fc1's kernel reshape straight back to a 7x7x512 convolution.
    arrays["fc6"] = (fc1_kernel.reshape(FULL_FC6), fc1.bias.numpy())
    arrays["fc7"] = (fc2.kernel.numpy().reshape(1, 1, *fc2.kernel.shape), fc2.bias.numpy())
    return arrays


def _load_keras_vgg16(weights: str) -> keras.Model:
    if keras.backend.image_data_format() != "channels_last":
        raise PretrainedError("Keras VGG16 weights are read in channels_last layout; "
                              f"the Keras image_data_format is {keras.backend.image_data_format()}")
    return keras.applications.VGG16(weights=weights, include_top=True)


KERAS_VGG16 = KerasImagenetFile(
    "VGG16", KERAS_VGG16_FILE, KERAS_VGG16_URL, KERAS_VGG16_MD5,
    "a Keras VGG16 weights file (include_top=True; .h5, .weights.h5, .keras) or a TF-slim "
    "vgg_16 checkpoint")


def _imagenet_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Keras' ImageNet VGG16: from the cache when the file is there, else downloaded by Keras."""
    return fetch_keras_imagenet(
        KERAS_VGG16, _keras_file_arrays,
        lambda: _keras_vgg16_arrays(_load_keras_vgg16(weights="imagenet"), "imagenet"))


def _keras_file_arrays(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    vgg = _load_keras_vgg16(weights=None)
    try:
        vgg.load_weights(str(path))
    except Exception as e:  # Keras raises several types for foreign or truncated files
        raise PretrainedError(f"{path}: could not load as keras.applications.VGG16 "
                              f"(include_top=True) weights: {e}") from e
    return _keras_vgg16_arrays(vgg, str(path))


_NAMES_SHOWN = 6  # of a foreign checkpoint's variables, in an error


def _slim_arrays(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as e:
        raise PretrainedError(f"{path}: not a readable TensorFlow checkpoint: {e}") from e
    names = {name.removesuffix(_TF2_CHECKPOINT_SUFFIX): name
             for name in reader.get_variable_to_shape_map()}
    anchor = _SLIM_SCOPE + "conv1/conv1_1/weights"
    prefixes = sorted(name[:-len(anchor)] for name in names if name.endswith(anchor))
    if len(prefixes) != 1:
        found = (", ".join(sorted(names)[:_NAMES_SHOWN])
                 + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""))
        reason = "has no" if not prefixes else "has several"
        raise PretrainedError(f"{path}: checkpoint {reason} TF-slim vgg_16 variables "
                              f"('{anchor}'); it holds: {found}")
    scope = prefixes[0] + _SLIM_SCOPE

    def variable(name):
        full = scope + name
        if full not in names:
            found = ", ".join(n for n in sorted(names) if n.startswith(scope))
            raise PretrainedError(f"{path}: checkpoint lacks {full}; its vgg_16 variables are: "
                                  f"{found}")
        return reader.get_tensor(names[full])

    arrays = {}
    for ours in CONV_LAYERS:
        block = ours[4:].split("_")[0]
        arrays[ours] = (variable(f"conv{block}/{ours}/weights"),
                        variable(f"conv{block}/{ours}/biases"))
    for fc in ("fc6", "fc7"):
        arrays[fc] = (variable(f"{fc}/weights"), variable(f"{fc}/biases"))
    return arrays


def _is_checkpoint(path: str) -> bool:
    return (os.path.isdir(path) or os.path.exists(path + ".index")
            or (os.path.exists(path) and path.endswith(".index")))


# --- assigning ------------------------------------------------------------------------------

def _model_layer(model: keras.Model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        raise PretrainedError(f"model {model.name!r} has no layer {name!r}") from None


def _check_shape(source: str, what: str, array: np.ndarray, expected) -> None:
    if tuple(array.shape) != tuple(expected):
        raise PretrainedError(f"{source}: {what} has shape {tuple(array.shape)}, "
                              f"layer needs {tuple(expected)}")


def _plan(model: keras.Model, arrays, source: str, flip_input_channels: bool):
    """Validates every tensor and returns [(layer, kernel, bias)] plus the report lists."""
    conv1_1 = _model_layer(model, "conv1_1")
    if conv1_1.kernel.shape[-1] != 64:
        raise PretrainedError(
            f"pretrained VGG16 weights need the full-width network (model.width_multiplier 1.0); "
            f"this model's conv1_1 has {conv1_1.kernel.shape[-1]} filters instead of 64")
    plan, copied, subsampled = [], [], []
    for name in CONV_LAYERS:
        kernel, bias = arrays[name]
        if name == "conv1_1" and flip_input_channels:
            kernel = kernel[:, :, ::-1, :]
        plan.append((name, kernel, bias))
        copied.append(name)

    fc6_kernel, fc6_bias = arrays["fc6"]
    fc7_kernel, fc7_bias = arrays["fc7"]
    fc6_full = tuple(fc6_kernel.shape) == FULL_FC6
    fc7_full = tuple(fc7_kernel.shape) == FULL_FC7
    if not fc6_full and tuple(fc6_kernel.shape) != REDUCED_FC6:
        raise PretrainedError(f"{source}: fc6 kernel has shape {tuple(fc6_kernel.shape)}, "
                              f"expected full {FULL_FC6} or reduced {REDUCED_FC6}")
    if not fc7_full and tuple(fc7_kernel.shape) != REDUCED_FC7:
        raise PretrainedError(f"{source}: fc7 kernel has shape {tuple(fc7_kernel.shape)}, "
                              f"expected full {FULL_FC7} or reduced {REDUCED_FC7}")
    if fc6_full != fc7_full:
        raise PretrainedError(f"{source}: fc6 is {'full' if fc6_full else 'reduced'} but fc7 is "
                              f"{'full' if fc7_full else 'reduced'}; both must be the same form "
                              f"so that fc7's input units match fc6's outputs")
    if fc6_full:
        _check_shape(source, "fc6 bias", fc6_bias, (4096,))
        _check_shape(source, "fc7 bias", fc7_bias, (4096,))
        plan.append(("fc6", *reduce_fc6(fc6_kernel, fc6_bias)))
        plan.append(("fc7", *reduce_fc7(fc7_kernel, fc7_bias)))
        subsampled += ["fc6", "fc7"]
    else:
        plan += [("fc6", fc6_kernel, fc6_bias), ("fc7", fc7_kernel, fc7_bias)]
        copied += ["fc6", "fc7"]

    checked = []
    for name, kernel, bias in plan:
        layer = _model_layer(model, name)
        _check_shape(source, f"{name} kernel", kernel, layer.kernel.shape)
        _check_shape(source, f"{name} bias", bias, layer.bias.shape)
        checked.append((layer, kernel, bias))
    return checked, copied, subsampled


def _assign(model: keras.Model, arrays, source: str, source_format: str,
            flip_input_channels: bool) -> dict:
    plan, copied, subsampled = _plan(model, arrays, source, flip_input_channels)
    for layer, kernel, bias in plan:
        layer.kernel.assign(np.ascontiguousarray(kernel, dtype=layer.kernel.dtype))
        layer.bias.assign(np.ascontiguousarray(bias, dtype=layer.bias.dtype))
    touched = set(copied) | set(subsampled)
    return {
        "source": source,
        "format": source_format,
        "copied": copied,
        "subsampled": subsampled,
        "input_channels_flipped": ["conv1_1"] if flip_input_channels else [],
        "left_initialized": [la.name for la in model.layers
                             if la.weights and la.name not in touched],
    }


def initialize_backbone(model: keras.Model, source: str) -> dict:
    """Loads VGG16 weights into `model`'s conv1_1..fc7 and reports what was done.

    `source`: "imagenet", "none", a Keras VGG16 weights file, or a TF-slim vgg_16 checkpoint.
    Returns {"source", "format", "copied", "subsampled", "input_channels_flipped",
    "left_initialized"} with layer names. Nothing is assigned unless every tensor fits.
    """
    source = str(source)
    if source == "none":
        return nothing_loaded(model)
    if source == "imagenet":
        return _assign(model, _imagenet_arrays(), source, "keras", flip_input_channels=False)
    if source.endswith(KERAS_SUFFIXES):
        path = Path(source)
        if not path.is_file():
            raise PretrainedError(f"{path}: Keras weights file not found")
        return _assign(model, _keras_file_arrays(path), source, "keras", flip_input_channels=False)
    if _is_checkpoint(source):
        checkpoint = source.removesuffix(".index")
        return _assign(model, _slim_arrays(checkpoint), source, "tf-slim",
                       flip_input_channels=True)
    raise PretrainedError(
        f"pretrained source {source!r}: no such Keras weights file (.h5, .hdf5, .keras) or "
        f"TensorFlow checkpoint; use 'imagenet', 'none', a file path or a checkpoint prefix")


