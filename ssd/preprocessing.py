"""The model's input convention, and the way from an encoded picture to it and back.

The network takes float32 BGR pixels on the 0..255 scale minus the per-channel mean of the
ImageNet training images (`data.mean_rgb`, given in RGB order), resized to `model.input_size`
squared. Why: the VGG16 backbone's pretrained weights come from Caffe, which reads images with
OpenCV (BGR) and subtracted that mean without scaling, so its first convolution expects exactly
those numbers; every other input convention would throw away what pretraining learnt.

`preprocess_image` is that convention for evaluation, prediction and export (plain bilinear
resize); the training augmentation (ssd.augment) produces the same convention from its
randomly cropped window. `to_display` goes back to RGB in [0, 1] for pictures.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ssd.config import Config


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG or PNG bytes -> uint8 RGB [H, W, 3] (grayscale and alpha are converted)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def subtract_mean(image: tf.Tensor, mean: Sequence[float] | tf.Tensor) -> tf.Tensor:
    """image [..., H, W, 3] minus the per-channel mean [3] (in the image's channel order).

    Subtracts a row [W * 3] from [-1, W * 3]: much faster on CPU than broadcasting [3].
    """
    shape = tf.shape(image)
    width = shape[-2]
    rows = tf.reshape(image, [-1, width * 3])
    mean_row = tf.tile(tf.cast(mean, tf.float32), [width])
    return tf.reshape(rows - mean_row, shape)


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


def preprocess_image(image: tf.Tensor, config: Config) -> tf.Tensor:
    """uint8 (or float) RGB [H, W, 3] or [B, H, W, 3] -> the model input: resized (bilinear) to
    the input size, mean subtracted, channels reversed to BGR, float32."""
    size = config.model.input_size
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size])
    return tf.reverse(subtract_mean(image, config.data.mean_rgb), [-1])


def to_display(images: tf.Tensor, config: Config) -> tf.Tensor:
    """Model inputs (BGR minus the mean, [..., 3]) -> RGB float32 in [0, 1] for pictures."""
    mean_bgr = tf.constant(config.data.mean_rgb[::-1], tf.float32)
    bgr = tf.cast(images, tf.float32) + mean_bgr
    return tf.clip_by_value(tf.reverse(bgr, axis=[-1]) / 255.0, 0.0, 1.0)
