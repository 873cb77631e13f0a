"""Box arithmetic, matching of ground truths to default boxes, and target encoding (pure TF).

Everything here is TensorFlow ops only, so it runs inside tf.data map functions and tf.function
with a dynamic number of ground truths G (including G = 0). Boxes are normalized
[ymin, xmin, ymax, xmax] in continuous coordinates (no "+1" pixel convention).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

BACKGROUND = -1  # matched_index of a default box that is background (class 0)
IGNORED = -2  # matched_index of a default box in the ignored IoU band (excluded from the loss)


def area(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] -> [...]; boxes with ymax < ymin or xmax < xmin have zero area."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """Pairwise intersection over union: [N, 4] x [M, 4] -> [N, M]; 0 where the union is empty."""
    boxes_a = tf.convert_to_tensor(boxes_a, dtype=tf.float32)
    boxes_b = tf.convert_to_tensor(boxes_b, dtype=tf.float32)
    a = boxes_a[:, None, :]
    b = boxes_b[None, :, :]
    inter_h = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    intersection = inter_h * inter_w
    union = area(boxes_a)[:, None] + area(boxes_b)[None, :] - intersection
    return tf.math.divide_no_nan(intersection, union)


def to_centers(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] corners [ymin, xmin, ymax, xmax] -> [..., 4] [cy, cx, h, w]."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack([(ymin + ymax) / 2.0, (xmin + xmax) / 2.0, ymax - ymin, xmax - xmin], axis=-1)


def to_corners(centers: tf.Tensor) -> tf.Tensor:
    """[..., 4] [cy, cx, h, w] -> [..., 4] corners [ymin, xmin, ymax, xmax]."""
    cy, cx, h, w = tf.unstack(centers, axis=-1)
    return tf.stack([cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0], axis=-1)


def encode(boxes: tf.Tensor, anchors: tf.Tensor, variances: Sequence[float]) -> tf.Tensor:
    """Centre-size offsets of `boxes` relative to `anchors`, divided by the variances.

    t_cy = (g_cy - a_cy) / a_h / v0, t_cx = (g_cx - a_cx) / a_w / v1,
    t_h = log(g_h / a_h) / v2, t_w = log(g_w / a_w) / v3. Leading dimensions broadcast.
    Boxes must have positive height and width (the log of a zero side is -inf).
    """
    g = to_centers(tf.convert_to_tensor(boxes, dtype=tf.float32))
    a = to_centers(tf.convert_to_tensor(anchors, dtype=tf.float32))
    v = tf.constant(variances, dtype=tf.float32)
    return tf.stack([
        (g[..., 0] - a[..., 0]) / a[..., 2] / v[0],
        (g[..., 1] - a[..., 1]) / a[..., 3] / v[1],
        tf.math.log(g[..., 2] / a[..., 2]) / v[2],
        tf.math.log(g[..., 3] / a[..., 3]) / v[3],
    ], axis=-1)


def decode(encodings: tf.Tensor, anchors: tf.Tensor, variances: Sequence[float]) -> tf.Tensor:
    """Inverse of `encode`: offsets [..., 4] relative to `anchors` -> corner boxes [..., 4]."""
    t = tf.convert_to_tensor(encodings, dtype=tf.float32)
    a = to_centers(tf.convert_to_tensor(anchors, dtype=tf.float32))
    v = tf.constant(variances, dtype=tf.float32)
    centers = tf.stack([
        t[..., 0] * v[0] * a[..., 2] + a[..., 0],
        t[..., 1] * v[1] * a[..., 3] + a[..., 1],
        tf.exp(t[..., 2] * v[2]) * a[..., 2],
        tf.exp(t[..., 3] * v[3]) * a[..., 3],
    ], axis=-1)
    return to_corners(centers)


def _first_argmax(values: tf.Tensor, axis: int) -> tf.Tensor:
    """Index of the maximum along `axis`, the lowest index on ties (tf.argmax does not promise it)."""
    size = tf.shape(values, out_type=tf.int32)[axis]
    positions = tf.range(size, dtype=tf.int32)
    shape = [1] * len(values.shape)
    shape[axis] = -1
    positions = tf.reshape(positions, shape)
    is_max = tf.equal(values, tf.reduce_max(values, axis=axis, keepdims=True))
    return tf.reduce_min(tf.where(is_max, positions, size), axis=axis)


def _bipartite_match(overlaps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Greedy bipartite step: gives each ground truth one default box of its own.

    overlaps: [A, G] IoU, with entries <= 0 never eligible. Repeatedly takes the globally largest
    (default box, ground truth) pair, assigns it, and removes that box and that ground truth, until
    every ground truth is assigned or no eligible pair is left (a ground truth that overlaps no free
    box at all stays unassigned). Ties go to the lowest default-box index, then the lowest
    ground-truth index, which is the scan order of Caffe's BipartiteMatching.

    Only each ground truth's G best boxes (IoU descending, lowest index first on ties) can ever be
    taken, since at most G - 1 boxes are removed before it is assigned; the greedy loop therefore
    runs on a [G, min(G, A)] candidate table instead of the full [A, G] matrix.
    Returns forced_index [A] int32 (ground truth or -1) and forced_iou [A] float32.
    """
    num_anchors = tf.shape(overlaps)[0]
    num_gt = tf.shape(overlaps)[1]
    # top_k puts the lower index first among equal values
    candidate_iou, candidate_anchor = tf.math.top_k(tf.transpose(overlaps),
                                                    k=tf.minimum(num_gt, num_anchors))
    candidate_gt = tf.broadcast_to(tf.range(num_gt)[:, None], tf.shape(candidate_anchor))
    # a single integer key orders equal-IoU pairs by default box, then ground truth
    pair_key = candidate_anchor * num_gt + candidate_gt
    no_key = tf.int32.max

    def body(step, remaining, gt_anchor, gt_iou, done):
        del done
        best_iou = tf.reduce_max(remaining)
        found = best_iou > 0.0
        key = tf.reduce_min(tf.where(tf.equal(remaining, best_iou), pair_key, no_key))
        anchor = key // num_gt
        gt = key % num_gt
        take = tf.logical_and(found, tf.equal(tf.range(num_gt), gt))
        gt_anchor = tf.where(take, anchor, gt_anchor)
        gt_iou = tf.where(take, best_iou, gt_iou)
        drop = tf.logical_or(tf.equal(candidate_anchor, anchor), tf.equal(candidate_gt, gt))
        remaining = tf.where(tf.logical_and(found, drop), -1.0, remaining)
        return step + 1, remaining, gt_anchor, gt_iou, tf.logical_not(found)

    def cond(step, remaining, gt_anchor, gt_iou, done):
        del remaining, gt_anchor, gt_iou
        return tf.logical_and(step < num_gt, tf.logical_not(done))

    initial = (tf.constant(0), candidate_iou, tf.fill([num_gt], -1), tf.zeros([num_gt]),
               tf.constant(False))
    _, _, gt_anchor, gt_iou, _ = tf.while_loop(cond, body, initial)

    assigned = gt_anchor >= 0
    anchors_taken = tf.boolean_mask(gt_anchor, assigned)[:, None]
    forced_index = tf.tensor_scatter_nd_update(
        tf.fill([num_anchors], -1), anchors_taken, tf.boolean_mask(tf.range(num_gt), assigned))
    forced_iou = tf.tensor_scatter_nd_update(
        tf.zeros([num_anchors]), anchors_taken, tf.boolean_mask(gt_iou, assigned))
    return forced_index, forced_iou


def match(gt_boxes: tf.Tensor, anchors: tf.Tensor, positive_threshold: float,
          negative_threshold: float, gt_valid: tf.Tensor | None = None
          ) -> tuple[tf.Tensor, tf.Tensor]:
    """Assigns ground truths to default boxes, SSD style (Caffe's "bipartite" then "per_prediction").

    1. Forced matches: the greedy bipartite step (see `_bipartite_match`) gives every ground truth
       the free default box it overlaps most, globally best pair first, even at low IoU. A ground
       truth that loses its best box to a better pair falls back to its best remaining free box.
       Ties: lowest default-box index, then lowest ground-truth index. Only pairs with IoU > 0 are
       eligible, so a ground truth overlapping no default box (e.g. zero area) is never forced.
    2. Every other default box takes the ground truth it overlaps most (lowest index on ties) if
       that IoU >= positive_threshold; boxes with negative_threshold <= IoU < positive_threshold
       are ignored (-2); the rest are background (-1).

    Args:
      gt_boxes: [G, 4] ground truths, G may be 0 or unknown until run time.
      anchors: [A, 4] default boxes.
      gt_valid: optional [G] bool; False rows (padding) take part in nothing. Without it every row
        is a ground truth.
    Returns:
      matched_index [A] int32: ground-truth index, -1 background or -2 ignored.
      match_iou [A] float32: the IoU with the assigned ground truth for matched boxes; for the others
        their largest IoU with any (valid) ground truth, 0 when there is none.
    """
    gt_boxes = tf.reshape(tf.convert_to_tensor(gt_boxes, dtype=tf.float32), [-1, 4])
    anchors = tf.convert_to_tensor(anchors, dtype=tf.float32)
    overlaps = iou(anchors, gt_boxes)  # [A, G]
    if gt_valid is not None:
        valid = tf.reshape(tf.cast(gt_valid, tf.bool), [1, -1])
        overlaps = tf.where(valid, overlaps, 0.0)

    num_gt = tf.shape(overlaps)[1]
    # reduce_max over an empty axis gives -inf: the floor at 0 makes G = 0 mean "no overlap"
    max_iou = tf.maximum(tf.reduce_max(overlaps, axis=1), 0.0)
    best_gt = tf.minimum(_first_argmax(overlaps, axis=1), tf.maximum(num_gt - 1, 0))

    threshold_index = tf.where(
        tf.logical_and(max_iou >= positive_threshold, max_iou > 0.0), best_gt,
        tf.where(max_iou >= negative_threshold, IGNORED, BACKGROUND))
    threshold_index = tf.cast(threshold_index, tf.int32)

    forced_index, forced_iou = _bipartite_match(overlaps)
    is_forced = forced_index >= 0
    matched_index = tf.where(is_forced, forced_index, threshold_index)
    match_iou = tf.where(is_forced, forced_iou, max_iou)
    return matched_index, match_iou


def encode_targets(gt_boxes: tf.Tensor, gt_labels: tf.Tensor, anchors: tf.Tensor,
                   matching_config, gt_valid: tf.Tensor | None = None
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training targets of one image.

    Args:
      gt_boxes: [G, 4] normalized ground truths (G may be 0); gt_labels: [G] int32, 1-based classes.
      anchors: [A, 4] default boxes; matching_config: a `MatchingConfig` (thresholds, variances).
      gt_valid: optional [G] bool mask of real rows (see `match`).
    Returns:
      cls_targets [A] int32: the matched ground truth's label, 0 background, -1 ignored.
      loc_targets [A, 4] float32: the matched ground truth encoded against its default box, zeros
        where the box is not positive.
      match_iou [A] float32: as returned by `match`.
    """
    gt_boxes = tf.reshape(tf.convert_to_tensor(gt_boxes, dtype=tf.float32), [-1, 4])
    gt_labels = tf.reshape(tf.cast(gt_labels, tf.int32), [-1])
    anchors = tf.convert_to_tensor(anchors, dtype=tf.float32)
    matched_index, match_iou = match(gt_boxes, anchors, matching_config.positive_threshold,
                                     matching_config.negative_threshold, gt_valid)
    positive = matched_index >= 0

    # a dummy last row (unit box, label 0) keeps the gathers valid for unmatched boxes and G = 0
    boxes = tf.concat([gt_boxes, tf.constant([[0.0, 0.0, 1.0, 1.0]])], axis=0)
    labels = tf.concat([gt_labels, tf.zeros([1], tf.int32)], axis=0)
    gather_index = tf.where(positive, matched_index, tf.shape(gt_boxes)[0])

    cls_targets = tf.where(positive, tf.gather(labels, gather_index),
                           tf.where(tf.equal(matched_index, IGNORED), -1, 0))
    encoded = encode(tf.gather(boxes, gather_index), anchors, matching_config.variances)
    loc_targets = tf.where(positive[:, None], encoded, 0.0)
    return cls_targets, loc_targets, match_iou
