"""Geometry of the training augmentation, on box coordinates only: zoom out (expansion), the
min-IoU crop samplers, and the ground truths projected into the crop, filtered and flipped.

Expansion and crop compose into one window of the (never built) canvas, in canvas pixels; the
pixels are computed afterwards from that window alone (ssd.data.augment.window_resize).

Deviations from the Caffe release, all deliberate:
  * Windows are whole canvas pixels: the sampled patch is rounded to pixels before its IoU, the
    centre rule and the box projection are evaluated, so boxes stay exactly on their pixels
    (Caffe evaluates on the unrounded patch and crops at truncated pixels: < 1 pixel apart).
  * The "any patch" sampler has no constraint at all; Caffe's (max IoU <= 1 with some object)
    also fails on an image without objects, which the original data never had.
  * A crop whose ground truths would all fall out (possible: the constraint is an IoU, the
    survival rule is the centre) is retried: a trial patch counts only when it keeps at least
    one ground-truth centre, so every augmented image of an annotated picture keeps an object
    (the whole-image sampler always does). Caffe would train on such a crop as pure background,
    which carries no loss weight (no positives, hence no hard negatives) and only spends compute.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ssd.modeling import boxes as box_ops
from ssd.data.augment.stateless_random import split_seed, uniform

# the TF1 reference implementation's post-crop box filter (normalized to the crop)
TF1_MIN_AREA = 0.001
TF1_MAX_AREA = 0.9
TF1_MIN_SIDE = 0.025

def sample_expansion(size: tf.Tensor, seed: tf.Tensor, probability: float, min_ratio: float,
                     max_ratio: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Caffe's ExpandImage geometry for an image of `size` = [2] (height, width).

    With `probability`, a ratio r ~ U[min_ratio, max_ratio] gives a canvas of floor(size * r)
    pixels and the image's top-left corner at floor(U[0, canvas - size)) per axis; otherwise the
    canvas is the image. Returns canvas_size [2] int32 and offset [2] int32.
    """
    size = tf.cast(size, tf.int32)
    u = uniform(seed, [4])
    ratio = tf.where(u[0] < probability, min_ratio + (max_ratio - min_ratio) * u[1], 1.0)
    canvas = tf.maximum(tf.cast(tf.floor(tf.cast(size, tf.float32) * ratio), tf.int32), size)
    offset = tf.cast(tf.floor(u[2:] * tf.cast(canvas - size, tf.float32)), tf.int32)
    return canvas, offset


def _candidate_patches(canvas: tf.Tensor, seed: tf.Tensor, num_samplers: int, trials: int,
                       min_scale: float, max_aspect_ratio: float, separate_sides: bool
                       ) -> tuple[tf.Tensor, tf.Tensor]:
    """[num_samplers, trials, 4] patches in canvas pixels (rounded) and a [.., trials] validity."""
    u = uniform(seed, [num_samplers, trials, 4])
    canvas_f = tf.cast(canvas, tf.float32)
    if separate_sides:
        # TF1 reference: width and height fractions drawn separately, aspect (in pixels) bounded
        w = min_scale + (1.0 - min_scale) * u[..., 0]
        h = min_scale + (1.0 - min_scale) * u[..., 1]
        aspect = (h * canvas_f[0]) / (w * canvas_f[1])
        valid = tf.logical_and(aspect >= 1.0 / max_aspect_ratio, aspect <= max_aspect_ratio)
    else:
        # Caffe's SampleBBox: scale s, aspect ratio clamped so that the patch fits
        scale = min_scale + (1.0 - min_scale) * u[..., 0]
        ratio = 1.0 / max_aspect_ratio + (max_aspect_ratio - 1.0 / max_aspect_ratio) * u[..., 1]
        ratio = tf.clip_by_value(ratio, tf.square(scale), 1.0 / tf.square(scale))
        w = tf.minimum(scale * tf.sqrt(ratio), 1.0)
        h = tf.minimum(scale / tf.sqrt(ratio), 1.0)
        valid = tf.ones_like(w, tf.bool)
    x0 = u[..., 2] * (1.0 - w)
    y0 = u[..., 3] * (1.0 - h)
    fractions = tf.stack([y0, x0, y0 + h, x0 + w], axis=-1)
    patches = tf.round(fractions * tf.tile(canvas_f, [2]))
    # at least one pixel on each side, inside the canvas
    low = tf.clip_by_value(patches[..., :2], 0.0, canvas_f - 1.0)
    high = tf.clip_by_value(patches[..., 2:], low + 1.0, canvas_f)
    return tf.concat([low, high], axis=-1), valid


def sample_crop_window(boxes: tf.Tensor, canvas_size: tf.Tensor, seed: tf.Tensor,
                       min_ious: Sequence[float], max_trials: int, min_scale: float,
                       max_aspect_ratio: float, separate_sides: bool = False
                       ) -> tuple[tf.Tensor, tf.Tensor]:
    """Caffe's batch samplers, all trials at once.

    Samplers: 0 = the whole canvas; 1..len(min_ious) = a patch whose IoU with at least one box
    is >= min_ious[k-1]; last = any patch. Each sampler draws `max_trials` patches and keeps its
    first one that satisfies its constraint and holds at least one box centre (when there are
    boxes: a crop losing every object is retried); one sampler is then chosen uniformly among
    those that found a patch (the whole canvas always does).

    Args:
      boxes: [N, 4] ground truths in canvas pixels (N may be 0: only unconstrained samplers
        succeed then).
      canvas_size: [2] int32 (height, width).
      separate_sides: the TF1 reference's patch shape (width, height fractions in
        [min_scale, 1) drawn separately) instead of Caffe's (scale, aspect ratio).
    Returns:
      window [4] float32 canvas pixels (integers) [y0, x0, y1, x1], sampler [] int32.
    """
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    num_constrained = len(min_ious)
    num_samplers = num_constrained + 1
    patch_seed, choice_seed = split_seed(seed, 2)
    patches, valid = _candidate_patches(canvas_size, patch_seed, num_samplers, max_trials,
                                        min_scale, max_aspect_ratio, separate_sides)
    overlaps = box_ops.iou(tf.reshape(patches, [-1, 4]), boxes)
    # no boxes: -1, which only the unconstrained sampler accepts
    best = tf.reshape(tf.maximum(tf.reduce_max(overlaps, axis=1), -1.0),
                      [num_samplers, max_trials])
    thresholds = tf.constant(list(min_ious) + [-2.0], tf.float32)  # "any patch": no constraint
    centre_y = (boxes[:, 0] + boxes[:, 2]) / 2.0
    centre_x = (boxes[:, 1] + boxes[:, 3]) / 2.0
    flat = tf.reshape(patches, [-1, 4])
    centre_inside = ((centre_y[None, :] >= flat[:, 0:1]) & (centre_y[None, :] <= flat[:, 2:3]) &
                     (centre_x[None, :] >= flat[:, 1:2]) & (centre_x[None, :] <= flat[:, 3:4]))
    keeps_object = tf.logical_or(tf.reduce_any(centre_inside, axis=1), tf.shape(boxes)[0] == 0)
    keeps_object = tf.reshape(keeps_object, [num_samplers, max_trials])
    success = valid & (best >= thresholds[:, None]) & keeps_object
    trial = tf.range(max_trials)
    first = tf.reduce_min(tf.where(success, trial[None, :], max_trials), axis=1)
    found = first < max_trials
    chosen_patches = tf.gather(patches, tf.minimum(first, max_trials - 1), batch_dims=1)

    canvas_f = tf.cast(canvas_size, tf.float32)
    whole = tf.concat([tf.zeros([2]), canvas_f], axis=0)
    candidates = tf.concat([whole[None], chosen_patches], axis=0)
    ok = tf.concat([[True], found], axis=0)
    draw = uniform(choice_seed, [num_samplers + 1])
    sampler = tf.argmax(tf.where(ok, draw, -1.0), output_type=tf.int32)
    return candidates[sampler], sampler


def crop_boxes(boxes: tf.Tensor, window: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Projects canvas-pixel boxes [N, 4] into `window` [4] (canvas pixels).

    A box is kept when its centre lies in the window (borders included) and it keeps a positive
    area after clipping, as Caffe's CENTER emit constraint and ProjectBBox. Returns all N boxes
    clipped and normalized to the window, and the keep mask [N].
    """
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    window = tf.cast(window, tf.float32)
    centre_y = (boxes[:, 0] + boxes[:, 2]) / 2.0
    centre_x = (boxes[:, 1] + boxes[:, 3]) / 2.0
    inside = ((centre_y >= window[0]) & (centre_y <= window[2]) &
              (centre_x >= window[1]) & (centre_x <= window[3]))
    low = tf.tile(window[:2], [2])
    high = tf.tile(window[2:], [2])
    clipped = tf.clip_by_value(boxes, low, high)
    size = high - low
    normalized = (clipped - low) / size
    positive = (normalized[:, 2] > normalized[:, 0]) & (normalized[:, 3] > normalized[:, 1])
    return normalized, inside & positive


def tf1_box_filter(boxes: tf.Tensor) -> tf.Tensor:
    """The TF1 reference's post-crop filter on normalized boxes [N, 4] -> keep [N] bool: area
    in (0.001, 0.9), both sides > 0.025."""
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    area = h * w
    return ((area > TF1_MIN_AREA) & (area < TF1_MAX_AREA) &
            (h > TF1_MIN_SIDE) & (w > TF1_MIN_SIDE))


def flip_boxes(boxes: tf.Tensor) -> tf.Tensor:
    """Horizontal mirror of normalized boxes [N, 4]."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)

