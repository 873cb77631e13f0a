"""The TFRecord schema (TF Object Detection API keys) written by the converter and read for
training, and the names of its files.

Boxes are stored normalized per the Object Detection API (separate xmin/ymin/xmax/ymax lists in
[0, 1]); `parse_example` returns them in the library's `[ymin, xmin, ymax, xmax]` order.
Labels are 1-based class indices (0 is background and never stored).
Per object, `is_crowd` marks COCO crowd regions (a box around many instances: the COCO metric
ignores detections matched to them and training must not use them as targets) and `area` is the
annotation's area in pixels of the annotated image (COCO's segmentation area, which decides its
small/medium/large split). Records without these keys parse as is_crowd 0 and area -1 ("unknown":
a pixel area cannot be derived from normalized boxes without the annotated size).

A data set `<name>` is a set of shards `<name>-NNNNN-of-NNNNN` (index from 0, then the count)
beside `<name>_summary.json`; the converter writes image k of its order to shard k mod count.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import tensorflow as tf

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
FILENAME = "image/filename"
SOURCE_ID = "image/source_id"
XMIN = "image/object/bbox/xmin"
YMIN = "image/object/bbox/ymin"
XMAX = "image/object/bbox/xmax"
YMAX = "image/object/bbox/ymax"
LABEL = "image/object/class/label"
TEXT = "image/object/class/text"
DIFFICULT = "image/object/difficult"
TRUNCATED = "image/object/truncated"
IS_CROWD = "image/object/is_crowd"
AREA = "image/object/area"
UNKNOWN_AREA = -1.0

# every file of a directory that may be a shard; parse_shard_name decides
SHARD_PATTERN = "*-of-*"
_SHARD_NAME = re.compile(r"^(?P<name>.+)-(?P<index>\d+)-of-(?P<count>\d+)$")
_SUMMARY_SUFFIX = "_summary.json"
CATEGORIES_SUFFIX = "_categories.json"  # convert_coco.py's category map
# what the converters write beside the shards: a glob like `<name>*` matches them too
_SIDE_FILE_SUFFIXES = (_SUMMARY_SUFFIX, CATEGORIES_SUFFIX)


def shard_name(name: str, index: int, num_shards: int) -> str:
    """File name of shard `index` (from 0) of `num_shards` of the data set `name`."""
    return f"{name}-{index:05d}-of-{num_shards:05d}"


def parse_shard_name(path: str | os.PathLike) -> tuple[str, int, int] | None:
    """(data set name, index, number of shards) of a shard's file name, None for other files.
    Other tools' digit counts are accepted."""
    match = _SHARD_NAME.match(os.path.basename(os.fspath(path)))
    if match is None:
        return None
    return match["name"], int(match["index"]), int(match["count"])


def is_side_file(path: str | os.PathLike) -> bool:
    """Whether a file is one the converters write beside the shards (summary, category map)."""
    return os.path.basename(os.fspath(path)).endswith(_SIDE_FILE_SUFFIXES)


def side_file_data_set(path: str | os.PathLike) -> str | None:
    """The data set `<name>` a side file (`<name>_summary.json`, ...) describes; None for other files."""
    base = os.path.basename(os.fspath(path))
    for suffix in _SIDE_FILE_SUFFIXES:
        if base.endswith(suffix):
            return base[:-len(suffix)]
    return None


def summary_name(name: str) -> str:
    """File name of the converter's summary of the data set `name` (beside its shards)."""
    return f"{name}{_SUMMARY_SUFFIX}"


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _floats(values: Sequence[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def make_example(*, encoded: bytes, image_format: str, height: int, width: int, filename: str,
                 source_id: str, boxes: Sequence[Sequence[float]], labels: Sequence[int],
                 texts: Sequence[str], difficult: Sequence[int],
                 truncated: Sequence[int], is_crowd: Sequence[int] | None = None,
                 area: Sequence[float] | None = None) -> tf.train.Example:
    """Builds one record. `boxes` are normalized `[ymin, xmin, ymax, xmax]` rows.

    `is_crowd` defaults to zeros; `area` (pixels) is only written when given.
    """
    n = len(boxes)
    is_crowd = [0] * n if is_crowd is None else is_crowd
    for name, values in (("labels", labels), ("texts", texts), ("difficult", difficult),
                         ("truncated", truncated), ("is_crowd", is_crowd),
                         ("area", [] if area is None else area)):
        if len(values) != n and not (name == "area" and area is None):
            raise ValueError(f"{filename}: {len(values)} {name} for {n} boxes")
    feature = {
        ENCODED: _bytes([encoded]),
        FORMAT: _bytes([image_format.encode()]),
        HEIGHT: _ints([height]),
        WIDTH: _ints([width]),
        FILENAME: _bytes([filename.encode()]),
        SOURCE_ID: _bytes([source_id.encode()]),
        YMIN: _floats([b[0] for b in boxes]),
        XMIN: _floats([b[1] for b in boxes]),
        YMAX: _floats([b[2] for b in boxes]),
        XMAX: _floats([b[3] for b in boxes]),
        LABEL: _ints(labels),
        TEXT: _bytes([t.encode() for t in texts]),
        DIFFICULT: _ints(difficult),
        TRUNCATED: _ints(truncated),
        IS_CROWD: _ints(is_crowd),
    }
    if area is not None:
        feature[AREA] = _floats(area)
    return tf.train.Example(features=tf.train.Features(feature=feature))


_FEATURES = {
    ENCODED: tf.io.FixedLenFeature([], tf.string),
    FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
    FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    XMIN: tf.io.VarLenFeature(tf.float32),
    YMIN: tf.io.VarLenFeature(tf.float32),
    XMAX: tf.io.VarLenFeature(tf.float32),
    YMAX: tf.io.VarLenFeature(tf.float32),
    LABEL: tf.io.VarLenFeature(tf.int64),
    DIFFICULT: tf.io.VarLenFeature(tf.int64),
    TRUNCATED: tf.io.VarLenFeature(tf.int64),
    IS_CROWD: tf.io.VarLenFeature(tf.int64),
    AREA: tf.io.VarLenFeature(tf.float32),
}


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized record (pure TF, usable in tf.data).

    Returns: encoded (string), height/width (int32), filename/source_id (string),
    boxes [N, 4] float32 normalized [ymin, xmin, ymax, xmax], labels [N] int32,
    difficult [N] bool, truncated [N] bool, is_crowd [N] bool, area [N] float32 (pixels, -1 unknown).
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    dense = {k: tf.sparse.to_dense(parsed[k])
             for k in (XMIN, YMIN, XMAX, YMAX, LABEL, DIFFICULT, TRUNCATED, IS_CROWD, AREA)}
    boxes = tf.stack([dense[YMIN], dense[XMIN], dense[YMAX], dense[XMAX]], axis=-1)
    num_boxes = tf.shape(boxes)[0]
    difficult = dense[DIFFICULT]
    truncated = dense[TRUNCATED]
    # Records from other tools may omit the flags: treat missing ones as 0.
    difficult = tf.cond(tf.size(difficult) == num_boxes, lambda: difficult,
                        lambda: tf.zeros([num_boxes], tf.int64))
    truncated = tf.cond(tf.size(truncated) == num_boxes, lambda: truncated,
                        lambda: tf.zeros([num_boxes], tf.int64))
    is_crowd = dense[IS_CROWD]
    is_crowd = tf.cond(tf.size(is_crowd) == num_boxes, lambda: is_crowd,
                       lambda: tf.zeros([num_boxes], tf.int64))
    area = dense[AREA]
    area = tf.cond(tf.size(area) == num_boxes, lambda: area,
                   lambda: tf.fill([num_boxes], tf.constant(UNKNOWN_AREA, tf.float32)))
    return {
        "encoded": parsed[ENCODED],
        "height": tf.cast(parsed[HEIGHT], tf.int32),
        "width": tf.cast(parsed[WIDTH], tf.int32),
        "filename": parsed[FILENAME],
        "source_id": parsed[SOURCE_ID],
        "boxes": tf.reshape(boxes, [-1, 4]),
        "labels": tf.cast(dense[LABEL], tf.int32),
        "difficult": difficult > 0,
        "truncated": truncated > 0,
        "is_crowd": is_crowd > 0,
        "area": tf.reshape(area, [-1]),
    }
