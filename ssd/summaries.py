"""TensorBoard summaries written with TensorFlow's own `tf.summary.write`.

`tf.summary.scalar` and `tf.summary.image` live in the tensorboard package; writing the plugin
wire format directly keeps the library usable where only TensorFlow is installed.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2


def _plugin_metadata(plugin: str, data_class: int) -> summary_pb2.SummaryMetadata:
    metadata = summary_pb2.SummaryMetadata(data_class=data_class)
    metadata.plugin_data.plugin_name = plugin
    return metadata


_SCALAR_METADATA = _plugin_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
_IMAGE_METADATA = _plugin_metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)


def write_scalar(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar into the default summary writer."""
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


def write_images(name: str, images: tf.Tensor, step: int) -> None:
    """TensorBoard images (float [N, H, W, C] in [0, 1]) into the default summary writer."""
    images = tf.image.convert_image_dtype(tf.convert_to_tensor(images), tf.uint8, saturate=True)
    height, width = int(images.shape[1]), int(images.shape[2])
    encoded = [tf.io.encode_png(image) for image in tf.unstack(images)]
    tensor = tf.stack([tf.constant(str(width)), tf.constant(str(height))] + encoded)
    tf.summary.write(name, tensor, step=step, metadata=_IMAGE_METADATA)


def flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics -> {"a/b": float}; non-numeric leaves (names, lists, None) are left out."""
    flat = {}
    for name, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flat_scalars(value, f"{prefix}{name}/"))
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            flat[f"{prefix}{name}"] = float(value)
    return flat


def format_metrics(values: Mapping[str, Any]) -> str:
    """"name value, ..." for a log line."""
    return ", ".join(f"{name} {value:.4g}" for name, value in flat_scalars(values).items())
