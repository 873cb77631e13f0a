"""Photometric distortion of the training augmentation (colour only, per pixel).

"paper" is Caffe's ApplyDistort with the SSD VOC recipe's distort_param (`distort_colors`):
brightness, then contrast, saturation, hue in one of two orders, each with probability 1/2.
"tf1" is the TF1 reference implementation's fast colour mode (`distort_colors_fast`):
brightness and saturation only, both applied, in random order.

Every operation is per pixel, so distorting a crop equals cropping the distorted image: the
augmentation distorts only the part of the image its window shows. Saturation and hue rebuild
the channels from HSV planes, where writing them in BGR order (the model's) costs nothing: the
`*_bgr` variants return the channels reversed and say so.

Deviations from Caffe, all deliberate:
  * Pixels are float32 between the operations instead of being rounded to uint8 after each.
  * Hue shifts as `tf.image.adjust_hue` does (wrapping around the circle; OpenCV's uint8 hue
    saturates at 0 on negative shifts).
  * Contrast is Caffe's `convertTo(alpha)`: pixels multiplied by the factor, not pulled towards
    the image mean as `tf.image.adjust_contrast` does (this one is faithful, and differs from TF).
"""

from __future__ import annotations

import tensorflow as tf

from ssd.data.augment.stateless_random import uniform

# Caffe's distort_param in the SSD VOC recipe
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 0.1  # 18 of OpenCV's 180 hue units = 36 degrees
DISTORT_PROBABILITY = 0.5

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
    u = uniform(seed, [9])
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
    """The TF1 reference fast colour mode: brightness (|delta| <= 32) and saturation
    ([0.5, 1.5]), both always applied, in random order, on float RGB in [0, 255]. Returns BGR."""
    u = uniform(seed, [3])
    delta = (2.0 * u[1] - 1.0) * BRIGHTNESS_DELTA
    saturation = SATURATION_RANGE[0] + (SATURATION_RANGE[1] - SATURATION_RANGE[0]) * u[2]

    def brightness(x):
        return _clip_pixels(x + delta)

    def saturate(x):
        return _clip_pixels(adjust_saturation_hue(x, saturation, 0.0, reverse_channels=True))

    return tf.cond(u[0] < 0.5, lambda: saturate(brightness(image)),
                   lambda: brightness(saturate(image)))

