import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd.config.architectures import ARCHITECTURES, feature_map_sizes
from ssd.config.loading import load_config
from ssd.modeling.build import build_model
from ssd.modeling.vgg16_ssd import L2Normalization, scaled_channels

TINY = {"model.width_multiplier": 0.125, "model.num_classes": 4,
        "data.class_names": ["circle", "square", "triangle"]}


def conv_params(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def hand_count(architecture, num_classes, c=lambda n: n):
    """Parameters of SSD written out layer by layer; `c` maps VGG's widths to the model's."""
    total = 0
    # VGG16 conv1_1 .. conv5_3
    total += conv_params(3, 3, c(64)) + conv_params(3, c(64), c(64))
    total += conv_params(3, c(64), c(128)) + conv_params(3, c(128), c(128))
    total += conv_params(3, c(128), c(256)) + 2 * conv_params(3, c(256), c(256))
    total += conv_params(3, c(256), c(512)) + 2 * conv_params(3, c(512), c(512))
    total += 3 * conv_params(3, c(512), c(512))
    # reduced fc6 (3x3 dilated) and fc7 (1x1)
    total += conv_params(3, c(512), c(1024)) + conv_params(1, c(1024), c(1024))
    # conv4_3 norm scale
    total += c(512)
    # extra layers
    total += conv_params(1, c(1024), c(256)) + conv_params(3, c(256), c(512))  # conv8
    total += conv_params(1, c(512), c(128)) + conv_params(3, c(128), c(256))  # conv9
    total += conv_params(1, c(256), c(128)) + conv_params(3, c(128), c(256))  # conv10
    total += conv_params(1, c(256), c(128)) + conv_params(3, c(128), c(256))  # conv11
    if architecture == "ssd300":
        sources = [c(512), c(1024), c(512), c(256), c(256), c(256)]
        boxes = [4, 6, 6, 6, 4, 4]
    else:
        total += conv_params(1, c(256), c(128)) + conv_params(4, c(128), c(256))  # conv12
        sources = [c(512), c(1024), c(512), c(256), c(256), c(256), c(256)]
        boxes = [4, 6, 6, 6, 6, 4, 4]
    for cin, b in zip(sources, boxes):
        total += conv_params(3, cin, b * 4) + conv_params(3, cin, b * num_classes)
    return total


@pytest.fixture(scope="module")
def ssd300():
    return build_model(load_config("ssd300_voc0712"))


@pytest.fixture(scope="module")
def ssd512():
    return build_model(load_config("ssd512_voc0712"))


@pytest.fixture(scope="module")
def tiny():
    """Tiny-width SSD300 and its intermediate activations on one random image."""
    model = build_model(load_config("ssd300_voc0712", TINY))
    names = ["conv3_3", "pool3", "conv4_3", "conv4_3_norm", "fc7", "conv8_1", "conv8_2",
             "conv9_1", "conv9_2", "conv10_2", "conv11_2", "cls_2", "loc_0"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names]
                        + list(model.outputs))
    image = np.random.default_rng(0).normal(0, 60, (1, 300, 300, 3)).astype(np.float32)
    values = [np.asarray(v) for v in probe(image)]
    activations = dict(zip(names + ["cls_logits", "box_encodings"], values))
    return model, activations


def test_ssd300_parameter_count(ssd300):
    assert hand_count("ssd300", 21) == 26_285_486
    assert ssd300.count_params() == 26_285_486


def test_ssd512_parameter_count(ssd512):
    assert hand_count("ssd512", 21) == 27_188_676
    assert ssd512.count_params() == 27_188_676


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_table_gives_one_value_per_source_map(name):
    architecture = ARCHITECTURES[name]
    maps = feature_map_sizes(name, architecture.input_size)
    assert architecture.num_sources == len(maps) == len(architecture.steps)
    assert len(architecture.ratio_3_layers) == len(maps)
    # the anchors of each map tile the whole image: step x map side is about the input side
    for step, side in zip(architecture.steps, maps):
        assert abs(step * side - architecture.input_size) <= 0.07 * architecture.input_size


def test_too_small_input_names_the_layer_without_output():
    # 64 -> pools 32, 16, 8 (conv4_3), 4 (fc7); conv8_2 (4+2-3)//2+1 = 2, conv9_2 1, and
    # conv10_2 (3x3, no padding) cannot slide over a 1x1 map
    with pytest.raises(ValueError, match="input size 64 is too small for ssd300: conv10_2"):
        feature_map_sizes("ssd300", 64)


def test_ssd300_full_forward_shapes(ssd300):
    image = np.random.default_rng(1).normal(0, 50, (1, 300, 300, 3)).astype(np.float32)
    outputs = ssd300(image)
    assert isinstance(outputs, tuple)
    cls_logits, box_encodings = outputs
    assert cls_logits.shape == (1, 8732, 21) and box_encodings.shape == (1, 8732, 4)
    assert cls_logits.dtype == tf.float32 and box_encodings.dtype == tf.float32
    assert np.isfinite(np.asarray(cls_logits)).all()
    assert np.isfinite(np.asarray(box_encodings)).all()


def test_ssd512_shapes(ssd512):
    assert [tuple(s) for s in ssd512.output_shape] == [(None, 24_564, 21), (None, 24_564, 4)]
    model = build_model(load_config("ssd512_voc0712", TINY))
    cls_logits, box_encodings = model(np.zeros((2, 512, 512, 3), np.float32))
    assert cls_logits.shape == (2, 24_564, 4) and box_encodings.shape == (2, 24_564, 4)


def test_batch_dimension(tiny):
    model, _ = tiny
    cls_logits, box_encodings = model(np.zeros((2, 300, 300, 3), np.float32))
    assert cls_logits.shape == (2, 8732, 4) and box_encodings.shape == (2, 8732, 4)


def test_layer_names(ssd300, ssd512):
    common = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
              "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7",
              "conv8_1", "conv8_2", "conv9_1", "conv9_2", "conv10_1", "conv10_2", "conv11_1",
              "conv11_2", "conv4_3_norm"]
    for name in common + [f"{p}_{i}" for p in ("loc", "cls") for i in range(6)]:
        ssd300.get_layer(name)
    for name in common + ["conv12_1", "conv12_2"] + [f"{p}_{i}" for p in ("loc", "cls")
                                                     for i in range(7)]:
        ssd512.get_layer(name)
    with pytest.raises(ValueError):
        ssd300.get_layer("conv12_1")
    (scale,) = ssd300.get_layer("conv4_3_norm").weights
    assert scale.name == "scale" and tuple(scale.shape) == (512,)
    assert tuple(ssd300.get_layer("fc6").kernel.shape) == (3, 3, 512, 1024)
    assert ssd300.get_layer("fc6").dilation_rate == (6, 6)
    assert tuple(ssd300.get_layer("cls_1").kernel.shape) == (3, 3, 1024, 6 * 21)
    assert tuple(ssd512.get_layer("conv12_2").kernel.shape) == (4, 4, 128, 256)


def test_initialization(ssd300):
    np.testing.assert_array_equal(ssd300.get_layer("conv4_3_norm").weights[0].numpy(),
                                  np.full(512, 20.0, np.float32))
    for name in ("conv1_1", "fc7", "conv8_2", "cls_0", "loc_5"):
        layer = ssd300.get_layer(name)
        np.testing.assert_array_equal(layer.bias.numpy(), 0.0)
        kh, kw, cin, cout = layer.kernel.shape
        limit = np.sqrt(6.0 / (kh * kw * cin + kh * kw * cout))  # Glorot uniform
        kernel = layer.kernel.numpy()
        assert np.abs(kernel).max() <= np.float32(limit) * (1 + 1e-6)  # the float32 limit may round up
        assert np.abs(kernel).max() > 0.9 * limit


def test_feature_map_sizes():
    assert feature_map_sizes("ssd300", 300) == [38, 19, 10, 5, 3, 1]
    assert feature_map_sizes("ssd512", 512) == [64, 32, 16, 8, 4, 2, 1]


def test_network_map_sizes(tiny, ssd512):
    model, act = tiny
    assert act["conv3_3"].shape[1:3] == (75, 75)
    assert act["pool3"].shape[1:3] == (38, 38)  # ceil(75 / 2)
    sizes = [act[n].shape[1] for n in ("conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2",
                                       "conv11_2")]
    assert sizes == [38, 19, 10, 5, 3, 1]
    sources_512 = ["conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2", "conv12_2"]
    assert [ssd512.get_layer(n).output.shape[1] for n in sources_512] == [64, 32, 16, 8, 4, 2, 1]


def test_feature_map_mismatch_is_refused():
    config = load_config("ssd300_voc0712", TINY)
    config.anchors.feature_map_sizes = [38, 19, 10, 5, 3, 2]
    with pytest.raises(ValueError, match="anchors.feature_map_sizes"):
        build_model(config)


def numpy_ceil_max_pool(x):
    h, w = x.shape[1], x.shape[2]
    oh, ow = -(-h // 2), -(-w // 2)
    padded = np.full((x.shape[0], 2 * oh, 2 * ow, x.shape[3]), -np.inf, x.dtype)
    padded[:, :h, :w] = x
    return padded.reshape(x.shape[0], oh, 2, ow, 2, x.shape[3]).max(axis=(2, 4))


def test_ceil_pooling_values(tiny):
    _, act = tiny
    np.testing.assert_array_equal(act["pool3"], numpy_ceil_max_pool(act["conv3_3"]))


def numpy_conv(x, kernel, bias, stride, pad):
    """Caffe convolution: `pad` zeros on every side, floor rounding of the output size."""
    x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = kernel.shape[0]
    oh = (x.shape[1] - k) // stride + 1
    ow = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out + bias


@pytest.mark.parametrize("source,target,stride,pad", [
    ("conv8_1", "conv8_2", 2, 1),   # 19 -> 10
    ("conv9_1", "conv9_2", 2, 1),   # 10 -> 5, where 'same' would pad bottom/right only
])
def test_stride2_conv_pads_symmetrically(tiny, source, target, stride, pad):
    model, act = tiny
    layer = model.get_layer(target)
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    expected = np.maximum(numpy_conv(act[source], kernel, bias, stride, pad), 0)
    np.testing.assert_allclose(act[target], expected, rtol=1e-4, atol=1e-4)
    same = tf.nn.relu(tf.nn.conv2d(act[source], kernel, stride, "SAME") + bias).numpy()
    if act[source].shape[1] % 2 == 0:  # 'same' differs from Caffe on even inputs
        assert not np.allclose(same, expected, rtol=1e-3, atol=1e-3)


def test_conv12_2_pads_symmetrically():
    model = build_model(load_config("ssd512_voc0712", TINY))
    probe = keras.Model(model.input, [model.get_layer("conv12_1").output,
                                      model.get_layer("conv12_2").output])
    image = np.random.default_rng(2).normal(0, 60, (1, 512, 512, 3)).astype(np.float32)
    before, after = [np.asarray(v) for v in probe(image)]
    layer = model.get_layer("conv12_2")
    expected = np.maximum(numpy_conv(before, layer.kernel.numpy(), layer.bias.numpy(), 1, 1), 0)
    assert after.shape[1:3] == (1, 1)
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-4)


def test_l2_normalization_in_model(tiny):
    _, act = tiny
    x = act["conv4_3"].astype(np.float64)
    expected = 20.0 * x / np.sqrt(np.maximum((x ** 2).sum(-1, keepdims=True), 1e-12))
    np.testing.assert_allclose(act["conv4_3_norm"], expected, rtol=1e-5, atol=1e-5)


def test_l2_normalization_learned_scale():
    layer = L2Normalization(scale_init=20.0)
    x = np.random.default_rng(3).normal(0, 5, (2, 4, 3, 7)).astype(np.float32)
    layer(x)
    scale = np.random.default_rng(4).uniform(1, 30, 7).astype(np.float32)
    layer.scale.assign(scale)
    x64 = x.astype(np.float64)
    expected = x64 / np.linalg.norm(x64, axis=-1, keepdims=True) * scale
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5)


def test_l2_norm_scale_init_from_config():
    model = build_model(load_config("ssd300_voc0712", {**TINY, "model.l2_norm_scale_init": 10.0}))
    scale = model.get_layer("conv4_3_norm").weights[0].numpy()
    assert scale.shape == (64,) and np.all(scale == 10.0)


def test_flattened_order_matches_head_channels(tiny):
    model, act = tiny
    num_classes, boxes, size = 4, 6, 10  # cls_2 sits on conv8_2: 10x10, 6 boxes
    offset = 38 * 38 * 4 + 19 * 19 * 6
    raw = act["cls_2"]
    assert raw.shape == (1, size, size, boxes * num_classes)
    got = act["cls_logits"]
    for y, x, a, k in [(0, 0, 0, 0), (0, 1, 0, 0), (1, 0, 0, 0), (3, 7, 5, 2), (9, 9, 5, 3)]:
        assert got[0, offset + (y * size + x) * boxes + a, k] == raw[0, y, x, a * num_classes + k]
    raw_loc = act["loc_0"]  # conv4_3: 38x38, 4 boxes, first in the concatenation
    for y, x, a, k in [(0, 0, 1, 2), (37, 0, 3, 1), (5, 11, 2, 3)]:
        assert act["box_encodings"][0, (y * 38 + x) * 4 + a, k] == raw_loc[0, y, x, a * 4 + k]


def test_head_bias_pattern_lands_in_place():
    model = build_model(load_config("ssd300_voc0712", TINY))
    num_classes, boxes = 4, 6
    head = model.get_layer("cls_3")  # conv9_2: 5x5, 6 boxes
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    head.bias.assign(np.arange(boxes * num_classes, dtype=np.float32) + 100.0)
    loc = model.get_layer("loc_3")
    loc.kernel.assign(np.zeros(loc.kernel.shape, np.float32))
    loc.bias.assign(np.arange(boxes * 4, dtype=np.float32) - 50.0)
    outputs = model(np.ones((1, 300, 300, 3), np.float32))
    cls_logits, box_encodings = [np.asarray(v) for v in outputs]
    start = 38 * 38 * 4 + 19 * 19 * 6 + 10 * 10 * 6
    block = cls_logits[0, start:start + 5 * 5 * boxes].reshape(25, boxes, num_classes)
    expected = 100.0 + 4 * np.arange(boxes)[:, None] + np.arange(num_classes)[None, :]
    np.testing.assert_array_equal(block, np.broadcast_to(expected, block.shape))
    loc_block = box_encodings[0, start:start + 5 * 5 * boxes].reshape(25, boxes, 4)
    np.testing.assert_array_equal(loc_block, np.broadcast_to(
        np.arange(boxes * 4).reshape(boxes, 4) - 50.0, loc_block.shape))
    # neighbours are other heads' outputs, not this pattern
    assert not np.isin(cls_logits[0, start - 1], expected).all()
    assert not np.isin(cls_logits[0, start + 150], expected).all()


def test_scaled_channels_rule():
    assert scaled_channels(512, 1.0) == 512
    assert scaled_channels(512, 0.5) == 256
    assert scaled_channels(64, 0.125) == 8
    assert scaled_channels(64, 0.01) == 8  # floor of 8 channels
    assert scaled_channels(100, 0.125) == 13  # 12.5 rounds half up
    assert scaled_channels(64, 0.3) == 19


def test_width_multiplier_half():
    model = build_model(load_config("ssd300_voc0712", {"model.width_multiplier": 0.5}))
    assert tuple(model.get_layer("conv1_1").kernel.shape) == (3, 3, 3, 32)
    assert tuple(model.get_layer("conv4_3").kernel.shape) == (3, 3, 256, 256)
    assert tuple(model.get_layer("fc6").kernel.shape) == (3, 3, 256, 512)
    assert tuple(model.get_layer("fc7").kernel.shape) == (1, 1, 512, 512)
    assert tuple(model.get_layer("conv8_2").kernel.shape) == (3, 3, 128, 256)
    assert tuple(model.get_layer("conv4_3_norm").weights[0].shape) == (256,)
    # head outputs never scale
    assert tuple(model.get_layer("loc_0").kernel.shape) == (3, 3, 256, 16)
    assert tuple(model.get_layer("cls_1").kernel.shape) == (3, 3, 512, 6 * 21)
    count = model.count_params()
    assert count == hand_count("ssd300", 21, c=lambda n: n // 2)
    assert count < 26_285_486 / 3


def test_extra_batch_norm():
    model = build_model(load_config("ssd300_voc0712", {**TINY, "model.extra_batch_norm": True}))
    for name in ("conv8_1", "conv8_2", "conv11_2"):
        assert model.get_layer(name).bias is None
        assert isinstance(model.get_layer(f"{name}_bn"), keras.layers.BatchNormalization)
    assert model.get_layer("fc7").bias is not None
    bn_layers = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert len(bn_layers) == 8
    plain = build_model(load_config("ssd300_voc0712", TINY))
    extras = [32, 64, 16, 32, 16, 32, 16, 32]  # conv8_1 .. conv11_2 at width 0.125
    # each conv loses its bias and its batch norm adds gamma, beta, moving mean and variance
    assert model.count_params() == plain.count_params() - sum(extras) + 4 * sum(extras)
    cls_logits, _ = model(np.zeros((1, 300, 300, 3), np.float32), training=True)
    assert cls_logits.shape == (1, 8732, 4)


@pytest.mark.parametrize("policy,tolerance", [("mixed_float16", 0.02), ("mixed_bfloat16", 0.05)])
def test_mixed_precision_outputs_float32(policy, tolerance):
    reference = build_model(load_config("ssd300_voc0712", TINY))
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(load_config("ssd300_voc0712", TINY))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("conv1_1").compute_dtype == policy.split("_")[1]
    assert model.get_layer("conv1_1").kernel.dtype == "float32"
    assert model.get_layer("conv4_3_norm").compute_dtype == "float32"
    model.set_weights(reference.get_weights())
    image = np.random.default_rng(5).normal(0, 50, (1, 300, 300, 3)).astype(np.float32)
    cls_logits, box_encodings = model(image)
    assert cls_logits.dtype == tf.float32 and box_encodings.dtype == tf.float32
    expected_cls, expected_box = reference(image)
    for got, want in ((cls_logits, expected_cls), (box_encodings, expected_box)):
        got, want = np.asarray(got), np.asarray(want)
        assert np.isfinite(got).all()
        assert np.abs(got - want).max() < tolerance * np.abs(want).max()
