"""The model's input conventions, and the way from an encoded picture to them and back.

The network takes float32 images resized to `model.input_size` squared, in the convention its
backbone's pretrained weights were trained with (`data.preprocessing`, fixed by the backbone,
see `ssd.config.architectures`), because every other convention would throw away what pretraining learnt:

  caffe_bgr_mean (VGG16): BGR pixels on the 0..255 scale minus the per-channel mean of the
    ImageNet training images (`data.mean_rgb`, given in RGB order). Caffe read images with
    OpenCV (BGR) and subtracted that mean without scaling.
  tf_rgb_unit (MobileNetV2): RGB pixels scaled to [-1, 1], x / 127.5 - 1 (Keras' and TF-slim's
    MobileNetV2 preprocessing).

`preprocess_image` is the convention for evaluation, prediction and export (plain bilinear
resize). The training augmentation (ssd.data.augment.recipe) computes in caffe_bgr_mean, where its
zoom-out canvas of the mean colour is exactly zero, and `from_bgr_minus_mean` converts its
result: the canvas stays the mean colour in pixel space in either convention. `to_display`
goes back to RGB in [0, 1] for pictures.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ssd.config.architectures import CAFFE_BGR_MEAN, TF_RGB_UNIT
from ssd.config.loading import Config, DataConfig

# tf_rgb_unit: x / UNIT_SCALE - 1 maps 0..255 onto [-1, 1]
UNIT_SCALE = 127.5


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


def _unknown(preprocessing: str) -> ValueError:
    return ValueError(f"data.preprocessing: must be {CAFFE_BGR_MEAN!r} or {TF_RGB_UNIT!r}, "
                      f"got {preprocessing!r}")


def preprocess_image(image: tf.Tensor, config: Config) -> tf.Tensor:
    """uint8 (or float) RGB [H, W, 3] or [B, H, W, 3] -> the model input: resized (bilinear) to
    the input size, then in the `data.preprocessing` convention, float32."""
    size = config.model.input_size
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size])
    preprocessing = config.data.preprocessing
    if preprocessing == CAFFE_BGR_MEAN:
        return tf.reverse(subtract_mean(image, config.data.mean_rgb), [-1])
    if preprocessing == TF_RGB_UNIT:
        return image / UNIT_SCALE - 1.0
    raise _unknown(preprocessing)


def from_bgr_minus_mean(images: tf.Tensor, data_config: DataConfig) -> tf.Tensor:
    """Images in caffe_bgr_mean [..., 3] -> the same images in `data_config.preprocessing`."""
    preprocessing = data_config.preprocessing
    if preprocessing == CAFFE_BGR_MEAN:
        return images
    if preprocessing == TF_RGB_UNIT:
        rgb = tf.reverse(images, [-1]) + tf.constant(data_config.mean_rgb, tf.float32)
        return rgb / UNIT_SCALE - 1.0
    raise _unknown(preprocessing)


def to_display(images: tf.Tensor, config: Config) -> tf.Tensor:
    """Model inputs ([..., 3], in `data.preprocessing`) -> RGB float32 in [0, 1] for pictures."""
    images = tf.cast(images, tf.float32)
    preprocessing = config.data.preprocessing
    if preprocessing == CAFFE_BGR_MEAN:
        bgr = images + tf.constant(config.data.mean_rgb[::-1], tf.float32)
        rgb = tf.reverse(bgr, axis=[-1])
    elif preprocessing == TF_RGB_UNIT:
        rgb = (images + 1.0) * UNIT_SCALE
    else:
        raise _unknown(preprocessing)
    return tf.clip_by_value(rgb / 255.0, 0.0, 1.0)
