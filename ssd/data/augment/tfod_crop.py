"""The TF Object Detection API's `ssd_random_crop` with its default operations, on box coordinates.

`ssd_random_crop` picks one of seven operations uniformly; the operation keeps the image as it is
with probability `random_coef`, otherwise it crops a window drawn as TensorFlow's
`sample_distorted_bounding_box` draws one (up to `MAX_ATTEMPTS` tries; the whole image when none
qualifies), prunes the ground truths and projects the rest into the window. Defaults (the API's,
identical for the seven operations but for the two thresholds):

  min_object_covered  0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0: a window qualifies when it covers at
                      least this fraction of at least one ground truth (of its area, in whole
                      pixels; boxes under one pixel of area count for none);
  aspect_ratio_range  (0.5, 2.0): the window's width / height in pixels;
  area_range          (0.1, 1.0): the window's area over the image's;
  overlap_thresh      0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0: a ground truth is kept when this
                      fraction of its own area at least lies in the window (and it is not
                      completely outside it) -- the fraction of the box, not the centre rule of
                      the Caffe release;
  clip_boxes          true: kept boxes are clipped to the window;
  random_coef         0.15.

The window generator follows the kernel's integer arithmetic: for an aspect ratio r ~ U(range),
heights from round(sqrt(min_area / r)) to round(sqrt(max_area / r)) (capped so that the width
fits), one drawn uniformly, width round(height * r), one pixel up or down when rounding left the
area range, else the try fails; top-left corner uniform in [0, side - window side) (0 when the
window spans the image). Ground truths enter the coverage test truncated to whole pixels, as the
kernel reads them. Randomness comes from stateless seeds (ssd.data.augment.stateless_random), so
the draws are this project's, the distribution the API's.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssd.data.augment.stateless_random import split_seed, uniform


@dataclasses.dataclass(frozen=True)
class CropOperation:
    """One of `ssd_random_crop`'s operations (the API's argument names)."""

    min_object_covered: float
    aspect_ratio_range: tuple[float, float]
    area_range: tuple[float, float]
    overlap_thresh: float
    clip_boxes: bool
    random_coef: float


_THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
SSD_RANDOM_CROP = tuple(CropOperation(min_object_covered=t, aspect_ratio_range=(0.5, 2.0),
                                      area_range=(0.1, 1.0), overlap_thresh=t, clip_boxes=True,
                                      random_coef=0.15)
                        for t in _THRESHOLDS)
MAX_ATTEMPTS = 100  # the API's strict crop asks sample_distorted_bounding_box for 100 tries
_MIN_PIXEL_AREA = 1.0  # the kernel ignores boxes (and refuses windows) under one pixel of area
_EPS = 1e-7  # the kernel's margin when capping the height so that the width fits


def _uniform_integer(u: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """floor(u * count) for u in [0, 1), kept below count where float32 rounding would reach it."""
    return tf.minimum(tf.floor(u * count), tf.maximum(count - 1.0, 0.0))


def _window_sizes(height: tf.Tensor, width: tf.Tensor, ratio: tf.Tensor, u: tf.Tensor,
                  area_range: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(heights, widths, valid) of windows of aspect ratios `ratio` [A] in an image of
    height x width pixels (float32 scalars); `u` [A] picks each height."""
    min_area = area_range[0] * width * height
    max_area = area_range[1] * width * height
    low = tf.round(tf.sqrt(min_area / ratio))
    high = tf.round(tf.sqrt(max_area / ratio))
    # the largest height whose rounded width still fits
    fitting = tf.floor((width + 0.5 - _EPS) / ratio)
    fitting = tf.where(tf.round(fitting * ratio) > width, fitting - 1.0, fitting)
    high = tf.where(tf.round(high * ratio) > width, fitting, high)
    high = tf.minimum(high, height)
    low = tf.minimum(low, high)
    h = low + _uniform_integer(u, high - low + 1.0)
    w = tf.round(h * ratio)
    grow = w * h < min_area
    h = tf.where(grow, h + 1.0, h)
    w = tf.where(grow, tf.round(h * ratio), w)
    shrink = w * h > max_area
    h = tf.where(shrink, h - 1.0, h)
    w = tf.where(shrink, tf.round(h * ratio), w)
    area = w * h
    valid = ((area >= min_area) & (area <= max_area) & (w <= width) & (h <= height) &
             (w > 0) & (h > 0))
    return h, w, valid


def _covered_fraction(windows: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """[A, N] fraction of each pixel box's area inside each window (-1 for boxes under a pixel)."""
    top = tf.maximum(windows[:, None, 0], boxes[None, :, 0])
    left = tf.maximum(windows[:, None, 1], boxes[None, :, 1])
    bottom = tf.minimum(windows[:, None, 2], boxes[None, :, 2])
    right = tf.minimum(windows[:, None, 3], boxes[None, :, 3])
    inter = tf.maximum(bottom - top, 0.0) * tf.maximum(right - left, 0.0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return tf.where(area[None, :] >= _MIN_PIXEL_AREA,
                    inter / tf.maximum(area[None, :], _MIN_PIXEL_AREA), -1.0)


def sample_distorted_window(boxes: tf.Tensor, image_size: tf.Tensor, seed: tf.Tensor,
                            min_object_covered, aspect_ratio_range, area_range,
                            max_attempts: int = MAX_ATTEMPTS) -> tf.Tensor:
    """`sample_distorted_bounding_box`'s window [y0, x0, y1, x1] in image pixels (float32 holding
    integers): the first of `max_attempts` draws that is valid and covers enough of a box, else
    the whole image.

    Args:
      boxes: [N, 4] normalized ground truths (clipped to the image first, as the API does); none:
        the whole image stands for the box (`use_image_if_no_bounding_boxes`).
      image_size: [2] (height, width).
      min_object_covered, aspect_ratio_range, area_range: scalars / pairs (tensors or numbers).
    """
    size = tf.cast(image_size, tf.float32)
    height, width = size[0], size[1]
    boxes = tf.clip_by_value(tf.reshape(tf.cast(boxes, tf.float32), [-1, 4]), 0.0, 1.0)
    boxes = tf.cond(tf.shape(boxes)[0] > 0, lambda: boxes, lambda: tf.constant([[0., 0., 1., 1.]]))
    pixel_boxes = tf.floor(boxes * tf.tile(size, [2]))  # the kernel's int32 cast

    u = uniform(seed, [max_attempts, 4])
    low_ratio, high_ratio = (tf.cast(v, tf.float32) for v in aspect_ratio_range)
    ratio = low_ratio + (high_ratio - low_ratio) * u[:, 0]
    area = tuple(tf.cast(v, tf.float32) for v in area_range)
    h, w, valid = _window_sizes(height, width, ratio, u[:, 1], area)
    y = tf.where(h < height, _uniform_integer(u[:, 2], height - h), 0.0)
    x = tf.where(w < width, _uniform_integer(u[:, 3], width - w), 0.0)
    windows = tf.stack([y, x, y + h, x + w], axis=-1)

    covered = _covered_fraction(windows, pixel_boxes)
    qualifies = tf.reduce_any(covered >= tf.cast(min_object_covered, tf.float32), axis=1)
    success = valid & qualifies & (w * h >= _MIN_PIXEL_AREA)
    first = tf.argmax(tf.cast(success, tf.int32), output_type=tf.int32)
    whole = tf.stack([0.0, 0.0, height, width])
    return tf.where(tf.reduce_any(success), windows[first], whole)


def _operation_table(operations) -> dict[str, tf.Tensor]:
    def column(get, dtype=tf.float32):
        return tf.constant([get(op) for op in operations], dtype)

    return dict(min_object_covered=column(lambda op: op.min_object_covered),
                min_ratio=column(lambda op: op.aspect_ratio_range[0]),
                max_ratio=column(lambda op: op.aspect_ratio_range[1]),
                min_area=column(lambda op: op.area_range[0]),
                max_area=column(lambda op: op.area_range[1]),
                overlap_thresh=column(lambda op: op.overlap_thresh),
                clip_boxes=column(lambda op: op.clip_boxes, tf.bool),
                random_coef=column(lambda op: op.random_coef))


def prune_and_project(boxes: tf.Tensor, window: tf.Tensor, image_size: tf.Tensor,
                      overlap_thresh, clip_boxes) -> tuple[tf.Tensor, tf.Tensor]:
    """The API's strict crop on the ground truths: (boxes [N, 4] normalized to `window` (image
    pixels), keep [N]). Kept: not completely outside the window, and at least `overlap_thresh`
    of the box's own area inside it (a box without area has no such fraction and is dropped);
    clipped to the window when `clip_boxes`."""
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    window = tf.cast(window, tf.float32) / tf.tile(tf.cast(image_size, tf.float32), [2])
    outside = ((boxes[:, 0] >= window[2]) | (boxes[:, 2] <= window[0]) |
               (boxes[:, 1] >= window[3]) | (boxes[:, 3] <= window[1]))
    inter_h = tf.minimum(boxes[:, 2], window[2]) - tf.maximum(boxes[:, 0], window[0])
    inter_w = tf.minimum(boxes[:, 3], window[3]) - tf.maximum(boxes[:, 1], window[1])
    inter = tf.maximum(inter_h, 0.0) * tf.maximum(inter_w, 0.0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside_fraction = tf.math.divide_no_nan(inter, area)
    keep = (~outside) & (area > 0) & (inside_fraction >= tf.cast(overlap_thresh, tf.float32))
    origin = tf.tile(window[:2], [2])
    extent = tf.tile(window[2:] - window[:2], [2])
    projected = (boxes - origin) / extent
    projected = tf.where(tf.cast(clip_boxes, tf.bool), tf.clip_by_value(projected, 0.0, 1.0),
                         projected)
    return projected, keep


def ssd_random_crop(boxes: tf.Tensor, image_size: tf.Tensor, seed: tf.Tensor,
                    operations=SSD_RANDOM_CROP) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """One draw of the API's `ssd_random_crop` on box coordinates.

    Args:
      boxes: [N, 4] normalized ground truths; image_size: [2] int (height, width); seed: [2].
    Returns:
      window [4] float32 image pixels [y0, x0, y1, x1] (the whole image when the operation kept
      it), boxes [N, 4] normalized to the window, keep [N] bool, operation [] int32 (the index
      into `operations`).
    """
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    select_seed, coef_seed, window_seed = split_seed(seed, 3)
    table = _operation_table(operations)
    operation = tf.cast(_uniform_integer(uniform(select_seed, [])[None],
                                         float(len(operations)))[0], tf.int32)
    chosen = {name: values[operation] for name, values in table.items()}
    crop = uniform(coef_seed, []) > chosen["random_coef"]
    window = sample_distorted_window(
        boxes, image_size, window_seed, chosen["min_object_covered"],
        (chosen["min_ratio"], chosen["max_ratio"]), (chosen["min_area"], chosen["max_area"]))
    size = tf.cast(image_size, tf.float32)
    window = tf.where(crop, window, tf.stack([0.0, 0.0, size[0], size[1]]))
    projected, keep = prune_and_project(boxes, window, image_size, chosen["overlap_thresh"],
                                        chosen["clip_boxes"])
    # the image kept as it is keeps its boxes as they are (the API returns its inputs)
    projected = tf.where(crop, projected, boxes)
    keep = tf.logical_or(keep, tf.logical_not(crop))
    return window, projected, keep, operation
