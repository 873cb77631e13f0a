"""Importing the TF1 original's SSD300 checkpoint (ssd.weights.tf1_original via ssd.weights.importing).

The checkpoint is written here with TF1's own machinery (a tf.compat.v1 graph and Saver, with
Momentum slots and global_step) at 1/8 width, and the imported network is checked against an
independent forward of the same weights in the TF1 net's conventions, written with raw tf.nn ops
and numpy: RGB minus its mean, 'SAME' padding everywhere (conv9_2 pads bottom/right only),
'VALID' conv10/conv11, its head reshaping, its AnchorCreator and its [cy, cx, h, w] decoding.
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
from ssd.weights.importing import WeightsImportError, import_weights

WIDTH = 1 / 8
NUM_CLASSES = 21
MEAN = np.array([123.68, 116.78, 103.94], np.float32)
RATIOS = [(1.0, 2.0, 0.5), (1.0, 2.0, 3.0, 0.5, 0.3333), (1.0, 2.0, 3.0, 0.5, 0.3333),
          (1.0, 2.0, 3.0, 0.5, 0.3333), (1.0, 2.0, 0.5), (1.0, 2.0, 0.5)]
SCALES = [0.1, 0.2, 0.375, 0.55, 0.725, 0.9]
EXTRA_SCALES = [0.1414, 0.2739, 0.4541, 0.6315, 0.8078, 0.9836]
STEPS = [8, 16, 32, 64, 100, 300]
SHAPES = [38, 19, 10, 5, 3, 1]


def w(c):
    return max(8, int(math.floor(c * WIDTH + 0.5)))


def tf1_variables(rng, num_classes=NUM_CLASSES):
    """{TF1 variable name: value} of an SSD300 at WIDTH, weights scaled to keep values moderate."""
    values = {}

    def conv(name, k, cin, cout, scale=1.0):
        values[f"ssd300/{name}/kernel"] = (rng.standard_normal((k, k, cin, cout))
                                           * scale / math.sqrt(k * k * cin)).astype(np.float32)
        values[f"ssd300/{name}/bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)

    cin = 3
    for block, n, c in ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)):
        for i in range(1, n + 1):
            conv(f"conv{block}/conv{block}_{i}", 3, cin, w(c), 1.0)
            cin = w(c)
    conv("fc6", 3, cin, w(1024), 1.0)
    conv("fc7", 1, w(1024), w(1024), 1.0)
    values["ssd300/conv4_3_scale/weights"] = (20 + rng.standard_normal(w(512))).astype(np.float32)
    cin = w(1024)
    sources = [w(512), w(1024)]
    for block, mid, out in ((8, 256, 512), (9, 128, 256), (10, 128, 256), (11, 128, 256)):
        conv(f"additional_layers/conv{block}/conv{block}_1", 1, cin, w(mid), 1.0)
        conv(f"additional_layers/conv{block}/conv{block}_2", 3, w(mid), w(out), 1.0)
        cin = w(out)
        sources.append(cin)
    for i, (channels, ratios) in enumerate(zip(sources, RATIOS)):
        boxes = len(ratios) + 1
        conv(f"multibox_head/loc_{i}", 3, channels, boxes * 4, 0.1)
        # the deeper maps carry less signal: larger class kernels keep their scores apart
        conv(f"multibox_head/cls_{i}", 3, channels, boxes * num_classes, (1, 1, 3, 6, 6, 6)[i])
    return values


def write_tf1_checkpoint(prefix, values, extra=()):
    """A name-based checkpoint as TF1's Saver writes it: the variables, a Momentum slot for each,
    global_step; `extra` names more variables (zeros)."""
    graph = tf.Graph()
    with graph.as_default():
        for name, value in values.items():
            tf.compat.v1.get_variable(name, initializer=tf.constant(value))
            tf.compat.v1.get_variable(f"{name}/Momentum", initializer=tf.zeros(value.shape))
        for name in extra:
            tf.compat.v1.get_variable(name, initializer=tf.zeros([3]))
        tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return saver.save(session, prefix, global_step=120000)


# --- the TF1 net, independently --------------------------------------------------------------

def tf1_forward(values, images_rgb, num_classes=NUM_CLASSES):
    """images_rgb float [B, 300, 300, 3] 0..255 -> (scores [B, A, C], boxes [B, A, 4] ymin, xmin,
    ymax, xmax), as the TF1 original computes them."""
    v = lambda n: tf.constant(values[f"ssd300/{n}"])  # noqa: E731

    def conv(x, name, stride=1, padding="SAME", dilation=1, relu=True):
        y = tf.nn.conv2d(x, v(f"{name}/kernel"), stride, padding, dilations=dilation) + v(f"{name}/bias")
        return tf.nn.relu(y) if relu else y

    x = tf.constant(images_rgb, tf.float32) - MEAN
    features = []
    for block, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
        for i in range(1, n + 1):
            x = conv(x, f"conv{block}/conv{block}_{i}")
        if block == 4:
            norm = x * tf.math.rsqrt(tf.maximum(tf.reduce_sum(x * x, -1, keepdims=True), 1e-10))
            features.append(norm * v("conv4_3_scale/weights"))
        if block < 5:
            x = tf.nn.max_pool2d(x, 2, 2, "SAME")
        else:
            x = tf.nn.max_pool2d(x, 3, 1, "SAME")
    x = conv(x, "fc6", dilation=6)
    x = conv(x, "fc7")
    features.append(x)
    for block, stride, padding in ((8, 2, "SAME"), (9, 2, "SAME"), (10, 1, "VALID"), (11, 1, "VALID")):
        x = conv(x, f"additional_layers/conv{block}/conv{block}_1", padding=padding)
        x = conv(x, f"additional_layers/conv{block}/conv{block}_2", stride, padding)
        features.append(x)
    batch = images_rgb.shape[0]
    locs, clss = [], []
    for i, feature in enumerate(features):
        assert feature.shape[1] == SHAPES[i]
        locs.append(tf.reshape(conv(feature, f"multibox_head/loc_{i}", relu=False), [batch, -1, 4]))
        clss.append(tf.reshape(conv(feature, f"multibox_head/cls_{i}", relu=False),
                               [batch, -1, num_classes]))
    loc = np.concatenate([l.numpy() for l in locs], 1).astype(np.float64)
    scores = tf.nn.softmax(tf.concat(clss, 1)).numpy()
    anchors = tf1_anchors()  # [A, 4] cy, cx, h, w
    cy = loc[..., 0] * 0.1 * anchors[:, 2] + anchors[:, 0]
    cx = loc[..., 1] * 0.1 * anchors[:, 3] + anchors[:, 1]
    h = np.exp(loc[..., 2] * 0.2) * anchors[:, 2]
    wd = np.exp(loc[..., 3] * 0.2) * anchors[:, 3]
    return scores, np.stack([cy - h / 2, cx - wd / 2, cy + h / 2, cx + wd / 2], -1)


def tf1_anchors():
    """AnchorCreator's anchors as centres and sizes: per layer, (y, x) row-major, per location the
    extra square first, then scale / sqrt(r) x scale * sqrt(r) for each ratio in order."""
    out = []
    for size, step, scale, extra, ratios in zip(SHAPES, STEPS, SCALES, EXTRA_SCALES, RATIOS):
        hw = [(extra, extra)] + [(scale / math.sqrt(r), scale * math.sqrt(r)) for r in ratios]
        for y in range(size):
            for x in range(size):
                cy, cx = (y + 0.5) * step / 300, (x + 0.5) * step / 300
                out += [(cy, cx, h, wd) for h, wd in hw]
    return np.array(out, np.float64)


def project_forward(model_dir, images_rgb):
    """The imported model directory's network, anchors and decoding, as the project runs them."""
    config = load_saved_config(model_dir)
    model = build_model(config)
    checkpoints.restore_checkpoint(model, checkpoints.find_checkpoint(model_dir), config)
    inputs = preprocess_image(tf.constant(images_rgb, tf.float32), config)
    logits, encodings = model(inputs, training=False)
    boxes = decode(encodings, generate_anchors(config), config.matching.variances)
    return tf.nn.softmax(logits).numpy(), boxes.numpy()


# --- tests -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf1_file(tmp_path_factory):
    values = tf1_variables(np.random.default_rng(0))
    prefix = write_tf1_checkpoint(str(tmp_path_factory.mktemp("tf1") / "model.ckpt"), values)
    return prefix, values


@pytest.fixture(scope="module")
def imported(tf1_file, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("runs") / "tf1"
    report = import_weights("tf1", tf1_file[0], str(model_dir))
    return model_dir, report


def test_imported_model_gives_the_tf1_detections(tf1_file, imported):
    model_dir, report = imported
    images = np.random.default_rng(1).uniform(0, 255, (2, 300, 300, 3)).astype(np.float32)
    want_scores, want_boxes = tf1_forward(tf1_file[1], images)
    scores, boxes = project_forward(model_dir, images)
    assert boxes.shape == want_boxes.shape == (2, 8732, 4)
    np.testing.assert_allclose(boxes, want_boxes, atol=1e-4)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # the config the file selected: TF1's anchors, its padding, its evaluation filter
    config = report["config"]
    assert report["recipe"] == "ssd300_voc0712"
    assert config.model.extra_padding == "same" and config.anchors.preset == "tf1"
    assert config.model.width_multiplier == WIDTH and config.eval.min_box_size == 0.03
    assert sorted(os.listdir(model_dir)) == ["checkpoint", "ckpt-0.data-00000-of-00001",
                                             "ckpt-0.index", "config.json", "import_report.json"]


def test_caffe_padding_would_not_match(tf1_file, imported):
    """The padding conversion matters: with Caffe's conv9_2 padding the last three maps differ."""
    model_dir, _ = imported
    config = load_saved_config(model_dir)
    config.model.extra_padding = "caffe"
    model = build_model(config)
    checkpoints.restore_checkpoint(model, checkpoints.find_checkpoint(model_dir), config)
    images = np.random.default_rng(2).uniform(0, 255, (1, 300, 300, 3)).astype(np.float32)
    want_scores, _ = tf1_forward(tf1_file[1], images)
    logits, _ = model(preprocess_image(tf.constant(images), config), training=False)
    differs = np.abs(tf.nn.softmax(logits).numpy() - want_scores).max(-1)[0] > 1e-4
    first_conv9 = 8732 - (5 * 5 * 6 + 3 * 3 * 4 + 1 * 1 * 4)
    assert not differs[:first_conv9].any() and differs[first_conv9:].any()


def _fails(tmp_path, prefix, match, **kwargs):
    model_dir = tmp_path / "out"
    with pytest.raises(WeightsImportError, match=match):
        import_weights("tf1", prefix, str(model_dir), **kwargs)
    assert not model_dir.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_missing_variable(tmp_path, tf1_file):
    values = dict(tf1_file[1])
    del values["ssd300/conv5/conv5_2/kernel"]
    prefix = write_tf1_checkpoint(str(tmp_path / "m.ckpt"), values)
    _fails(tmp_path, prefix, "missing variable.*ssd300/conv5/conv5_2/kernel")


def test_extra_variable(tmp_path, tf1_file):
    prefix = write_tf1_checkpoint(str(tmp_path / "e.ckpt"), tf1_file[1],
                                  extra=["ssd300/conv5/conv5_4/kernel"])
    _fails(tmp_path, prefix, "left over.*ssd300/conv5/conv5_4/kernel")


def test_wrong_shape(tmp_path, tf1_file):
    _fails(tmp_path, tf1_file[0], "wrong shape.*conv1_1/kernel",
           overrides={"model.width_multiplier": 0.25})


def test_truncated_file(tmp_path, tf1_file):
    prefix = str(tmp_path / "t.ckpt")
    for suffix in (".index", ".data-00000-of-00001"):
        data = open(tf1_file[0] + suffix, "rb").read()
        open(prefix + suffix, "wb").write(data[: len(data) // 2] if "data" in suffix else data)
    _fails(tmp_path, prefix, "t.ckpt")


def test_wrong_format(tmp_path):
    path = tmp_path / "weights.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data.pkl", b"not a checkpoint")
    _fails(tmp_path, str(path), "not a readable TensorFlow checkpoint")


def test_refuses_a_non_empty_model_dir(tmp_path, tf1_file):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(WeightsImportError, match="not empty"):
        import_weights("tf1", tf1_file[0], str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
