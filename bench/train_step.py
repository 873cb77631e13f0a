r"""Training throughput of the full SSD300 (VGG16, 21 classes, fp32) through the real input pipeline.

  python bench/train_step.py [--data_dir=tfrecords/voc0712_trainval-*] [--batch_size=8]
      [--warmup_steps=3] [--steps=10] [--jit_compile] [--input=real|cached]
      [--intra_op_threads=0] [--inter_op_threads=0] [--mixed_precision=none]

Without --data_dir, 64 VOC-sized JPEGs (500x375 / 375x500, a few boxes each) are written as
TFRecords into a temporary directory. The model trains with the Estimator exactly as train.py does
(paper augmentation, SSD loss, momentum SGD); the first --warmup_steps steps (tracing, pipeline
start) are not timed. --input=cached trains on one prefetched batch repeated, which isolates the
model step from the input pipeline's cost on the same cores.

Prints images/s, the training GFLOP/s achieved, and the GFLOP/s of a large fp32 matmul measured in
the same process (the practical peak of this machine). FLOPs are counted from the model's own
Conv2D layers (2 x multiply-adds; pooling, ReLU, the L2 norm and the loss are not counted); one
training image costs ~3x its forward pass (forward, gradient w.r.t. inputs, gradient w.r.t. weights).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssd import cpu  # noqa: E402
from bench.synthetic_records import NUM_IMAGES, one_cached_batch, write_synthetic_records  # noqa: E402

cpu.prefer_onednn()  # before TensorFlow loads: the kernels the apps use

from absl import app, flags, logging

flags.DEFINE_string("data_dir", None, "Training TFRecords (default: generate 64 synthetic images).")
flags.DEFINE_integer("batch_size", 8, "Global batch size.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the network.")
flags.DEFINE_enum("input", "real", ["real", "cached"], "real: the full input pipeline; cached: one "
                  "batch repeated (the model step alone).")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0: TF's default).")
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: TF's default).")
flags.DEFINE_enum("mixed_precision", "none", ["none", "float16", "bfloat16"], "Mixed precision.")
flags.DEFINE_integer("matmul_size", 4096, "Side of the square fp32 matmul used as reference.")
FLAGS = flags.FLAGS

def conv_forward_flops(model) -> int:
    """2 x multiply-adds of every Conv2D layer for one image."""
    import keras
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, oh, ow, _ = layer.output.shape
            total += 2 * oh * ow * cout * kh * kw * cin
    return total


def matmul_gflops(size: int, repeats: int = 10) -> float:
    import tensorflow as tf
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])

    @tf.function
    def chain(a, b):
        c = a
        for _ in range(repeats):
            c = tf.matmul(c, b) * (1.0 / size)
        return c

    chain(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        chain(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 * repeats / best / 1e9


def main(argv):
    print(cpu.describe())
    del argv
    import tensorflow as tf
    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)

    from ssd.config.loading import load_config
    from ssd.data.input_fn import make_input_fn
    from ssd.engine.estimator import Estimator, RunConfig
    from ssd.engine.model_fn import SSDModelFn
    from ssd.modes import ModeKeys

    config = load_config("ssd300_voc0712", {"train.batch_size": FLAGS.batch_size,
                                            "data.shuffle_buffer": NUM_IMAGES})
    with tempfile.TemporaryDirectory(prefix="ssd_bench_") as scratch:
        data_dir = FLAGS.data_dir or write_synthetic_records(scratch, config.model.num_classes - 1)
        input_fn = make_input_fn(data_dir, config, ModeKeys.TRAIN)
        if FLAGS.input == "cached":
            input_fn = one_cached_batch(input_fn)

        run_config = RunConfig(model_dir=os.path.join(scratch, "model"), save_checkpoints_steps=None,
                               save_summary_steps=0, log_step_count_steps=0,
                               mixed_precision=FLAGS.mixed_precision, jit_compile=FLAGS.jit_compile)
        estimator = Estimator(SSDModelFn, config, run_config)
        forward = conv_forward_flops(estimator.model)
        print(f"SSD300: {estimator.model.count_params():,} parameters; forward {forward / 1e9:.2f} "
              f"GFLOP per image (Conv2D layers), training ~3x = {3 * forward / 1e9:.1f} GFLOP per image")

        times = []
        losses = []

        def record(step, scalars):
            times.append(time.perf_counter())
            losses.append(float(scalars["loss"]))

        total = FLAGS.warmup_steps + FLAGS.steps
        started = time.perf_counter()
        estimator.train(input_fn, max_steps=total, hooks=[record])
        elapsed = time.perf_counter() - started
        # the interval from the end of the last warm-up step to the end of the last step
        timed = times[-1] - times[FLAGS.warmup_steps - 1] if FLAGS.warmup_steps else times[-1] - started
        step_time = timed / FLAGS.steps
        images_per_sec = FLAGS.batch_size / step_time
        achieved = 3 * forward * images_per_sec / 1e9
        reference = matmul_gflops(FLAGS.matmul_size)
        print(f"config: batch {FLAGS.batch_size}, input {FLAGS.input}, jit_compile {FLAGS.jit_compile}, "
              f"mixed_precision {FLAGS.mixed_precision}, intra/inter threads "
              f"{FLAGS.intra_op_threads or 'default'}/{FLAGS.inter_op_threads or 'default'}, "
              f"CPUs {os.cpu_count()}")
        print(f"warm-up {FLAGS.warmup_steps} steps {times[FLAGS.warmup_steps - 1] - started:.1f} s; total {elapsed:.1f} s")
        print(f"step {step_time:.3f} s -> {images_per_sec:.3f} images/s; losses {losses[0]:.2f} -> {losses[-1]:.2f}")
        print(f"achieved {achieved:.1f} GFLOP/s training vs fp32 matmul {FLAGS.matmul_size}^2 "
              f"{reference:.1f} GFLOP/s ({100 * achieved / reference:.0f}%)")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)
