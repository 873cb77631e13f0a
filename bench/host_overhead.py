r"""The host's share of a training step: wall time per step and device->host reads per step.

  python bench/host_overhead.py [--steps_per_loop=1,10] [--width=0.125] [--batch_size=2]
      [--warmup_steps=10] [--steps=200] [--repeats=3]

The shapes recipe (ssd300_shapes_cpu; --width sets model.width_multiplier) trains through the
Estimator, as train.py does, on one batch repeated (noise images with a few boxes, encoded into
the model's targets once), with logs, summaries and checkpoints by steps off, so that what is
left besides the model is the host's per-step work. For each --steps_per_loop value and
each repeat it prints, over the steps after --warmup_steps (tracing, pipeline start):

  * the wall time per step (ms) and steps/s, from the start of the first timed call of the step
    function to the start of the last (calls are timed by a wrapper around the Estimator's step
    function), so each step's share of the host's work between calls is in it;
  * the device->host reads per step, counted by patching
    `tensorflow.python.framework.ops._EagerTensorBase._numpy`, through which every `.numpy()`,
    `bool()`, `int()` and `float()` of an eager tensor goes; on a GPU each such read makes the
    host wait for the device.

A small model makes the host's share visible; on a CPU the host and the "device" share the same
cores, so the time saved is the host's bookkeeping, not the overlap a GPU gains.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssd import cpu  # noqa: E402

cpu.prefer_onednn()  # before TensorFlow loads: the kernels the apps use

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_list("steps_per_loop", ["1", "10"], "train.steps_per_loop values to compare.")
flags.DEFINE_float("width", 0.125, "model.width_multiplier of the shapes recipe.")
flags.DEFINE_integer("batch_size", 2, "Global batch size.")
flags.DEFINE_integer("warmup_steps", 10, "Untimed steps first (at least one call).")
flags.DEFINE_integer("steps", 200, "Timed steps.")
flags.DEFINE_integer("repeats", 3, "Measurements of each figure (the machine may be shared).")
FLAGS = flags.FLAGS


class ReadCounter:
    """Counts device->host reads of eager tensors while installed."""

    def __init__(self):
        from tensorflow.python.framework import ops
        self._owner = ops._EagerTensorBase
        self._original = self._owner._numpy
        self.count = 0

    def __enter__(self) -> "ReadCounter":
        original = self._original

        def counted(tensor):
            self.count += 1
            return original(tensor)

        self._owner._numpy = counted
        return self

    def __exit__(self, *exc_info) -> None:
        self._owner._numpy = self._original


class TimedStep:
    """Wraps a step function: the time, read count and step count of each call."""

    def __init__(self, step_fn, reads: ReadCounter):
        self._step_fn = step_fn
        self._reads = reads
        self.calls = []  # (started, ended, reads before, reads after, count)

    def __getattr__(self, name):
        return getattr(self._step_fn, name)

    def __call__(self, iterator, *args):
        count = args[0] if args else 1
        reads, started = self._reads.count, time.perf_counter()
        result = self._step_fn(iterator, *args)
        self.calls.append((started, time.perf_counter(), reads, self._reads.count, count))
        return result


def measure(config, input_fn, steps_per_loop: int, scratch: str) -> tuple[float, float]:
    """(ms per step, reads per step) over the timed steps of one training run."""
    from ssd.engine import estimator as estimator_module
    from ssd.engine.model_fn import SSDModelFn
    settings = dict(model_dir=tempfile.mkdtemp(dir=scratch), save_checkpoints_steps=None,
                    save_summary_steps=0, log_step_count_steps=0, save_image_summary_steps=0,
                    steps_per_loop=steps_per_loop)
    estimator = estimator_module.Estimator(SSDModelFn, config, estimator_module.RunConfig(**settings))
    original = estimator_module.make_train_step
    timed = []
    with ReadCounter() as reads:
        def make_timed(*args, **kwargs):
            timed.append(TimedStep(original(*args, **kwargs), reads))
            return timed[-1]

        estimator_module.make_train_step = make_timed
        try:
            estimator.train(input_fn, max_steps=FLAGS.warmup_steps + FLAGS.steps)
        finally:
            estimator_module.make_train_step = original
    calls, done = timed[0].calls, 0
    while done < FLAGS.warmup_steps or done == 0:
        done += calls.pop(0)[4]
    if len(calls) < 2:
        raise SystemExit("--steps is too small for two timed calls")
    # from the start of the first timed call to the start of the last one: each call's steps
    # and the host's work after it, up to the next call
    steps = sum(call[4] for call in calls[:-1])
    seconds = calls[-1][0] - calls[0][0]
    return 1000.0 * seconds / steps, (calls[-1][2] - calls[0][2]) / steps


def one_batch_input_fn(config, batch_size: int):
    """input_fn repeating one batch of noise images, each with the same three boxes."""
    import numpy as np
    import tensorflow as tf

    from ssd.modeling import boxes as box_ops
    from ssd.modeling.anchors import generate_anchors
    anchors = tf.constant(generate_anchors(config))
    boxes = tf.constant([[0.1, 0.1, 0.5, 0.4], [0.5, 0.5, 0.9, 0.95], [0.3, 0.6, 0.6, 0.9]], tf.float32)
    cls, loc, _ = box_ops.encode_targets(boxes, tf.constant([1, 2, 3], tf.int32), anchors, config.matching)
    size = config.model.input_size
    images = np.random.default_rng(0).normal(0.0, 60.0, (batch_size, size, size, 3)).astype(np.float32)
    batch = ({"image": images}, {"cls_targets": tf.stack([cls] * batch_size),
                                 "loc_targets": tf.stack([loc] * batch_size)})

    def input_fn(input_context=None):
        return tf.data.Dataset.from_tensors(batch).repeat().prefetch(tf.data.AUTOTUNE)

    return input_fn


def main(argv):
    print(cpu.describe())
    del argv
    from ssd.config.loading import load_config

    config = load_config("ssd300_shapes_cpu", {"train.batch_size": FLAGS.batch_size,
                                               "model.width_multiplier": FLAGS.width})
    input_fn = one_batch_input_fn(config, FLAGS.batch_size)
    with tempfile.TemporaryDirectory(prefix="ssd_bench_") as scratch:
        print(f"ssd300_shapes_cpu, width {FLAGS.width}, batch {FLAGS.batch_size}, one cached batch; "
              f"{FLAGS.warmup_steps} warm-up steps, {FLAGS.steps} timed steps, {FLAGS.repeats} repeats; "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for value in FLAGS.steps_per_loop:
            figures = [measure(config, input_fn, int(value), scratch) for _ in range(FLAGS.repeats)]
            ms = [f[0] for f in figures]
            reads = [f[1] for f in figures]
            print(f"steps_per_loop {value:>3}: {min(ms):7.2f} ms/step best, {statistics.median(ms):7.2f} "
                  f"median ({1000 / min(ms):6.1f} / {1000 / statistics.median(ms):6.1f} steps/s); "
                  f"device->host reads per step {min(reads):.3f} best, {statistics.median(reads):.3f} "
                  f"median; all ms {' '.join(f'{m:.2f}' for m in ms)}")
        print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)
