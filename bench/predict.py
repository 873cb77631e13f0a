"""Inference speed of a recipe's network at batch 8: network, post-processing, end to end.

    python bench/predict.py [--config=ssd300_voc0712] [--batch_size=8] [--repeats=3]
        [--iterations=2] [--nojpeg] [--precisions=float32,bfloat16]

--config takes any recipe name or path (SSD300/SSD512-VGG16, SSDLite-MobileNetV2); the network
is built by `ssd.modeling.build.build_model` for the recipe's backbone and fed in its input convention.

Prints, for each inference precision (float32; bfloat16 = Keras mixed_bfloat16, float32 weights),
images/s of
  * the network alone, plain tf.function and XLA-compiled (jit_compile=True);
  * end to end from preprocessed tensors: network + post-processing (ssd.modeling.postprocess) in one call;
    for networks with batch norm also with it folded into the convolutions, as exported
    (ssd.inference.batch_norm_folding);
  * end to end from JPEG bytes (decode, resize, mean subtraction in the graph, as the SavedModel
    serving signature does), unless --nojpeg;
and the post-processing cost in ms/image for two score distributions:
  * "dense": uniform random logits, every default box above the 0.01 threshold in every class
    (what an untrained network gives; the worst case for top-k and NMS);
  * "sparse": background-dominated logits where ~2% of the boxes pass the threshold in a class
    (closer to a trained network).
The weights are random: speed does not depend on them, except post-processing (see above).
Each figure is measured `--repeats` times (after a warm-up); best and median are printed, since
other processes may share the CPU. Beside the wall-clock rate, the rate per CPU time (images per
CPU-second of this process, times the number of cores) estimates what an otherwise idle machine
gives: it assumes the work scales over the cores, which holds closely for 2.
"""

from __future__ import annotations

import io
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ssd import cpu  # noqa: E402

cpu.prefer_onednn()  # before TensorFlow loads: the kernels the apps use

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from ssd.modeling.anchors import generate_anchors  # noqa: E402
from ssd.inference.batch_norm_folding import fold_batch_norm  # noqa: E402
from ssd.config.loading import load_config  # noqa: E402
from ssd.inference.detector import Detector, build_inference_model  # noqa: E402
from ssd.modeling.postprocess import postprocess  # noqa: E402
from ssd.data.preprocessing import preprocess_image  # noqa: E402

flags.DEFINE_integer("batch_size", 8, "Images per call.")
flags.DEFINE_integer("repeats", 3, "Timed measurements per figure.")
flags.DEFINE_integer("iterations", 2, "Calls per measurement.")
flags.DEFINE_bool("jpeg", True, "Also measure end to end from JPEG bytes.")
flags.DEFINE_string("config", "ssd300_voc0712", "Recipe name or path.")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Inference precisions to measure.")
FLAGS = flags.FLAGS


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(fn, inputs, iterations: int, repeats: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per call, one pair per repeat, after one warm-up call."""
    _block(fn(inputs))
    times = []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        for _ in range(iterations):
            out = fn(inputs)
        _block(out)
        times.append(((time.perf_counter() - start) / iterations, (_cpu_seconds() - cpu_start) / iterations))
    return times


def _block(outputs) -> None:
    for tensor in tf.nest.flatten(outputs):
        tensor.numpy()


def report(name: str, times: list[tuple[float, float]], batch: int) -> None:
    """Wall-clock images/s, and images per CPU-second times the cores: the rate the machine would
    reach if this process had every core (other processes share the CPU)."""
    rates = sorted(batch / wall for wall, _ in times)
    cores = os.cpu_count() or 1
    cpu_rates = sorted(batch * cores / cpu for _, cpu in times)
    print(f"{name:<44} best {rates[-1]:5.2f} img/s  median {statistics.median(rates):5.2f} img/s | "
          f"per {cores} cores of CPU time: best {cpu_rates[-1]:5.2f}  median {statistics.median(cpu_rates):5.2f}",
          flush=True)


def report_ms(name: str, times: list[tuple[float, float]], batch: int) -> None:
    ms = sorted(1000.0 * wall / batch for wall, _ in times)
    cpu_ms = sorted(1000.0 * cpu / batch for _, cpu in times)
    print(f"{name:<60} best {ms[0]:6.2f} ms/img  median {statistics.median(ms):6.2f} ms/img | "
          f"CPU time: median {statistics.median(cpu_ms):6.2f} ms/img", flush=True)


def sparse_logits(rng: np.random.Generator, batch: int, num_anchors: int, num_classes: int) -> np.ndarray:
    """Background-dominated logits: about 2% of the boxes score > 0.01 in some class."""
    logits = rng.normal(0.0, 1.0, size=(batch, num_anchors, num_classes)).astype(np.float32)
    logits[..., 0] += 9.0
    hot = rng.random((batch, num_anchors, num_classes - 1)) < 0.02
    logits[..., 1:] += np.where(hot, 6.0, 0.0).astype(np.float32)
    return logits


def jpeg_batch(rng: np.random.Generator, batch: int) -> np.ndarray:
    encoded = []
    for i in range(batch):
        height, width = (375, 500) if i % 2 else (500, 333)  # typical VOC sizes
        pixels = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((width, height), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return np.array(encoded, dtype=object)


def main(argv) -> None:
    print(cpu.describe())
    del argv
    config = load_config(FLAGS.config)
    batch, repeats, iterations = FLAGS.batch_size, FLAGS.repeats, FLAGS.iterations
    size = config.model.input_size
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{FLAGS.config}: {config.model.architecture} ({config.model.backbone}), "
          f"{config.model.num_classes} classes, batch {batch}, {os.cpu_count()} CPUs, "
          f"load average {load}, TensorFlow {tf.__version__}", flush=True)
    anchors = tf.constant(generate_anchors(config), tf.float32)
    rng = np.random.default_rng(0)
    # random pixels in the recipe's input convention (data.preprocessing)
    pixels = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    images = tf.constant(preprocess_image(pixels, config))

    post = tf.function(lambda logits, enc: postprocess(logits, enc, anchors, config))
    num_anchors = int(anchors.shape[0])
    encodings = tf.constant(rng.normal(0.0, 0.5, size=(batch, num_anchors, 4)).astype(np.float32))
    dense = tf.constant(rng.normal(0.0, 0.1, size=(batch, num_anchors, config.model.num_classes))
                        .astype(np.float32))
    sparse = tf.constant(sparse_logits(rng, batch, num_anchors, config.model.num_classes))
    for name, logits in (("dense", dense), ("sparse", sparse)):
        pairs = np.sum(tf.nn.softmax(logits)[..., 1:].numpy() > config.eval.score_threshold) / batch
        report_ms(f"postprocess, {name} ({pairs:.0f} box-class pairs > threshold/img)",
                  measure(lambda x: post(*x), (logits, encodings), iterations, repeats), batch)

    encoded = tf.constant(jpeg_batch(rng, batch)) if FLAGS.jpeg else None
    for precision in FLAGS.precisions:
        model = build_inference_model(config, precision)
        for jit in (False, True):
            network = tf.function(lambda x: model(x, training=False), jit_compile=jit)
            report(f"network {precision}{', XLA' if jit else ''}",
                   measure(network, images, iterations, repeats), batch)
        # XLA's CPU convolutions do not use oneDNN: end to end runs the plain network (through
        # the Detector: network + post-processing)
        detector = Detector(model, config, jit_compile=False)
        shapes = tf.fill([batch, 2], size)
        report(f"end to end {precision}, preprocessed input",
               measure(lambda x: detector(x, shapes), images, iterations, repeats), batch)
        folded = fold_batch_norm(model)
        if folded is not model:  # what the SavedModel serves (ssd.inference.saved_model)
            exported = Detector(folded, config, jit_compile=False)
            report(f"end to end {precision}, batch norm folded",
                   measure(lambda x: exported(x, shapes), images, iterations, repeats), batch)
        if encoded is not None:
            from_jpeg = tf.function(detector.detect_encoded)

            report(f"end to end {precision}, JPEG bytes (~500x375)",
                   measure(from_jpeg, encoded, iterations, repeats), batch)
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    app.run(main)
