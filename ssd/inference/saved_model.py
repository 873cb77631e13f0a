"""SavedModel export for serving: images in, post-processed detections out.

`export_saved_model(model, config, export_dir, score_threshold=0.5)` writes a SavedModel with
three signatures, thin wrappers over `ssd.inference.detector.Detector`:

  serving_default   images: string [B], encoded JPEG/PNG of any sizes (Detector.detect_encoded);
  serving_images    images: uint8 [B, H, W, 3] RGB, one size per batch (Detector.detect_uint8);
  class_names       no input -> class_names: string [C-1], the names of labels 1..C-1.

Both detection signatures also take `score_threshold`, a float32 scalar whose default (the
`score_threshold` given at export, 0.5 unless chosen otherwise) is recorded in the SignatureDef as
a placeholder with default: clients that run the graph themselves (a TF1 Session, the C++
SavedModel loader) may leave it out. In Python,
`tf.saved_model.load(d).signatures["serving_default"]` is a function of ALL the signature's
inputs and raises TypeError without it; the restored methods `loaded.serve_encoded(images)` and
`loaded.serve_images(images)` take the default. Rows scoring below the threshold are padding
(score 0, class 0, zero box, empty name) and `num_detections` counts the others. A threshold
below the config's eval.score_threshold (0.01 by default) cannot bring back rows that
post-processing already dropped.

Outputs, K = eval.max_detections rows per image sorted by decreasing score. The first four are
named and typed as the TensorFlow Object Detection API's exported models name them, so that
client code written for those works unchanged (classes and counts are float32 there; their
values are whole numbers, cast them with `.astype(int)`):

  detection_boxes        float32 [B, K, 4]  normalized ymin, xmin, ymax, xmax
  detection_scores       float32 [B, K]
  detection_classes      float32 [B, K]     1-based labels (0 on padding), as an OD API label map
  num_detections         float32 [B]
  detection_pixel_boxes  float32 [B, K, 4]  the boxes in ORIGINAL-image pixels, continuous edges
                                            (a box over the whole image is 0, 0, H, W)
  detection_class_names  string  [B, K]     the label's name ("" on padding)
  original_shape         int32   [B, 2]     height, width of each input image as decoded

EXIF orientation: TensorFlow's image decoders ignore the EXIF Orientation tag, so
`serving_default` detects on the STORED pixel grid, and its boxes refer to that grid. Phone
photos are often stored sideways with a tag saying how to show them upright; training records
made by the converters hold upright pixels for photos annotated upright (ssd.data.orientation). A
client should therefore send upright pixels: apply the orientation before encoding (e.g. PIL's
`ImageOps.exif_transpose(image)`, then encode) or use `serving_images` with the upright array.
Otherwise the model sees a sideways picture, and boxes drawn on the upright picture land in the
wrong place.

The class names also travel as the asset `assets/class_names.txt` (one per line, label order)
and the resolved config as `assets/config.json`. Given `source` (export.py gives the checkpoint
and its step), `assets.extra/export.json` records where the weights came from: evaluating the
exported model (ssd.engine.exported_evaluation) reports them.

The exported network has its batch norms folded into the convolutions before them
(ssd.inference.batch_norm_folding): the same detections to float rounding, faster for the backbones that
have batch norm (MobileNetV2).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping

import keras
import tensorflow as tf
from absl import logging

from ssd.inference.batch_norm_folding import fold_batch_norm
from ssd.config.loading import Config, to_json
from ssd.inference.detector import Detector, keep_above

SIGNATURE_ENCODED = "serving_default"
SIGNATURE_IMAGES = "serving_images"
SIGNATURE_CLASS_NAMES = "class_names"
CLASS_NAMES_ASSET = "class_names.txt"
CONFIG_ASSET = "config.json"
EXPORT_INFO = "export.json"  # {"checkpoint", "step", "format", "quantize"}: the export's provenance
EXTRA_DIR = "assets.extra"  # the SavedModel's place for files the graph does not read
DEFAULT_SCORE_THRESHOLD = 0.5
# Detector output -> serving output name (see the module docstring), with the serving dtype.
SERVING_OUTPUTS = {
    "boxes": ("detection_boxes", tf.float32),
    "scores": ("detection_scores", tf.float32),
    "classes": ("detection_classes", tf.float32),
    "num_detections": ("num_detections", tf.float32),
    "pixel_boxes": ("detection_pixel_boxes", tf.float32),
    "class_names": ("detection_class_names", tf.string),
    "original_shape": ("original_shape", tf.int32),
}


def serving_outputs(detections, score_threshold) -> dict[str, tf.Tensor]:
    """Detector outputs -> the serving signatures' outputs, rows below the threshold padded."""
    kept = keep_above(detections, score_threshold)
    return {name: tf.cast(kept[key], dtype) for key, (name, dtype) in SERVING_OUTPUTS.items()}


class DetectionModule(tf.Module):
    """The network, the serving functions over its Detector, and the assets (module docstring)."""

    def __init__(self, model: keras.Model, config: Config, assets_dir: str,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD):
        super().__init__(name="ssd")
        self.model = model  # tracked: the variables the signatures read
        self._detector = Detector(model, config)  # not a tf.Module: nothing of it is saved twice
        self._object_names = tf.constant(list(config.data.class_names))
        self.class_names_file = tf.saved_model.Asset(os.path.join(assets_dir, CLASS_NAMES_ASSET))
        self.config_file = tf.saved_model.Asset(os.path.join(assets_dir, CONFIG_ASSET))
        # A tf.function whose trailing argument defaults to a Tensor: tf.saved_model.save records
        # that default in the SignatureDef (a placeholder with default) and in the restored method.
        default = tf.constant(float(score_threshold), tf.float32)
        threshold_spec = tf.TensorSpec([], tf.float32, name="score_threshold")

        def serve_encoded(images, score_threshold=default):
            return serving_outputs(self._detector.detect_encoded(images), score_threshold)

        def serve_images(images, score_threshold=default):
            return serving_outputs(self._detector.detect_uint8(images), score_threshold)

        self.serve_encoded = tf.function(serve_encoded, input_signature=[
            tf.TensorSpec([None], tf.string, name="images"), threshold_spec])
        self.serve_images = tf.function(serve_images, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"), threshold_spec])

    @tf.function(input_signature=[])
    def class_names(self):
        return {"class_names": self._object_names}


@contextlib.contextmanager
def directory_written_aside(export_dir: str | os.PathLike, overwrite: bool) -> Iterator[str]:
    """Yields a fresh directory beside `export_dir` to write into; on success it replaces
    `export_dir` in one rename, so an export appears complete or not at all. An existing
    non-empty export_dir is an error unless `overwrite`."""
    export_dir = os.fspath(export_dir)
    if tf.io.gfile.exists(export_dir) and tf.io.gfile.listdir(export_dir):
        if not overwrite:
            raise FileExistsError(f"export directory {export_dir} exists and is not empty "
                                  f"(choose another, or replace it with --overwrite / overwrite=True)")
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".export_", dir=parent)
    try:
        yield tmp_dir
        if tf.io.gfile.exists(export_dir):
            shutil.rmtree(export_dir)
        os.replace(tmp_dir, export_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_descriptions(config: Config, directory: str) -> None:
    """The class names (one per line, label order) and the resolved config beside a model."""
    with open(os.path.join(directory, CLASS_NAMES_ASSET), "w") as f:
        f.write("\n".join(config.data.class_names) + "\n")
    with open(os.path.join(directory, CONFIG_ASSET), "w") as f:
        f.write(to_json(config) + "\n")


def write_export_info(directory: str, source: Mapping[str, Any], export_format: str,
                      quantize: str | None = None) -> None:
    """`directory`/export.json: `source` ({"checkpoint", "step"}) with the format and quantization."""
    os.makedirs(directory, exist_ok=True)
    info = {"checkpoint": source.get("checkpoint"), "step": source.get("step"),
            "format": export_format, "quantize": quantize}
    with open(os.path.join(directory, EXPORT_INFO), "w") as f:
        f.write(json.dumps(info, indent=2) + "\n")


def export_saved_model(model: keras.Model, config: Config, export_dir: str | os.PathLike,
                       overwrite: bool = False,
                       score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                       source: Mapping[str, Any] | None = None) -> str:
    """Writes the serving SavedModel of `model` (its current weights) to `export_dir`.

    `score_threshold` is the default of the signatures' score_threshold input; `source`
    ({"checkpoint", "step"} of the weights) goes into assets.extra/export.json. The directory
    appears complete or not at all; an existing non-empty export_dir is an error unless
    `overwrite`.
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    assets_dir = tempfile.mkdtemp(prefix="ssd_export_assets_")
    try:
        write_descriptions(config, assets_dir)
        with directory_written_aside(export_dir, overwrite) as tmp_dir:
            module = DetectionModule(fold_batch_norm(model), config, assets_dir, score_threshold)
            # the tf.functions themselves, not concrete functions: only then are defaults recorded
            signatures = {
                SIGNATURE_ENCODED: module.serve_encoded,
                SIGNATURE_IMAGES: module.serve_images,
                SIGNATURE_CLASS_NAMES: module.class_names,
            }
            tf.saved_model.save(module, tmp_dir, signatures=signatures)
            if source is not None:
                write_export_info(os.path.join(tmp_dir, EXTRA_DIR), source, "saved_model")
    finally:
        shutil.rmtree(assets_dir, ignore_errors=True)
    logging.info("exported SavedModel to %s", export_dir)
    return os.fspath(export_dir)
