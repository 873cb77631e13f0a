"""TensorBoard summaries written with TensorFlow's own `tf.summary.write`.

`tf.summary.scalar` and `tf.summary.image` live in the tensorboard package; writing the plugin
wire format directly keeps the library usable where only TensorFlow is installed.

Every writer here writes into the default summary writer:

    writer = tf.summary.create_file_writer(str(model_dir / "eval"))
    with writer.as_default():
        write_scalar("mAP", 0.71, step)
        write_pr_curves(result["precision_recall"], step, result["num_positives"])
        write_image_list("detections", [side_by_side_picture, ...], step)
    writer.close()
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2


def _plugin_metadata(plugin: str, data_class: int) -> summary_pb2.SummaryMetadata:
    metadata = summary_pb2.SummaryMetadata(data_class=data_class)
    metadata.plugin_data.plugin_name = plugin
    return metadata


_SCALAR_METADATA = _plugin_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
_IMAGE_METADATA = _plugin_metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)

PR_CURVE_PLUGIN = "pr_curves"
PR_CURVE_MAX_POINTS = 500  # per curve and step; VOC curves have a point per detection
PADDING_COLOR = (40, 40, 40)  # around images smaller than the largest of a write_image_list


def write_scalar(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar into the default summary writer."""
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


def write_images(name: str, images: tf.Tensor, step: int) -> None:
    """TensorBoard images (float [N, H, W, C] in [0, 1], or uint8) into the default summary writer.

    All images share one size; for images of different sizes use `write_image_list`.
    """
    images = tf.image.convert_image_dtype(tf.convert_to_tensor(images), tf.uint8, saturate=True)
    height, width = int(images.shape[1]), int(images.shape[2])
    encoded = [tf.io.encode_png(image) for image in tf.unstack(images)]
    tensor = tf.stack([tf.constant(str(width)), tf.constant(str(height))] + encoded)
    tf.summary.write(name, tensor, step=step, metadata=_IMAGE_METADATA)


def write_image_list(name: str, images: Sequence[Any], step: int,
                     max_images: int | None = None) -> None:
    """TensorBoard images of different sizes, e.g. detections drawn beside ground truth.

    images: PIL images or arrays [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], uint8 in 0..255 or
    float in [0, 1]; grey and RGBA become RGB. TensorBoard shows one size per summary, so every
    image is PADDED (never resized, so pixels and drawn boxes keep their scale) on the bottom and
    right with PADDING_COLOR to the largest height and width. `max_images` keeps the first ones.
    """
    arrays = [_as_rgb_uint8(image) for image in list(images)[:max_images]]
    if not arrays:
        return
    height = max(a.shape[0] for a in arrays)
    width = max(a.shape[1] for a in arrays)
    canvas = np.empty((len(arrays), height, width, 3), np.uint8)
    canvas[...] = PADDING_COLOR
    for index, array in enumerate(arrays):
        canvas[index, :array.shape[0], :array.shape[1]] = array
    write_images(name, canvas, step)


def _as_rgb_uint8(image: Any) -> np.ndarray:
    array = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image of shape {array.shape}: expected [H, W], [H, W, 1], [H, W, 3] "
                         f"or [H, W, 4]")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"image of dtype {array.dtype}: expected uint8 or float in [0, 1]")
        array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array[..., :3]


def _pr_curve_metadata(num_thresholds: int, description: str) -> summary_pb2.SummaryMetadata:
    metadata = _plugin_metadata(PR_CURVE_PLUGIN, summary_pb2.DATA_CLASS_TENSOR)
    metadata.summary_description = description
    # PrCurvePluginData{version: 0, num_thresholds} (tensorboard/plugins/pr_curve/
    # plugin_data.proto): field 2, varint; version 0 is the default and is not written.
    content, value = bytearray([2 << 3]), num_thresholds
    while True:
        content.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            break
    metadata.plugin_data.content = bytes(content)
    return metadata


def pr_curve_tensor(recall: np.ndarray, precision: np.ndarray, num_positives: int | None = None,
                    max_points: int = PR_CURVE_MAX_POINTS) -> np.ndarray:
    """A precomputed curve as the PR-curve plugin's float32 [6, T] tensor.

    recall, precision: [D] after each of D detections in descending score order (ssd.voc.eval's
    curves). The plugin's rows are true positives, false positives, true negatives, false
    negatives, precision, recall; its T columns go from the lowest threshold (every detection
    counted) up, so the points are written last detection first. Counts derive from the curve:
    after k detections TP = precision * k, FP = k - TP, FN = num_positives - TP (num_positives
    from recall when not given), TN = 0 (undefined for detection). More than `max_points` points
    are thinned to `max_points` evenly spaced ones, the first and last kept.
    """
    recall = np.asarray(recall, np.float64).reshape(-1)
    precision = np.asarray(precision, np.float64).reshape(-1)
    if recall.shape != precision.shape or not recall.size:
        raise ValueError(f"precision/recall curve: {recall.size} recall and {precision.size} "
                         f"precision values; need the same number, at least one")
    counted = np.arange(1, recall.size + 1, dtype=np.float64)
    true_positives = np.round(precision * counted)
    if num_positives is None:
        found = recall > 0
        num_positives = int(round(np.median(true_positives[found] / recall[found]))) if found.any() else 0
    keep = np.unique(np.round(np.linspace(0, recall.size - 1, min(recall.size, max_points))))
    keep = keep.astype(int)[::-1]
    rows = (true_positives, counted - true_positives, np.zeros_like(counted),
            num_positives - true_positives, precision, recall)
    return np.stack([row[keep] for row in rows]).astype(np.float32)


def write_pr_curve(name: str, recall: np.ndarray, precision: np.ndarray, step: int,
                   num_positives: int | None = None, description: str = "") -> None:
    """One precomputed precision/recall curve for TensorBoard's PR-curves tab (see
    `pr_curve_tensor`). TensorBoard labels the columns with evenly spaced thresholds 0..1; for
    these curves that "threshold" is the fraction of detections left out, not a score."""
    tensor = pr_curve_tensor(recall, precision, num_positives)
    tf.summary.write(name, tf.constant(tensor), step=step,
                     metadata=_pr_curve_metadata(tensor.shape[1], description))


def write_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], step: int,
                    num_positives: Mapping[str, int] | None = None,
                    prefix: str = "precision_recall/") -> list[str]:
    """Per-class curves {name: (recall, precision)} as tags prefix + name; returns the tags.

    Classes without detections, and without ground truth when `num_positives` says so, have no
    curve and are left out.
    """
    written = []
    for name, (recall, precision) in curves.items():
        positives = None if num_positives is None else int(num_positives[name])
        if not np.asarray(recall).size or positives == 0:
            continue
        tag = f"{prefix}{name}"
        write_pr_curve(tag, recall, precision, step, positives)
        written.append(tag)
    return written


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
