"""The one inference path: images in, post-processed detections in original-image pixels out.

`Detector(model, config, jit_compile=False)` holds a built SSD network and its default boxes.
Everything that detects goes through it: evaluation (during training and in eval.py), the
Estimator's predict, visualize.py and the SavedModel's serving signatures (ssd.inference.saved_model).

Inputs, by entry point (all graph-friendly: usable inside a tf.function or a SavedModel):
  detect_preprocessed(images, original_shape)  float32 [B, S, S, 3] model inputs (ssd.data.input_fn's
                                               preprocessing) and each image's height, width [B, 2];
  detect_uint8(images)                         uint8 [B, H, W, 3] RGB, one size per batch;
  detect_encoded(strings)                      string [B] encoded JPEG/PNG of any sizes (grayscale
                                               and alpha are converted to RGB).
Decoding (ssd.data.preprocessing.decode_image), resizing to the input size, RGB -> BGR and mean subtraction
(ssd.data.preprocessing.preprocess_image) run in the graph, then the network (XLA-compiled with jit_compile;
NMS has no XLA kernel, so post-processing never is) and ssd.modeling.postprocess.postprocess with the
config's eval thresholds. Outputs, K = eval.max_detections rows per image sorted by score (rows
past num_detections are padding: score 0, class 0, empty name):

  boxes           float32 [B, K, 4]  normalized ymin, xmin, ymax, xmax
  pixel_boxes     float32 [B, K, 4]  the same in ORIGINAL-image pixels, continuous edges (a box
                                     over the whole image is 0, 0, H, W)
  scores          float32 [B, K]
  classes         int32   [B, K]     1-based labels
  class_names     string  [B, K]     the label's name
  num_detections  int32   [B]
  original_shape  int32   [B, 2]     height, width of each input image

For eager callers, `detector(images, original_shape)` is `detect_preprocessed` in a tf.function,
`detect_features(features)` runs it on an input function's batch (passing image_id through), and
`detect_arrays(list of uint8 RGB arrays)` gives numpy results per image for arrays of any sizes.
`load_trained_model(model_dir, checkpoint_path)` is the way from a model directory to a restored
network (its config.json, the checkpoint asked for or the newest, the network built and restored).
`keep_above(detections, score_threshold)` turns the rows scoring below a threshold into padding
(what the serving signatures do with their score_threshold input).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from ssd.modeling.anchors import generate_anchors
from ssd.config.loading import Config, load_saved_config
from ssd.modeling import checkpoints
from ssd.data.preprocessing import decode_image, preprocess_image
from ssd.modeling.build import build_model
from ssd.modeling.postprocess import postprocess, to_pixels
from ssd.precision import INFERENCE_POLICIES, dtype_policy

OUTPUTS = ("boxes", "pixel_boxes", "scores", "classes", "class_names", "num_detections", "original_shape")


def build_inference_model(config: Config, precision: str = "float32") -> keras.Model:
    """The network for inference, computing in `precision` ("float32" or "bfloat16")."""
    if precision not in INFERENCE_POLICIES:
        raise ValueError(f"precision must be one of {sorted(INFERENCE_POLICIES)}, got {precision!r}")
    with dtype_policy(INFERENCE_POLICIES[precision]):
        return build_model(config)


class TrainedModel(NamedTuple):
    config: Config
    model: keras.Model
    checkpoint: str
    step: int


def load_trained_model(model_dir: str, checkpoint_path: str | None = None,
                       precision: str = "float32") -> TrainedModel:
    """model_dir's saved config, the checkpoint (`checkpoint_path`, else the newest), the network
    built in `precision` and restored from it. Raises ssd.config ConfigError or a
    ssd.modeling.checkpoints.CheckpointError naming what is wrong."""
    config = load_saved_config(model_dir)
    checkpoint = checkpoints.find_checkpoint(model_dir, checkpoint_path)
    model = build_inference_model(config, precision)
    step = checkpoints.restore_checkpoint(model, checkpoint, config)
    return TrainedModel(config, model, checkpoint, step)


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


class Detector:
    """An SSD network and its default boxes, with the entry points of the module docstring."""

    def __init__(self, model: keras.Model, config: Config, jit_compile: bool = False):
        self.model = model
        self.config = config
        self.class_names = list(config.data.class_names)
        self._anchors = tf.constant(generate_anchors(config), tf.float32)
        self._label_names = tf.constant([""] + self.class_names)  # label 0: background / padding
        self._network = tf.function(self._run_network, jit_compile=True) if jit_compile else self._run_network
        self._compiled = tf.function(self.detect_preprocessed, reduce_retracing=True)

    def _run_network(self, images):
        return self.model(images, training=False)

    def detect_preprocessed(self, images: tf.Tensor, original_shape: tf.Tensor) -> dict[str, tf.Tensor]:
        cls_logits, box_encodings = self._network(images)
        detections = postprocess(cls_logits, box_encodings, self._anchors, self.config)
        original_shape = tf.cast(original_shape, tf.int32)
        detections["pixel_boxes"] = to_pixels(detections["boxes"], original_shape)
        detections["class_names"] = tf.gather(self._label_names, detections["classes"])
        detections["original_shape"] = original_shape
        return detections

    def detect_uint8(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.detect_preprocessed(*preprocess_uint8(images, self.config))

    def detect_encoded(self, strings: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.detect_preprocessed(*preprocess_encoded(strings, self.config))

    # --- eager helpers -------------------------------------------------------------------------

    def __call__(self, images: tf.Tensor, original_shape: tf.Tensor) -> dict[str, tf.Tensor]:
        """`detect_preprocessed` compiled into a tf.function (for eager loops)."""
        return self._compiled(images, original_shape)

    def detect_features(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Detections for a batch of ssd.data.input_fn EVAL/PREDICT features, with their image_id if any."""
        detections = self(features["image"], features["original_shape"])
        if "image_id" in features:
            detections["image_id"] = features["image_id"]
        return detections

    def detect_arrays(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """uint8 RGB arrays of any sizes, detected as one batch -> one dict of numpy per image."""
        inputs = tf.stack([preprocess_image(tf.constant(image), self.config) for image in images])
        shapes = tf.constant([image.shape[:2] for image in images], tf.int32)
        return unbatch(self(inputs, shapes))


def keep_above(detections: Mapping[str, tf.Tensor], score_threshold) -> dict[str, tf.Tensor]:
    """The detections with every row scoring below `score_threshold` made padding.

    Rows are sorted by decreasing score, so the kept ones stay a prefix: num_detections counts
    them, and the others become what postprocessing pads with (zero box and score, label 0,
    empty name). Graph-friendly; the threshold may be a scalar tensor. Rows that postprocessing
    already dropped (below eval.score_threshold) do not come back with a lower threshold.
    """
    scores = detections["scores"]
    rows = tf.range(tf.shape(scores)[1])[tf.newaxis, :]
    keep = (rows < detections["num_detections"][:, tf.newaxis]) & (
        scores >= tf.cast(score_threshold, scores.dtype))
    kept = dict(detections)
    for name in ("boxes", "pixel_boxes", "scores", "classes", "class_names"):
        if name in detections:
            value = detections[name]
            mask = keep[..., tf.newaxis] if value.shape.rank == 3 else keep
            kept[name] = tf.where(mask, value, tf.zeros_like(value))
    kept["num_detections"] = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    return kept


def unbatch(batch: Mapping[str, tf.Tensor]) -> list[dict[str, np.ndarray]]:
    """{name: [B, ...] tensor} -> B dicts {name: numpy value of one example}."""
    values = {name: np.asarray(tensor) for name, tensor in batch.items()}
    size = len(next(iter(values.values())))
    return [{name: array[i] for name, array in values.items()} for i in range(size)]
