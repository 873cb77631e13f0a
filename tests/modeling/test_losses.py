import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd.modeling import losses
from ssd.config.loading import LossConfig


# --- numpy reference --------------------------------------------------------------------------

def np_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_mined(logits, targets, ratio):
    """Per image: the floor(ratio * positives) background anchors with the largest -log p(bg)."""
    background = -np_log_softmax(logits)[..., 0]
    mined = np.zeros(targets.shape, bool)
    for b in range(targets.shape[0]):
        negatives = np.flatnonzero(targets[b] == 0)
        k = min(int(math.floor(ratio * np.sum(targets[b] > 0))), len(negatives))
        hardest = negatives[np.argsort(-background[b, negatives], kind="stable")[:k]]
        mined[b, hardest] = True
    return mined


def np_losses(logits, encodings, targets, loc_targets, ratio, beta, normalizer=None):
    log_p = np_log_softmax(logits)
    positive = targets > 0
    kept = positive | np_mined(logits, targets, ratio)
    cross_entropy = -np.take_along_axis(log_p, np.maximum(targets, 0)[..., None], -1)[..., 0]
    cls_sum = cross_entropy[kept].sum()
    diff = np.abs(np.asarray(encodings, np.float64) - loc_targets)
    smooth = np.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta).sum(-1)
    loc_sum = smooth[positive].sum()
    n = positive.sum() if normalizer is None else normalizer
    return cls_sum / max(n, 1), loc_sum / max(n, 1), positive.sum()


def random_problem(seed, batch=3, anchors=300, classes=5, positive_rate=0.04, ignored_rate=0.05):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (batch, anchors, classes)).astype(np.float32)
    encodings = rng.normal(0, 1.5, (batch, anchors, 4)).astype(np.float32)
    u = rng.uniform(size=(batch, anchors))
    targets = np.where(u < positive_rate, rng.integers(1, classes, (batch, anchors)),
                       np.where(u < positive_rate + ignored_rate, -1, 0)).astype(np.int32)
    targets[0] = np.where(targets[0] > 0, 0, targets[0])  # an image without positives
    loc_targets = np.where((targets > 0)[..., None], rng.normal(0, 1.5, (batch, anchors, 4)),
                           0).astype(np.float32)
    return logits, encodings, targets, loc_targets


# --- confidence and box losses ----------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ratio, beta", [(3.0, 1.0), (2.5, 0.5)])
def test_losses_match_numpy_reference(seed, ratio, beta):
    logits, encodings, targets, loc_targets = random_problem(seed)
    config = LossConfig(negative_ratio=ratio, smooth_l1_beta=beta)
    result = losses.detection_losses(logits, encodings, targets, loc_targets, config)
    cls_ref, loc_ref, n_ref = np_losses(logits, encodings, targets, loc_targets, ratio, beta)
    assert n_ref > 0
    np.testing.assert_allclose(result["cls_loss"].numpy(), cls_ref, rtol=1e-5)
    np.testing.assert_allclose(result["loc_loss"].numpy(), loc_ref, rtol=1e-5)
    assert result["num_positives"].numpy() == n_ref
    mined = losses.hard_negative_mask(logits, targets, ratio).numpy()
    np.testing.assert_array_equal(mined, np_mined(logits, targets, ratio))
    assert not mined[0].any()  # no positives in image 0: nothing mined there
    assert not mined[targets < 0].any()
    np.testing.assert_array_equal(result["seen"].numpy(),
                                  (targets > 0) | np_mined(logits, targets, ratio))


def test_mining_counts_floor_and_cap():
    # 2 positives at ratio 2.5 -> floor(5.0) = 5 mined; 1 positive with 2 negatives -> capped at 2
    logits = np.zeros((2, 8, 3), np.float32)
    logits[..., 0] = np.arange(8)[None, :] * -0.1  # lower background logit = harder negative
    targets = np.array([[1, 2, 0, 0, 0, 0, 0, 0],
                        [1, -1, -1, -1, -1, -1, 0, 0]], np.int32)
    mined = losses.hard_negative_mask(logits, targets, 2.5).numpy()
    np.testing.assert_array_equal(mined[0], [0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(mined[1], [0, 0, 0, 0, 0, 0, 1, 1])


def test_mining_ties_take_lower_index():
    logits = np.zeros((1, 6, 2), np.float32)
    targets = np.array([[1, 0, 0, 0, 0, 0]], np.int32)
    mined = losses.hard_negative_mask(logits, targets, 3.0).numpy()
    np.testing.assert_array_equal(mined[0], [0, 1, 1, 1, 0, 0])


def test_hand_computed_loss():
    # one image, anchors: positive of class 1, negative, ignored
    logits = np.array([[[0.0, math.log(3.0)], [math.log(3.0), 0.0], [5.0, -5.0]]], np.float32)
    targets = np.array([[1, 0, -1]], np.int32)
    encodings = np.array([[[0.5, -2.0, 0.0, 0.0], [9, 9, 9, 9], [9, 9, 9, 9]]], np.float32)
    loc_targets = np.zeros((1, 3, 4), np.float32)
    result = losses.detection_losses(logits, encodings, targets, loc_targets, LossConfig())
    # positive: -log(3/4); mined negative (1 of 1): -log(3/4); box: 0.5*0.25 + (2 - 0.5)
    np.testing.assert_allclose(result["cls_loss"].numpy(), -2 * math.log(0.75), rtol=1e-6)
    np.testing.assert_allclose(result["loc_loss"].numpy(), 0.125 + 1.5, rtol=1e-6)


def test_no_positives_gives_zero_loss_and_finite_gradients():
    logits, encodings, targets, loc_targets = random_problem(4)
    targets = np.where(targets > 0, 0, targets)
    logits = tf.Variable(logits)
    encodings = tf.Variable(encodings)
    with tf.GradientTape() as tape:
        result = losses.detection_losses(logits, encodings, targets, loc_targets, LossConfig())
        total = result["cls_loss"] + result["loc_loss"]
    grads = tape.gradient(total, [logits, encodings])
    assert total.numpy() == 0 and result["num_positives"].numpy() == 0
    for g in grads:
        assert g is not None and np.isfinite(g.numpy()).all() and not g.numpy().any()


def test_gradient_is_softmax_minus_onehot_on_kept_anchors():
    logits, encodings, targets, loc_targets = random_problem(5, batch=2, anchors=120)
    ratio = 3.0
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        result = losses.detection_losses(variable, encodings, targets, loc_targets, LossConfig())
    grad = tape.gradient(result["cls_loss"], variable).numpy()
    kept = (targets > 0) | np_mined(logits, targets, ratio)
    probs = np.exp(np_log_softmax(logits))
    onehot = np.eye(logits.shape[-1])[np.maximum(targets, 0)]
    expected = np.where(kept[..., None], probs - onehot, 0) / (targets > 0).sum()
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_normalizer_is_honoured():
    logits, encodings, targets, loc_targets = random_problem(6)
    config = LossConfig()
    default = losses.detection_losses(logits, encodings, targets, loc_targets, config)
    n = default["num_positives"].numpy()
    for normalizer, divisor in [(7.0, 7.0), (tf.constant(40.0), 40.0), (0.0, 1.0), (0.25, 1.0)]:
        result = losses.detection_losses(logits, encodings, targets, loc_targets, config,
                                         normalizer=normalizer)
        for key in ("cls_loss", "loc_loss"):
            np.testing.assert_allclose(result[key].numpy(), default[key].numpy() * n / divisor,
                                       rtol=1e-5)


def test_float16_inputs_are_computed_in_float32():
    logits, encodings, targets, loc_targets = random_problem(7)
    config = LossConfig()
    half = losses.detection_losses(tf.constant(logits, tf.float16), tf.constant(encodings, tf.float16),
                                   targets, loc_targets, config)
    cls_ref, loc_ref, _ = np_losses(logits.astype(np.float16), encodings.astype(np.float16),
                                    targets, loc_targets, 3.0, 1.0)
    assert half["cls_loss"].dtype == tf.float32 and half["loc_loss"].dtype == tf.float32
    np.testing.assert_allclose(half["cls_loss"].numpy(), cls_ref, rtol=1e-5)
    np.testing.assert_allclose(half["loc_loss"].numpy(), loc_ref, rtol=1e-5)


# --- sigmoid classification (the TF Object Detection API's weighted sigmoid) ----------------------

SIGMOID = LossConfig(classification="sigmoid")


def np_sigmoid_anchor_loss(logits, targets):
    """Sum over all C columns of -[z log p + (1 - z) log(1 - p)], p = 1 / (1 + e^-x), z one-hot of
    the target with background as column 0; 0 for ignored anchors."""
    x = np.asarray(logits, np.float64)
    z = np.eye(x.shape[-1])[np.maximum(targets, 0)]
    log_p = -np.logaddexp(0.0, -x)  # log sigmoid(x)
    log_not_p = -np.logaddexp(0.0, x)  # log(1 - sigmoid(x))
    loss = -(z * log_p + (1 - z) * log_not_p).sum(-1)
    return np.where(targets >= 0, loss, 0.0)


def test_sigmoid_anchor_loss_hand_computed():
    # zero logits: every column costs log 2; a background anchor's target is column 0
    logits = np.zeros((1, 3, 3), np.float32)
    logits[0, 1] = [math.log(3.0), 0.0, -math.log(3.0)]
    targets = np.array([[2, 0, -1]], np.int32)
    got = losses.anchor_classification_loss(logits, targets, "sigmoid").numpy()
    # anchor 1: column 0 target 1 at p = 3/4, column 1 target 0 at p = 1/2, column 2 target 0 at 1/4
    expected = [3 * math.log(2.0), -math.log(0.75) + math.log(2.0) - math.log(0.75), 0.0]
    np.testing.assert_allclose(got[0], expected, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigmoid_losses_match_numpy_reference(seed):
    """"ssd" mining with sigmoid ranks negatives by their sigmoid loss; both sums / positives."""
    logits, encodings, targets, loc_targets = random_problem(seed)
    result = losses.detection_losses(logits, encodings, targets, loc_targets, SIGMOID)
    anchor_loss = np_sigmoid_anchor_loss(logits, targets)
    np.testing.assert_allclose(losses.anchor_classification_loss(logits, targets, "sigmoid").numpy(),
                               anchor_loss, rtol=1e-5, atol=1e-6)
    positive = targets > 0
    mined = np.zeros(targets.shape, bool)
    for b in range(targets.shape[0]):
        negatives = np.flatnonzero(targets[b] == 0)
        k = min(int(3 * positive[b].sum()), len(negatives))
        mined[b, negatives[np.argsort(-anchor_loss[b, negatives], kind="stable")[:k]]] = True
    kept = positive | mined
    np.testing.assert_array_equal(result["seen"].numpy(), kept)
    _, loc_ref, n = np_losses(logits, encodings, targets, loc_targets, 3.0, 1.0)
    np.testing.assert_allclose(result["cls_loss"].numpy(), anchor_loss[kept].sum() / n, rtol=1e-5)
    np.testing.assert_allclose(result["loc_loss"].numpy(), loc_ref, rtol=1e-5)


def test_sigmoid_gradient_is_sigmoid_minus_onehot_on_every_column():
    logits, encodings, targets, loc_targets = random_problem(5, batch=2, anchors=120)
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        result = losses.detection_losses(variable, encodings, targets, loc_targets, SIGMOID)
    grad = tape.gradient(result["cls_loss"], variable).numpy()
    kept = result["seen"].numpy()
    onehot = np.eye(logits.shape[-1])[np.maximum(targets, 0)]
    expected = np.where(kept[..., None], 1 / (1 + np.exp(-logits.astype(np.float64))) - onehot, 0)
    np.testing.assert_allclose(grad, expected / (targets > 0).sum(), atol=1e-6)


def test_classification_accuracy():
    logits = np.array([[[2, 1, 0], [0, 3, 1], [0, 1, 3], [5, 0, 0]]], np.float32)
    targets = np.array([[0, 1, 1, -1]], np.int32)
    assert losses.classification_accuracy(logits, targets).numpy() == pytest.approx(2 / 3)
    positives = targets > 0
    assert losses.classification_accuracy(logits, targets, positives).numpy() == pytest.approx(0.5)
    assert losses.classification_accuracy(logits, np.full((1, 4), -1, np.int32)).numpy() == 0


def test_loss_decreases_under_sgd():
    rng = np.random.default_rng(8)
    batch, anchors, features, classes = 2, 64, 8, 4
    x = tf.constant(rng.normal(size=(batch, anchors, features)), tf.float32)
    targets = np.where(rng.uniform(size=(batch, anchors)) < 0.15,
                       rng.integers(1, classes, (batch, anchors)), 0).astype(np.int32)
    loc_targets = np.where((targets > 0)[..., None], rng.normal(0, 1, (batch, anchors, 4)),
                           0).astype(np.float32)
    keras.utils.set_random_seed(0)
    head = keras.layers.Dense(classes + 4)
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    config = LossConfig()

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = head(x)
            result = losses.detection_losses(out[..., :classes], out[..., classes:], targets,
                                             loc_targets, config)
            total = result["cls_loss"] + result["loc_loss"]
        grads = tape.gradient(total, head.trainable_variables)
        optimizer.apply_gradients(zip(grads, head.trainable_variables))
        return total

    history = [float(step()) for _ in range(30)]
    assert np.isfinite(history).all()
    assert history[-1] < 0.7 * history[0]


# --- weight decay -----------------------------------------------------------------------------

class _ChannelScale(keras.layers.Layer):
    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],),
                                     initializer=keras.initializers.Constant(20.0))

    def call(self, x):
        return x * self.scale


def _small_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv4_3", bias_initializer="random_normal")(inputs)
    x = _ChannelScale(name="conv4_3_norm")(x)
    x = keras.layers.BatchNormalization(name="conv8_1_bn", gamma_initializer="random_normal",
                                        beta_initializer="random_normal")(x)
    x = keras.layers.Conv2D(2, 1, name="cls_0", bias_initializer="random_normal")(x)
    return keras.Model(inputs, x)


def test_weight_decay_hand_computed():
    model = _small_model()
    weights = {v.path: v.numpy().astype(np.float64) for v in model.weights}
    half_square = {path: 0.5 * np.sum(w ** 2) for path, w in weights.items()}
    kernels = half_square["conv4_3/kernel"] + half_square["cls_0/kernel"]
    biases = half_square["conv4_3/bias"] + half_square["cls_0/bias"]
    scale = 0.5 * 4 * 20.0 ** 2
    assert half_square["conv4_3_norm/scale"] == pytest.approx(scale)

    config = LossConfig(weight_decay=5e-4, decay_biases=True, norm_scale_decay_multiplier=0.1)
    expected = 5e-4 * (kernels + biases + 0.1 * scale)
    assert float(losses.weight_decay_loss(model, config)) == pytest.approx(expected, rel=1e-5)

    config = LossConfig(weight_decay=1e-3, decay_biases=False, norm_scale_decay_multiplier=0.0)
    assert float(losses.weight_decay_loss(model, config)) == pytest.approx(1e-3 * kernels, rel=1e-5)

    # batch norm is excluded: changing its variables changes nothing
    for v in model.weights:
        if v.path.startswith("conv8_1_bn/"):
            v.assign(v + 3.0)
    assert float(losses.weight_decay_loss(model, config)) == pytest.approx(1e-3 * kernels, rel=1e-5)
    assert float(losses.weight_decay_loss(model, LossConfig(weight_decay=0.0))) == 0.0


def test_is_bias_is_the_rule_weight_decay_uses_for_biases():
    model = _small_model()
    assert {v.path for v in model.trainable_variables if losses.is_bias(v)} == \
        {"conv4_3/bias", "cls_0/bias"}  # not kernels, the norm scale or batch-norm beta
    kernels_only = LossConfig(weight_decay=1.0, decay_biases=False, norm_scale_decay_multiplier=0.0)
    with_biases = LossConfig(weight_decay=1.0, decay_biases=True, norm_scale_decay_multiplier=0.0)
    bias_terms = sum(0.5 * np.sum(v.numpy().astype(np.float64) ** 2)
                     for v in model.trainable_variables if losses.is_bias(v))
    difference = float(losses.weight_decay_loss(model, with_biases)) - float(
        losses.weight_decay_loss(model, kernels_only))
    assert difference == pytest.approx(bias_terms, rel=1e-4)


def test_weight_decay_skips_frozen_and_rejects_unknown_variables():
    model = _small_model()
    model.get_layer("conv4_3").trainable = False
    config = LossConfig(weight_decay=1.0, decay_biases=True, norm_scale_decay_multiplier=0.0)
    kernel, bias = model.get_layer("cls_0").kernel.numpy(), model.get_layer("cls_0").bias.numpy()
    expected = 0.5 * (np.sum(kernel.astype(np.float64) ** 2) + np.sum(bias.astype(np.float64) ** 2))
    assert float(losses.weight_decay_loss(model, config)) == pytest.approx(expected, rel=1e-5)

    inputs = keras.Input((3,))
    outputs = _ChannelScale(name="other_norm")(inputs)
    with pytest.raises(ValueError, match="other_norm/scale"):
        losses.weight_decay_loss(keras.Model(inputs, outputs), config)
