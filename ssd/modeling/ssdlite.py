"""The SSDLite-MobileNetV2 network (MobileNetV2 paper, section 6.2): backbone, extra layers, heads.

* Backbone: `keras.applications.MobileNetV2` without its classifier, its layers kept under their
  Keras names (so Keras' ImageNet weights load by name, see `ssd.modeling.pretrained.mobilenet_v2`). The
  first source map is `block_13_expand_relu`, the 576-channel expansion at output stride 16 just
  before the first stride-2 depthwise of the 160-channel stage (the TF Object Detection API's
  `layer_15/expansion_output`); the second is `out_relu`, the last 1x1 layer (1280 channels,
  stride 32).
* Four extra layers, each a 1x1 convolution to half its channels, then a stride-2
  depthwise-separable 3x3: depthwise 3x3/s2, then 1x1 to its channels; 512, 256, 256, 128
  channels at width multiplier 1.
* Heads: on each source map a depthwise 3x3, then a 1x1 convolution with bias and no activation
  to boxes * 4 (box encodings) or boxes * num_classes (class logits) channels.
* Every convolution except the heads' final 1x1 is followed by batch normalization and ReLU6.

Padding. All 3x3 convolutions use TensorFlow's 'same' padding, as the TF Object Detection API's
SSDLite does (Keras' MobileNetV2 pads its stride-2 depthwise layers explicitly, with the same
result): a stride-2 3x3 turns n into ceil(n / 2); when n is even, the single padded row/column is
the bottom/right one. At 320: backbone maps 20 and 10, extra maps 10 -> 5 (bottom/right pad),
5 -> 3 and 3 -> 2 (one pixel on each side), 2 -> 1 (bottom/right pad).

Width multiplier. It is MobileNetV2's alpha for the backbone (the last 1x1 layer keeps 1280
channels below 1.0, as in the paper); extra-layer widths are scaled like the TF Object Detection
API does: int(channels * multiplier), at least MIN_EXTRA_CHANNELS.

Initialization and batch norm of the extra layers and heads follow the TF Object Detection API's
`ssdlite_mobilenet_v2_coco` recipe: truncated normal (stddev 0.03) kernels, zero biases, batch
norm decay 0.9997 and epsilon 0.001.

Outputs are `(cls_logits [B, A, num_classes], box_encodings [B, A, 4])` in float32, with the
default boxes ordered source map by source map, then row-major over (y, x), then box index at
the location, exactly as `ssd.modeling.vgg16_ssd` orders them. The input is the image scaled to [-1, 1]
(MobileNetV2's preprocessing), [B, S, S, 3], RGB.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

# the geometry is pure Python (a config loads without Keras)
from ssd.config.architectures import SSDLITE_EXTRA_CHANNELS
from ssd.config.architectures import ssdlite_feature_map_sizes as feature_map_sizes

BACKBONE_SOURCE_LAYERS = ("block_13_expand_relu", "out_relu")
# Keras' MobileNetV2 names its 17 depthwise layers `expanded_conv_depthwise`, `block_N_depthwise`;
# this module's own (extra layers, heads) end in `_dw`
BACKBONE_DEPTHWISE_SUFFIX = "_depthwise"
EXTRA_CHANNELS = SSDLITE_EXTRA_CHANNELS
MIN_EXTRA_CHANNELS = 16

KERNEL_STDDEV = 0.03
BN_MOMENTUM = 0.9997
BN_EPSILON = 1e-3
RELU6 = 6.0


def extra_layer_channels(channels: int, width_multiplier: float) -> int:
    """Width of an extra layer at a multiplier (the TF Object Detection API's depth rule)."""
    return max(int(channels * width_multiplier), MIN_EXTRA_CHANNELS)


def _kernel_initializer():
    return keras.initializers.TruncatedNormal(stddev=KERNEL_STDDEV)


def _bn_relu6(x, name):
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(RELU6, name=f"{name}_relu")(x)


def _pointwise(x, channels, name):
    x = layers.Conv2D(channels, 1, use_bias=False, kernel_initializer=_kernel_initializer(),
                      name=name)(x)
    return _bn_relu6(x, name)


def _depthwise(x, stride, name):
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                               depthwise_initializer=_kernel_initializer(), name=name)(x)
    return _bn_relu6(x, name)


def _extra_layer(x, index, channels):
    """1x1 to half the channels, then depthwise 3x3/s2 and 1x1 to `channels`."""
    x = _pointwise(x, max(channels // 2, 1), f"extra_{index}_1x1")
    x = _depthwise(x, 2, f"extra_{index}_dw")
    return _pointwise(x, channels, f"extra_{index}_pw")


def _head(feature, index, boxes, components, prefix):
    """Depthwise-separable 3x3 predicting `components` values per box.

    Output channel a * components + k is box a, value k, so a plain reshape lists the map's boxes
    row-major over (y, x), then by box.
    """
    x = _depthwise(feature, 1, f"{prefix}_{index}_dw")
    x = layers.Conv2D(boxes * components, 1, kernel_initializer=_kernel_initializer(),
                      bias_initializer="zeros", name=f"{prefix}_{index}_pw")(x)
    height, width = feature.shape[1], feature.shape[2]
    return layers.Reshape((height * width * boxes, components), name=f"{prefix}_{index}_flat")(x)


def build_ssdlite_mobilenet_v2(num_classes: int, boxes_per_location: Sequence[int],
                               input_size: int = 320, width_multiplier: float = 1.0,
                               extra_channels: Sequence[int] = EXTRA_CHANNELS,
                               batch_norm_momentum: float | None = None) -> keras.Model:
    """Builds SSDLite-MobileNetV2 under the current global Keras dtype policy.

    `batch_norm_momentum`, when given, replaces the moving-average momentum of every batch norm
    (backbone included; by default Keras' 0.999 in the backbone and the TF Object Detection API's
    0.9997 elsewhere). Those keep about 0.9997^n of the initial statistics after n steps, fine
    for a long run but far from the data after a short one: inference would normalize with
    almost the initial mean 0 and variance 1.

    `boxes_per_location` has one entry per source map: 2 backbone maps + one per extra layer.
    `extra_channels` are the extra layers' widths at multiplier 1.
    Input: images scaled to [-1, 1], [B, input_size, input_size, 3].
    Output: (cls_logits [B, A, num_classes], box_encodings [B, A, 4]), always float32.
    """
    expected_sizes = feature_map_sizes(input_size, len(extra_channels))
    boxes = [int(b) for b in boxes_per_location]
    if len(boxes) != len(expected_sizes):
        raise ValueError(f"boxes_per_location has {len(boxes)} values but SSDLite-MobileNetV2 "
                         f"with {len(extra_channels)} extra layers has {len(expected_sizes)} "
                         f"source maps")
    if min(boxes) < 1 or num_classes < 2:
        raise ValueError(f"need at least one box per location and two classes (background "
                         f"included); got boxes_per_location {boxes}, num_classes {num_classes}")

    images = keras.Input(shape=(input_size, input_size, 3), name="image")
    # Built on `images`, the backbone's layers become this model's own layers (a flat layout):
    # the MobileNetV2 Functional object itself is never called.
    backbone = keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3), input_tensor=images, alpha=width_multiplier,
        include_top=False, weights=None)
    sources = [backbone.get_layer(name).output for name in BACKBONE_SOURCE_LAYERS]
    x = sources[-1]
    for index, channels in enumerate(extra_channels, start=1):
        x = _extra_layer(x, index, extra_layer_channels(channels, width_multiplier))
        sources.append(x)
    produced = [int(s.shape[1]) for s in sources]
    if produced != expected_sizes:  # the derivation above is what the anchors are built from
        raise AssertionError(f"source maps {produced} differ from the derived {expected_sizes}")

    cls_parts = [_head(s, i, boxes[i], num_classes, "cls_head") for i, s in enumerate(sources)]
    loc_parts = [_head(s, i, boxes[i], 4, "box_head") for i, s in enumerate(sources)]
    # float32 concatenation layers also cast the mixed-precision head outputs to float32
    cls_logits = layers.Concatenate(axis=1, dtype="float32", name="cls_logits")(cls_parts)
    box_encodings = layers.Concatenate(axis=1, dtype="float32", name="box_encodings")(loc_parts)
    model = keras.Model(images, (cls_logits, box_encodings), name="ssdlite_mobilenet_v2")
    if batch_norm_momentum is not None:
        for layer in model.layers:  # read at every call: setting it after building is enough
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = float(batch_norm_momentum)
    return model
