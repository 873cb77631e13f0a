"""Batch norm folded into convolutions: same outputs, no batch norm left, shared convolutions kept."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd.inference.batch_norm_folding import FoldedBatchNorm, fold_batch_norm, foldable_pairs
from ssd.config.loading import load_config
from ssd.inference.detector import build_inference_model


def _randomize_norms(model, seed=0):
    """Statistics far from the initial 0 / 1, so a wrong fold shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            values = {"gamma": rng.uniform(0.5, 1.5, n), "beta": rng.normal(0, 0.3, n),
                      "moving_mean": rng.normal(0, 0.3, n), "moving_variance": rng.uniform(0.3, 3.0, n)}
            layer.set_weights([values[w.name] for w in layer.weights])


def _small_model():
    inputs = keras.Input([9, 9, 3])
    a = keras.layers.Conv2D(4, 3, use_bias=True, name="conv_bias")(inputs)
    a = keras.layers.BatchNormalization(name="bn_a", epsilon=1e-3)(a)
    b = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="depthwise")(a)
    b = keras.layers.BatchNormalization(name="bn_b", center=False, scale=False)(b)
    shared = keras.layers.Conv2D(8, 1, use_bias=False, name="shared")(b)
    c = keras.layers.BatchNormalization(name="bn_c")(shared)  # the conv also feeds `d`: not folded
    d = keras.layers.ReLU(6.0)(shared)
    return keras.Model(inputs, [keras.layers.Add()([c, d]), b])


def test_folds_conv_and_depthwise_and_keeps_shared_convolutions():
    tf.keras.utils.set_random_seed(0)
    model = _small_model()
    _randomize_norms(model)
    assert foldable_pairs(model) == {"conv_bias": "bn_a", "depthwise": "bn_b"}
    folded = fold_batch_norm(model)
    assert [type(folded.get_layer(n)) for n in ("bn_a", "bn_b", "bn_c")] == [
        FoldedBatchNorm, FoldedBatchNorm, keras.layers.BatchNormalization]
    assert folded.get_layer("depthwise").use_bias and not folded.get_layer("shared").use_bias
    x = np.random.default_rng(1).normal(size=(2, 9, 9, 3)).astype(np.float32)
    for got, want in zip(folded(x, training=False), model(x, training=False)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_folded_kernel_and_bias_by_hand():
    """One output channel worked out: W * g / sqrt(v + eps), (b - m) * g / sqrt(v + eps) + beta."""
    tf.keras.utils.set_random_seed(0)
    model = _small_model()
    _randomize_norms(model)
    conv, norm = model.get_layer("conv_bias"), model.get_layer("bn_a")
    folded = fold_batch_norm(model).get_layer("conv_bias")
    kernel, bias = conv.get_weights()
    gamma, beta, mean, variance = (norm.get_weights()[i] for i in range(4))
    for c in range(4):
        s = gamma[c] / np.sqrt(variance[c] + 1e-3)
        np.testing.assert_allclose(folded.kernel.numpy()[..., c], kernel[..., c] * s, rtol=1e-6)
        np.testing.assert_allclose(folded.bias.numpy()[c], (bias[c] - mean[c]) * s + beta[c], rtol=1e-5,
                                   atol=1e-7)


def test_copy_does_not_follow_the_original():
    model = _small_model()
    folded = fold_batch_norm(model)
    before = folded.get_layer("conv_bias").kernel.numpy().copy()
    model.get_layer("conv_bias").kernel.assign(tf.zeros_like(model.get_layer("conv_bias").kernel))
    np.testing.assert_array_equal(folded.get_layer("conv_bias").kernel.numpy(), before)


def test_model_without_batch_norm_is_returned_as_is():
    config = load_config("ssd300_voc0712", {"model.width_multiplier": 0.125})
    model = build_inference_model(config)
    assert fold_batch_norm(model) is model


@pytest.mark.parametrize("recipe", ["ssdlite320_mobilenetv2_coco", "ssd300_shapes_cpu"])
def test_ssd_networks_fold_every_batch_norm_and_keep_their_outputs(recipe):
    config = load_config(recipe)
    tf.keras.utils.set_random_seed(2)
    model = build_inference_model(config)
    _randomize_norms(model)
    norms = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and sorted(foldable_pairs(model).values()) == sorted(norms)
    folded = fold_batch_norm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    # each folded norm takes its 4 vectors away and brings a bias where its convolution had none
    pairs = foldable_pairs(model)
    assert model.count_params() - folded.count_params() == sum(
        (4 - (not model.get_layer(conv).use_bias)) * model.get_layer(norm).moving_mean.shape[0]
        for conv, norm in pairs.items())
    size = config.model.input_size
    x = tf.random.uniform([2, size, size, 3], -1.0, 1.0, seed=3)
    for got, want in zip(folded(x, training=False), model(x, training=False)):
        scale = np.abs(want.numpy()).max()
        np.testing.assert_allclose(got.numpy() / scale, want.numpy() / scale, atol=1e-5)


@pytest.mark.slow  # exports a SavedModel
def test_saved_model_holds_the_folded_network(tmp_path):
    from ssd.inference.saved_model import SIGNATURE_IMAGES, export_saved_model
    config = load_config("ssdlite320_shapes_cpu")
    model = build_inference_model(config)
    _randomize_norms(model)
    export_dir = export_saved_model(model, config, tmp_path / "exported")
    saved = [name for name, _ in tf.train.list_variables(str(tmp_path / "exported" / "variables" / "variables"))]
    assert any("kernel" in name for name in saved)
    assert not any("moving_mean" in name or "moving_variance" in name for name in saved)
    size = config.model.input_size
    out = tf.saved_model.load(export_dir).signatures[SIGNATURE_IMAGES](
        images=tf.zeros([1, size, size, 3], tf.uint8), score_threshold=tf.constant(0.0))
    assert out["detection_boxes"].shape == (1, config.eval.max_detections, 4)
