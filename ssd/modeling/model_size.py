"""Multiply-adds of a Keras model, counted the way the MobileNet papers count them.

Only the layers that multiply activations by weights count: Conv2D (dilated ones too: dilation
spreads the taps, it does not add any), DepthwiseConv2D, SeparableConv2D and Dense. Biases, batch
normalization, activations, pooling, padding, additions and the L2 normalization of SSD's conv4_3
are left out, as in the papers' "mult-adds" figures. Counts are per image (batch of one).

Each counted layer must have been called exactly once in the model's graph (true of functional
models such as SSD's): its output shape is read from that call.
"""

from __future__ import annotations

import math

import keras


def _spatial_positions(output_shape) -> int:
    """Product of the output's dimensions between batch and channels."""
    return math.prod(int(d) for d in output_shape[1:-1])


def _layer_multiply_adds(layer) -> int | None:
    """Multiply-adds of one layer's call, or None for layers that do not count."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        out = layer.output.shape
        return _spatial_positions(out) * int(out[-1]) * kh * kw
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw = layer.kernel_size
        out = layer.output.shape
        in_channels = int(layer.input.shape[-1])
        depthwise_channels = in_channels * layer.depth_multiplier
        return _spatial_positions(out) * depthwise_channels * (kh * kw + int(out[-1]))
    if isinstance(layer, keras.layers.Conv2D):
        if layer.data_format != "channels_last":
            raise ValueError(f"layer {layer.name!r}: only channels_last convolutions are counted")
        kh, kw = layer.kernel_size
        out = layer.output.shape
        in_channels = int(layer.input.shape[-1])
        return _spatial_positions(out) * int(out[-1]) * kh * kw * in_channels // layer.groups
    if isinstance(layer, keras.layers.Dense):
        out = layer.output.shape
        return _spatial_positions(out) * int(layer.input.shape[-1]) * int(out[-1])
    return None


def multiply_adds_by_layer(model: keras.Model) -> dict[str, int]:
    """{layer name: multiply-adds} for every counted layer, nested models included (prefixed)."""
    counts = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            for name, count in multiply_adds_by_layer(layer).items():
                counts[f"{layer.name}/{name}"] = count
            continue
        count = _layer_multiply_adds(layer)
        if count is not None:
            counts[layer.name] = count
    return counts


def count_multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one forward pass of `model` on one image."""
    return sum(multiply_adds_by_layer(model).values())
