r"""Where a training step's time goes: TensorFlow's profiler over a few steps, summarized by op.

  python bench/profile_step.py [--config=ssd300_voc0712] [--batch_size=8] [--warmup_steps=2]
      [--steps=2] [--inter_op_threads=0] [--logdir=/tmp/ssd_profile] [--top=15]

Trains the recipe through the Estimator on one cached batch of synthetic VOC-sized images (as
`bench/train_step.py --input=cached`), records `--steps` steps after `--warmup_steps` with
`tf.profiler.experimental`, and prints, per step: the wall time, the time of the ops on
TensorFlow's compute threads (with two or more inter-op threads ops overlap, so their sum can
exceed the wall time; `--inter_op_threads=1` runs them one after another), the share of the
convolutions, the op types and the single non-convolution ops that cost most, and each
convolution layer's forward / gradient-of-input / gradient-of-weights time. The trace stays in
`--logdir` for TensorBoard's profile plugin (`pip install tensorboard-plugin-profile`).
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssd import cpu  # noqa: E402

cpu.prefer_onednn()  # before TensorFlow loads: the kernels the apps use

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("config", "ssd300_voc0712", "Recipe name or path.")
flags.DEFINE_integer("batch_size", 8, "Global batch size.")
flags.DEFINE_integer("warmup_steps", 2, "Steps before the profile (tracing, first allocations).")
flags.DEFINE_integer("steps", 2, "Profiled steps.")
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: TF's default).")
flags.DEFINE_string("logdir", None, "Where the trace is written (default: a new temporary directory).")
flags.DEFINE_integer("top", 15, "Rows of each table.")
FLAGS = flags.FLAGS

_CONVOLUTION = re.compile(r"Conv2D|DepthwiseConv")


def op_events(xplane_path: str):
    """(op name, op type, duration in ms) of every op run on TensorFlow's compute threads."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as file:
        space.ParseFromString(file.read())
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and "::" not in name:  # "op_name:OpType"; executor frames have "::"
                    op, op_type = name.rsplit(":", 1)
                    yield op, op_type, event.duration_ps / 1e9


# a layer's weight gradient computed as matrix products (ssd.modeling.convolution) runs in a
# "<layer>_weight_gradient" scope
_TAPS = re.compile(r"([^/]+)_weight_gradient/")


def _convolution_layer(op: str, op_type: str) -> tuple[str, str] | None:
    """(layer, role) of a convolution op or of a weight gradient's matrix product, else None."""
    taps = _TAPS.search(op)
    if taps:
        return taps.group(1), "gradient of weights"
    if not _CONVOLUTION.search(op_type):
        return None
    match = re.search(r"/([^/]+?)(?:_\d+)?/(?:convolution|Conv2D|depthwise|Relu|BiasAdd)", op)
    role = ("gradient of input" if "BackpropInput" in op_type else
            "gradient of weights" if "BackpropFilter" in op_type else "forward")
    return (match.group(1) if match else op), role


def summarize(events, steps: int, top: int) -> str:
    by_type, by_name, by_layer = collections.Counter(), collections.Counter(), collections.defaultdict(collections.Counter)
    for op, op_type, ms in events:
        gradient = op.startswith("gradient_tape/")
        by_type[("gradient " if gradient else "") + op_type] += ms / steps
        layer = _convolution_layer(op, op_type)
        if layer:
            by_layer[layer[0]][layer[1]] += ms / steps
        else:
            by_name[f"{op} ({op_type})"] += ms / steps
    total = sum(by_type.values())
    convolution = sum(sum(times.values()) for times in by_layer.values())
    lines = [f"ops on compute threads {total:.1f} ms/step, of which convolutions (and weight gradients "
             f"as matrix products) {convolution:.1f} ms ({100 * convolution / max(total, 1e-9):.1f}%)",
             "", "op types (ms/step):"]
    lines += [f"  {ms:9.2f}  {name}" for name, ms in by_type.most_common(top)]
    lines += ["", "costliest ops other than convolutions (ms/step):"]
    lines += [f"  {ms:9.2f}  {name}" for name, ms in by_name.most_common(top)]
    lines += ["", f"{'convolution layer':<28}{'forward':>10}{'grad input':>12}{'grad weights':>14}  (ms/step)"]
    ranked = sorted(by_layer.items(), key=lambda item: -sum(item[1].values()))
    lines += [f"{layer:<28}{times['forward']:10.1f}{times['gradient of input']:12.1f}"
              f"{times['gradient of weights']:14.1f}" for layer, times in ranked[:top]]
    return "\n".join(lines)


def main(argv):
    del argv
    import tensorflow as tf

    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    print(cpu.describe())
    from bench.synthetic_records import NUM_IMAGES, one_cached_batch, write_synthetic_records
    from ssd.config.loading import load_config
    from ssd.data.input_fn import make_input_fn
    from ssd.engine.estimator import Estimator, RunConfig
    from ssd.engine.model_fn import SSDModelFn
    from ssd.modes import ModeKeys

    config = load_config(FLAGS.config, {"train.batch_size": FLAGS.batch_size,
                                        "data.shuffle_buffer": NUM_IMAGES})
    logdir = FLAGS.logdir or tempfile.mkdtemp(prefix="ssd_profile_")
    with tempfile.TemporaryDirectory(prefix="ssd_bench_") as scratch:
        input_fn = one_cached_batch(make_input_fn(
            write_synthetic_records(scratch, config.model.num_classes - 1), config, ModeKeys.TRAIN))

        run_config = RunConfig(model_dir=os.path.join(scratch, "model"), save_checkpoints_steps=None,
                               save_summary_steps=0, log_step_count_steps=0)
        estimator = Estimator(SSDModelFn, config, run_config)
        first, last = FLAGS.warmup_steps, FLAGS.warmup_steps + FLAGS.steps
        ended = {}

        def profile(step, scalars):
            del scalars
            if step == first:
                tf.profiler.experimental.start(logdir)
                ended[step] = time.perf_counter()
            elif step == last:
                ended[step] = time.perf_counter()
                tf.profiler.experimental.stop()

        estimator.train(input_fn, max_steps=last, hooks=[profile])
    wall = (ended[last] - ended[first]) / FLAGS.steps
    traces = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    print(f"{FLAGS.config}, batch {FLAGS.batch_size}, {FLAGS.steps} profiled steps: "
          f"{1000 * wall:.0f} ms/step wall ({FLAGS.batch_size / wall:.2f} images/s, under the profiler); "
          f"trace {traces[-1]}")
    print(summarize(list(op_events(traces[-1])), FLAGS.steps, FLAGS.top))


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)
