"""The SSD300 / SSD512 network: VGG16 backbone with reduced fc6/fc7, extra layers and heads.

The geometry follows the original Caffe model exactly, which TensorFlow's `padding="same"` does
not give for free:

* pool1-pool4 round their output size UP (Caffe's ceil mode: 75 -> 38 after pool3);
* stride-2 convolutions pad one pixel on every side (Caffe's symmetric `pad: 1`), whereas 'same'
  with stride 2 on an even input pads only the bottom/right edge and shifts every sampling
  position by one pixel;
* conv12_2 of SSD512 is a 4x4 kernel with pad 1 on every side (2 -> 1), which 'same' cannot
  express at all.

`model.extra_padding = "same"` gives the stride-2 extra convolutions TensorFlow's 'same' padding
instead (same output sizes; an odd total pad goes bottom/right only): the TF1 original's geometry,
whose conv9_2 (3x3 s2 on 10x10) pads (0, 1) where Caffe pads (1, 1) (ssd.weights.tf1_original).

Stride-1 3x3 convolutions, pool5 (3x3 s1) and the dilated fc6 (effective kernel 13) have an odd
kernel and stride 1, where 'same' already pads symmetrically, so they use it. fc6 is computed as
a dilated convolution where the kernels have one, and every convolution's weight gradient is
computed as the CPU at hand does it fastest (ssd.modeling.convolution).

Outputs are `(cls_logits [B, A, num_classes], box_encodings [B, A, 4])` with the default boxes
ordered source map by source map, then row-major over (y, x), then box index at the location,
the order of `ssd.modeling.anchors.generate_anchors`. The extra layers, input size and source maps of
each architecture are in `ssd.config.architectures`.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from ssd.config.architectures import POOLINGS_BEFORE_CONV4_3, feature_map_sizes, get_architecture
from ssd.config.loading import Config
from ssd.modeling.anchors import check_feature_map_sizes
from ssd.modeling.convolution import Conv2D, same_padding

MIN_CHANNELS = 8

# (name, output channels) for the VGG16 convolutions, one list per block; a pooling layer follows
# every block (pool1..pool5).
_VGG_BLOCKS = (
    (("conv1_1", 64), ("conv1_2", 64)),
    (("conv2_1", 128), ("conv2_2", 128)),
    (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
    (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
    (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)),
)
FC6_CHANNELS = 1024
FC7_CHANNELS = 1024
FC6_DILATION = 6


def scaled_channels(channels: int, width_multiplier: float) -> int:
    """Channels of a backbone / extra layer at a width multiplier.

    Rule: round half up of `channels * width_multiplier`, but never fewer than MIN_CHANNELS
    (8), so that tiny demo models keep every layer usable. At 1.0 the widths are exactly VGG's.
    """
    return max(MIN_CHANNELS, int(math.floor(channels * width_multiplier + 0.5)))


@keras.saving.register_keras_serializable(package="ssd")
class L2Normalization(keras.layers.Layer):
    """Scales each location's channel vector to unit L2 norm, times a learned per-channel scale.

    The layer's dtype policy is forced to float32: the sum of squares of conv4_3's activations
    overflows float16 and loses precision in bfloat16, and the heads cast the result back to
    the compute dtype on their own.
    """

    def __init__(self, scale_init: float = 20.0, epsilon: float = 1e-12, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.scale_init = float(scale_init)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.scale_init), trainable=True)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        squared_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
        return x * ops.rsqrt(ops.maximum(squared_norm, self.epsilon)) * self.scale

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(scale_init=self.scale_init, epsilon=self.epsilon)
        return config


def _conv(filters, kernel, name, *, stride=1, padding="same", dilation=1, activation="relu",
          use_bias=True):
    return Conv2D(
        filters, kernel, strides=stride, padding=padding, dilation_rate=dilation,
        activation=activation, use_bias=use_bias, name=name,
        kernel_initializer="glorot_uniform", bias_initializer="zeros")


def _ceil_max_pool(x, name):
    """2x2/s2 max pooling rounding the output size up (Caffe's ceil mode).

    An odd side gets one extra zero row/column at the bottom/right. Zero is a safe pad value
    because every pooled tensor here is a ReLU output (>= 0), and each padded 2x2 window still
    holds at least one real value, so the max is exactly that of the real values.
    """
    height, width = x.shape[1], x.shape[2]
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        x = layers.ZeroPadding2D(((0, pad_h), (0, pad_w)), name=f"{name}_pad")(x)
    return layers.MaxPooling2D(2, strides=2, padding="valid", name=name)(x)


def _backbone(images, width_multiplier, scale_init):
    """VGG16 up to fc7; returns (conv4_3 normalized, fc7)."""
    x = images
    conv4_3 = None
    for block_index, block in enumerate(_VGG_BLOCKS, start=1):
        for name, channels in block:
            x = _conv(scaled_channels(channels, width_multiplier), 3, name)(x)
        if block_index == POOLINGS_BEFORE_CONV4_3 + 1:
            conv4_3 = x
        if block_index < 5:
            x = _ceil_max_pool(x, f"pool{block_index}")
        else:
            # 3x3/s1 with 'same' pads one pixel on each side and ignores the pad in the max
            x = layers.MaxPooling2D(3, strides=1, padding="same", name="pool5")(x)
    x = _conv(scaled_channels(FC6_CHANNELS, width_multiplier), 3, "fc6", dilation=FC6_DILATION)(x)
    fc7 = _conv(scaled_channels(FC7_CHANNELS, width_multiplier), 1, "fc7")(x)
    normalized = L2Normalization(scale_init, name="conv4_3_norm")(conv4_3)
    return normalized, fc7


def _extras(x, architecture, width_multiplier, batch_norm, padding_mode="caffe"):
    sources = []
    for extra in get_architecture(architecture).extra_layers:
        padding = extra.padding
        if padding and padding_mode == "same" and extra.stride > 1:
            # the TF1 original's stride-2 convs: same output size, but an odd total pad goes
            # bottom/right only (its conv9_2 on 10x10 pads (0, 1), Caffe pads (1, 1))
            padding = (same_padding(int(x.shape[1]), extra.kernel, extra.stride),
                       same_padding(int(x.shape[2]), extra.kernel, extra.stride))
        if padding:
            x = layers.ZeroPadding2D(padding, name=f"{extra.name}_pad")(x)
        channels = scaled_channels(extra.channels, width_multiplier)
        if batch_norm:
            x = _conv(channels, extra.kernel, extra.name, stride=extra.stride, padding="valid",
                      activation=None, use_bias=False)(x)
            x = layers.BatchNormalization(name=f"{extra.name}_bn")(x)
            x = layers.ReLU(name=f"{extra.name}_relu")(x)
        else:
            x = _conv(channels, extra.kernel, extra.name, stride=extra.stride, padding="valid")(x)
        if extra.is_source:
            sources.append(x)
    return sources


def _head(feature, index, boxes, components, prefix):
    """3x3 conv predicting `components` values per box; channel a*components+k is box a, value k.

    With that layout a plain reshape lists the map's boxes row-major over (y, x), then by box.
    """
    out = _conv(boxes * components, 3, f"{prefix}_{index}", activation=None)(feature)
    height, width = feature.shape[1], feature.shape[2]
    return layers.Reshape((height * width * boxes, components),
                          name=f"{prefix}_{index}_flat")(out)


def build_vgg16_ssd(config: Config) -> keras.Model:
    """SSD300/SSD512-VGG16 of `config` (use `ssd.modeling.build.build_model`, which picks the
    backbone)."""
    model_config = config.model
    architecture = model_config.architecture
    size = model_config.input_size
    check_feature_map_sizes(config, feature_map_sizes(architecture, size))

    images = keras.Input(shape=(size, size, 3), name="image")
    conv4_3, fc7 = _backbone(images, model_config.width_multiplier,
                             model_config.l2_norm_scale_init)
    sources = [conv4_3, fc7] + _extras(fc7, architecture, model_config.width_multiplier,
                                       model_config.extra_batch_norm, model_config.extra_padding)
    produced = [int(s.shape[1]) for s in sources]
    check_feature_map_sizes(config, produced)

    num_classes = model_config.num_classes
    boxes = config.anchors.boxes_per_location
    cls_parts = [_head(s, i, boxes[i], num_classes, "cls") for i, s in enumerate(sources)]
    loc_parts = [_head(s, i, boxes[i], 4, "loc") for i, s in enumerate(sources)]
    # float32 concatenation layers also cast the mixed-precision head outputs to float32
    cls_logits = layers.Concatenate(axis=1, dtype="float32", name="cls_logits")(cls_parts)
    box_encodings = layers.Concatenate(axis=1, dtype="float32", name="box_encodings")(loc_parts)
    return keras.Model(images, (cls_logits, box_encodings), name=architecture)
