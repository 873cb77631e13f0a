"""Importing the paper's Caffe SSD300 / SSD512 models (ssd.weights.caffe_original via ssd.weights.importing).

The .caffemodel files are written here (at 1/8 width) with the protobuf wire writer of
tests/weights/test_caffe_format.py, in the current `layer` and the legacy `layers` layouts. The
imported network is checked against an independent forward of the same blobs in Caffe's
conventions, written with raw tf.nn ops and numpy: BGR minus 104, 117, 123, explicit symmetric
padding, ceil-mode pooling, Normalize, NCHW heads permuted to NHWC then flattened, PriorBox's
priors (sizes truncated to int) and CENTER_SIZE decoding in the order x, y, w, h.
"""

import math
import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from ssd.config.loading import load_saved_config
from ssd.data.preprocessing import preprocess_image
from ssd.modeling import checkpoints
from ssd.modeling.anchors import generate_anchors
from ssd.modeling.boxes import decode
from ssd.modeling.build import build_model
from ssd.weights import caffe_original
from ssd.weights.importing import WeightsImportError, import_weights
from tests.weights.test_caffe_format import blob, layer, ld, net, unpacked_floats, v1_layer

WIDTH = 1 / 8
MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
V1_CONVOLUTION = 4

# what ssd_pascal.py / ssd_pascal_512.py / ssd_coco.py put in the PriorBox layers
GEOMETRY = {
    "ssd300": dict(size=300, maps=[38, 19, 10, 5, 3, 1], steps=[8, 16, 32, 64, 100, 300],
                   ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                   # (stride, pad, kernel) of conv6_2 ... conv9_2
                   extras=[(2, 1, 3), (2, 1, 3), (1, 0, 3), (1, 0, 3)]),
    "ssd512": dict(size=512, maps=[64, 32, 16, 8, 4, 2, 1], steps=[8, 16, 32, 64, 128, 256, 512],
                   ratios=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
                   extras=[(2, 1, 3), (2, 1, 3), (2, 1, 3), (2, 1, 3), (1, 1, 4)]),
}
SIZES = {
    ("ssd300", 21): ([30, 60, 111, 162, 213, 264], [60, 111, 162, 213, 264, 315]),
    ("ssd300", 81): ([21, 45, 99, 153, 207, 261], [45, 99, 153, 207, 261, 315]),
    ("ssd512", 21): ([35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
                     [76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6]),
}


def w(c):
    return max(8, int(math.floor(c * WIDTH + 0.5)))


def caffe_layers(rng, architecture, num_classes):
    """{layer name: [weights (out, in, kh, kw), bias] or [scale]} of a Caffe SSD at WIDTH."""
    layers = {}

    def conv(name, k, cin, cout, scale=1.0):
        layers[name] = [(rng.standard_normal((cout, cin, k, k)) * scale
                         / math.sqrt(k * k * cin)).astype(np.float32),
                        (0.1 * rng.standard_normal(cout)).astype(np.float32)]

    cin = 3
    for block, n, c in ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)):
        for i in range(1, n + 1):
            conv(f"conv{block}_{i}", 3, cin, w(c))
            cin = w(c)
    conv("fc6", 3, cin, w(1024))
    conv("fc7", 1, w(1024), w(1024))
    layers["conv4_3_norm"] = [(20 + rng.standard_normal(w(512))).astype(np.float32)]
    geometry = GEOMETRY[architecture]
    cin, sources = w(1024), [("conv4_3_norm", w(512)), ("fc7", w(1024))]
    for b, (_, _, k) in enumerate(geometry["extras"]):
        mid, out = (256, 512) if b == 0 else (128, 256)
        conv(f"conv{6 + b}_1", 1, cin, w(mid))
        conv(f"conv{6 + b}_2", k, w(mid), w(out))
        cin = w(out)
        sources.append((f"conv{6 + b}_2", cin))
    for i, ((source, channels), ratios) in enumerate(zip(sources, geometry["ratios"])):
        priors = 2 + 2 * len(ratios)
        conv(f"{source}_mbox_loc", 3, channels, priors * 4, 0.1)
        conv(f"{source}_mbox_conf", 3, channels, priors * num_classes, 1 + i)
    return layers


def caffemodel(layers, legacy=False, extra_layers=()):
    """The bytes of a .caffemodel holding `layers`, with blob-less layers around them as a
    deploy net has (ReLU, Pooling, PriorBox, ...)."""
    fields = []
    no_blobs = [("relu1_1", "ReLU", 18), ("pool1", "Pooling", 17),
                ("conv4_3_norm_mbox_priorbox", "PriorBox", None), ("mbox_loc", "Concat", 3)]
    for name, type_, enum in no_blobs[:2]:
        fields.append(ld(2, v1_layer(name, enum)) if legacy else ld(100, layer(name, type_)))
    for name, blobs in list(layers.items()) + list(extra_layers):
        if legacy:  # V1: legacy num/channels/height/width dims, unpacked floats
            legacy_blobs = [blob(None, legacy=(b.shape if b.ndim == 4 else (1, 1, 1, b.size)),
                                 data=unpacked_floats(5, b)) for b in blobs]
            enum = V1_CONVOLUTION if len(blobs) == 2 else None
            fields.append(ld(2, v1_layer(name, enum, legacy_blobs)))
        else:
            type_ = "Convolution" if len(blobs) == 2 else "Normalize"
            fields.append(ld(100, layer(name, type_, [blob(b, shape=b.shape) for b in blobs])))
    for name, type_, enum in no_blobs[2:]:
        fields.append(ld(2, v1_layer(name, enum)) if legacy else ld(100, layer(name, type_)))
    return net(*fields)


# --- the Caffe net, independently ------------------------------------------------------------

def caffe_forward(layers, architecture, num_classes, images_rgb):
    """images_rgb [B, S, S, 3] 0..255 -> (scores [B, A, C], boxes [B, A, 4] ymin, xmin, ymax, xmax)."""
    geometry = GEOMETRY[architecture]

    def conv(x, name, stride=1, pad=1, dilation=1, relu=True):
        weights, bias = layers[name]
        x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        kernel = tf.constant(weights.transpose(2, 3, 1, 0))  # (out, in, kh, kw) -> HWIO
        y = tf.nn.conv2d(x, kernel, stride, "VALID", dilations=dilation) + bias
        return tf.nn.relu(y) if relu else y

    def pool(x, kernel, stride, pad):
        size = int(x.shape[1])
        out = -(-(size + 2 * pad - kernel) // stride) + 1  # Caffe rounds up
        after = (out - 1) * stride + kernel - size - pad
        x = tf.pad(x, [[0, 0], [pad, after], [pad, after], [0, 0]], constant_values=-np.inf)
        return tf.nn.max_pool2d(x, kernel, stride, "VALID")

    x = tf.constant(images_rgb[..., ::-1] - MEAN_BGR, tf.float32)
    features = []
    for block, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
        for i in range(1, n + 1):
            x = conv(x, f"conv{block}_{i}")
        if block == 4:
            norm = tf.sqrt(tf.reduce_sum(x * x, -1, keepdims=True) + 1e-10)
            features.append(x / norm * layers["conv4_3_norm"][0])
        x = pool(x, 2, 2, 0) if block < 5 else pool(x, 3, 1, 1)
    x = conv(x, "fc6", pad=6, dilation=6)
    x = conv(x, "fc7", pad=0)
    features.append(x)
    for b, (stride, pad, _) in enumerate(geometry["extras"]):
        x = conv(x, f"conv{6 + b}_1", pad=0)
        x = conv(x, f"conv{6 + b}_2", stride, pad)
        features.append(x)
    names = ["conv4_3_norm", "fc7"] + [f"conv{6 + b}_2" for b in range(len(geometry["extras"]))]
    batch = images_rgb.shape[0]
    locs, confs = [], []
    for i, (name, feature) in enumerate(zip(names, features)):
        assert feature.shape[1] == geometry["maps"][i]
        # Caffe: NCHW conv output, Permute(0, 2, 3, 1), Flatten: the NHWC reshape here
        locs.append(tf.reshape(conv(feature, f"{name}_mbox_loc", relu=False), [batch, -1, 4]))
        confs.append(tf.reshape(conv(feature, f"{name}_mbox_conf", relu=False), [batch, -1, num_classes]))
    loc = np.concatenate([l.numpy() for l in locs], 1).astype(np.float64)
    scores = tf.nn.softmax(tf.concat(confs, 1)).numpy()
    priors = caffe_priors(architecture, *SIZES[(architecture, num_classes)])  # xmin ymin xmax ymax
    pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
    pcx, pcy = (priors[:, 0] + priors[:, 2]) / 2, (priors[:, 1] + priors[:, 3]) / 2
    cx = 0.1 * loc[..., 0] * pw + pcx
    cy = 0.1 * loc[..., 1] * ph + pcy
    bw = np.exp(0.2 * loc[..., 2]) * pw
    bh = np.exp(0.2 * loc[..., 3]) * ph
    return scores, np.stack([cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2], -1)


def caffe_priors(architecture, min_sizes, max_sizes):
    """prior_box_layer.cpp: per cell (h, w), the min_size square, the sqrt(min * max) square, then
    ar and 1/ar (flip) per aspect ratio; sizes copied into ints; normalized, not clipped."""
    geometry = GEOMETRY[architecture]
    image = geometry["size"]
    out = []
    for size, step, low, high, ratios in zip(geometry["maps"], geometry["steps"], min_sizes,
                                             max_sizes, geometry["ratios"]):
        low, high = int(low), int(high)
        all_ratios = [1.0]
        for r in ratios:
            all_ratios += [float(r), 1.0 / r]
        for h in range(size):
            for x in range(size):
                cx, cy = (x + 0.5) * step, (h + 0.5) * step
                sides = [(low, low), (math.sqrt(low * high),) * 2]
                sides += [(low * math.sqrt(r), low / math.sqrt(r)) for r in all_ratios if abs(r - 1) > 1e-6]
                out += [((cx - bw / 2) / image, (cy - bh / 2) / image, (cx + bw / 2) / image,
                         (cy + bh / 2) / image) for bw, bh in sides]
    return np.array(out, np.float64)


def project_forward(model_dir, images_rgb):
    config = load_saved_config(model_dir)
    model = build_model(config)
    checkpoints.restore_checkpoint(model, checkpoints.find_checkpoint(model_dir), config)
    logits, encodings = model(preprocess_image(tf.constant(images_rgb, tf.float32), config),
                              training=False)
    boxes = decode(encodings, generate_anchors(config), config.matching.variances)
    return tf.nn.softmax(logits).numpy(), boxes.numpy()


# --- tests -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def voc300(tmp_path_factory):
    layers = caffe_layers(np.random.default_rng(0), "ssd300", 21)
    path = tmp_path_factory.mktemp("caffe") / "VGG_VOC0712_SSD_300x300.caffemodel"
    path.write_bytes(caffemodel(layers))
    return str(path), layers


@pytest.mark.parametrize("architecture,num_classes,recipe", [
    ("ssd300", 21, "ssd300_voc0712"), ("ssd300", 81, "ssd300_coco"), ("ssd512", 21, "ssd512_voc0712")])
def test_imported_model_gives_the_caffe_detections(tmp_path, architecture, num_classes, recipe):
    layers = caffe_layers(np.random.default_rng(3), architecture, num_classes)
    path = tmp_path / "model.caffemodel"
    path.write_bytes(caffemodel(layers))
    report = import_weights("caffe", str(path), str(tmp_path / "run"))
    assert report["recipe"] == recipe
    config = report["config"]
    assert config.anchors.preset == "caffe" and config.data.mean_rgb == [123.0, 117.0, 104.0]
    assert config.model.extra_padding == "caffe" and config.model.width_multiplier == WIDTH
    size = GEOMETRY[architecture]["size"]
    images = np.random.default_rng(4).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    want_scores, want_boxes = caffe_forward(layers, architecture, num_classes, images)
    scores, boxes = project_forward(tmp_path / "run", images)
    assert boxes.shape == want_boxes.shape
    np.testing.assert_allclose(boxes, want_boxes, atol=1e-4)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_legacy_layout_imports_the_same_weights(tmp_path, voc300):
    path, layers = voc300
    legacy = tmp_path / "legacy.caffemodel"
    legacy.write_bytes(caffemodel(layers, legacy=True))
    import_weights("caffe", path, str(tmp_path / "current"))
    import_weights("caffe", str(legacy), str(tmp_path / "legacy"))
    current = tf.train.load_checkpoint(str(tmp_path / "current" / "ckpt-0"))
    old = tf.train.load_checkpoint(str(tmp_path / "legacy" / "ckpt-0"))
    names = [n for n in current.get_variable_to_shape_map() if n.startswith("model/")]
    assert len(names) == 71
    for name in names:
        np.testing.assert_array_equal(current.get_tensor(name), old.get_tensor(name))


def test_default_config_reads_the_shapes(tmp_path):
    layers = caffe_layers(np.random.default_rng(5), "ssd512", 81)
    path = tmp_path / "coco512.caffemodel"
    path.write_bytes(caffemodel(layers))
    recipe, overrides = caffe_original.default_config(str(path))
    assert recipe == "ssd512_coco"
    assert overrides["anchors.preset"] == "caffe" and overrides["model.width_multiplier"] == WIDTH


def _fails(tmp_path, path, match, **kwargs):
    model_dir = tmp_path / "out"
    with pytest.raises(WeightsImportError, match=match):
        import_weights("caffe", str(path), str(model_dir), **kwargs)
    assert not model_dir.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_ssd512_file_with_an_ssd300_recipe(tmp_path):
    path = tmp_path / "ssd512.caffemodel"
    path.write_bytes(caffemodel(caffe_layers(np.random.default_rng(6), "ssd512", 21)))
    _fails(tmp_path, path, r"left over.*conv10_1.*looks like recipe ssd512_voc0712",
           recipe="ssd300_voc0712")


def test_missing_layer(tmp_path, voc300):
    layers = dict(voc300[1])
    del layers["conv5_2"]
    path = tmp_path / "missing.caffemodel"
    path.write_bytes(caffemodel(layers))
    _fails(tmp_path, path, "missing layer.*conv5_2")


def test_extra_layer(tmp_path, voc300):
    path = tmp_path / "extra.caffemodel"
    extra = [("conv5_4", voc300[1]["conv5_3"])]
    path.write_bytes(caffemodel(voc300[1], extra_layers=extra))
    _fails(tmp_path, path, "left over.*conv5_4")


def test_truncated_file(tmp_path, voc300):
    data = open(voc300[0], "rb").read()
    path = tmp_path / "truncated.caffemodel"
    path.write_bytes(data[: len(data) * 2 // 3])
    _fails(tmp_path, path, "truncated.caffemodel")


def test_wrong_format(tmp_path):
    path = tmp_path / "weights.caffemodel"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data.pkl", b"not a caffemodel")
    _fails(tmp_path, path, "zip archive")


def test_refuses_a_non_empty_model_dir(tmp_path, voc300):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(WeightsImportError, match="not empty"):
        import_weights("caffe", voc300[0], str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
