"""Importing torchvision's ssd300_vgg16 state_dict: the imported network against an independent
forward of the same weights in torchvision's own conventions (NCHW kernels, RGB minus its mean,
its DefaultBoxGenerator anchors, its box coder with weights 10, 10, 5, 5), per default box."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from ssd.config.loading import load_saved_config
from ssd.inference.detector import load_trained_model
from ssd.modeling.anchors import generate_anchors
from ssd.modeling.boxes import decode
from ssd.weights import torchvision_ssd as tv
from ssd.weights.importing import WeightsImportError, import_weights
from tests.weights.test_torch_format import tensor, write_torch_file

# torchvision's SSD300-VGG16: (key prefix, out, in, kernel), written here from its architecture
VGG = [("backbone.features.0", 64, 3), ("backbone.features.2", 64, 64), ("backbone.features.5", 128, 64),
       ("backbone.features.7", 128, 128), ("backbone.features.10", 256, 128),
       ("backbone.features.12", 256, 256), ("backbone.features.14", 256, 256),
       ("backbone.features.17", 512, 256), ("backbone.features.19", 512, 512),
       ("backbone.features.21", 512, 512), ("backbone.extra.0.1", 512, 512),
       ("backbone.extra.0.3", 512, 512), ("backbone.extra.0.5", 512, 512)]
EXTRA = [("backbone.extra.0.7.1", 1024, 512, 3), ("backbone.extra.0.7.3", 1024, 1024, 1),
         ("backbone.extra.1.0", 256, 1024, 1), ("backbone.extra.1.2", 512, 256, 3),
         ("backbone.extra.2.0", 128, 512, 1), ("backbone.extra.2.2", 256, 128, 3),
         ("backbone.extra.3.0", 128, 256, 1), ("backbone.extra.3.2", 256, 128, 3),
         ("backbone.extra.4.0", 128, 256, 1), ("backbone.extra.4.2", 256, 128, 3)]
SOURCE_CHANNELS = [512, 1024, 512, 256, 256, 256]
BOXES = [4, 6, 6, 6, 4, 4]
SLOTS = 91
MEAN = np.array([0.48235, 0.45882, 0.40784]) * 255


def _state_dict(seed=0):
    rng = np.random.default_rng(seed)
    layers = [(k, o, i, 3) for k, o, i in VGG] + EXTRA
    state = collections.OrderedDict()
    for key, out, inp, size in layers:  # variance-preserving, so that activations stay in range
        state[f"{key}.weight"] = rng.normal(0, np.sqrt(2 / (inp * size * size)), (out, inp, size, size))
        state[f"{key}.bias"] = rng.normal(0, 0.1, out)
    state["backbone.scale_weight"] = np.full(512, 20.0) + rng.normal(0, 1, 512)
    for i, (channels, boxes) in enumerate(zip(SOURCE_CHANNELS, BOXES)):
        for head, values, std in (("classification", SLOTS, 0.3), ("regression", 4, 0.02)):
            state[f"head.{head}_head.module_list.{i}.weight"] = rng.normal(
                0, std / np.sqrt(channels * 9), (boxes * values, channels, 3, 3))
            state[f"head.{head}_head.module_list.{i}.bias"] = rng.normal(0, 0.1, boxes * values)
    return collections.OrderedDict((k, v.astype(np.float32)) for k, v in state.items())


def _conv(x, state, key, stride=1, pad=1, dilation=1, relu=True):
    kernel = tf.constant(np.transpose(state[f"{key}.weight"], (2, 3, 1, 0)))  # OIHW -> HWIO
    x = tf.nn.conv2d(x, kernel, stride, [[0, 0], [pad, pad], [pad, pad], [0, 0]], dilations=dilation)
    x = x + state[f"{key}.bias"]
    return tf.nn.relu(x) if relu else x


def _pool(x, ceil=False):
    if ceil:  # PyTorch's ceil_mode on an odd side: one more window, over the last row/column only
        x = tf.pad(x, [[0, 0], [0, x.shape[1] % 2], [0, x.shape[2] % 2], [0, 0]], constant_values=-np.inf)
    return tf.nn.max_pool2d(x, 2, 2, "VALID")


def _torchvision_forward(state, image):
    """Per default box: corner boxes [A, 4] (ymin, xmin, ymax, xmax, clipped) and scores [A, 81]
    (softmax over the background and the 80 real categories: the N/A slots' logits left out)."""
    x = (tf.constant(image[np.newaxis], tf.float32) - MEAN)
    keys = [k for k, *_ in VGG]
    for index, key in enumerate(keys[:10]):
        x = _conv(x, state, key)
        if key in ("backbone.features.2", "backbone.features.7", "backbone.features.14"):
            x = _pool(x, ceil=key == "backbone.features.14")
    norm = tf.sqrt(tf.maximum(tf.reduce_sum(x * x, axis=-1, keepdims=True), 1e-24))
    sources = [x / norm * state["backbone.scale_weight"]]
    x = _pool(x)
    for key in keys[10:]:
        x = _conv(x, state, key)
    x = tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=-np.inf), 3, 1, "VALID")
    x = _conv(x, state, "backbone.extra.0.7.1", pad=6, dilation=6)
    sources.append(_conv(x, state, "backbone.extra.0.7.3", pad=0))
    for block, pad, stride in ((1, 1, 2), (2, 1, 2), (3, 0, 1), (4, 0, 1)):
        x = _conv(sources[-1], state, f"backbone.extra.{block}.0", pad=0)
        sources.append(_conv(x, state, f"backbone.extra.{block}.2", stride=stride, pad=pad))
    logits, codes, anchors = [], [], []
    scales = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    for k, (source, ratios, step) in enumerate(zip(sources, [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                                    [8, 16, 32, 64, 100, 300])):
        size = source.shape[1]
        logits.append(tf.reshape(_conv(source, state, f"head.classification_head.module_list.{k}",
                                       relu=False), [-1, SLOTS]))
        codes.append(tf.reshape(_conv(source, state, f"head.regression_head.module_list.{k}",
                                      relu=False), [-1, 4]))
        wh = [(scales[k], scales[k]), (np.sqrt(scales[k] * scales[k + 1]),) * 2]
        for r in ratios:
            w, h = scales[k] * np.sqrt(r), scales[k] / np.sqrt(r)
            wh += [(w, h), (h, w)]
        wh = np.clip(np.array(wh), 0, 1)  # DefaultBoxGenerator(clip=True)
        centres = (np.arange(size) + 0.5) / (300 / step)
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        for y, x_ in zip(cy.ravel(), cx.ravel()):
            anchors += [(x_, y, w, h) for w, h in wh]
    anchors = np.array(anchors)
    dx, dy, dw, dh = np.split(tf.concat(codes, 0).numpy().astype(np.float64), 4, axis=1)
    cx = dx[:, 0] / 10 * anchors[:, 2] + anchors[:, 0]
    cy = dy[:, 0] / 10 * anchors[:, 3] + anchors[:, 1]
    w, h = np.exp(dw[:, 0] / 5) * anchors[:, 2], np.exp(dh[:, 0] / 5) * anchors[:, 3]
    boxes = np.clip(np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1), 0, 1)
    kept = [0] + list(tv.COCO_IDS)
    scores = tf.nn.softmax(tf.gather(tf.concat(logits, 0), kept, axis=1)).numpy()
    return boxes, scores


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    base = tmp_path_factory.mktemp("torchvision")
    state = _state_dict()
    path = write_torch_file(base / "ssd300_vgg16_coco.pth", collections.OrderedDict(
        (k, tensor(v)) for k, v in state.items()))
    report = import_weights("torchvision", str(path), str(base / "model"))
    return state, base, report


def test_imported_network_computes_torchvision_boxes_and_scores(imported):
    state, base, report = imported
    config, model, _, step = load_trained_model(str(base / "model"))
    assert step == 0 and config.model.num_classes == 81 and len(config.data.class_names) == 80
    assert load_saved_config(base / "model") == config
    anchors = generate_anchors(config)
    rng = np.random.default_rng(1)
    for _ in range(2):
        image = rng.integers(0, 256, (300, 300, 3)).astype(np.float32)  # RGB at the input size
        expected_boxes, expected_scores = _torchvision_forward(state, image)
        inputs = (image - np.array(config.data.mean_rgb))[..., ::-1][np.newaxis]  # the project's BGR
        logits, encodings = model(tf.constant(inputs, tf.float32), training=False)
        boxes = tf.clip_by_value(decode(encodings[0], anchors, config.matching.variances), 0, 1).numpy()
        scores = tf.nn.softmax(logits[0]).numpy()
        assert boxes.shape == expected_boxes.shape == (8732, 4)
        assert expected_scores[:, 1:].std() > 1e-3  # spread out: the comparison means something
        np.testing.assert_allclose(boxes, expected_boxes, atol=1e-4)
        # float32 through 20 layers of random (unnormalized) weights, summed in another order:
        # most scores agree to 1e-6, those of the deep maps' large logits to a few 1e-4
        np.testing.assert_allclose(scores, expected_scores, atol=5e-4)
        assert np.median(np.abs(scores - expected_scores)) < 1e-6


def test_missing_or_extra_tensors_are_refused_and_nothing_is_written(tmp_path):
    state = _state_dict(seed=2)
    missing = collections.OrderedDict((k, tensor(v)) for k, v in state.items() if k != "backbone.extra.2.2.bias")
    path = write_torch_file(tmp_path / "missing.pth", missing)
    with pytest.raises(ValueError, match="backbone.extra.2.2.bias"):
        import_weights("torchvision", str(path), str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()
    extra = collections.OrderedDict((k, tensor(v)) for k, v in state.items())
    extra["head.classification_head.module_list.6.weight"] = tensor(np.zeros((4, 4, 3, 3), np.float32))
    path = write_torch_file(tmp_path / "extra.pth", extra)
    with pytest.raises(WeightsImportError, match="module_list.6"):
        import_weights("torchvision", str(path), str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()


def test_anchors_are_torchvisions_apart_from_the_clamp_folded_into_the_head():
    from ssd.config.loading import load_config
    config = load_config(tv.RECIPE)
    ours = generate_anchors(config).astype(np.float64)
    theirs = []
    for k, (size, step) in enumerate(zip([38, 19, 10, 5, 3, 1], tv.STEPS)):
        s, s_next = tv.SCALES[k], tv.SCALES[k + 1]
        wh = [(s, s), (np.sqrt(s * s_next),) * 2]
        for r in tv.ASPECT_RATIOS[k]:
            wh += [(s * np.sqrt(r), s / np.sqrt(r)), (s / np.sqrt(r), s * np.sqrt(r))]
        centres = (np.arange(size) + 0.5) * step / 300
        theirs += [(cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2)
                   for cy in centres for cx in centres for w, h in np.clip(wh, 0, 1)]
    differ = np.abs(ours - np.array(theirs)).max(axis=1) > 1e-6
    # only the last map's 1:2 and 2:1 boxes (0.87 * sqrt 2 > 1) differ: their clamp is in the head
    assert np.flatnonzero(differ).tolist() == [8730, 8731]


@pytest.mark.parametrize("overrides", [{"anchors.clip": True}, {"model.extra_padding": "same"}])
def test_a_config_unlike_torchvisions_is_refused(imported, overrides):
    from ssd.config.loading import load_config
    from ssd.modeling.build import build_model
    _, base, _ = imported
    config = load_config(tv.RECIPE, overrides)
    with pytest.raises(WeightsImportError, match="torchvision"):
        tv.model_arrays(str(base / "ssd300_vgg16_coco.pth"), config, build_model(config))
