"""Resizing a window of the zoomed-out canvas to the model input without building the canvas.

The expansion step puts the image on a canvas up to 16x its area, filled with the mean colour;
after mean subtraction that canvas is exactly zero. `render_window` resizes the crop window from
the part of the image it shows, with the canvas filled in implicitly (zero padding, zero
extrapolation), instead of materializing the canvas.

The interpolations are TensorFlow's: bilinear, area, nearest, bicubic (Keys, a = -0.5) and
lanczos3 (the Caffe release uses OpenCV's linear, area, nearest, cubic a = -0.75, lanczos4).
When the window shows canvas, bilinear and nearest stay exact, while area / bicubic / lanczos3
are computed as `ScaleAndTranslate` of the canvas with the box / keyscubic / lanczos3 kernels:
bicubic and lanczos3 then differ from the plain resize ops only at the image border (edge
handling), area becomes a box average without fractional coverage of the cell-border pixels.
"""

from __future__ import annotations

import tensorflow as tf

INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic", "lanczos3")
BILINEAR = 0

# ScaleAndTranslate kernels standing in for the resize ops when the window shows canvas:
# name, antialias, kernel radius in input pixels (times the downscale factor when antialiased)
_CANVAS_KERNELS = {"area": ("box", True, 0.5), "bicubic": ("keyscubic", False, 2.0),
                   "lanczos3": ("lanczos3", False, 3.0)}


def _covered_outputs(window: tf.Tensor, low: tf.Tensor, high: tf.Tensor, out_size: int):
    """Output pixels (per axis) whose half-pixel sample lies in [low, high] (window pixels):
    (first, count), a conservative superset, at least one pixel. The others only see canvas."""
    step = tf.cast(window, tf.float32) / float(out_size)
    first = tf.floor(low / step - 0.5)
    last = tf.math.ceil(high / step - 0.5)
    first = tf.cast(tf.clip_by_value(first, 0.0, out_size - 1.0), tf.int32)
    stop = tf.cast(tf.clip_by_value(last + 1.0, 0.0, float(out_size)), tf.int32)
    return first, tf.maximum(stop - first, 1)


def _pad_visible_by_one(visible: tf.Tensor, canvas_before: tf.Tensor, canvas_after: tf.Tensor):
    """One pixel of border: canvas (zero) where the window shows canvas beyond the visible part,
    the edge pixels repeated where the window ends there (the resize clamps at its input edge)."""
    top = tf.where(canvas_before[0], tf.zeros_like(visible[:1]), visible[:1])
    bottom = tf.where(canvas_after[0], tf.zeros_like(visible[-1:]), visible[-1:])
    visible = tf.concat([top, visible, bottom], axis=0)
    left = tf.where(canvas_before[1], tf.zeros_like(visible[:, :1]), visible[:, :1])
    right = tf.where(canvas_after[1], tf.zeros_like(visible[:, -1:]), visible[:, -1:])
    return tf.concat([left, visible, right], axis=1)


def _nearest_indices(window: tf.Tensor, offset: tf.Tensor, length: tf.Tensor, out_size: int):
    """Half-pixel nearest-neighbour source rows (as ResizeNearestNeighbor picks them) of one axis,
    relative to the visible part: (indices of the output samples that fall on it, number of
    samples before it, number after it)."""
    step = tf.cast(window, tf.float32) / float(out_size)
    source = tf.cast(tf.floor((tf.range(out_size, dtype=tf.float32) + 0.5) * step), tf.int32)
    source = tf.minimum(source, window - 1) - offset
    before = tf.reduce_sum(tf.cast(source < 0, tf.int32))
    after = tf.reduce_sum(tf.cast(source >= length, tf.int32))
    return source[before:out_size - after], before, after


def _nearest_window(visible, offset, window_size, out):
    """Nearest-neighbour resize of the window by two gathers and a zero pad (canvas)."""
    size = tf.shape(visible)[:2]
    rows, top, bottom = _nearest_indices(window_size[0], offset[0], size[0], out[0])
    cols, left, right = _nearest_indices(window_size[1], offset[1], size[1], out[1])
    picked = tf.gather(tf.gather(visible, rows), cols, axis=1)
    return tf.pad(picked, [[top, bottom], [left, right], [0, 0]])


def _paste(image, first, count, out):
    """Places the computed outputs at `first` in the zero (canvas) output of size `out`."""
    after = tf.constant(out, tf.int32) - first - count
    return tf.pad(image, tf.stack([tf.stack([first[0], after[0]]),
                                   tf.stack([first[1], after[1]]), [0, 0]]))


def _covered_block(window_size, low, high, out):
    """(first, count) [2] int32 of the outputs whose samples fall within [low, high] per axis."""
    first, count = [], []
    for axis in range(2):
        axis_first, axis_count = _covered_outputs(window_size[axis], low[axis], high[axis], out[axis])
        first.append(axis_first)
        count.append(axis_count)
    return tf.stack(first), tf.stack(count)


def _bilinear_on_canvas(visible, offset, window_size, out, canvas_before, canvas_after):
    """crop_and_resize samples on the canvas-window grid, over the outputs near the image."""
    padded = _pad_visible_by_one(visible, canvas_before, canvas_after)
    extent = tf.cast(tf.shape(padded)[:2] - 1, tf.float32)
    offset_f = tf.cast(offset, tf.float32)
    visible_f = tf.cast(tf.shape(visible)[:2], tf.float32)
    # pixel centres of the padded image, +-1 to spare
    first, count = _covered_block(window_size, offset_f - 0.5, offset_f + visible_f + 0.5, out)
    step = tf.cast(window_size, tf.float32) / tf.constant(out, tf.float32)
    # half-pixel sample positions in pixel indices of the padded image
    start = (tf.cast(first, tf.float32) + 0.5) * step - 0.5 - (offset_f - 1.0)
    stop = start + tf.cast(count - 1, tf.float32) * step
    box = tf.concat([start / extent, stop / extent], axis=0)
    image = tf.image.crop_and_resize(padded[None], box[None], [0], count, method="bilinear",
                                     extrapolation_value=0.0)[0]
    return _paste(image, first, count, out)


def _kernel_on_canvas(name, visible, offset, window_size, out):
    """ScaleAndTranslate with `name`'s kernel over the image padded as far as its taps reach."""
    kernel_type, antialias, radius = _CANVAS_KERNELS[name]
    visible_size = tf.shape(visible)[:2]
    scale = tf.constant(out, tf.float32) / tf.cast(window_size, tf.float32)
    reach = radius * (tf.maximum(1.0 / scale, 1.0) if antialias else tf.ones([2]))
    # every tap of any output pixel that touches the image stays inside the padding
    margin = 2 * tf.cast(tf.math.ceil(reach), tf.int32) + 1
    # (no further than the window's edge, where the kernel stops as at an image edge)
    before = tf.minimum(margin, offset)
    after = tf.minimum(margin, window_size - offset - visible_size)
    padded = tf.pad(visible, tf.stack([tf.stack([before[0], after[0]]),
                                       tf.stack([before[1], after[1]]), [0, 0]]))
    # ScaleAndTranslate gives 0 where the sample falls outside its input: compute only the
    # outputs whose sample lies on the padded image
    low = tf.cast(offset - before, tf.float32)
    high = tf.cast(offset + visible_size + after, tf.float32)
    first, count = _covered_block(window_size, low, high, out)
    translation = low * scale - tf.cast(first, tf.float32)
    image = tf.raw_ops.ScaleAndTranslate(
        images=padded[None], size=count, scale=scale, translation=translation,
        kernel_type=kernel_type, antialias=antialias)[0]
    return _paste(image, first, count, out)


def render_window(visible: tf.Tensor, offset: tf.Tensor, window_size: tf.Tensor,
                  output_size: tuple[int, int], method: tf.Tensor) -> tf.Tensor:
    """Resizes a canvas window to `output_size`, the canvas being zero.

    Args:
      visible: [h, w, C] float32, the part of the window that shows the image (h, w >= 1).
      offset: [2] int32, where `visible` starts inside the window.
      window_size: [2] int32 (height, width) of the window in canvas pixels.
      method: int32 index into INTERPOLATIONS.
    Returns [out_h, out_w, C] float32 equal to resizing the window with the canvas materialized
    (exactly for bilinear and nearest; see the module notes for the others).
    """
    offset = tf.cast(offset, tf.int32)
    window_size = tf.cast(window_size, tf.int32)
    visible_size = tf.shape(visible)[:2]
    canvas_before = offset > 0
    canvas_after = offset + visible_size < window_size
    shows_canvas = tf.reduce_any(tf.concat([canvas_before, canvas_after], axis=0))
    out = list(output_size)

    def plain(name):
        return lambda: tf.image.resize(visible, out, method=name)

    def on_canvas(name):
        return lambda: _kernel_on_canvas(name, visible, offset, window_size, out)

    def nearest():
        return _nearest_window(visible, offset, window_size, out)

    def bilinear():
        return _bilinear_on_canvas(visible, offset, window_size, out, canvas_before, canvas_after)

    canvas_branches = [bilinear, on_canvas("area"), nearest, on_canvas("bicubic"), on_canvas("lanczos3")]
    plain_branches = [plain("bilinear"), plain("area"), nearest, plain("bicubic"), plain("lanczos3")]
    image = tf.cond(shows_canvas, lambda: tf.switch_case(method, canvas_branches),
                    lambda: tf.switch_case(method, plain_branches))
    image.set_shape(out + [visible.shape[-1]])
    return image
