"""The training augmentation recipes of SSD, as pure TensorFlow ops on one encoded image.

`data.augmentation` picks the recipe:
  "paper": the original Caffe release's pipeline, in this order:
    1. photometric distortion (Caffe's ApplyDistort, ssd.data.augment.photometric.distort_colors);
    2. zoom out: with probability `expansion_probability` the image is placed at a random
       integer position on a canvas 1x to `max_expansion`x its size filled with the mean colour;
    3. min-IoU random crop (ssd.data.augment.expand_crop.sample_crop_window), keeping the ground truths whose
       centre lies in the patch, clipped to it;
    4. horizontal flip; 5. resize to the input size with a random interpolation.
  "tf1": the TF1 reference implementation's variant: brightness and saturation only (both
    applied, random order), expansion ratio in [1.1, max], crop sides drawn separately in
    [min_scale, 1) with the pixel aspect ratio bounded, boxes with area outside (0.001, 0.9) or a
    side under 0.025 dropped after the crop, up to 3 expansion + crop draws and a fall-back to
    the untouched image when none keeps a box, bilinear resize. It shares the paper's sampler
    logic otherwise (it picks one min-IoU level first and tests all kept boxes against it).
  "tfod": the TF Object Detection API's `ssdlite_mobilenet_v2_coco` options and nothing else:
    random_horizontal_flip (probability `flip_probability`, the API's 0.5) and `ssd_random_crop`
    with its default operations (ssd.data.augment.tfod_crop), bilinear resize; no photometric
    distortion, no zoom out (the fields of those are not read). The API flips before it crops;
    the crop's distribution is mirror-symmetric, so cropping first gives the same distribution.
  "none": resize only.

How the pixels are computed (same result, a fraction of the work): expansion and crop are
decided on box coordinates only, from the image size in the file header (ssd.data.image_files), and
compose into one window of the (never built) canvas, in canvas pixels. Only the part of the
image the window shows is decoded and distorted; every photometric operation is per pixel, so
distorting that part equals distorting the whole image and cropping it afterwards, and the
canvas keeps its undistorted mean colour as in the original. After mean subtraction the canvas
is exactly zero, and ssd.data.augment.window_resize.render_window resizes the window with the canvas filled
in implicitly; `ssd.data.preprocessing.from_bgr_minus_mean` then converts the result to the
config's input convention, so the canvas is the mean colour in pixel space whatever the
backbone (0 in caffe_bgr_mean, mean_rgb / 127.5 - 1 in tf_rgb_unit). Saturation and hue rebuild the channels in BGR order for free; flip and any
remaining channel swap are one reverse of the small output. The deviations from the Caffe
release are listed where they happen (ssd.data.augment.photometric, ssd.data.augment.expand_crop, ssd.data.augment.window_resize).
"""

from __future__ import annotations

import tensorflow as tf

from ssd.config.loading import DataConfig
from ssd.data.augment.expand_crop import (crop_boxes, flip_boxes, sample_crop_window, sample_expansion,
                             tf1_box_filter)
from ssd.data.image_files import decode_region, image_size
from ssd.data.augment.photometric import distort_colors_bgr, distort_colors_fast_bgr
from ssd.data.preprocessing import from_bgr_minus_mean, subtract_mean, to_bgr
from ssd.data.augment.stateless_random import split_seed, uniform
from ssd.data.augment.tfod_crop import ssd_random_crop
from ssd.data.augment.window_resize import BILINEAR, INTERPOLATIONS, render_window

RECIPES = ("paper", "tf1", "tfod", "none")

# the TF1 reference implementation's expansion and crop attempts
TF1_MIN_EXPANSION = 1.1
TF1_CROP_ATTEMPTS = 3


def _to_canvas_pixels(boxes: tf.Tensor, size: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    scale = tf.tile(tf.cast(size, tf.float32), [2])
    shift = tf.tile(tf.cast(offset, tf.float32), [2])
    return boxes * scale + shift


def _paper_geometry(boxes, size, seed, config: DataConfig):
    expand_seed, crop_seed = split_seed(seed, 2)
    canvas, offset = sample_expansion(size, expand_seed, config.expansion_probability, 1.0,
                                      config.max_expansion)
    boxes_px = _to_canvas_pixels(boxes, size, offset)
    window, _ = sample_crop_window(boxes_px, canvas, crop_seed, config.crop_min_ious,
                                   config.crop_max_trials, config.crop_min_scale,
                                   config.crop_max_aspect_ratio)
    cropped, keep = crop_boxes(boxes_px, window)
    return offset, window, cropped, keep


def _tf1_geometry(boxes, size, seed, config: DataConfig):
    """Up to TF1_CROP_ATTEMPTS expansion + crop draws; the first that keeps a box after the
    TF1 box filter wins, else the untouched image with all its boxes."""
    attempts = []
    for attempt_seed in split_seed(seed, TF1_CROP_ATTEMPTS):
        expand_seed, crop_seed = split_seed(attempt_seed, 2)
        canvas, offset = sample_expansion(size, expand_seed, config.expansion_probability,
                                          min(TF1_MIN_EXPANSION, config.max_expansion),
                                          config.max_expansion)
        boxes_px = _to_canvas_pixels(boxes, size, offset)
        window, _ = sample_crop_window(boxes_px, canvas, crop_seed, config.crop_min_ious,
                                       config.crop_max_trials, config.crop_min_scale,
                                       config.crop_max_aspect_ratio, separate_sides=True)
        cropped, keep = crop_boxes(boxes_px, window)
        keep = keep & tf1_box_filter(cropped)
        attempts.append((offset, window, cropped, keep))
    whole_image = tf.concat([tf.zeros([2]), tf.cast(size, tf.float32)], axis=0)
    attempts.append((tf.zeros([2], tf.int32), whole_image, boxes,
                     tf.ones_like(boxes[:, 0], tf.bool)))
    offsets, windows, croppeds, keeps = (tf.stack(parts) for parts in zip(*attempts))
    success = tf.concat([tf.reduce_any(keeps[:-1], axis=1), [True]], axis=0)
    chosen = tf.argmax(tf.cast(success, tf.int32), output_type=tf.int32)  # first success
    return offsets[chosen], windows[chosen], croppeds[chosen], keeps[chosen]


def _tfod_geometry(boxes, size, seed, config: DataConfig):
    """The API's ssd_random_crop: a window of the image itself (no canvas)."""
    window, cropped, keep, _ = ssd_random_crop(boxes, size, seed)
    return tf.zeros([2], tf.int32), window, cropped, keep


_GEOMETRIES = {"paper": _paper_geometry, "tf1": _tf1_geometry, "tfod": _tfod_geometry}


def _resized_whole(encoded: tf.Tensor, size: tf.Tensor, out, config: DataConfig) -> tf.Tensor:
    """The "none" recipe: the whole image resized to the input size, preprocessed."""
    image = tf.image.resize(tf.cast(decode_region(encoded, tf.concat([[0, 0], size], 0)), tf.float32), out)
    return from_bgr_minus_mean(to_bgr(subtract_mean(image, config.mean_rgb)), config)


def _distorted_minus_mean(pixels: tf.Tensor, mode: str, color_seed: tf.Tensor,
                          config: DataConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """(pixels after the recipe's photometric distortion minus the mean, whether their channels
    are reversed): the distortion may hand back BGR for free, and the mean follows the channels."""
    if not config.photometric or mode == "tfod":
        reversed_ = tf.constant(False)
    elif mode == "paper":
        pixels, reversed_ = distort_colors_bgr(pixels, color_seed)
    else:
        pixels, reversed_ = distort_colors_fast_bgr(pixels, color_seed), tf.constant(True)
    mean_rgb = tf.constant(config.mean_rgb, tf.float32)
    return subtract_mean(pixels, tf.where(reversed_, mean_rgb[::-1], mean_rgb)), reversed_


def augment_for_training(encoded: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor,
                         difficult: tf.Tensor, seed: tf.Tensor, config: DataConfig,
                         output_size: int) -> dict[str, tf.Tensor]:
    """Augments one encoded JPEG/PNG with its ground truths (config.augmentation selects the
    recipe: "paper", "tf1", "tfod" or "none" = resize only).

    Args:
      boxes: [N, 4] normalized; labels [N]; difficult [N] (they travel with the boxes).
      seed: [2] integer stateless seed; the result is a pure function of the inputs and it.
    Returns dict: image [S, S, 3] float32 model input (`config.preprocessing`), boxes [M, 4]
    normalized to the output, labels [M], difficult [M], image_size [2] int32 (height, width of
    the encoded image).
    """
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    size = image_size(encoded)
    geometry_seed, color_seed, flip_seed = split_seed(seed, 3)
    out = (output_size, output_size)
    mode = config.augmentation
    if mode not in RECIPES:
        raise ValueError(f"data.augmentation: unknown mode {mode!r}")

    if mode == "none":
        return dict(image=_resized_whole(encoded, size, out, config), boxes=boxes,
                    labels=labels, difficult=difficult, image_size=size)

    offset, window, cropped, keep = _GEOMETRIES[mode](boxes, size, geometry_seed, config)
    flip_draw = uniform(flip_seed, [2])
    flip = flip_draw[0] < config.flip_probability
    if mode == "paper" and config.random_interpolation:
        method = tf.minimum(tf.cast(flip_draw[1] * len(INTERPOLATIONS), tf.int32),
                            len(INTERPOLATIONS) - 1)
    else:
        method = tf.constant(BILINEAR)
    kept_boxes = tf.boolean_mask(cropped, keep)
    kept_boxes = tf.cond(flip, lambda: flip_boxes(kept_boxes), lambda: kept_boxes)

    # the part of the window that shows the image, in image pixels
    window_i = tf.cast(window, tf.int32)
    top_left = tf.maximum(window_i[:2], offset)
    bottom_right = tf.minimum(window_i[2:], offset + size)
    visible_size = bottom_right - top_left
    window_size = window_i[2:] - window_i[:2]

    def render():
        region = tf.concat([top_left - offset, visible_size], axis=0)
        pixels = tf.cast(decode_region(encoded, region, size[1]), tf.float32)
        pixels, reversed_ = _distorted_minus_mean(pixels, mode, color_seed, config)
        image = render_window(pixels, top_left - window_i[:2], window_size, out, method)
        return image, reversed_

    image, reversed_ = tf.cond(tf.reduce_all(visible_size > 0), render,
                               lambda: (tf.zeros(out + (3,), tf.float32), tf.constant(True)))
    return dict(image=from_bgr_minus_mean(to_bgr(image, reversed_, flip), config),
                boxes=kept_boxes,
                labels=tf.boolean_mask(labels, keep), difficult=tf.boolean_mask(difficult, keep),
                image_size=size)
