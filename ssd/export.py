"""SavedModel export for serving: images in, post-processed detections out.

`export_saved_model(model, config, export_dir)` writes a SavedModel with three signatures, thin
wrappers over `ssd.detector.Detector` (its module docstring lists the outputs):

  serving_default   images: string [B], encoded JPEG/PNG of any sizes (Detector.detect_encoded);
  serving_images    images: uint8 [B, H, W, 3] RGB, one size per batch (Detector.detect_uint8);
  class_names       no input -> class_names: string [C-1], the names of labels 1..C-1.

Both detection signatures return pixel_boxes, boxes, scores, classes, class_names,
num_detections and original_shape, with the config's eval thresholds. The class names also
travel as the asset `assets/class_names.txt` (one per line, label order) and the resolved config
as `assets/config.json`.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging

from ssd.config import Config, to_json
from ssd.detector import Detector

SIGNATURE_ENCODED = "serving_default"
SIGNATURE_IMAGES = "serving_images"
SIGNATURE_CLASS_NAMES = "class_names"
CLASS_NAMES_ASSET = "class_names.txt"
CONFIG_ASSET = "config.json"


class DetectionModule(tf.Module):
    """The network, the serving functions over its Detector, and the assets (module docstring)."""

    def __init__(self, model: keras.Model, config: Config, assets_dir: str):
        super().__init__(name="ssd")
        self.model = model  # tracked: the variables the signatures read
        self._detector = Detector(model, config)  # not a tf.Module: nothing of it is saved twice
        self._object_names = tf.constant(list(config.data.class_names))
        self.class_names_file = tf.saved_model.Asset(os.path.join(assets_dir, CLASS_NAMES_ASSET))
        self.config_file = tf.saved_model.Asset(os.path.join(assets_dir, CONFIG_ASSET))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(self, images):
        return self._detector.detect_encoded(images)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_images(self, images):
        return self._detector.detect_uint8(images)

    @tf.function(input_signature=[])
    def class_names(self):
        return {"class_names": self._object_names}


def export_saved_model(model: keras.Model, config: Config, export_dir: str | os.PathLike,
                       overwrite: bool = False) -> str:
    """Writes the serving SavedModel of `model` (its current weights) to `export_dir`.

    The directory appears complete or not at all (written aside, then renamed). An existing
    non-empty export_dir is an error unless `overwrite`.
    """
    export_dir = os.fspath(export_dir)
    if tf.io.gfile.exists(export_dir) and tf.io.gfile.listdir(export_dir):
        if not overwrite:
            raise FileExistsError(f"export directory {export_dir} exists and is not empty "
                                  f"(choose another, or replace it with --overwrite / overwrite=True)")
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    assets_dir = tempfile.mkdtemp(prefix="ssd_export_assets_")
    tmp_dir = tempfile.mkdtemp(prefix=".export_", dir=parent)
    try:
        with open(os.path.join(assets_dir, CLASS_NAMES_ASSET), "w") as f:
            f.write("\n".join(config.data.class_names) + "\n")
        with open(os.path.join(assets_dir, CONFIG_ASSET), "w") as f:
            f.write(to_json(config) + "\n")
        module = DetectionModule(model, config, assets_dir)
        signatures = {
            SIGNATURE_ENCODED: module.serve_encoded.get_concrete_function(),
            SIGNATURE_IMAGES: module.serve_images.get_concrete_function(),
            SIGNATURE_CLASS_NAMES: module.class_names.get_concrete_function(),
        }
        tf.saved_model.save(module, tmp_dir, signatures=signatures)
        if tf.io.gfile.exists(export_dir):
            shutil.rmtree(export_dir)
        os.replace(tmp_dir, export_dir)
    finally:
        shutil.rmtree(assets_dir, ignore_errors=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    logging.info("exported SavedModel to %s", export_dir)
    return export_dir
