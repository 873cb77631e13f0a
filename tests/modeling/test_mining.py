"""The TF Object Detection API's hard example miner ("tfod") against a numpy reference."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from ssd.config.loading import LossConfig, load_config
from ssd.engine.estimator import ModelContext
from ssd.engine.model_fn import SSDModelFn
from ssd.modeling import losses, mining
from tests.modeling.test_postprocess import np_decode

# the API's ssdlite_mobilenet_v2_coco miner: 3000 examples, NMS at 0.99, 3 negatives per positive,
# at least 3 negatives per image
TFOD = LossConfig(classification="sigmoid", hard_example_mining="tfod")


# --- numpy reference --------------------------------------------------------------------------

def np_iou(a, b):
    """IoU of box a [4] with boxes b [..., 4] (positive-area boxes)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    inter = (np.maximum(np.minimum(a[2], b[..., 2]) - np.maximum(a[0], b[..., 0]), 0)
             * np.maximum(np.minimum(a[3], b[..., 3]) - np.maximum(a[1], b[..., 1]), 0))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return inter / union


def np_nms(boxes, scores, max_output, iou_threshold):
    """Greedy: visit by decreasing score, skip a box whose IoU with a selected one is > threshold."""
    selected = []
    for i in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        if len(selected) == max_output:
            break
        if not np.any(np_iou(boxes[i], boxes[selected]) > iou_threshold):
            selected.append(i)
    return selected


def np_tfod_mined(cls_losses, boxes, targets, config):
    mined = np.zeros(targets.shape, bool)
    for b in range(targets.shape[0]):
        selected = np_nms(boxes[b], cls_losses[b], config.miner_num_hard_examples, config.miner_iou_threshold)
        positives = [i for i in selected if targets[b, i] > 0]
        cap = max(config.min_negatives_per_image, int(config.negative_ratio * len(positives)))
        negatives = [i for i in selected if targets[b, i] == 0][:cap]
        mined[b, positives + negatives] = True
    return mined


def mined(cls_losses, boxes, targets, config=TFOD):
    return mining.tfod_hard_examples(tf.constant(cls_losses, tf.float32), tf.constant(boxes, tf.float32),
                                     tf.constant(targets, tf.int32), config).numpy()


def grid_boxes(n, size=0.08):
    """n disjoint boxes on a 10 x 10 grid (IoU 0 with each other)."""
    return np.array([[r / 10, c / 10, r / 10 + size, c / 10 + size] for r, c in
                     (divmod(i, 10) for i in range(n))], np.float32)


# --- hand-made cases --------------------------------------------------------------------------

def test_nms_at_0_99_drops_a_near_duplicate_of_a_costlier_box():
    boxes = grid_boxes(6)
    boxes[1] = boxes[0] + [0, 0, 0, 0.0004]  # IoU 0.08 / 0.0804 = 0.995 with box 0: dropped
    boxes[2] = boxes[0] + [0, 0, 0.0012, 0]  # IoU 0.985 with box 0, 0.980 with box 1: kept
    assert np_iou(boxes[0], boxes[1]) > 0.99 > max(np_iou(boxes[0], boxes[2]), np_iou(boxes[1], boxes[2]))
    cls_losses = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.5]])
    targets = np.array([[1, 0, 0, 0, 0, 0]])  # 1 positive: max(3, 3) = 3 negatives
    got = mined(cls_losses, boxes[None], targets)
    np.testing.assert_array_equal(got, [[True, False, True, True, True, False]])
    np.testing.assert_array_equal(got, np_tfod_mined(cls_losses, boxes[None], targets, TFOD))
    # NMS visits by loss: now the positive is the cheaper of the pair and goes, and with no
    # positive left the image gets the minimum of 3 negatives
    cls_losses = np.array([[1.0, 4.0, 3.0, 2.0, 5.0, 0.5]])
    got = mined(cls_losses, boxes[None], targets)
    np.testing.assert_array_equal(got, [[False, True, True, False, True, False]])
    np.testing.assert_array_equal(got, np_tfod_mined(cls_losses, boxes[None], targets, TFOD))


def test_an_image_without_positives_gets_the_3_costliest_negatives():
    boxes = grid_boxes(10)[None]
    cls_losses = np.array([[0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.4, 0.05, 0.6, 0.5]])
    targets = np.zeros((1, 10), np.int32)
    got = mined(cls_losses, boxes, targets)
    np.testing.assert_array_equal(np.flatnonzero(got[0]), [1, 3, 5])
    np.testing.assert_array_equal(got, np_tfod_mined(cls_losses, boxes, targets, TFOD))
    none = dataclasses.replace(TFOD, min_negatives_per_image=0)
    assert not mined(cls_losses, boxes, targets, none).any()


def test_negatives_are_capped_per_positive_and_positives_always_kept():
    boxes = grid_boxes(12)[None]
    cls_losses = np.array([[0.01, 0.02] + [float(v) for v in range(10, 0, -1)]])  # positives cheapest
    targets = np.array([[2, 1] + [0] * 10])
    got = mined(cls_losses, boxes, targets)
    np.testing.assert_array_equal(np.flatnonzero(got[0]), [0, 1, 2, 3, 4, 5, 6, 7])  # 3 x 2 = 6
    ratio = dataclasses.replace(TFOD, negative_ratio=2.5)  # int(2.5 x 2) = 5
    np.testing.assert_array_equal(np.flatnonzero(mined(cls_losses, boxes, targets, ratio)[0]),
                                  [0, 1, 2, 3, 4, 5, 6])
    one = np.array([[0, 1] + [0] * 10])  # int(2.5 x 1) = 2 < the minimum of 3
    np.testing.assert_array_equal(np.flatnonzero(mined(cls_losses, boxes, one, ratio)[0]), [1, 2, 3, 4])


def test_ignored_anchors_are_never_mined_and_do_not_count():
    boxes = grid_boxes(6)[None]
    cls_losses = np.array([[0.0, 9.0, 8.0, 1.0, 0.5, 0.2]])  # ignored anchors' loss is 0 ...
    targets = np.array([[-1, -1, 1, 0, 0, 0]])  # ... but even with a loss they stay out
    got = mined(cls_losses, boxes, targets)
    np.testing.assert_array_equal(got, [[False, False, True, True, True, True]])


def test_num_hard_examples_bounds_the_selection_positives_included():
    boxes = grid_boxes(8)[None]
    cls_losses = np.array([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    targets = np.array([[0, 0, 1, 0, 0, 0, 0, 3]])  # anchor 7 is a positive past the 4 selected
    few = dataclasses.replace(TFOD, miner_num_hard_examples=4)
    got = mined(cls_losses, boxes, targets, few)
    np.testing.assert_array_equal(np.flatnonzero(got[0]), [0, 1, 2, 3])
    np.testing.assert_array_equal(got, np_tfod_mined(cls_losses, boxes, targets, few))


# --- random problems --------------------------------------------------------------------------

def random_problem(seed, batch=3, anchors=400, classes=5):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.1, 0.9, (batch, anchors, 2))
    sizes = rng.uniform(0.05, 0.3, (batch, anchors, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], -1)
    # near-copies for the NMS to find (IoU > 0.999 with box 5k) and loose copies it keeps (< 0.99)
    boxes[:, 1::5] = boxes[:, 0::5] * (1 + rng.uniform(-1e-5, 1e-5, boxes[:, 0::5].shape))
    boxes[:, 2::5] = boxes[:, 0::5] + rng.choice([-1, 1], boxes[:, 0::5].shape) * 0.004
    u = rng.uniform(size=(batch, anchors))
    targets = np.where(u < 0.03, rng.integers(1, classes, (batch, anchors)),
                       np.where(u < 0.08, -1, 0)).astype(np.int32)
    targets[0] = np.where(targets[0] > 0, 0, targets[0])  # an image without positives
    logits = rng.normal(0, 2, (batch, anchors, classes)).astype(np.float32)
    encodings = rng.normal(0, 1, (batch, anchors, 4)).astype(np.float32)
    loc_targets = np.where((targets > 0)[..., None], rng.normal(0, 1, (batch, anchors, 4)), 0)
    return boxes.astype(np.float32), targets, logits, encodings, loc_targets.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_hard, ratio", [(3000, 3.0), (60, 1.5)])
def test_miner_matches_numpy_reference(seed, num_hard, ratio):
    boxes, targets, logits, _, _ = random_problem(seed)
    config = dataclasses.replace(TFOD, miner_num_hard_examples=num_hard, negative_ratio=ratio)
    cls_losses = losses.anchor_classification_loss(logits, targets, "sigmoid").numpy()
    got = mined(cls_losses, boxes, targets, config)
    expected = np_tfod_mined(cls_losses, boxes, targets, config)
    np.testing.assert_array_equal(got, expected)
    assert got[0].sum() == 3  # no positive in image 0: the minimum
    assert not got[targets < 0].any()


@pytest.mark.parametrize("classification", ["sigmoid", "softmax"])
def test_both_losses_sum_over_the_mined_set_only(classification):
    """The API sums the classification and the box loss over the mined anchors, and divides
    both by all the positives of the batch: a positive the NMS drops adds no box loss."""
    boxes, targets, logits, encodings, loc_targets = random_problem(5)
    config = dataclasses.replace(TFOD, classification=classification)
    result = losses.detection_losses(logits, encodings, targets, loc_targets, config, predicted_boxes=boxes)
    anchor_loss = losses.anchor_classification_loss(logits, targets, classification).numpy()
    kept = np_tfod_mined(anchor_loss, boxes, targets, config)
    positive = targets > 0
    assert (positive & ~kept).any()  # some positive was dropped by the NMS: the case that matters
    diff = np.abs(encodings.astype(np.float64) - loc_targets)
    smooth = np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).sum(-1)
    n = positive.sum()
    np.testing.assert_allclose(result["cls_loss"].numpy(), anchor_loss[kept].sum() / n, rtol=1e-5)
    np.testing.assert_allclose(result["loc_loss"].numpy(), smooth[kept & positive].sum() / n, rtol=1e-5)
    np.testing.assert_array_equal(result["seen"].numpy(), kept)
    assert result["num_positives"].numpy() == n


def test_tfod_miner_needs_the_predicted_boxes():
    _, targets, logits, encodings, loc_targets = random_problem(0)
    with pytest.raises(ValueError, match="predicted_boxes"):
        losses.detection_losses(logits, encodings, targets, loc_targets, TFOD)


def test_mining_is_not_differentiated_through():
    boxes, targets, logits, encodings, loc_targets = random_problem(1)
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        result = losses.detection_losses(variable, encodings, targets, loc_targets, TFOD,
                                         predicted_boxes=boxes)
    gradient = tape.gradient(result["cls_loss"], variable).numpy()
    kept = result["seen"].numpy()
    assert np.all(gradient[~kept] == 0)
    # sigmoid cross-entropy: d/dx = sigmoid(x) - one_hot, over the kept anchors, / N
    one_hot = np.eye(logits.shape[-1])[np.maximum(targets, 0)]
    expected = (1 / (1 + np.exp(-logits.astype(np.float64))) - one_hot) / (targets > 0).sum()
    np.testing.assert_allclose(gradient[kept], expected[kept], atol=1e-6)


def test_the_training_step_mines_over_the_boxes_decoded_from_its_default_boxes():
    """SSDModelFn gives the miner the box encodings decoded against the recipe's default boxes
    (the API's decoded predictions, unclipped)."""
    config = load_config("ssdlite320_shapes_cpu", {"model.width_multiplier": 0.35,
                                                   "loss.classification": "sigmoid",
                                                   "loss.hard_example_mining": "tfod"})
    holder = SSDModelFn(config, ModelContext(tf.Variable(0, dtype=tf.int64), num_replicas=1))
    anchors = holder.anchors.numpy()
    rng = np.random.default_rng(7)
    batch, num_anchors = 2, len(anchors)
    logits = rng.normal(0, 2, (batch, num_anchors, 5)).astype(np.float32)
    encodings = rng.normal(0, 1, (batch, num_anchors, 4)).astype(np.float32)
    targets = np.where(rng.uniform(size=(batch, num_anchors)) < 0.02,
                       rng.integers(1, 5, (batch, num_anchors)), 0).astype(np.int32)
    loc_targets = np.where((targets > 0)[..., None], rng.normal(0, 1, (batch, num_anchors, 4)),
                           0).astype(np.float32)
    # anchor j predicts exactly anchor i's predicted box: a duplicate only once decoded
    for b in range(batch):
        pairs = rng.choice(num_anchors, (300, 2), replace=False)
        box = np_decode(encodings[b], anchors)[pairs[:, 0]]
        a = anchors[pairs[:, 1]]
        a_h, a_w = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        encodings[b, pairs[:, 1]] = np.stack([
            ((box[:, 0] + box[:, 2]) - (a[:, 0] + a[:, 2])) / 2 / a_h / 0.1,
            ((box[:, 1] + box[:, 3]) - (a[:, 1] + a[:, 3])) / 2 / a_w / 0.1,
            np.log((box[:, 2] - box[:, 0]) / a_h) / 0.2, np.log((box[:, 3] - box[:, 1]) / a_w) / 0.2], -1)
    features = {"image": tf.zeros([batch, 320, 320, 3])}
    labels = {"cls_targets": tf.constant(targets), "loc_targets": tf.constant(loc_targets)}
    spec = holder._train_spec(features, labels, tf.constant(logits), tf.constant(encodings))

    anchor_loss = losses.anchor_classification_loss(logits, targets, "sigmoid").numpy()
    kept = np_tfod_mined(anchor_loss, np_decode(encodings, anchors), targets, config.loss)
    n = (targets > 0).sum()
    without_nms = dataclasses.replace(config.loss, miner_iou_threshold=1.0)
    assert (kept != np_tfod_mined(anchor_loss, np_decode(encodings, anchors), targets, without_nms)).any()
    np.testing.assert_allclose(spec.scalars["cls_loss"].numpy(), anchor_loss[kept].sum() / n, rtol=1e-5)
