import dataclasses
import math

import h5py
import keras
import keras.src.applications.mobilenet_v2 as keras_mobilenet_v2
import keras.src.utils.file_utils as keras_file_utils
import numpy as np
import pytest
import tensorflow as tf
from keras.src.legacy.saving import legacy_h5_format

from ssd.modeling.pretrained import mobilenet_v2 as pretrained_mobilenet_v2
from ssd.modeling.model_size import count_multiply_adds, multiply_adds_by_layer
from ssd.modeling.pretrained import PretrainedError
from ssd.modeling.pretrained.mobilenet_v2 import initialize_mobilenet_v2_backbone
from ssd.modeling.ssdlite import build_ssdlite_mobilenet_v2, feature_map_sizes

# MobileNetV2 (paper Table 2): expansion t, channels c, repeats n, first stride s
TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
         (6, 160, 3, 2), (6, 320, 1, 1)]
MAPS_320 = [20, 10, 5, 3, 2, 1]
SOURCE_CHANNELS = [576, 1280, 512, 256, 256, 128]
EXTRAS = [512, 256, 256, 128]
COCO_BOXES = [6, 6, 6, 6, 6, 6]
TF_OD_API_BOXES = [3, 6, 6, 6, 6, 6]


def bn(c):
    return 4 * c  # gamma, beta, moving mean, moving variance


def conv(k, cin, cout, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


def mobilenet_v2_params():
    """MobileNetV2 1.0 without classifier, layer by layer: batch norm after every convolution."""
    total = conv(3, 3, 32) + bn(32)
    cin = 32
    for t, c, n, _ in TABLE:
        for _ in range(n):
            hidden = cin * t
            if t != 1:
                total += conv(1, cin, hidden) + bn(hidden)
            total += 9 * hidden + bn(hidden)  # depthwise 3x3
            total += conv(1, hidden, c) + bn(c)  # linear bottleneck
            cin = c
    return total + conv(1, 320, 1280) + bn(1280)


def ssdlite_params(num_classes, boxes):
    total = mobilenet_v2_params()
    cin = 1280
    for c in EXTRAS:
        half = c // 2
        total += conv(1, cin, half) + bn(half) + 9 * half + bn(half) + conv(1, half, c) + bn(c)
        cin = c
    for cin, b in zip(SOURCE_CHANNELS, boxes):
        for outputs in (4 * b, num_classes * b):
            total += 9 * cin + bn(cin) + conv(1, cin, outputs, bias=True)
    return total


def mobilenet_v2_macs(size, classifier):
    """Multiply-adds of MobileNetV2 1.0 at size x size: (output pixels) x (kernel taps x inputs)."""
    size = math.ceil(size / 2)
    total = size * size * 32 * 27
    cin = 32
    for t, c, n, s in TABLE:
        for i in range(n):
            hidden = cin * t
            if t != 1:
                total += size * size * cin * hidden
            size = math.ceil(size / (s if i == 0 else 1))
            total += size * size * hidden * 9 + size * size * hidden * c
            cin = c
    total += size * size * 320 * 1280
    return total + (1280 * 1000 if classifier else 0)


def ssdlite_macs_320(num_classes, boxes):
    total = mobilenet_v2_macs(320, classifier=False)
    cin, size = 1280, 10
    for c in EXTRAS:
        half, out = c // 2, math.ceil(size / 2)
        total += size * size * cin * half + out * out * half * 9 + out * out * half * c
        cin, size = c, out
    for m, cin, b in zip(MAPS_320, SOURCE_CHANNELS, boxes):
        for outputs in (4 * b, num_classes * b):
            total += m * m * cin * 9 + m * m * cin * outputs
    return total


@pytest.fixture(scope="module")
def coco():
    return build_ssdlite_mobilenet_v2(81, COCO_BOXES, input_size=320)


@pytest.fixture(scope="module")
def voc():
    return build_ssdlite_mobilenet_v2(21, COCO_BOXES, input_size=320)


def test_mobilenet_v2_hand_count_is_keras_and_the_known_figure():
    assert mobilenet_v2_params() == 2_257_984
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None,
                                              input_shape=(96, 96, 3))
    assert backbone.count_params() == mobilenet_v2_params()


def test_parameter_counts(coco, voc):
    assert coco.count_params() == ssdlite_params(81, COCO_BOXES)
    assert voc.count_params() == ssdlite_params(21, COCO_BOXES)
    tf_od_api = build_ssdlite_mobilenet_v2(81, TF_OD_API_BOXES, input_size=320)
    assert tf_od_api.count_params() == ssdlite_params(81, TF_OD_API_BOXES)
    # the MobileNetV2 paper's 4.3M, up to head details (see bench/model_size.py)
    assert abs(tf_od_api.count_params() - 4.3e6) < 0.05 * 4.3e6


def test_multiply_adds_of_a_tiny_network():
    inputs = keras.Input((9, 9, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 5x5x4
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2D(6, 1, use_bias=False)(x)
    x = keras.layers.Conv2D(2, 3, padding="valid", dilation_rate=2)(x)  # 1x1x2
    x = keras.layers.SeparableConv2D(5, 1, depth_multiplier=3)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(7)(x)
    model = keras.Model(inputs, outputs)
    expected = [25 * 4 * 27, 25 * 4 * 9, 25 * 6 * 4, 1 * 2 * 9 * 6, 1 * 6 * (1 + 5), 5 * 7]
    assert sorted(multiply_adds_by_layer(model).values()) == sorted(expected)
    assert count_multiply_adds(model) == sum(expected)
    wrapper = keras.Sequential([keras.Input((9, 9, 3)), model])  # nested models are walked
    assert count_multiply_adds(wrapper) == sum(expected)


def test_multiply_adds_of_mobilenet_v2_classifier():
    network = keras.applications.MobileNetV2(include_top=True, weights=None)
    macs = count_multiply_adds(network)
    assert macs == mobilenet_v2_macs(224, classifier=True)
    assert abs(macs - 300e6) < 0.02 * 300e6  # the paper's 300M


def test_multiply_adds_of_ssdlite(coco):
    assert count_multiply_adds(coco) == ssdlite_macs_320(81, COCO_BOXES)


def test_feature_map_sizes(coco):
    assert feature_map_sizes(320) == MAPS_320
    assert feature_map_sizes(300) == [19, 10, 5, 3, 2, 1]  # the TF OD API's 300x300 model
    sources = ["block_13_expand_relu", "out_relu"] + [f"extra_{i}_pw_relu" for i in range(1, 5)]
    assert [coco.get_layer(n).output.shape[1] for n in sources] == MAPS_320
    assert [coco.get_layer(n).output.shape[-1] for n in sources] == SOURCE_CHANNELS
    with pytest.raises(ValueError, match="at least 32"):
        feature_map_sizes(16)


def test_outputs(coco):
    anchors = sum(m * m * b for m, b in zip(MAPS_320, COCO_BOXES))
    assert anchors == 3234
    image = np.random.default_rng(0).uniform(-1, 1, (2, 320, 320, 3)).astype(np.float32)
    cls_logits, box_encodings = coco(image)
    assert cls_logits.shape == (2, anchors, 81) and box_encodings.shape == (2, anchors, 4)
    assert cls_logits.dtype == tf.float32 and box_encodings.dtype == tf.float32
    assert np.isfinite(np.asarray(cls_logits)).all()


def test_layer_names_and_shapes(coco):
    assert tuple(coco.get_layer("extra_1_1x1").kernel.shape) == (1, 1, 1280, 256)
    assert tuple(coco.get_layer("extra_1_dw").kernel.shape) == (3, 3, 256, 1)
    assert coco.get_layer("extra_1_dw").strides == (2, 2)
    assert tuple(coco.get_layer("extra_4_pw").kernel.shape) == (1, 1, 64, 128)
    assert tuple(coco.get_layer("box_head_0_dw").kernel.shape) == (3, 3, 576, 1)
    assert tuple(coco.get_layer("cls_head_1_pw").kernel.shape) == (1, 1, 1280, 6 * 81)
    assert coco.get_layer("box_head_5_pw").bias is not None
    for name in ("extra_2_1x1", "extra_2_dw", "extra_2_pw", "cls_head_3_dw"):
        assert coco.get_layer(name).bias is None  # batch norm follows
        assert isinstance(coco.get_layer(f"{name}_bn"), keras.layers.BatchNormalization)
        assert coco.get_layer(f"{name}_relu").max_value == 6.0
    with pytest.raises(ValueError):
        coco.get_layer("box_head_0_pw_bn")  # no batch norm after the predictions


def test_head_outputs_land_in_anchor_order(voc):
    num_classes, boxes = 21, 6
    head = voc.get_layer("cls_head_2_pw")  # extra_1: 5x5, 6 boxes
    saved = [w.numpy() for w in head.weights]
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    head.bias.assign(np.arange(boxes * num_classes, dtype=np.float32) + 100.0)
    try:
        cls_logits, _ = voc(np.zeros((1, 320, 320, 3), np.float32))
    finally:
        head.set_weights(saved)
    start = 20 * 20 * 6 + 10 * 10 * 6
    block = np.asarray(cls_logits)[0, start:start + 25 * boxes].reshape(25, boxes, num_classes)
    expected = 100.0 + num_classes * np.arange(boxes)[:, None] + np.arange(num_classes)[None, :]
    np.testing.assert_array_equal(block, np.broadcast_to(expected, block.shape))
    assert not np.isin(np.asarray(cls_logits)[0, start - 1], expected).all()


def numpy_depthwise(x, kernel, stride, pad_before, pad_after):
    x = np.pad(x.astype(np.float64), ((0, 0), (pad_before, pad_after), (pad_before, pad_after),
                                      (0, 0)))
    out_size = (x.shape[1] - 3) // stride + 1
    out = np.zeros((x.shape[0], out_size, out_size, x.shape[3]))
    for i in range(out_size):
        for j in range(out_size):
            patch = x[:, i * stride:i * stride + 3, j * stride:j * stride + 3, :]
            out[:, i, j] = np.einsum("bhwc,hwc->bc", patch, kernel[..., 0])
    return out


def test_stride2_same_padding(voc):
    """10 -> 5 and 2 -> 1 pad the bottom/right only; 5 -> 3 and 3 -> 2 one pixel on each side."""
    names = [f"extra_{i}_{part}" for i in range(1, 5) for part in ("1x1_relu", "dw")]
    probe = keras.Model(voc.input, [voc.get_layer(n).output for n in names])
    image = np.random.default_rng(1).uniform(-1, 1, (1, 320, 320, 3)).astype(np.float32)
    act = dict(zip(names, [np.asarray(v) for v in probe(image)]))
    pads = {1: (0, 1), 2: (1, 1), 3: (1, 1), 4: (0, 1)}
    for index, (before, after) in pads.items():
        x, got = act[f"extra_{index}_1x1_relu"], act[f"extra_{index}_dw"]
        kernel = voc.get_layer(f"extra_{index}_dw").kernel.numpy()
        expected = numpy_depthwise(x, kernel, 2, before, after)
        # activations of the untrained network are tiny (batch norm at its initial statistics
        # passes them through): compare relative to their scale
        scale = np.abs(expected).max()
        assert got.shape == expected.shape and scale > 0
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)
        if before != after:  # symmetric padding would give other values
            other = numpy_depthwise(x, kernel, 2, 1, 1)
            assert other.shape == expected.shape
            assert not np.allclose(other, expected, rtol=1e-3, atol=1e-3 * scale)


def test_mixed_bfloat16_outputs_float32(voc):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_ssdlite_mobilenet_v2(21, COCO_BOXES, input_size=320)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("block_13_expand").compute_dtype == "bfloat16"
    assert model.get_layer("cls_head_0_pw").compute_dtype == "bfloat16"
    assert model.get_layer("extra_1_pw").kernel.dtype == "float32"
    model.set_weights(voc.get_weights())
    image = np.random.default_rng(2).uniform(-1, 1, (1, 320, 320, 3)).astype(np.float32)
    outputs = model(image)
    for got, want in zip(outputs, voc(image)):
        assert got.dtype == tf.float32
        got, want = np.asarray(got), np.asarray(want)
        assert np.isfinite(got).all()
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_bad_arguments():
    with pytest.raises(ValueError, match="boxes_per_location has 5 values"):
        build_ssdlite_mobilenet_v2(21, [6] * 5)
    with pytest.raises(ValueError, match="at least 32"):
        build_ssdlite_mobilenet_v2(21, COCO_BOXES, input_size=24)


# --- ImageNet initialization -------------------------------------------------------------------

UNREACHABLE_BASE = "http://127.0.0.1:9/"  # discard port
EXTRA_AND_HEADS = ["extra_1_1x1", "extra_4_pw_bn", "cls_head_0_dw", "box_head_5_pw"]


def randomized(network, seed):
    """`network` with every tensor random, batch-norm statistics included (they are copied too)."""
    rng = np.random.default_rng(seed)
    network.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                         for w in network.get_weights()])
    return network


@pytest.fixture(scope="module")
def stand_in():
    """Random no-top MobileNetV2 1.0, as Keras' ImageNet file holds it."""
    return randomized(keras.applications.MobileNetV2(include_top=False, weights=None,
                                                     input_shape=(224, 224, 3)), seed=3)


def write_keras_download(network, path):
    """A weights-only legacy HDF5 file, the format of Keras' ImageNet downloads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, network)
    return path


def weights_of(model, names):
    return {n: [w.numpy().copy() for w in model.get_layer(n).weights] for n in names}


def check_unchanged(model, before):
    for name, values in before.items():
        for got, want in zip(model.get_layer(name).weights, values):
            np.testing.assert_array_equal(got.numpy(), want)


def check_backbone_is(model, network):
    checked = 0
    for layer in network.layers:
        if layer.weights and layer.name != "predictions":
            for got, want in zip(model.get_layer(layer.name).weights, layer.weights):
                np.testing.assert_array_equal(got.numpy(), want.numpy())
            checked += 1
    assert checked == 104  # 52 convolutions, 52 batch norms


def test_imagenet_file_is_the_one_keras_requests(voc, keras_home, monkeypatch):
    requests = []

    def fake_get_file(fname, origin, **kwargs):
        requests.append((fname, origin, kwargs.get("cache_subdir")))
        raise Exception(f"URL fetch failure on {origin}: None -- offline")

    monkeypatch.setattr(keras_file_utils, "get_file", fake_get_file)
    with pytest.raises(PretrainedError, match="could not download"):
        initialize_mobilenet_v2_backbone(voc, "imagenet")
    file = pretrained_mobilenet_v2.keras_imagenet_file(1.0, 320)
    assert requests == [(file.file_name, file.url, "models")]
    assert file.file_name == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert pretrained_mobilenet_v2.keras_imagenet_file(0.35, 160).file_name.endswith(
        "_0.35_160_no_top.h5")


def test_imagenet_offline_names_url_cache_and_alternatives(voc, keras_home, monkeypatch):
    monkeypatch.setattr(keras_mobilenet_v2, "BASE_WEIGHT_PATH", UNREACHABLE_BASE)
    before = weights_of(voc, ["Conv1", "block_13_expand", "extra_1_1x1"])
    with pytest.raises(PretrainedError) as raised:
        initialize_mobilenet_v2_backbone(voc, "imagenet")
    message = str(raised.value)
    file = pretrained_mobilenet_v2.keras_imagenet_file(1.0, 320)
    cached = keras_home / "models" / file.file_name
    assert message.startswith("pretrained source 'imagenet': could not download Keras' "
                              "MobileNetV2 ImageNet weights")
    assert str(cached) in message and file.url in message and "127.0.0.1:9" in message
    assert "--pretrained=PATH" in message and "Keras MobileNetV2 weights file" in message
    assert "--pretrained=none" in message
    assert not cached.exists()
    check_unchanged(voc, before)


def test_imagenet_reads_the_cached_file_without_network(voc, stand_in, keras_home, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(keras_file_utils, "get_file", no_network)
    monkeypatch.setattr(keras_file_utils, "urlretrieve", no_network)
    file = pretrained_mobilenet_v2.keras_imagenet_file(1.0, 320)
    write_keras_download(stand_in, keras_home / "models" / file.file_name)
    before = weights_of(voc, EXTRA_AND_HEADS)
    report = initialize_mobilenet_v2_backbone(voc, "imagenet")
    check_backbone_is(voc, stand_in)
    check_unchanged(voc, before)
    assert report["source"] == "imagenet" and report["format"] == "keras"
    assert report["copied"][:2] == ["Conv1", "bn_Conv1"] and "Conv_1_bn" in report["copied"]
    assert set(EXTRA_AND_HEADS) <= set(report["left_initialized"])
    assert not set(report["copied"]) & set(report["left_initialized"])


def test_broken_cached_file_names_it_and_the_remedy(voc, keras_home):
    cached = keras_home / "models" / pretrained_mobilenet_v2.keras_imagenet_file(1.0, 320).file_name
    cached.parent.mkdir()
    cached.write_bytes(b"truncated download")
    with pytest.raises(PretrainedError, match="delete it") as raised:
        initialize_mobilenet_v2_backbone(voc, "imagenet")
    assert str(cached) in str(raised.value)


def test_keras_weights_file_with_classifier(voc, tmp_path):
    network = randomized(keras.applications.MobileNetV2(include_top=True, weights=None), seed=4)
    path = tmp_path / "mobilenet_v2.weights.h5"
    network.save_weights(str(path))
    report = initialize_mobilenet_v2_backbone(voc, str(path))
    check_backbone_is(voc, network)
    assert report["source"] == str(path) and "predictions" not in report["copied"]


def test_width_multiplier_mismatch_assigns_nothing(voc, tmp_path):
    narrow = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.5,
                                            input_shape=(96, 96, 3))
    path = write_keras_download(narrow, tmp_path / "narrow.h5")
    before = weights_of(voc, ["Conv1", "block_16_project"])
    with pytest.raises(PretrainedError, match="narrow.h5") as raised:
        initialize_mobilenet_v2_backbone(voc, str(path))  # read as width 1.0: does not load
    assert "width multiplier 1.0" in str(raised.value)
    with pytest.raises(PretrainedError, match=r"Conv1 .* has shape \(3, 3, 3, 16\)"):
        initialize_mobilenet_v2_backbone(voc, str(path), width_multiplier=0.5)
    check_unchanged(voc, before)
    with pytest.raises(PretrainedError, match="0.35, 0.5, 0.75, 1.0, 1.3, 1.4 only"):
        initialize_mobilenet_v2_backbone(voc, "imagenet", width_multiplier=0.6)


def test_none_and_unknown_sources(voc, tmp_path):
    before = weights_of(voc, ["Conv1", "cls_head_0_pw"])
    report = initialize_mobilenet_v2_backbone(voc, "none")
    check_unchanged(voc, before)
    assert report["copied"] == [] and "Conv1" in report["left_initialized"]
    with pytest.raises(PretrainedError, match="not found"):
        initialize_mobilenet_v2_backbone(voc, str(tmp_path / "absent.h5"))
    with pytest.raises(PretrainedError, match="no such Keras MobileNetV2 weights file"):
        initialize_mobilenet_v2_backbone(voc, str(tmp_path / "checkpoint"))


# --- wired into the library: build_model, the pretrained dispatch, the Estimator -------------

def _ssdlite_config(**overrides):
    from ssd.config.loading import load_config

    values = {"model.width_multiplier": 0.25, "data.seed": 1, "data.shuffle_buffer": 8,
              "train.batch_size": 2, "train.lr_boundaries": [], "train.lr_factors": [1.0],
              "eval.batch_size": 2}
    values.update(overrides)
    return load_config("ssdlite320_shapes_cpu", values)


@pytest.fixture(scope="module")
def tiny_ssdlite():
    from ssd.modeling.build import build_model

    config = _ssdlite_config()
    return config, build_model(config)


def test_build_model_dispatches_on_the_backbone(tiny_ssdlite):
    from ssd.modeling.anchors import generate_anchors

    config, model = tiny_ssdlite
    assert model.name == "ssdlite_mobilenet_v2"
    assert model.get_layer("block_13_expand_relu") is not None
    num_anchors = generate_anchors(config).shape[0]
    assert num_anchors == 2034
    cls_logits, box_encodings = model(np.zeros((2, 320, 320, 3), np.float32))
    assert cls_logits.shape == (2, num_anchors, 5) and box_encodings.shape == (2, num_anchors, 4)
    # the anchor preset's 3 boxes on the lowest map reach the heads
    assert model.get_layer("cls_head_0_pw").filters == 3 * 5
    assert model.get_layer("box_head_1_pw").filters == 6 * 4


def test_build_model_of_the_coco_recipe_matches_the_direct_builder():
    from ssd.config.loading import load_config
    from ssd.modeling.build import build_model

    from_config = build_model(load_config("ssdlite320_mobilenetv2_coco"))
    assert from_config.count_params() == ssdlite_params(81, TF_OD_API_BOXES)
    assert from_config.output_shape == [(None, 2034, 81), (None, 2034, 4)]


def test_pretrained_dispatch_goes_to_the_backbone_loader(tiny_ssdlite, monkeypatch, keras_home):
    from ssd.modeling import pretrained

    config, model = tiny_ssdlite
    monkeypatch.setattr(keras_mobilenet_v2, "BASE_WEIGHT_PATH", UNREACHABLE_BASE)
    report = pretrained.initialize_for_config(model, config, "none")
    assert report["format"] == "none" and "Conv1" in report["left_initialized"]
    # the MobileNetV2 loader's errors, at the config's width multiplier (0.25: none published)
    with pytest.raises(PretrainedError, match="width multipliers .* this model's is 0.25"):
        pretrained.initialize_for_config(model, config, "imagenet")
    full = _ssdlite_config(**{"model.width_multiplier": 1.0})
    full_model = build_ssdlite_mobilenet_v2(5, TF_OD_API_BOXES, 320)
    with pytest.raises(PretrainedError, match="could not download"):
        pretrained.initialize_for_config(full_model, full, "imagenet")
    # a VGG16 config goes to initialize_backbone
    calls = []
    monkeypatch.setattr(pretrained, "initialize_backbone",
                        lambda model, source: calls.append(source) or {"format": "seen"})
    from ssd.config.loading import load_config

    assert pretrained.initialize_for_config(None, load_config("ssd300_voc0712"),
                                            "x.h5") == {"format": "seen"}
    assert calls == ["x.h5"]


def _tfod_config():
    """The TF Object Detection API's recipe (RMSProp, exponential decay, its crop) at toy size."""
    from ssd.config.loading import load_config

    shapes = _ssdlite_config()
    return load_config("ssdlite300_mobilenetv2_coco_tfod", {
        "model.width_multiplier": 0.25, "model.num_classes": shapes.model.num_classes,
        "data.class_names": shapes.data.class_names, "data.seed": 1, "data.shuffle_buffer": 8,
        "train.batch_size": 2, "eval.batch_size": 2})


@pytest.mark.slow
@pytest.mark.parametrize("make_config", [_ssdlite_config, _tfod_config])
def test_a_few_training_steps_of_the_shapes_recipe_through_the_estimator(tmp_path, make_config):
    import io

    from PIL import Image

    from ssd.data.input_fn import make_input_fn
    from ssd.engine.estimator import Estimator, RunConfig
    from ssd.engine.model_fn import SSDModelFn
    from ssd.modes import ModeKeys
    from ssd.data.records import make_example

    config = make_config()
    data = tmp_path / "shapes-00000-of-00001"
    rng = np.random.default_rng(5)
    with tf.io.TFRecordWriter(str(data)) as writer:
        for index in range(4):
            pixels = rng.integers(0, 50, size=(64, 64, 3), dtype=np.uint8)
            pixels[16:48, 8:40] = 200
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
            writer.write(make_example(
                encoded=buffer.getvalue(), image_format="jpeg", height=64, width=64,
                filename=f"{index}.jpg", source_id=f"{index}", boxes=[[0.25, 0.125, 0.75, 0.625]],
                labels=[2], texts=["square"], difficult=[0], truncated=[0]).SerializeToString())
    run_config = RunConfig(model_dir=str(tmp_path / "model"), save_checkpoints_steps=None,
                           save_summary_steps=1, log_step_count_steps=1, tf_random_seed=3)
    estimator = Estimator(SSDModelFn, model_config=config, run_config=run_config)
    before = [w.numpy().copy() for w in estimator.model.get_layer("cls_head_0_pw").weights]
    estimator.train(make_input_fn(str(data), config, ModeKeys.TRAIN), max_steps=2)
    assert estimator.global_step == 2 and estimator.latest_checkpoint() is not None
    after = estimator.model.get_layer("cls_head_0_pw").weights
    assert any(not np.array_equal(b, a.numpy()) for b, a in zip(before, after))
    predictions = list(estimator.predict(make_input_fn(str(data), config, ModeKeys.PREDICT)))
    assert len(predictions) == 4
    assert all(np.all(np.isfinite(p["scores"])) for p in predictions)


def test_batch_norm_momentum_from_the_config_reaches_every_batch_norm():
    from ssd.config.loading import ConfigError, load_config
    from ssd.modeling.build import build_model

    def momenta(config):
        return {layer.momentum for layer in build_model(config).layers
                if isinstance(layer, keras.layers.BatchNormalization)}

    assert momenta(_ssdlite_config()) == {0.99}  # the shapes recipe's, backbone included
    assert momenta(_ssdlite_config(**{"model.batch_norm_momentum": None})) == {0.999, 0.9997}
    with pytest.raises(ConfigError, match="^override model.batch_norm_momentum=1.*must be in"):
        load_config("ssdlite320_shapes_cpu", {"model.batch_norm_momentum": 1.0})
    with pytest.raises(ConfigError, match="model.batch_norm_momentum: is a mobilenet_v2 option"):
        load_config("ssd300_voc0712", {"model.batch_norm_momentum": 0.9})


def test_the_tfod_recipe_sets_the_apis_batch_norm_decay_everywhere():
    from ssd.config.loading import load_config
    from ssd.modeling.build import build_model

    config = load_config("ssdlite300_mobilenetv2_coco_tfod", {"model.width_multiplier": 0.35})
    model = build_model(config)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert {layer.momentum for layer in norms} == {0.9997}
    assert {layer.epsilon for layer in norms} == {1e-3}
    assert [int(s.shape[1]) for s in model.outputs] == [1917, 1917]


def test_backbone_depthwise_kernels_decay_on_or_off():
    from ssd.modeling import losses

    config = _ssdlite_config()
    from ssd.modeling.build import build_model

    model = build_model(config)
    depthwise = [layer for layer in model.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    backbone = [layer for layer in depthwise if not layer.name.endswith("_dw")]
    assert len(backbone) == 17  # one per MobileNetV2 bottleneck
    assert all(layer.name.endswith("_depthwise") for layer in backbone)
    half_square = sum(0.5 * np.sum(layer.kernel.numpy().astype(np.float64) ** 2)
                      for layer in backbone)
    on = dataclasses.replace(config.loss, weight_decay=1.0, decay_biases=False)
    off = dataclasses.replace(on, decay_backbone_depthwise_kernels=False)
    difference = float(losses.weight_decay_loss(model, on)) - float(losses.weight_decay_loss(model, off))
    # the extra layers' and heads' depthwise kernels stay decayed (the API's conv_hyperparams)
    assert difference == pytest.approx(half_square, rel=1e-4)
    heads = sum(0.5 * np.sum(layer.kernel.numpy().astype(np.float64) ** 2)
                for layer in depthwise if layer.name.endswith("_dw"))
    assert float(losses.weight_decay_loss(model, off)) > heads > 0
