import numpy as np
import pytest
import tensorflow as tf

from ssd.modeling import boxes
from ssd.modeling.anchors import generate_anchors
from ssd.config.loading import MatchingConfig, load_config

VARIANCES = (0.1, 0.1, 0.2, 0.2)


# --- numpy reference --------------------------------------------------------------------------

def np_iou(a, b):
    a = np.asarray(a, np.float64)[:, None, :]
    b = np.asarray(b, np.float64)[None, :, :]
    ih = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iw = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ih * iw
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def np_match(overlaps, positive_threshold, negative_threshold):
    """Caffe-style matching on an [A, G] IoU matrix, written as plain loops over pairs."""
    num_anchors, num_gt = overlaps.shape
    matched = np.full(num_anchors, -1)
    match_iou = overlaps.max(axis=1) if num_gt else np.zeros(num_anchors)
    match_iou = np.maximum(match_iou, 0)
    free_gt = list(range(num_gt))
    while free_gt:
        best, best_pair = 0.0, None
        for a in range(num_anchors):  # Caffe's scan order: default boxes, then ground truths
            if matched[a] != -1:
                continue
            for g in free_gt:
                if overlaps[a, g] > best:
                    best, best_pair = overlaps[a, g], (a, g)
        if best_pair is None:
            break
        a, g = best_pair
        matched[a] = g
        match_iou[a] = best
        free_gt.remove(g)
    forced = matched >= 0
    for a in range(num_anchors):
        if forced[a] or num_gt == 0:
            continue
        g = int(np.argmax(overlaps[a]))  # first maximum
        if overlaps[a, g] >= positive_threshold and overlaps[a, g] > 0:
            matched[a] = g
        elif overlaps[a, g] >= negative_threshold:
            matched[a] = -2
    return matched, match_iou


def np_encode(g, a, v):
    g = np.asarray(g, np.float64)
    a = np.asarray(a, np.float64)
    gc = np.stack([(g[..., 0] + g[..., 2]) / 2, (g[..., 1] + g[..., 3]) / 2,
                   g[..., 2] - g[..., 0], g[..., 3] - g[..., 1]], -1)
    ac = np.stack([(a[..., 0] + a[..., 2]) / 2, (a[..., 1] + a[..., 3]) / 2,
                   a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]], -1)
    return np.stack([(gc[..., 0] - ac[..., 0]) / ac[..., 2] / v[0],
                     (gc[..., 1] - ac[..., 1]) / ac[..., 3] / v[1],
                     np.log(gc[..., 2] / ac[..., 2]) / v[2],
                     np.log(gc[..., 3] / ac[..., 3]) / v[3]], -1)


def np_targets(gt, labels, anchors, overlaps, pos, neg, variances):
    matched, match_iou = np_match(overlaps, pos, neg)
    cls = np.where(matched >= 0, labels[np.maximum(matched, 0)] if len(labels) else 0,
                   np.where(matched == -2, -1, 0))
    loc = np.zeros((len(anchors), 4))
    positive = matched >= 0
    if positive.any():
        loc[positive] = np_encode(gt[matched[positive]], anchors[positive], variances)
    return matched, match_iou, cls, loc


def random_boxes(rng, n, low=0.02, high=0.6):
    centre = rng.uniform(0.0, 1.0, (n, 2))
    size = rng.uniform(low, high, (n, 2))
    return np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)


# --- box arithmetic ---------------------------------------------------------------------------

def test_iou_against_reference_and_hand_values():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    np.testing.assert_allclose(boxes.iou(a, b).numpy(), np_iou(a, b), atol=1e-6)
    got = boxes.iou([[0, 0, 1, 1], [0, 0, 0, 0]], [[0, 0, 0.5, 1], [2, 2, 3, 3], [0, 0, 0, 0]])
    np.testing.assert_allclose(got.numpy(), [[0.5, 0, 0], [0, 0, 0]], atol=1e-7)


def test_iou_empty_inputs():
    assert boxes.iou(np.zeros((0, 4), np.float32), np.zeros((3, 4), np.float32)).shape == (0, 3)
    assert boxes.iou(np.zeros((2, 4), np.float32), np.zeros((0, 4), np.float32)).shape == (2, 0)


def test_centers_corners_round_trip():
    b = random_boxes(np.random.default_rng(2), 10)
    c = boxes.to_centers(b).numpy()
    np.testing.assert_allclose(c[:, 0], (b[:, 0] + b[:, 2]) / 2, atol=1e-7)
    np.testing.assert_allclose(c[:, 3], b[:, 3] - b[:, 1], atol=1e-7)
    np.testing.assert_allclose(boxes.to_corners(c).numpy(), b, atol=1e-6)


def test_encode_matches_formula_and_decode_inverts():
    rng = np.random.default_rng(3)
    g = random_boxes(rng, 2 * 7).reshape(2, 7, 4)
    a = random_boxes(rng, 7)  # broadcast over the leading batch dimension
    t = boxes.encode(g, a, VARIANCES)
    assert t.shape == (2, 7, 4)
    np.testing.assert_allclose(t.numpy(), np_encode(g, a, VARIANCES), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(boxes.decode(t, a, VARIANCES).numpy(), g, atol=1e-5)


def test_encode_hand_value():
    anchor = [[0.2, 0.3, 0.6, 0.5]]  # centre (0.4, 0.4), h 0.4, w 0.2
    gt = [[0.3, 0.2, 0.7, 0.6]]  # centre (0.5, 0.4), h 0.4, w 0.4
    expected = [[(0.5 - 0.4) / 0.4 / 0.1, 0.0, 0.0, np.log(2.0) / 0.2]]
    np.testing.assert_allclose(boxes.encode(gt, anchor, VARIANCES).numpy(), expected, atol=1e-5)


def test_decode_zero_offsets_gives_anchors():
    anchors = random_boxes(np.random.default_rng(4), 9)
    np.testing.assert_allclose(boxes.decode(np.zeros((9, 4)), anchors, VARIANCES).numpy(),
                               anchors, atol=1e-6)


# --- matching ---------------------------------------------------------------------------------

def _check_against_reference(gt, labels, anchors, pos, neg):
    config = MatchingConfig(positive_threshold=pos, negative_threshold=neg)
    cls, loc, match_iou = boxes.encode_targets(gt, labels, anchors, config)
    matched, _ = boxes.match(gt, anchors, pos, neg)
    # the reference matches on the same float32 IoU values so that near-ties compare identically;
    # the IoU itself is checked against np_iou above and here
    overlaps = boxes.iou(anchors, gt).numpy() if len(gt) else np.zeros((len(anchors), 0), np.float32)
    np.testing.assert_allclose(overlaps, np_iou(anchors, gt).reshape(len(anchors), len(gt)),
                               atol=1e-6)
    ref_matched, ref_iou, ref_cls, ref_loc = np_targets(
        gt, labels, anchors, overlaps, pos, neg, VARIANCES)
    np.testing.assert_array_equal(matched.numpy(), ref_matched)
    np.testing.assert_allclose(match_iou.numpy(), ref_iou, atol=1e-6)
    np.testing.assert_array_equal(cls.numpy(), ref_cls)
    np.testing.assert_allclose(loc.numpy(), ref_loc, rtol=1e-4, atol=1e-4)
    return ref_matched


def test_matching_random_small_anchor_sets():
    rng = np.random.default_rng(5)
    seen_forced_low = seen_ignored = 0
    for case in range(60):
        num_gt = int(rng.integers(0, 11))
        gt = random_boxes(rng, num_gt)
        labels = rng.integers(1, 21, num_gt).astype(np.int32)
        anchors = random_boxes(rng, int(rng.integers(5, 80)), 0.05, 0.5)
        pos = 0.5
        neg = 0.5 if case % 2 else 0.3
        matched = _check_against_reference(gt, labels, anchors, pos, neg)
        seen_ignored += int((matched == -2).sum())
        overlaps = np_iou(anchors, gt)
        seen_forced_low += sum(1 for a in np.flatnonzero(matched >= 0)
                               if overlaps[a, matched[a]] < pos)
    # the random cases exercise both special rules
    assert seen_forced_low > 0 and seen_ignored > 0


@pytest.fixture(scope="module")
def ssd300_anchors():
    return generate_anchors(load_config("ssd300_voc0712"))


@pytest.mark.parametrize("seed, num_gt", [(6, 1), (7, 4), (8, 10)])
def test_matching_real_ssd300_anchors(ssd300_anchors, seed, num_gt):
    rng = np.random.default_rng(seed)
    gt = random_boxes(rng, num_gt, 0.03, 0.8)
    labels = rng.integers(1, 21, num_gt).astype(np.int32)
    matched = _check_against_reference(gt, labels, ssd300_anchors, 0.5, 0.5)
    assert set(np.unique(matched[matched >= 0])) == set(range(num_gt))


def test_forced_low_iou_match():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], np.float32)
    gt = np.array([[0.0, 0.0, 0.1, 0.25]], np.float32)  # IoU with anchor 0 = 0.025 / 0.25 = 0.1
    matched, match_iou = boxes.match(gt, anchors, 0.5, 0.5)
    np.testing.assert_array_equal(matched.numpy(), [0, -1])
    np.testing.assert_allclose(match_iou.numpy(), [0.1, 0.0], atol=1e-6)


def test_two_ground_truths_want_one_box_loser_falls_back():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.5, 0.5, 1.0], [0.6, 0.6, 1.0, 1.0]], np.float32)
    gt = np.array([
        [0.0, 0.1, 0.5, 0.55],  # IoU 0.2 / 0.275 with anchor 0, 0.025 / 0.45 with anchor 1
        [0.0, 0.0, 0.5, 0.45],  # IoU 0.225 / 0.25 = 0.9 with anchor 0
    ], np.float32)
    matched, match_iou = boxes.match(gt, anchors, 0.5, 0.5)
    np.testing.assert_array_equal(matched.numpy(), [1, 0, -1])
    np.testing.assert_allclose(match_iou.numpy(), [0.9, 0.025 / 0.45, 0.0], atol=1e-6)


def test_tie_rules():
    box = [0.0, 0.0, 0.5, 0.5]
    far = [0.8, 0.8, 0.9, 0.9]
    small = [0.0, 0.0, 0.25, 0.5]  # IoU 0.5 with box
    # identical default boxes 1 and 3: the lower index is forced
    anchors = np.array([far, [0.0, 0.0, 1.0, 1.0], far, [0.0, 0.0, 1.0, 1.0]], np.float32)
    matched, _ = boxes.match(np.array([box], np.float32), anchors, 0.5, 0.5)
    np.testing.assert_array_equal(matched.numpy(), [-1, 0, -1, -1])
    # identical ground truths: the lower one takes the shared best box, the other falls back
    anchors = np.array([far, small, box], np.float32)
    matched, match_iou = boxes.match(np.array([box, box], np.float32), anchors, 0.6, 0.6)
    np.testing.assert_array_equal(matched.numpy(), [-1, 1, 0])
    np.testing.assert_allclose(match_iou.numpy(), [0.0, 0.5, 1.0], atol=1e-6)
    # a non-forced box tied between two ground truths takes the lower index
    gt = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5]], np.float32)
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 0.5],
                        [0.0, 0.0, 0.5, 0.5]], np.float32)
    matched, _ = boxes.match(gt, anchors, 0.5, 0.5)
    np.testing.assert_array_equal(matched.numpy(), [0, 2, 1, 0])


def test_ignored_band():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5],   # forced to the ground truth
                        [0.0, 0.0, 0.5, 0.3],   # IoU 0.6
                        [0.0, 0.0, 0.5, 0.225],  # IoU 0.45
                        [0.0, 0.0, 0.5, 0.15],  # IoU 0.3
                        [0.6, 0.6, 1.0, 1.0]], np.float32)
    gt = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
    labels = np.array([7], np.int32)
    config = MatchingConfig(positive_threshold=0.5, negative_threshold=0.4)
    cls, loc, match_iou = boxes.encode_targets(gt, labels, anchors, config)
    np.testing.assert_array_equal(cls.numpy(), [7, 7, -1, 0, 0])
    np.testing.assert_allclose(match_iou.numpy(), [1.0, 0.6, 0.45, 0.3, 0.0], atol=1e-6)
    np.testing.assert_allclose(loc.numpy()[0], [0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(loc.numpy()[1], [0, (0.25 - 0.15) / 0.3 / 0.1, 0, np.log(0.5 / 0.3) / 0.2],
                               atol=1e-5)
    assert not loc.numpy()[2:].any()
    # with equal thresholds there is no ignored band
    config = MatchingConfig(positive_threshold=0.5, negative_threshold=0.5)
    cls, _, _ = boxes.encode_targets(gt, labels, anchors, config)
    np.testing.assert_array_equal(cls.numpy(), [7, 7, 0, 0, 0])


def test_threshold_boundaries_are_inclusive():
    gt = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
    anchors = np.array([[0.0, 0.0, 0.5, 0.5],      # forced
                        [0.0, 0.0, 0.5, 0.25],     # IoU exactly 0.5: positive
                        [0.0, 0.0, 0.5, 0.125],    # IoU exactly 0.25: ignored
                        [0.0, 0.0, 0.5, 0.0625]],  # IoU 0.125: background
                       np.float32)
    matched, _ = boxes.match(gt, anchors, 0.5, 0.25)
    np.testing.assert_array_equal(matched.numpy(), [0, 0, -2, -1])


def test_no_ground_truth(ssd300_anchors):
    cls, loc, match_iou = boxes.encode_targets(np.zeros((0, 4), np.float32), np.zeros((0,), np.int32),
                                               ssd300_anchors, MatchingConfig())
    assert cls.shape == (8732,) and loc.shape == (8732, 4) and match_iou.shape == (8732,)
    assert not cls.numpy().any() and not loc.numpy().any() and not match_iou.numpy().any()


def test_padding_mask_and_zero_area_ground_truth():
    rng = np.random.default_rng(9)
    anchors = random_boxes(rng, 40, 0.05, 0.5)
    gt = random_boxes(rng, 3)
    labels = np.array([3, 1, 2], np.int32)
    config = MatchingConfig()
    expected = [t.numpy() for t in boxes.encode_targets(gt, labels, anchors, config)]
    padded = np.concatenate([gt[:1], np.zeros((2, 4), np.float32), gt[1:]])
    padded_labels = np.array([3, 0, 0, 1, 2], np.int32)
    valid = np.array([True, False, False, True, True])
    cls, loc, iou_ = boxes.encode_targets(padded, padded_labels, anchors, config, gt_valid=valid)
    np.testing.assert_array_equal(cls.numpy(), expected[0])
    np.testing.assert_allclose(loc.numpy(), expected[1], atol=1e-6)
    np.testing.assert_allclose(iou_.numpy(), expected[2], atol=1e-6)
    # an unmasked zero-area box overlaps nothing: it is never matched and produces no NaN
    cls, loc, iou_ = boxes.encode_targets(padded, padded_labels, anchors, config)
    np.testing.assert_array_equal(cls.numpy(), expected[0])
    assert np.isfinite(loc.numpy()).all()


def test_runs_in_tf_function_with_dynamic_g(ssd300_anchors):
    config = MatchingConfig()

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32),
                                  tf.TensorSpec([None], tf.int32)])
    def targets(gt, labels):
        return boxes.encode_targets(gt, labels, ssd300_anchors, config)

    rng = np.random.default_rng(10)
    for num_gt in (0, 1, 5):
        gt = random_boxes(rng, num_gt)
        labels = np.arange(1, num_gt + 1, dtype=np.int32)
        cls, loc, _ = targets(gt, labels)
        eager_cls, eager_loc, _ = boxes.encode_targets(gt, labels, ssd300_anchors, config)
        np.testing.assert_array_equal(cls.numpy(), eager_cls.numpy())
        np.testing.assert_allclose(loc.numpy(), eager_loc.numpy(), atol=1e-6)
        assert set(np.unique(cls.numpy())) - {0} == set(labels)
    assert targets.experimental_get_tracing_count() == 1


def test_runs_in_tf_data_map():
    rng = np.random.default_rng(11)
    anchors = random_boxes(rng, 30, 0.05, 0.5)
    config = MatchingConfig()
    samples = [random_boxes(rng, n) for n in (0, 2, 7)]
    ragged = tf.ragged.constant([s.tolist() for s in samples], ragged_rank=1, inner_shape=(4,),
                                dtype=tf.float32)

    def to_targets(gt):
        labels = tf.ones([tf.shape(gt)[0]], tf.int32)
        return boxes.encode_targets(gt, labels, anchors, config)

    dataset = tf.data.Dataset.from_tensor_slices(ragged).map(to_targets)
    for gt, (cls, loc, match_iou) in zip(samples, dataset):
        overlaps = np_iou(anchors, gt).reshape(len(anchors), len(gt)).astype(np.float32)
        _, ref_iou, ref_cls, ref_loc = np_targets(gt, np.ones(len(gt), np.int32), anchors, overlaps,
                                                  0.5, 0.5, VARIANCES)
        np.testing.assert_array_equal(cls.numpy(), ref_cls)
        np.testing.assert_allclose(loc.numpy(), ref_loc, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(match_iou.numpy(), ref_iou, atol=1e-6)
