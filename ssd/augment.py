"""Training-time data augmentation of SSD, as pure TensorFlow ops on one encoded image.

Paper mode ("paper") is the original Caffe release's pipeline, in this order:
  1. photometric distortion (Caffe's ApplyDistort, see `distort_colors`);
  2. zoom out: with probability `expansion_probability` the image is placed at a random integer
     position on a canvas 1x to `max_expansion`x its size filled with the mean colour;
  3. min-IoU random crop (`sample_crop_window`), keeping the ground truths whose centre lies in
     the patch, clipped to it;
  4. horizontal flip; 5. resize to the input size with a random interpolation.
Seed mode ("seed") follows the TF1 reference repository: brightness and saturation only (both
applied, random order), expansion ratio in [1.1, max], crop sides drawn separately in
[min_scale, 1) with the pixel aspect ratio bounded, boxes with area outside (0.001, 0.9) or a side
under 0.025 dropped after the crop, up to 3 expansion + crop draws and a fall-back to the
untouched image when none keeps a box, bilinear resize. It shares the paper's sampler logic
otherwise (the seed picks one min-IoU level first and tests all kept boxes against it).

How the pixels are computed (same result, a fraction of the work): expansion and crop are decided
on box coordinates only, from the image size in the file header, and compose into one window of
the (never built) canvas, in canvas pixels. Only the part of the image the window shows is
decoded (`tf.io.decode_and_crop_jpeg`) and distorted; every photometric operation is per pixel,
so distorting that part equals distorting the whole image and cropping it afterwards, and the
canvas keeps its undistorted mean colour as in the original. After mean subtraction the canvas
is exactly zero, and `render_window` resizes the window with the canvas filled in implicitly
(zero padding, zero extrapolation) instead of materializing up to 16x the image. Saturation
and hue run on colour planes and rebuild the channels in BGR order for free; flip and any
remaining channel swap are one reverse of the small output.

Deviations from the Caffe release, all deliberate:
  * Windows are whole canvas pixels: the sampled patch is rounded to pixels before its IoU, the
    centre rule and the box projection are evaluated, so boxes stay exactly on their pixels
    (Caffe evaluates on the unrounded patch and crops at truncated pixels: < 1 pixel apart).
  * The "any patch" sampler has no constraint at all; Caffe's (max IoU <= 1 with some object)
    also fails on an image without objects, which the original data never had.
  * Pixels are float32 between the operations instead of being rounded to uint8 after each.
  * Hue shifts as `tf.image.adjust_hue` does (wrapping around the circle; OpenCV's uint8 hue
    saturates at 0 on negative shifts).
  * The interpolations are TensorFlow's: bilinear, area, nearest, bicubic (Keys, a = -0.5) and
    lanczos3 (OpenCV: linear, area, nearest, cubic a = -0.75, lanczos4). When the window shows
    canvas, bilinear and nearest stay exact, while area / bicubic / lanczos3 are computed as
    `ScaleAndTranslate` of the canvas with the box / keyscubic / lanczos3 kernels: bicubic and
    lanczos3 then differ from the plain resize ops only at the image border (edge handling),
    area becomes a box average without fractional coverage of the cell-border pixels.
A crop whose ground truths would all fall out (possible: the constraint is an IoU, the survival
rule is the centre) is retried: a trial patch counts only when it keeps at least one ground-truth
centre, so every augmented image of an annotated picture keeps an object (the whole-image sampler
always does). Caffe would train on such a crop as pure background, which carries no loss weight
(no positives, hence no hard negatives) and only spends compute.
Contrast is Caffe's `convertTo(alpha)`: pixels multiplied by the factor, not pulled towards the
image mean as `tf.image.adjust_contrast` does.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ssd import boxes as box_ops
from ssd.config import DataConfig

INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic", "lanczos3")
BILINEAR = 0

# Caffe's distort_param in the SSD VOC recipe
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 0.1  # 18 of OpenCV's 180 hue units = 36 degrees
DISTORT_PROBABILITY = 0.5

# the TF1 reference repository ("seed")
SEED_MIN_EXPANSION = 1.1
SEED_CROP_ATTEMPTS = 3
SEED_MIN_AREA = 0.001
SEED_MAX_AREA = 0.9
SEED_MIN_SIDE = 0.025

# ScaleAndTranslate kernels standing in for the resize ops when the window shows canvas:
# name, antialias, kernel radius in input pixels (times the downscale factor when antialiased)
_CANVAS_KERNELS = {"area": ("box", True, 0.5), "bicubic": ("keyscubic", False, 2.0),
                   "lanczos3": ("lanczos3", False, 3.0)}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- random numbers --------------------------------------------------------------------------

def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    """`num` independent stateless seeds ([2] int64 each) derived from one."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)
    return [seeds[i] for i in range(num)]


def _uniform(seed: tf.Tensor, shape: Sequence[int], low: float = 0.0, high: float = 1.0):
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


# --- image files -----------------------------------------------------------------------------

def _is_png(encoded: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.substr(encoded, 0, len(_PNG_MAGIC)), _PNG_MAGIC)


def image_size(encoded: tf.Tensor) -> tf.Tensor:
    """[2] int32 (height, width) of JPEG or PNG bytes, read from the header without decoding."""
    def png_size():
        # IHDR: width then height, 4 bytes big-endian each, at byte 16
        digits = tf.cast(tf.io.decode_raw(tf.strings.substr(encoded, 16, 8), tf.uint8), tf.int32)
        weights = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int32)
        width = tf.reduce_sum(digits[:4] * weights)
        height = tf.reduce_sum(digits[4:] * weights)
        return tf.stack([height, width])

    return tf.cond(_is_png(encoded), png_size,
                   lambda: tf.io.extract_jpeg_shape(encoded, output_type=tf.int32)[:2])


def decode_region(encoded: tf.Tensor, region: tf.Tensor,
                  image_width: tf.Tensor | None = None) -> tf.Tensor:
    """Decodes only `region` = [top, left, height, width] (int32) of JPEG or PNG bytes.

    Returns uint8 RGB [height, width, 3], equal to decoding everything and slicing. JPEGs are
    decoded for that region only; given the `image_width`, one more column is decoded when there
    is one, because libjpeg upsamples the chroma of a crop's last column as if it were the
    image's edge (a few levels off otherwise).
    """
    region = tf.cast(region, tf.int32)

    def png():
        image = tf.io.decode_png(encoded, channels=3)
        return tf.slice(image, [region[0], region[1], 0], [region[2], region[3], 3])

    def jpeg():
        if image_width is None:
            return tf.io.decode_and_crop_jpeg(encoded, region, channels=3)
        extra = tf.minimum(1, tf.cast(image_width, tf.int32) - region[1] - region[3])
        wider = tf.concat([region[:3], [region[3] + extra]], axis=0)
        image = tf.io.decode_and_crop_jpeg(encoded, wider, channels=3)
        return tf.slice(image, [0, 0, 0], [region[2], region[3], 3])

    image = tf.cond(_is_png(encoded), png, jpeg)
    image.set_shape([None, None, 3])
    return image


# --- photometric distortion ------------------------------------------------------------------

def _clip_pixels(image: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(image, 0.0, 255.0)


def _maybe(apply: tf.Tensor, fn, image: tf.Tensor) -> tf.Tensor:
    return tf.cond(apply, lambda: fn(image), lambda: image)


def adjust_saturation_hue(image: tf.Tensor, saturation: tf.Tensor | float,
                          hue: tf.Tensor | float, reverse_channels: bool = False) -> tf.Tensor:
    """HSV saturation scaling then hue shift of a float RGB image [H, W, 3] (any value scale).

    Equal to `tf.image.adjust_hue(tf.image.adjust_saturation(image, saturation), hue)` up to
    float rounding, several times faster on CPU: the value (max channel) is kept, the chroma
    (max - min) becomes min(saturation * chroma, max) (saturation clipped at 1), the hue (in
    sextants) moves by 6 * hue, and the channels are rebuilt from them, in reverse order (BGR)
    when `reverse_channels` (free here, costly on the interleaved image).
    """
    r, g, b = tf.unstack(tf.transpose(image, [2, 0, 1]))
    value = tf.maximum(tf.maximum(r, g), b)
    low = tf.minimum(tf.minimum(r, g), b)
    chroma = value - low
    inverse = tf.math.divide_no_nan(1.0, chroma)

    def saturation_only():
        # same hue: every channel keeps its place between the max and the new min
        ratio = tf.minimum(saturation, value * inverse)
        return [value - (value - c) * ratio for c in (r, g, b)]

    def with_hue():
        sextant = tf.where(tf.equal(value, r), (g - b) * inverse,
                           tf.where(tf.equal(value, g), (b - r) * inverse + 2.0,
                                    (r - g) * inverse + 4.0))
        # sextant is in [-1, 5]: one shift of 6 keeps it positive for any |hue| <= 1
        sextant = sextant + (6.0 * hue + 6.0)
        sextant = sextant - 6.0 * tf.floor(sextant * (1.0 / 6.0))
        new_chroma = tf.minimum(chroma * saturation, value)
        new_low = value - new_chroma
        channels = []
        for opposite in (3.0, 5.0, 1.0):  # the hue (sextants) where R, G, B are lowest
            distance = tf.abs(sextant - opposite)
            weight = tf.clip_by_value(2.0 - tf.abs(distance - 3.0), 0.0, 1.0)
            channels.append(new_low + new_chroma * weight)
        return channels

    if isinstance(hue, (int, float)):
        channels = with_hue() if hue else saturation_only()
    else:
        channels = tf.cond(tf.equal(hue, 0.0), saturation_only, with_hue)
    if reverse_channels:
        channels = channels[::-1]
    return tf.transpose(tf.stack(channels), [1, 2, 0])


def _photometric_draws(seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """The random choices of `distort_colors`; skipped operations get neutral parameters."""
    u = _uniform(seed, [9])
    apply = u[1:5] < DISTORT_PROBABILITY
    return dict(
        contrast_first=u[0] < 0.5,
        brightness=tf.where(apply[0], (2.0 * u[5] - 1.0) * BRIGHTNESS_DELTA, 0.0),
        contrast=tf.where(apply[1], CONTRAST_RANGE[0] +
                          (CONTRAST_RANGE[1] - CONTRAST_RANGE[0]) * u[6], 1.0),
        saturation=tf.where(apply[2], SATURATION_RANGE[0] +
                            (SATURATION_RANGE[1] - SATURATION_RANGE[0]) * u[7], 1.0),
        hue=tf.where(apply[3], (2.0 * u[8] - 1.0) * HUE_DELTA, 0.0),
        apply=apply)


def distort_colors_bgr(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`distort_colors`, returning (image, reversed): when saturation or hue ran, the channels
    come out reversed (BGR) at no cost and `reversed` is True."""
    draws = _photometric_draws(seed)
    apply = draws["apply"]

    def adjust_contrast(x):
        return tf.minimum(x * draws["contrast"], 255.0)  # x >= 0 and the factor > 0

    def saturation_hue(x):
        # the HSV round trip can leave values a rounding error outside the range
        return _clip_pixels(adjust_saturation_hue(x, draws["saturation"], draws["hue"],
                                                  reverse_channels=True))

    def contrast_first(x):
        x = _maybe(apply[1], adjust_contrast, x)
        return _maybe(apply[2] | apply[3], saturation_hue, x)

    def contrast_last(x):
        # saturation and hue are adjacent in both orders: one HSV round trip
        x = _maybe(apply[2] | apply[3], saturation_hue, x)
        return _maybe(apply[1], adjust_contrast, x)

    image = _maybe(apply[0], lambda x: _clip_pixels(x + draws["brightness"]), image)
    image = tf.cond(draws["contrast_first"], lambda: contrast_first(image),
                    lambda: contrast_last(image))
    return image, apply[2] | apply[3]


def distort_colors(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Caffe's ApplyDistort on a float RGB image with values in [0, 255].

    Brightness (+delta, |delta| <= 32), then with probability 1/2 contrast, saturation, hue,
    otherwise saturation, hue, contrast; each operation applied with probability 1/2. Contrast
    multiplies the pixels by a factor in [0.5, 1.5] (Caffe's convertTo), saturation scales the
    HSV saturation by a factor in [0.5, 1.5], hue shifts by up to 0.1 of the circle. Every
    operation is per pixel (so it commutes exactly with cropping); values stay in [0, 255].
    """
    image, reversed_ = distort_colors_bgr(image, seed)
    return tf.cond(reversed_, lambda: tf.reverse(image, [-1]), lambda: image)


def distort_colors_fast(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """`distort_colors_fast_bgr` with the channels put back in RGB order."""
    return tf.reverse(distort_colors_fast_bgr(image, seed), [-1])


def distort_colors_fast_bgr(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The seed's fast colour mode: brightness (|delta| <= 32) and saturation ([0.5, 1.5]),
    both always applied, in random order, on float RGB in [0, 255]. Returns BGR."""
    u = _uniform(seed, [3])
    delta = (2.0 * u[1] - 1.0) * BRIGHTNESS_DELTA
    saturation = SATURATION_RANGE[0] + (SATURATION_RANGE[1] - SATURATION_RANGE[0]) * u[2]

    def brightness(x):
        return _clip_pixels(x + delta)

    def saturate(x):
        return _clip_pixels(adjust_saturation_hue(x, saturation, 0.0, reverse_channels=True))

    return tf.cond(u[0] < 0.5, lambda: saturate(brightness(image)),
                   lambda: brightness(saturate(image)))


# --- geometry: zoom out and crop -------------------------------------------------------------

def sample_expansion(size: tf.Tensor, seed: tf.Tensor, probability: float, min_ratio: float,
                     max_ratio: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Caffe's ExpandImage geometry for an image of `size` = [2] (height, width).

    With `probability`, a ratio r ~ U[min_ratio, max_ratio] gives a canvas of floor(size * r)
    pixels and the image's top-left corner at floor(U[0, canvas - size)) per axis; otherwise the
    canvas is the image. Returns canvas_size [2] int32 and offset [2] int32.
    """
    size = tf.cast(size, tf.int32)
    u = _uniform(seed, [4])
    ratio = tf.where(u[0] < probability, min_ratio + (max_ratio - min_ratio) * u[1], 1.0)
    canvas = tf.maximum(tf.cast(tf.floor(tf.cast(size, tf.float32) * ratio), tf.int32), size)
    offset = tf.cast(tf.floor(u[2:] * tf.cast(canvas - size, tf.float32)), tf.int32)
    return canvas, offset


def _candidate_patches(canvas: tf.Tensor, seed: tf.Tensor, num_samplers: int, trials: int,
                       min_scale: float, max_aspect_ratio: float, separate_sides: bool
                       ) -> tuple[tf.Tensor, tf.Tensor]:
    """[num_samplers, trials, 4] patches in canvas pixels (rounded) and a [.., trials] validity."""
    u = _uniform(seed, [num_samplers, trials, 4])
    canvas_f = tf.cast(canvas, tf.float32)
    if separate_sides:
        # the seed: width and height fractions drawn separately, aspect (in pixels) bounded
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
      separate_sides: the seed's patch shape (width, height fractions in [min_scale, 1) drawn
        separately) instead of Caffe's (scale, aspect ratio).
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
    draw = _uniform(choice_seed, [num_samplers + 1])
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


def seed_box_filter(boxes: tf.Tensor) -> tf.Tensor:
    """The seed's post-crop filter on normalized boxes: area in (0.001, 0.9), sides > 0.025."""
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    area = h * w
    return ((area > SEED_MIN_AREA) & (area < SEED_MAX_AREA) &
            (h > SEED_MIN_SIDE) & (w > SEED_MIN_SIDE))


def flip_boxes(boxes: tf.Tensor) -> tf.Tensor:
    """Horizontal mirror of normalized boxes [N, 4]."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)


# --- pixels ----------------------------------------------------------------------------------

def subtract_mean(image: tf.Tensor, mean: Sequence[float] | tf.Tensor) -> tf.Tensor:
    """image [..., H, W, 3] minus the per-channel mean [3].

    Subtracts a row [W * 3] from [-1, W * 3]: much faster on CPU than broadcasting [3].
    """
    shape = tf.shape(image)
    width = shape[-2]
    rows = tf.reshape(image, [-1, width * 3])
    mean_row = tf.tile(tf.cast(mean, tf.float32), [width])
    return tf.reshape(rows - mean_row, shape)


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

    def paste(image, first, count):
        """Places the computed outputs at `first` in the zero (canvas) output."""
        after = tf.constant(out, tf.int32) - first - count
        return tf.pad(image, tf.stack([tf.stack([first[0], after[0]]),
                                       tf.stack([first[1], after[1]]), [0, 0]]))

    def sampled(name):
        # crop_and_resize samples on the canvas-window grid, over the outputs near the image
        def run():
            padded = _pad_visible_by_one(visible, canvas_before, canvas_after)
            extent = tf.cast(tf.shape(padded)[:2] - 1, tf.float32)
            offset_f = tf.cast(offset, tf.float32)
            first, count = [], []
            for axis in range(2):
                low = offset_f[axis] - 0.5  # pixel centres of the padded image, +-1 to spare
                high = offset_f[axis] + tf.cast(visible_size[axis], tf.float32) + 0.5
                axis_first, axis_count = _covered_outputs(window_size[axis], low, high,
                                                          out[axis])
                first.append(axis_first)
                count.append(axis_count)
            first, count = tf.stack(first), tf.stack(count)
            step = tf.cast(window_size, tf.float32) / tf.constant(out, tf.float32)
            # half-pixel sample positions in pixel indices of the padded image
            start = (tf.cast(first, tf.float32) + 0.5) * step - 0.5 - (offset_f - 1.0)
            stop = start + tf.cast(count - 1, tf.float32) * step
            box = tf.concat([start / extent, stop / extent], axis=0)
            image = tf.image.crop_and_resize(padded[None], box[None], [0], count, method=name,
                                             extrapolation_value=0.0)[0]
            return paste(image, first, count)
        return run

    def kernel(name):
        kernel_type, antialias, radius = _CANVAS_KERNELS[name]

        def run():
            window_f = tf.cast(window_size, tf.float32)
            scale = tf.constant(out, tf.float32) / window_f
            reach = radius * (tf.maximum(1.0 / scale, 1.0) if antialias else tf.ones([2]))
            # every tap of any output pixel that touches the image stays inside the padding
            margin = 2 * tf.cast(tf.math.ceil(reach), tf.int32) + 1
            # (no further than the window's edge, where the kernel stops as at an image edge)
            before = tf.minimum(margin, offset)
            after = tf.minimum(margin, window_size - offset - visible_size)
            padded = tf.pad(visible, tf.stack([tf.stack([before[0], after[0]]),
                                               tf.stack([before[1], after[1]]), [0, 0]]))
            # ScaleAndTranslate gives 0 where the sample falls outside its input: compute only
            # the outputs whose sample lies on the padded image
            low = tf.cast(offset - before, tf.float32)
            high = tf.cast(offset + visible_size + after, tf.float32)
            first, count = [], []
            for axis in range(2):
                axis_first, axis_count = _covered_outputs(window_size[axis], low[axis],
                                                          high[axis], out[axis])
                first.append(axis_first)
                count.append(axis_count)
            first, count = tf.stack(first), tf.stack(count)
            translation = low * scale - tf.cast(first, tf.float32)
            image = tf.raw_ops.ScaleAndTranslate(
                images=padded[None], size=count, scale=scale, translation=translation,
                kernel_type=kernel_type, antialias=antialias)[0]
            return paste(image, first, count)
        return run

    def nearest():
        return _nearest_window(visible, offset, window_size, out)

    canvas_branches = [sampled("bilinear"), kernel("area"), nearest, kernel("bicubic"),
                       kernel("lanczos3")]
    plain_branches = [plain("bilinear"), plain("area"), nearest, plain("bicubic"),
                      plain("lanczos3")]
    image = tf.cond(shows_canvas, lambda: tf.switch_case(method, canvas_branches),
                    lambda: tf.switch_case(method, plain_branches))
    image.set_shape(out + [visible.shape[-1]])
    return image


def to_bgr(image: tf.Tensor, channels_reversed: tf.Tensor | bool = False,
           flip: tf.Tensor | bool = False) -> tf.Tensor:
    """[H, W, 3] to BGR (unless `channels_reversed` says it is already), mirrored horizontally
    when `flip`. One reverse op, the cheap kind when it can be."""
    def finish(reversed_, flip_):
        axes = ([] if reversed_ else [2]) + ([1] if flip_ else [])
        return (lambda: tf.reverse(image, sorted(axes))) if axes else (lambda: image)

    if isinstance(channels_reversed, bool) and isinstance(flip, bool):
        return finish(channels_reversed, flip)()
    case = 2 * tf.cast(channels_reversed, tf.int32) + tf.cast(flip, tf.int32)
    return tf.switch_case(case, [finish(False, False), finish(False, True),
                                 finish(True, False), finish(True, True)])


# --- the whole pipeline ----------------------------------------------------------------------

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


def _seed_geometry(boxes, size, seed, config: DataConfig):
    """Up to SEED_CROP_ATTEMPTS expansion + crop draws; the first that keeps a box after the
    seed's filter wins, else the untouched image with all its boxes."""
    attempts = []
    for attempt_seed in split_seed(seed, SEED_CROP_ATTEMPTS):
        expand_seed, crop_seed = split_seed(attempt_seed, 2)
        canvas, offset = sample_expansion(size, expand_seed, config.expansion_probability,
                                          min(SEED_MIN_EXPANSION, config.max_expansion),
                                          config.max_expansion)
        boxes_px = _to_canvas_pixels(boxes, size, offset)
        window, _ = sample_crop_window(boxes_px, canvas, crop_seed, config.crop_min_ious,
                                       config.crop_max_trials, config.crop_min_scale,
                                       config.crop_max_aspect_ratio, separate_sides=True)
        cropped, keep = crop_boxes(boxes_px, window)
        keep = keep & seed_box_filter(cropped)
        attempts.append((offset, window, cropped, keep))
    whole_image = tf.concat([tf.zeros([2]), tf.cast(size, tf.float32)], axis=0)
    attempts.append((tf.zeros([2], tf.int32), whole_image, boxes,
                     tf.ones_like(boxes[:, 0], tf.bool)))
    offsets, windows, croppeds, keeps = (tf.stack(parts) for parts in zip(*attempts))
    success = tf.concat([tf.reduce_any(keeps[:-1], axis=1), [True]], axis=0)
    chosen = tf.argmax(tf.cast(success, tf.int32), output_type=tf.int32)  # first success
    return offsets[chosen], windows[chosen], croppeds[chosen], keeps[chosen]


def augment_for_training(encoded: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor,
                         difficult: tf.Tensor, seed: tf.Tensor, config: DataConfig,
                         output_size: int) -> dict[str, tf.Tensor]:
    """Augments one encoded JPEG/PNG with its ground truths (config.augmentation selects the
    recipe: "paper", "seed" or "none" = resize only).

    Args:
      boxes: [N, 4] normalized; labels [N]; difficult [N] (they travel with the boxes).
      seed: [2] integer stateless seed; the result is a pure function of the inputs and it.
    Returns dict: image [S, S, 3] float32 BGR minus the mean (the model input), boxes [M, 4]
    normalized to the output, labels [M], difficult [M], image_size [2] int32 (height, width of
    the encoded image).
    """
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    mean_rgb = tf.constant(config.mean_rgb, tf.float32)
    size = image_size(encoded)
    geometry_seed, color_seed, flip_seed = split_seed(seed, 3)
    out = (output_size, output_size)
    mode = config.augmentation
    if mode not in ("paper", "seed", "none"):
        raise ValueError(f"data.augmentation: unknown mode {mode!r}")

    if mode == "none":
        image = tf.image.resize(tf.cast(decode_region(encoded, tf.concat([[0, 0], size], 0)),
                                        tf.float32), out)
        return dict(image=to_bgr(subtract_mean(image, config.mean_rgb)), boxes=boxes,
                    labels=labels, difficult=difficult, image_size=size)

    geometry = _paper_geometry if mode == "paper" else _seed_geometry
    offset, window, cropped, keep = geometry(boxes, size, geometry_seed, config)
    flip_draw = _uniform(flip_seed, [2])
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
        # the photometric step may hand back BGR for free; the mean follows the channels
        if not config.photometric:
            reversed_ = tf.constant(False)
        elif mode == "paper":
            pixels, reversed_ = distort_colors_bgr(pixels, color_seed)
        else:
            pixels, reversed_ = distort_colors_fast_bgr(pixels, color_seed), tf.constant(True)
        mean = tf.where(reversed_, mean_rgb[::-1], mean_rgb)
        pixels = subtract_mean(pixels, mean)
        image = render_window(pixels, top_left - window_i[:2], window_size, out, method)
        return image, reversed_

    image, reversed_ = tf.cond(tf.reduce_all(visible_size > 0), render,
                               lambda: (tf.zeros(out + (3,), tf.float32), tf.constant(True)))
    return dict(image=to_bgr(image, reversed_, flip), boxes=kept_boxes,
                labels=tf.boolean_mask(labels, keep), difficult=tf.boolean_mask(difficult, keep),
                image_size=size)
