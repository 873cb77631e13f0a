import dataclasses
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from ssd.config.loading import load_config
from ssd.modeling.postprocess import NMS_IMPLEMENTATIONS, object_class_scores, postprocess, to_pixels

VARIANCES = (0.1, 0.1, 0.2, 0.2)


@pytest.fixture(params=NMS_IMPLEMENTATIONS)
def nms(request):
    return request.param


def make_config(num_classes=4, classification="softmax", **eval_overrides):
    overrides = {"model.num_classes": num_classes, "loss.classification": classification,
                 "data.class_names": [f"c{i}" for i in range(1, num_classes)]}
    overrides.update({f"eval.{k}": v for k, v in eval_overrides.items()})
    return load_config("ssd300_voc0712", overrides)


# --- numpy reference -------------------------------------------------------------------------

def np_decode(enc, anchors):
    acy, acx = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    ah, aw = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cy = enc[..., 0] * VARIANCES[0] * ah + acy
    cx = enc[..., 1] * VARIANCES[1] * aw + acx
    h = np.exp(enc[..., 2] * VARIANCES[2]) * ah
    w = np.exp(enc[..., 3] * VARIANCES[3]) * aw
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def np_iou(a, b):
    """IoU of box a [4] with boxes b [..., 4]; 0 when either box is empty."""
    b = np.asarray(b)
    area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
    area_b = np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)
    inter = (np.maximum(np.minimum(a[2], b[..., 2]) - np.maximum(a[0], b[..., 0]), 0)
             * np.maximum(np.minimum(a[3], b[..., 3]) - np.maximum(a[1], b[..., 1]), 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((area_a > 0) & (area_b > 0), inter / (area_a + area_b - inter), 0.0)


def reference(logits, enc, anchors, ev, probs=None):
    """Softmax, threshold, per-class top-k, greedy NMS, global top-K; one image at a time.

    `probs` replaces the softmax where exact ties matter: float32 scores that tie need not tie
    in float64, and the reverse."""
    boxes = np.clip(np_decode(enc.astype(np.float64), anchors.astype(np.float64)), 0, 1)
    if probs is None:
        shifted = logits - logits.max(-1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    results = []
    for b in range(len(logits)):
        dets = []  # (score, class, rank within class, box)
        for c in range(1, logits.shape[-1]):
            s = probs[b, :, c]
            h = boxes[b, :, 2] - boxes[b, :, 0]
            w = boxes[b, :, 3] - boxes[b, :, 1]
            ok = s > ev.score_threshold
            if ev.min_box_size > 0:
                ok &= (h > ev.min_box_size) & (w > ev.min_box_size)
            idx = np.flatnonzero(ok)
            idx = idx[np.argsort(-s[idx], kind="stable")][:ev.pre_nms_top_k]
            kept = []
            for i in idx:
                if not np.any(np_iou(boxes[b, i], boxes[b, kept]) > ev.nms_iou_threshold):
                    kept.append(i)
            dets += [(s[i], c, r, boxes[b, i]) for r, i in enumerate(kept)]
        dets.sort(key=lambda d: (-d[0], d[1], d[2]))
        results.append(dets[:ev.max_detections])
    return results


def check_against_reference(out, logits, enc, anchors, ev, probs=None):
    expected = reference(logits, enc, anchors, ev, probs)
    K = ev.max_detections
    for b, dets in enumerate(expected):
        n = len(dets)
        assert out["num_detections"][b] == n
        np.testing.assert_array_equal(out["classes"][b, :n], [d[1] for d in dets])
        np.testing.assert_allclose(out["scores"][b, :n], [d[0] for d in dets], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(out["boxes"][b, :n], np.array([d[3] for d in dets]).reshape(-1, 4),
                                   atol=2e-6)
        assert np.all(out["scores"][b, n:] == 0) and np.all(out["classes"][b, n:] == 0)
        assert np.all(out["boxes"][b, n:] == 0)
        assert out["scores"].shape == (len(expected), K)


def run(logits, enc, anchors, config, nms="combined"):
    out = postprocess(tf.constant(logits, tf.float32), tf.constant(enc, tf.float32), anchors, config,
                      nms=nms)
    return {k: v.numpy() for k, v in out.items()}


def random_case(rng, batch, num_anchors, num_classes, logit_scale):
    centers = rng.uniform(0, 1, (num_anchors, 2))
    sizes = rng.uniform(0.05, 0.5, (num_anchors, 2))
    anchors = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(np.float32)
    logits = (rng.normal(0, logit_scale, (batch, num_anchors, num_classes))).astype(np.float32)
    enc = rng.normal(0, 1, (batch, num_anchors, 4)).astype(np.float32)
    return logits, enc, anchors


@pytest.mark.parametrize("seed,overrides", [
    (0, {}),
    (1, {"pre_nms_top_k": 7, "max_detections": 10}),
    (2, {"nms_iou_threshold": 0.3, "score_threshold": 0.2, "min_box_size": 0.1}),
    (3, {"max_detections": 500}),  # more room than candidates: padding from the pool
])
def test_matches_numpy_reference_small(seed, overrides, nms):
    rng = np.random.default_rng(seed)
    config = make_config(num_classes=5, **overrides)
    logits, enc, anchors = random_case(rng, 3, 60, 5, logit_scale=2.0)
    check_against_reference(run(logits, enc, anchors, config, nms), logits, enc, anchors, config.eval)


@pytest.mark.parametrize("seed,scale", [(10, 1.0), (11, 3.0)])
def test_matches_numpy_reference_full_size(seed, scale, nms):
    rng = np.random.default_rng(seed)
    config = make_config(num_classes=21)
    logits, enc, anchors = random_case(rng, 2, 8732, 21, logit_scale=scale)
    out = run(logits, enc, anchors, config, nms)
    check_against_reference(out, logits, enc, anchors, config.eval)
    assert out["num_detections"].min() > 0


# --- hand cases: anchors are the boxes (zero encodings), logits give chosen probabilities ----

def hand_case(boxes, probs):
    """boxes [A, 4]; probs [A, C] rows summing to 1 -> (logits [1, A, C], enc [1, A, 4], anchors)."""
    probs = np.maximum(np.asarray(probs, dtype=np.float64), 1e-30)  # log(0) stand-in
    return (np.log(probs)[None].astype(np.float32), np.zeros((1, len(boxes), 4), np.float32),
            np.asarray(boxes, np.float32))


B1 = [0.1, 0.1, 0.5, 0.5]
B1_SHIFTED = [0.12, 0.1, 0.52, 0.5]  # IoU 0.38 / 0.42 = 0.905 with B1
FAR = [0.6, 0.6, 0.9, 0.9]


def test_overlapping_boxes_of_one_class_are_suppressed(nms):
    out = run(*hand_case([B1, B1_SHIFTED], [[0.2, 0.8, 0, 0], [0.3, 0.7, 0, 0]]), make_config(), nms)
    assert out["num_detections"][0] == 1
    np.testing.assert_allclose(out["scores"][0, :2], [0.8, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][0, 0], B1, atol=1e-6)
    assert list(out["classes"][0, :2]) == [1, 0]


def test_overlapping_boxes_of_different_classes_are_kept(nms):
    out = run(*hand_case([B1, B1_SHIFTED], [[0.2, 0.8, 0, 0], [0.3, 0, 0.7, 0]]), make_config(), nms)
    assert out["num_detections"][0] == 2
    assert list(out["classes"][0, :3]) == [1, 2, 0]
    np.testing.assert_allclose(out["boxes"][0, :2], [B1, B1_SHIFTED], atol=1e-6)


def test_nms_threshold_is_strict(nms):
    # IoU exactly 0.5 (powers of two keep every step exact): suppression needs IoU > threshold
    boxes = [[0.0, 0.0, 0.5, 0.25], [0.0, 0.0, 0.25, 0.25]]
    probs = [[0.2, 0.8, 0, 0], [0.3, 0.7, 0, 0]]
    assert np_iou(*np.asarray(boxes, np.float32)) == 0.5
    assert run(*hand_case(boxes, probs), make_config(nms_iou_threshold=0.5), nms)["num_detections"][0] == 2
    assert run(*hand_case(boxes, probs), make_config(nms_iou_threshold=0.49), nms)["num_detections"][0] == 1


def test_score_threshold_is_strict(nms):
    # equal logits over 4 classes: every probability is exactly 0.25 in float32
    logits, enc, anchors = np.zeros((1, 1, 4), np.float32), np.zeros((1, 1, 4), np.float32), np.array([B1], np.float32)
    assert run(logits, enc, anchors, make_config(score_threshold=0.25), nms)["num_detections"][0] == 0
    out = run(logits, enc, anchors, make_config(score_threshold=0.2499), nms)
    assert out["num_detections"][0] == 3 and list(out["classes"][0, :3]) == [1, 2, 3]
    out = run(*hand_case([B1, FAR], [[0.991, 0.009, 0, 0], [0.989, 0.011, 0, 0]]), make_config(), nms)
    assert out["num_detections"][0] == 1
    np.testing.assert_allclose(out["boxes"][0, 0], FAR, atol=1e-6)


def grid_boxes(n):
    return [[0.1 * i, 0.0, 0.1 * i + 0.05, 0.05] for i in range(n)]


def test_max_detections_pre_nms_top_k_and_padding(nms):
    probs = [[1 - p, p, 0, 0] for p in (0.5, 0.9, 0.7, 0.6, 0.8)]
    out = run(*hand_case(grid_boxes(5), probs), make_config(max_detections=3), nms)
    assert out["scores"].shape == (1, 3) and out["num_detections"][0] == 3
    np.testing.assert_allclose(out["scores"][0], [0.9, 0.8, 0.7], rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][0], np.array(grid_boxes(5))[[1, 4, 2]], atol=1e-6)
    out = run(*hand_case(grid_boxes(5), probs), make_config(max_detections=6, pre_nms_top_k=2), nms)
    assert out["num_detections"][0] == 2
    np.testing.assert_allclose(out["scores"][0], [0.9, 0.8, 0, 0, 0, 0], rtol=1e-6)
    assert np.all(out["boxes"][0, 2:] == 0) and np.all(out["classes"][0, 2:] == 0)


def test_min_box_size_filter(nms):
    small = [0.1, 0.1, 0.12, 0.5]  # 0.02 high
    probs = [[0.1, 0.9, 0, 0], [0.2, 0.8, 0, 0]]
    assert run(*hand_case([small, FAR], probs), make_config(), nms)["num_detections"][0] == 2
    out = run(*hand_case([small, FAR], probs), make_config(min_box_size=0.03), nms)
    assert out["num_detections"][0] == 1
    np.testing.assert_allclose(out["boxes"][0, 0], FAR, atol=1e-6)


def test_boxes_are_clipped_before_nms(nms):
    # both boxes stick out of the image; clipped, they are identical and one suppresses the other
    boxes = [[-0.5, -0.5, 0.5, 0.5], [-0.2, -0.2, 0.5, 0.5]]
    out = run(*hand_case(boxes, [[0.2, 0.8, 0, 0], [0.3, 0.7, 0, 0]]), make_config(), nms)
    assert out["num_detections"][0] == 1
    np.testing.assert_allclose(out["boxes"][0, 0], [0, 0, 0.5, 0.5], atol=1e-6)


def test_ties_go_to_lower_anchor_then_lower_class(nms):
    probs = [[0.4, 0.6, 0, 0]] * 3
    # equal scores, same class, overlapping: the lower anchor index is kept
    out = run(*hand_case([B1_SHIFTED, B1, FAR], probs), make_config(max_detections=2), nms)
    np.testing.assert_allclose(out["boxes"][0], [B1_SHIFTED, FAR], atol=1e-6)
    # equal scores across classes: the lower class comes first
    out = run(*hand_case([B1, FAR], [[0.4, 0, 0.6, 0], [0.4, 0.6, 0, 0]]), make_config(max_detections=1), nms)
    assert out["classes"][0, 0] == 1
    np.testing.assert_allclose(out["boxes"][0, 0], FAR, atol=1e-6)


def test_unknown_batch_size_in_tf_function(nms):
    rng = np.random.default_rng(4)
    config = make_config(num_classes=5, max_detections=20)
    logits, enc, anchors = random_case(rng, 3, 50, 5, logit_scale=2.0)
    fn = tf.function(lambda l, e: postprocess(l, e, anchors, config, nms=nms),
                     input_signature=[tf.TensorSpec([None, 50, 5], tf.float32),
                                      tf.TensorSpec([None, 50, 4], tf.float32)])
    for batch in (3, 1):
        out = {k: v.numpy() for k, v in fn(logits[:batch], enc[:batch]).items()}
        assert out["boxes"].shape == (batch, 20, 4) and out["classes"].dtype == np.int32
        assert out["num_detections"].dtype == np.int32
        check_against_reference(out, logits[:batch], enc[:batch], anchors, config.eval)
    concrete = fn.get_concrete_function()
    assert concrete.structured_outputs["boxes"].shape.as_list() == [None, 20, 4]


# --- the two NMS implementations on adversarial inputs --------------------------------------

def adversarial_case(rng, kind, batch=2, num_anchors=80, num_classes=6):
    """Inputs built to stress tie-breaking, suppression chains and the candidate limits."""
    logits, enc, anchors = random_case(rng, batch, num_anchors, num_classes, logit_scale=2.0)
    if kind == "ties":
        # every row one of four integer patterns: exactly equal scores within a class (same row)
        # and across classes (equal logits in a row), and boxes repeated on a coarse grid: exact
        # duplicates and equal IoUs
        patterns = rng.integers(-2, 3, (4, num_classes)).astype(np.float32)
        logits = patterns[rng.integers(0, 4, logits.shape[:2])]
        corners = rng.integers(0, 4, (num_anchors, 2)) / 5.0
        anchors = np.concatenate([corners, corners + 0.4], axis=1).astype(np.float32)
        enc = np.zeros_like(enc)
    elif kind == "overlapping":
        # every box a small jitter of one box: long suppression chains, IoUs around the threshold
        base = np.array([0.3, 0.3, 0.7, 0.7])
        anchors = (base + rng.normal(0, 0.04, (num_anchors, 4))).astype(np.float32)
        enc = rng.normal(0, 0.3, enc.shape).astype(np.float32)
    elif kind == "empty_classes":
        logits[..., 2] = -30.0  # class 2 never passes the threshold
        logits[1, :, 1:] = -30.0  # the second image has no detection at all
    elif kind != "random":
        raise ValueError(kind)
    return logits, enc, anchors


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind,overrides", [
    ("random", {}),
    ("ties", {"max_detections": 30}),
    ("ties", {"pre_nms_top_k": 4, "max_detections": 12}),
    ("overlapping", {"nms_iou_threshold": 0.45}),
    ("overlapping", {"nms_iou_threshold": 0.8, "pre_nms_top_k": 9}),
    ("empty_classes", {"score_threshold": 0.05}),
    ("random", {"pre_nms_top_k": 3, "max_detections": 7}),  # far more candidates than top-k
])
def test_implementations_agree(seed, kind, overrides):
    _check_implementations_agree(seed, kind, overrides)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind,overrides", [
    ("random", {"max_detections": 5}),
    ("ties", {"max_detections": 3}),
    ("overlapping", {"nms_iou_threshold": 0.8, "max_detections": 2}),
])
def test_survivors_beyond_max_detections_do_not_matter(seed, kind, overrides):
    """Each class's NMS stops after max_detections survivors (module docstring): same detections
    as the uncapped reference when some class has more survivors than that."""
    config, logits, enc, anchors, probs = _check_implementations_agree(seed, kind, overrides)
    uncapped = dataclasses.replace(config.eval, max_detections=10**6)
    most = max(max(Counter(d[1] for d in dets).values(), default=0)
               for dets in reference(logits, enc, anchors, uncapped, probs))
    assert most > config.eval.max_detections


def _check_implementations_agree(seed, kind, overrides):
    rng = np.random.default_rng(100 + seed)
    config = make_config(num_classes=6, **overrides)
    logits, enc, anchors = adversarial_case(rng, kind)
    combined = run(logits, enc, anchors, config, "combined")
    per_class = run(logits, enc, anchors, config, "per_class")
    np.testing.assert_array_equal(per_class["num_detections"], combined["num_detections"])
    np.testing.assert_array_equal(per_class["classes"], combined["classes"])
    np.testing.assert_array_equal(per_class["scores"], combined["scores"])
    np.testing.assert_allclose(per_class["boxes"], combined["boxes"], atol=1e-6, rtol=0)
    float32_probs = tf.nn.softmax(logits).numpy().astype(np.float64)
    check_against_reference(per_class, logits, enc, anchors, config.eval, float32_probs)
    if kind == "ties":  # the case does have ties: equal scores within a class, above threshold
        above = float32_probs[..., 1:][float32_probs[..., 1:] > config.eval.score_threshold]
        assert len(np.unique(above)) < len(above) / 4
    if kind == "empty_classes":
        assert combined["num_detections"][1] == 0 and not np.any(combined["classes"] == 2)
    if "pre_nms_top_k" in overrides:  # the limit did bite: some class had more candidates
        probs = tf.nn.softmax(logits).numpy()[..., 1:]
        assert (probs > config.eval.score_threshold).sum(axis=1).max() > overrides["pre_nms_top_k"]
    return config, logits, enc, anchors, float32_probs


def test_unknown_nms_implementation_is_rejected():
    with pytest.raises(ValueError, match="nms must be one of"):
        postprocess(tf.zeros([1, 5, 4]), tf.zeros([1, 5, 4]), np.zeros((5, 4), np.float32), make_config(),
                    nms="fast")


def test_mismatched_anchors_are_rejected():
    with pytest.raises(ValueError, match="default boxes"):
        postprocess(tf.zeros([1, 5, 4]), tf.zeros([1, 5, 4]), np.zeros((6, 4), np.float32), make_config())


def test_pixel_conversions():
    boxes = np.array([[[0, 0, 1, 1], [0.5, 0.25, 0.75, 0.5]]], np.float32)
    pixels = to_pixels(tf.constant(boxes), tf.constant([[375, 500]])).numpy()
    np.testing.assert_allclose(pixels, [[[0, 0, 375, 500], [187.5, 125, 281.25, 250]]])


# --- sigmoid scores (loss.classification "sigmoid", the API's score_converter SIGMOID) -----------

def np_sigmoid(logits):
    return 1 / (1 + np.exp(-np.asarray(logits, np.float64)))


def test_sigmoid_scores_are_each_logits_sigmoid_background_dropped():
    logits = np.array([[[10.0, np.log(3.0), -np.log(3.0), 0.0]]], np.float32)
    scores = object_class_scores(tf.constant(logits), "sigmoid").numpy()
    np.testing.assert_allclose(scores, [[[0.75, 0.25, 0.5]]], rtol=1e-6)  # not the 0.9999 of column 0
    softmax = object_class_scores(tf.constant(logits), "softmax").numpy()
    np.testing.assert_allclose(softmax, tf.nn.softmax(logits).numpy()[..., 1:], rtol=1e-6)
    with pytest.raises(ValueError, match="loss.classification"):
        object_class_scores(tf.constant(logits), "tanh")


def test_sigmoid_detections_ignore_the_background_logit(nms):
    """A high background logit would leave softmax nothing above the threshold; sigmoid scores
    each class on its own logit."""
    logits = np.array([[[10.0, np.log(3.0), -np.log(3.0), -8.0], [10.0, -8.0, -8.0, np.log(9.0)]]],
                      np.float32)
    enc = np.zeros((1, 2, 4), np.float32)
    anchors = np.array([B1, FAR], np.float32)
    out = run(logits, enc, anchors, make_config(classification="sigmoid"), nms)
    assert out["num_detections"][0] == 3
    np.testing.assert_allclose(out["scores"][0, :4], [0.9, 0.75, 0.25, 0.0], rtol=1e-6)
    assert list(out["classes"][0, :4]) == [3, 1, 2, 0]
    np.testing.assert_allclose(out["boxes"][0, :3], [FAR, B1, B1], atol=1e-6)
    assert run(logits, enc, anchors, make_config(), nms)["num_detections"][0] == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_sigmoid_matches_numpy_reference(seed, nms):
    rng = np.random.default_rng(seed)
    config = make_config(num_classes=5, classification="sigmoid", score_threshold=0.3)
    logits, enc, anchors = random_case(rng, 3, 60, 5, logit_scale=2.0)
    out = run(logits, enc, anchors, config, nms)
    check_against_reference(out, logits, enc, anchors, config.eval, probs=np_sigmoid(logits))
    assert out["num_detections"].min() > 0
