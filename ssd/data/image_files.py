"""JPEG and PNG bytes: the image size from the file header and decoding of one region only.

The augmentation decides its crop on box coordinates before touching a pixel, so it needs the
size without decoding, then decodes only the part of the image its window shows.
"""

from __future__ import annotations

import tensorflow as tf

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(encoded: tf.Tensor) -> tf.Tensor:
    """[] bool: the bytes start with the PNG signature (anything else is taken for a JPEG)."""
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

    return tf.cond(is_png(encoded), png_size,
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

    image = tf.cond(is_png(encoded), png, jpeg)
    image.set_shape([None, None, 3])
    return image
