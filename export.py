r"""Exports a trained SSD as a SavedModel for serving, or as a TensorFlow Lite model for phones.

  python export.py --model_dir=runs/ssd300 --export_dir=exported/ssd300 \
      [--checkpoint_path=runs/ssd300/ckpt-120000] [--overwrite] [--score_threshold=0.5]
  python export.py --model_dir=runs/ssdlite --export_dir=exported/ssdlite_tflite --format=tflite \
      [--quantize=float16|int8 --calibration_data=tfrecords/train* [--calibration_images=300]]

--format=saved_model (the default) writes the SavedModel of ssd/inference/saved_model.py (its signatures take
encoded or uint8 images of any size). --format=tflite writes export_dir/model.tflite with
class_names.txt and config.json beside it (ssd/inference/tflite.py): uint8 RGB [1, S, S, 3] images
already resized to the input size S in, detection_boxes (normalized), detection_classes,
detection_scores and num_detections out, post-processing inside, TFLite built-in operators only.
--quantize=float16 halves the file; --quantize=int8 makes the network full-integer, calibrated on
the first --calibration_images images of --calibration_data (training TFRecords).

The config is model_dir/config.json; the weights come from model_dir's latest checkpoint unless
--checkpoint_path is given. export.json (the SavedModel's assets.extra/, beside model.tflite)
records that checkpoint, its step, the format and quantization; `eval.py --exported_model=...`
scores the export on TFRecords and reports them. Serving example (outputs named as the TF Object Detection API names
them; ssd/inference/saved_model.py documents them, the score_threshold default and EXIF orientation):

  import io, tensorflow as tf
  from PIL import Image, ImageOps
  loaded = tf.saved_model.load("exported/ssd300")
  detect = loaded.signatures["serving_default"]
  # tf.io decoders ignore EXIF orientation: send the picture upright, as a person sees it
  buffer = io.BytesIO()
  ImageOps.exif_transpose(Image.open("dog.jpg")).convert("RGB").save(buffer, format="JPEG")
  out = detect(images=tf.constant([buffer.getvalue()]), score_threshold=tf.constant(0.5))
  n = int(out["num_detections"][0])
  out["detection_pixel_boxes"][0, :n], out["detection_scores"][0, :n]
  out["detection_class_names"][0, :n], out["detection_classes"][0, :n]  # classes: float32
  # loaded.serve_encoded(images) is the same with the default score_threshold (0.5)
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python export.py` from anywhere: make `ssd` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

from absl import app, flags, logging


FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "Training directory: config.json and checkpoints.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix or a directory (its latest); "
                    "default: the latest in --model_dir.")
flags.DEFINE_string("export_dir", None, "Where the SavedModel is written.")
flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --export_dir.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation precision of the "
                  "exported network; bfloat16 about doubles CPU throughput where the CPU has bf16 "
                  "instructions, with scores differing in the third significant digit.")
flags.DEFINE_enum("format", "saved_model", ["saved_model", "tflite"], "What to write.")
flags.DEFINE_float("score_threshold", 0.5, "SavedModel: default of the signatures' score_threshold "
                   "input (detections below it are padding).")
flags.DEFINE_enum("quantize", "none", ["none", "float16", "int8"], "TFLite: weight/activation "
                  "quantization.")
flags.DEFINE_string("calibration_data", None, "TFLite int8: training TFRecords whose first images "
                    "calibrate the activation ranges.")
flags.DEFINE_integer("calibration_images", 300, "TFLite int8: how many images calibrate.")


def calibration_note(used: int, asked: int, data: str) -> str:
    """How many images calibrated the int8 model, and why fewer than asked."""
    note = f"int8, calibrated on {used} images of {data}"
    if used < asked:
        note += f" (it holds only {used}; --calibration_images={asked} asked for more)"
    return note


def export_tflite_model(model, config, source) -> tuple[str, str | None]:
    """(path of the .tflite file, the calibration note or None)."""
    from ssd.inference import tflite as tflite_export

    quantize = None if FLAGS.quantize == "none" else FLAGS.quantize
    calibration, note = None, None
    if quantize == "int8":
        calibration = tflite_export.representative_images(FLAGS.calibration_data, config,
                                                          FLAGS.calibration_images)
        note = calibration_note(len(calibration), FLAGS.calibration_images, FLAGS.calibration_data)
        logging.info("%s", note)
    logging.info("converting to TensorFlow Lite (%s): tracing the network, then converting%s",
                 quantize or "float32", " and calibrating" if quantize == "int8" else "")
    path = tflite_export.export_tflite(model, config, FLAGS.export_dir, quantize, calibration,
                                       overwrite=FLAGS.overwrite, source=source)
    return path, note


def main(argv) -> None:
    cli.kernels_for_precision(FLAGS.precision)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("model_dir", "export_dir"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")
    if not 0.0 <= FLAGS.score_threshold <= 1.0:
        raise app.UsageError(f"--score_threshold must be in [0, 1], got {FLAGS.score_threshold}")
    if FLAGS.format != "tflite" and FLAGS["quantize"].present:
        raise app.UsageError("--quantize goes with --format=tflite")
    if FLAGS.quantize == "int8" and not FLAGS.calibration_data:
        raise app.UsageError("--quantize=int8 needs --calibration_data (training TFRecords)")
    if FLAGS.format == "tflite" and FLAGS.precision != "float32":
        raise app.UsageError("--format=tflite exports float32 (use --quantize for smaller models)")

    from ssd.inference.detector import load_trained_model
    from ssd.inference.saved_model import export_saved_model

    try:  # UserErrors (bad config, checkpoint, calibration data) are printed as one line by cli.run
        config, model, checkpoint, step = load_trained_model(FLAGS.model_dir, FLAGS.checkpoint_path,
                                                             FLAGS.precision)
        source = {"checkpoint": checkpoint, "step": step}
        note = None
        if FLAGS.format == "tflite":
            path, note = export_tflite_model(model, config, source)
        else:
            logging.info("exporting %s (step %d): tracing the signatures and writing the SavedModel",
                         checkpoint, step)
            path = export_saved_model(model, config, FLAGS.export_dir, overwrite=FLAGS.overwrite,
                                      score_threshold=FLAGS.score_threshold, source=source)
    except (FileExistsError, FileNotFoundError) as e:  # --export_dir exists, a file is missing
        cli.user_error(str(e))
    print(f"exported {checkpoint} (step {step}) to {path}" + (f"; {note}" if note else ""))


if __name__ == "__main__":
    cli.run(main)
