"""Latency per image at batch 1: TFLite interpreter (float32, int8) next to the TensorFlow SavedModel.

    python bench/tflite_latency.py [--runs=5] [--num_threads=2] [--calibration_images=8]
        [--models=ssd300_vgg16,ssdlite320_mobilenet_v2]

Models (random weights: the network's cost does not depend on them):
  ssd300_vgg16             SSD300-VGG16, 21 classes (configs/ssd300_voc0712.json), 8732 boxes;
  ssdlite320_mobilenet_v2  SSDLite-MobileNetV2 at 320, 81 classes (configs/ssdlite320_mobilenetv2_coco.json),
                           2034 boxes.
For each: the .tflite model of ssd.inference.tflite (uint8 [1, S, S, 3] in, preprocessing, network,
built-in-only post-processing) run by the TFLite interpreter with --num_threads, float32 and
int8 (calibrated on --calibration_images random images: enough for timing, not for accuracy), and
the SavedModel of ssd.inference.saved_model on the same image (its `serving_images` signature: the Detector,
TensorFlow's own thread pools, combined NMS; its score threshold input at 0 as the .tflite
model has none). Post-processing cost does depend on the scores: random weights put many boxes
above the 0.01 threshold (a heavy case for NMS), the same for every row of the table.

Each figure is the median (and best) of --runs calls after one warm-up call. Other processes may
share the CPU: compare rows measured together, not with another machine's table.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ssd import cpu  # noqa: E402

cpu.prefer_onednn()  # before TensorFlow loads: the kernels the apps use

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from ssd.inference import tflite as te  # noqa: E402
from ssd.config.loading import load_config  # noqa: E402
from ssd.inference.detector import build_inference_model  # noqa: E402
from ssd.inference.saved_model import SIGNATURE_IMAGES, export_saved_model  # noqa: E402

COCO_CLASSES = 81  # 80 object classes + background

flags.DEFINE_integer("runs", 5, "Timed calls per figure (after one warm-up call).")
flags.DEFINE_integer("num_threads", 2, "TFLite interpreter threads.")
flags.DEFINE_integer("calibration_images", 8, "Random images for the int8 calibration.")
RECIPES = {"ssd300_vgg16": "ssd300_voc0712", "ssdlite320_mobilenet_v2": "ssdlite320_mobilenetv2_coco"}
flags.DEFINE_list("models", list(RECIPES), "Which models to measure.")
FLAGS = flags.FLAGS


def _setup(name: str):
    """(config, keras model with random weights)."""
    if name not in RECIPES:
        raise app.UsageError(f"unknown model {name!r}; choose from {', '.join(RECIPES)}")
    config = load_config(RECIPES[name])
    return config, build_inference_model(config)


def _time(call, runs: int) -> tuple[float, float]:
    """(median, best) milliseconds per call after one warm-up."""
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), min(times)


def _saved_model_call(model, config, image, directory):
    export_saved_model(model, config, directory, score_threshold=0.0)
    serve = tf.saved_model.load(directory).signatures[SIGNATURE_IMAGES]
    threshold = tf.constant(0.0)
    return lambda: serve(images=image, score_threshold=threshold)["num_detections"].numpy()


def measure(name: str, runs: int, num_threads: int, calibration_images: int) -> list[tuple]:
    config, model = _setup(name)
    size = config.model.input_size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        call = _saved_model_call(model, config, tf.constant(image), os.path.join(directory, "saved_model"))
        median, best = _time(call, runs)
    rows.append((name, "TensorFlow SavedModel float32", median, best, None))
    calibration = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(calibration_images)]
    for quantize in (None, "int8"):
        content = te.convert_to_tflite(model, config, quantize, calibration if quantize else None)
        runner = te.interpreter(content, num_threads=num_threads)
        median, best = _time(lambda: te.detect_tflite(runner, image), runs)
        rows.append((name, f"TFLite {quantize or 'float32'} ({num_threads} threads)", median, best,
                     len(content) / 2**20))
    return rows


def main(argv):
    print(cpu.describe())
    del argv
    print(f"batch 1, median (best) of {FLAGS.runs} calls; CPU: {os.cpu_count()} cores, shared with "
          f"other processes", flush=True)
    rows = []
    for name in FLAGS.models:
        rows += measure(name, FLAGS.runs, FLAGS.num_threads, FLAGS.calibration_images)
    print(f"{'model':<26}{'runtime':<34}{'ms/image':>10}{'best':>9}{'file MB':>9}")
    for name, runtime, median, best, megabytes in rows:
        size = f"{megabytes:.1f}" if megabytes is not None else "-"
        print(f"{name:<26}{runtime:<34}{median:>10.1f}{best:>9.1f}{size:>9}")


if __name__ == "__main__":
    app.run(main)
