"""Exported models read back: export.py's SavedModel or .tflite as a detector for evaluation.

`load_exported(path)` takes a SavedModel directory (ssd.inference.saved_model), a .tflite file
(ssd.inference.tflite) or the directory export.py wrote it into (holding model.tflite). The
config is the one the export wrote (the SavedModel's assets/config.json, config.json beside the
.tflite), the class names its data.class_names; export.json, when present, tells the checkpoint
and step the weights came from.

The detector has the `ssd.inference.detector.Detector` call used by the evaluation loop,
`detector(images, original_shape)`, except that `images` are the records' encoded images
(string [B], `make_input_fn(..., encoded_images=True)`): each model does its own decoding and
resizing, as its clients do. It returns the library's detections: "boxes" normalized
[B, K, 4], "scores" [B, K], "classes" int32 [B, K], "num_detections" int32 [B].

  SavedModel  the serving_default signature with score_threshold 0 (every row post-processing
              kept, as a checkpoint's evaluation sees them);
  TFLite      each image decoded and resized to uint8 [1, S, S, 3] (`resize_for_tflite`, what an
              app does), then the interpreter's serving_default signature.

What is not an exported model fails with ExportedModelError (a ValueError), one line naming the
path: missing, neither a SavedModel nor a TFLite file, the config missing beside it, a model whose
class names or input size disagree with that config.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from ssd.config.loading import Config, ConfigError, load_config
from ssd.data.preprocessing import decode_image
from ssd.errors import UserError
from ssd.inference import saved_model as sm
from ssd.inference import tflite as tl

SAVED_MODEL = "saved_model"
TFLITE = "tflite"
SAVED_MODEL_PROTO = "saved_model.pb"
TFLITE_IDENTIFIER = b"TFL3"  # the FlatBuffer file identifier, bytes 4..8 of every .tflite file


class ExportedModelError(UserError, ValueError):
    """The path is not an exported model this project can evaluate; the message names it."""


class ExportedFiles(NamedTuple):
    kind: str  # SAVED_MODEL or TFLITE
    model: str  # the SavedModel directory or the .tflite file
    config: str  # the config.json the export wrote
    info: str  # export.json (may be absent: exports made before it existed)


def _read(path: str, size: int = -1) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise ExportedModelError(f"{path}: cannot be read ({e.strerror})") from None


def find_exported(path: str | os.PathLike) -> ExportedFiles:
    """The files of the exported model at `path` (module docstring); ExportedModelError if none."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ExportedModelError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, SAVED_MODEL_PROTO)):
            return ExportedFiles(SAVED_MODEL, path, os.path.join(path, "assets", sm.CONFIG_ASSET),
                                 os.path.join(path, sm.EXTRA_DIR, sm.EXPORT_INFO))
        if not os.path.isfile(os.path.join(path, tl.TFLITE_FILENAME)):
            raise ExportedModelError(f"{path}: not a SavedModel (no {SAVED_MODEL_PROTO}) nor an export "
                                     f"directory holding {tl.TFLITE_FILENAME}")
        path = os.path.join(path, tl.TFLITE_FILENAME)
    header = _read(path, 8)
    if header[4:8] != TFLITE_IDENTIFIER:
        raise ExportedModelError(f"{path}: not a TFLite model (no {TFLITE_IDENTIFIER.decode()} "
                                 f"identifier) nor a SavedModel directory")
    directory = os.path.dirname(path)
    return ExportedFiles(TFLITE, path, os.path.join(directory, sm.CONFIG_ASSET),
                         os.path.join(directory, sm.EXPORT_INFO))


def read_config(files: ExportedFiles) -> Config:
    if not os.path.isfile(files.config):
        raise ExportedModelError(f"{files.config}: missing, export.py writes the config beside the "
                                 f"model; export {files.model} again")
    try:
        return load_config(files.config)
    except ConfigError as e:
        raise ExportedModelError(f"{files.config}: {' '.join(str(e).split())}") from None


def read_info(files: ExportedFiles) -> dict[str, Any]:
    """export.json's {"checkpoint", "step", "format", "quantize"}; {} when absent or unreadable."""
    try:
        with open(files.info) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _library_detections(boxes, scores, classes, num_detections) -> dict[str, tf.Tensor]:
    return {"boxes": tf.convert_to_tensor(boxes, tf.float32),
            "scores": tf.convert_to_tensor(scores, tf.float32),
            "classes": tf.cast(classes, tf.int32), "num_detections": tf.cast(num_detections, tf.int32)}


class SavedModelDetector:
    """The SavedModel's serving_default signature on encoded images, every detection kept."""

    def __init__(self, path: str, config: Config):
        self.config = config
        try:
            self._loaded = tf.saved_model.load(path)
            signatures = self._loaded.signatures
            names = [n.decode() for n in signatures[sm.SIGNATURE_CLASS_NAMES]()["class_names"].numpy()]
            self._detect = signatures[sm.SIGNATURE_ENCODED]
        except (KeyError, OSError, ValueError, tf.errors.OpError) as e:
            message = " ".join(str(e).split())[:200]
            raise ExportedModelError(f"{path}: not a SavedModel written by export.py ({message})") from None
        if names != list(config.data.class_names):
            raise ExportedModelError(f"{path}: the model's classes {names} are not its config's "
                                     f"data.class_names {list(config.data.class_names)}")

    def __call__(self, images: tf.Tensor, original_shape: tf.Tensor) -> dict[str, tf.Tensor]:
        out = self._detect(images=images, score_threshold=tf.constant(0.0))
        return _library_detections(out["detection_boxes"], out["detection_scores"],
                                   out["detection_classes"], out["num_detections"])


class TFLiteDetector:
    """The .tflite model's signature, one image at a time, on encoded images resized as an app does."""

    def __init__(self, path: str, config: Config, num_threads: int | None = None):
        self.config = config
        size = config.model.input_size
        content = _read(path)
        try:
            runner = tl.interpreter(content, num_threads)
            signatures = runner.get_signature_list()
        except (RuntimeError, ValueError) as e:
            raise ExportedModelError(f"{path}: the TFLite interpreter cannot load it "
                                     f"({' '.join(str(e).split())[:200]})") from None
        signature = signatures.get(tl.SIGNATURE_KEY, {})
        expected = sorted(tl.OUTPUT_NAMES.values())
        if signature.get("inputs") != [tl.INPUT_NAME] or sorted(signature.get("outputs", [])) != expected:
            raise ExportedModelError(f"{path}: not a model written by export.py (signature "
                                     f"{tl.SIGNATURE_KEY!r} with input {tl.INPUT_NAME!r} and outputs "
                                     f"{expected} expected, found {signatures})")
        self._run = runner.get_signature_runner(tl.SIGNATURE_KEY)
        shape = [int(d) for d in self._run.get_input_details()[tl.INPUT_NAME]["shape"]]
        if shape != [1, size, size, 3]:
            raise ExportedModelError(f"{path}: input {shape}, but its config says model.input_size "
                                     f"{size} ([1, {size}, {size}, 3]); export the model again")
        self._resize = tf.function(lambda encoded: tl.resize_for_tflite(decode_image(encoded), size))

    def __call__(self, images: tf.Tensor, original_shape: tf.Tensor) -> dict[str, tf.Tensor]:
        rows = [self._run(**{tl.INPUT_NAME: self._resize(encoded).numpy()[np.newaxis]})
                for encoded in images]
        names = tl.OUTPUT_NAMES
        stacked = {key: np.concatenate([row[names[key]] for row in rows]) for key in names}
        return _library_detections(stacked["boxes"], stacked["scores"], stacked["classes"],
                                   stacked["num_detections"])


class ExportedModel(NamedTuple):
    files: ExportedFiles
    config: Config
    info: dict[str, Any]  # export.json, {} when absent
    detector: SavedModelDetector | TFLiteDetector


def load_exported(path: str | os.PathLike, num_threads: int | None = None) -> ExportedModel:
    """The exported model at `path` as a detector of encoded images (module docstring)."""
    files = find_exported(path)
    config = read_config(files)
    if files.kind == SAVED_MODEL:
        detector = SavedModelDetector(files.model, config)
    else:
        detector = TFLiteDetector(files.model, config, num_threads)
    return ExportedModel(files, config, read_info(files), detector)
