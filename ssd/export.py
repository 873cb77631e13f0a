"""SavedModel export for serving: images in, post-processed detections out.

`export_saved_model(model, config, export_dir)` writes a SavedModel with three signatures:

  serving_default   images: string [B], encoded JPEG/PNG of any sizes (grayscale and alpha are
                    converted to RGB);
  serving_images    images: uint8 [B, H, W, 3] RGB, one size per batch;
  class_names       no input -> class_names: string [C-1], the names of labels 1..C-1.

Decoding, resizing to the input size, RGB -> BGR and mean subtraction run inside the graph
(ssd.data.decode_image / preprocess_image), then the network and ssd.postprocess.postprocess with
the config's eval thresholds. Both detection signatures return, K = eval.max_detections rows per
image sorted by score (rows past num_detections are padding: score 0, class 0, empty name):

  pixel_boxes     float32 [B, K, 4]  ymin, xmin, ymax, xmax in ORIGINAL-image pixels, continuous
                                     edges (a box over the whole image is 0, 0, H, W)
  boxes           float32 [B, K, 4]  the same, normalized to [0, 1]
  scores          float32 [B, K]
  classes         int32   [B, K]     1-based labels
  class_names     string  [B, K]     the label's name
  num_detections  int32   [B]
  original_shape  int32   [B, 2]     height, width of each input image

The class names also travel as the asset `assets/class_names.txt` (one per line, label order) and
the resolved config as `assets/config.json`.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging

from ssd.anchors import generate_anchors
from ssd.config import Config, to_json
from ssd.data import decode_image, preprocess_image
from ssd.postprocess import postprocess, to_pixels

SIGNATURE_ENCODED = "serving_default"
SIGNATURE_IMAGES = "serving_images"
SIGNATURE_CLASS_NAMES = "class_names"
CLASS_NAMES_ASSET = "class_names.txt"
CONFIG_ASSET = "config.json"


def preprocess_encoded(encoded: tf.Tensor, config: Config) -> tuple[tf.Tensor, tf.Tensor]:
    """string [B] encoded images of any sizes -> (model inputs [B, S, S, 3], original_shape [B, 2])."""
    size = config.model.input_size

    def one(data):
        image = decode_image(data)
        return preprocess_image(image, config), tf.shape(image)[:2]

    return tf.map_fn(one, encoded, fn_output_signature=(
        tf.TensorSpec([size, size, 3], tf.float32), tf.TensorSpec([2], tf.int32)))


def preprocess_uint8(images: tf.Tensor, config: Config) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 [B, H, W, 3] RGB -> (model inputs [B, S, S, 3], original_shape [B, 2])."""
    shape = tf.shape(images)
    original_shape = tf.tile(shape[tf.newaxis, 1:3], [shape[0], 1])
    return preprocess_image(images, config), original_shape


class DetectionModule(tf.Module):
    """The network, its default boxes and the serving functions (module docstring)."""

    def __init__(self, model: keras.Model, config: Config, assets_dir: str):
        super().__init__(name="ssd")
        self.model = model
        self._config = config
        self._anchors = tf.constant(generate_anchors(config), tf.float32)
        names = list(config.data.class_names)
        self._names = tf.constant([""] + names)  # index 0: background / padding rows
        self._object_names = tf.constant(names)
        self.class_names_file = tf.saved_model.Asset(os.path.join(assets_dir, CLASS_NAMES_ASSET))
        self.config_file = tf.saved_model.Asset(os.path.join(assets_dir, CONFIG_ASSET))

    def detect(self, inputs: tf.Tensor, original_shape: tf.Tensor) -> dict[str, tf.Tensor]:
        cls_logits, box_encodings = self.model(inputs, training=False)
        detections = postprocess(cls_logits, box_encodings, self._anchors, self._config)
        detections["pixel_boxes"] = to_pixels(detections["boxes"], original_shape)
        detections["class_names"] = tf.gather(self._names, detections["classes"])
        detections["original_shape"] = original_shape
        return detections

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(self, images):
        return self.detect(*preprocess_encoded(images, self._config))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_images(self, images):
        return self.detect(*preprocess_uint8(images, self._config))

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
