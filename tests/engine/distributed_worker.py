"""Runs a few SSD training steps under a distribution strategy and dumps what the tests compare.

Started as a subprocess by tests/test_distribute.py, because logical CPU devices and the
multi-worker runtime must be configured before TensorFlow initializes its devices.

  python tests/distributed_worker.py replicas OUT_DIR   # 1 replica vs 2 replicas (2 logical CPUs)
  python tests/distributed_worker.py worker OUT_DIR     # one MultiWorkerMirroredStrategy worker
                                                        # (TF_CONFIG in the environment)
  python tests/distributed_worker.py preempt OUT_DIR    # a worker training until a signal stops it
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
import tensorflow as tf

GLOBAL_BATCH = 4
STEPS = 2


def tiny_config():
    from ssd.config.loading import load_config
    return load_config("ssd300_voc0712", {
        "model.width_multiplier": 0.125, "model.num_classes": 4,
        "data.class_names": ["circle", "square", "triangle"],
        "train.batch_size": GLOBAL_BATCH, "train.learning_rate": 0.01, "train.lr_boundaries": [],
        "train.lr_factors": [1.0]})


def uneven_examples(config, count):
    """Images 0, 1 (the first replica's half) hold many objects, images 2, 3 one small one each."""
    from ssd.modeling import boxes as box_ops
    from ssd.modeling.anchors import generate_anchors
    anchors = tf.constant(generate_anchors(config))
    rng = np.random.default_rng(7)
    many = [[0.05, 0.05, 0.45, 0.45], [0.5, 0.5, 0.95, 0.9], [0.1, 0.55, 0.6, 0.95],
            [0.55, 0.05, 0.95, 0.5], [0.3, 0.3, 0.7, 0.7]]
    images, cls, loc = [], [], []
    for i in range(count):
        boxes = many if i % 4 < 2 else [[0.4, 0.4, 0.52, 0.5]]
        labels = [1 + (j % 3) for j in range(len(boxes))]
        c, l, _ = box_ops.encode_targets(tf.constant(boxes, tf.float32), tf.constant(labels, tf.int32),
                                         anchors, config.matching)
        images.append(rng.normal(0.0, 60.0, size=(300, 300, 3)).astype(np.float32))
        cls.append(c.numpy())
        loc.append(l.numpy())
    return np.stack(images), np.stack(cls), np.stack(loc)


def make_input_fn(config, count):
    images, cls, loc = uneven_examples(config, count)

    def input_fn(input_context):
        batch = input_context.get_per_replica_batch_size(GLOBAL_BATCH)
        dataset = tf.data.Dataset.from_tensor_slices(
            ({"image": images}, {"cls_targets": cls, "loc_targets": loc}))
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return dataset.batch(batch, drop_remainder=True).repeat()

    return input_fn, cls


def train(strategy, config, model_dir, input_fn, initial_weights=None):
    from ssd.engine.estimator import Estimator, RunConfig
    from ssd.engine.model_fn import SSDModelFn
    run_config = RunConfig(model_dir=model_dir, save_checkpoints_steps=1, save_summary_steps=1,
                           log_step_count_steps=1, train_distribute=strategy, tf_random_seed=3)
    estimator = Estimator(SSDModelFn, config, run_config)
    if initial_weights is not None:
        estimator.model.set_weights(initial_weights)
    initial = [w.copy() for w in estimator.model.get_weights()]
    estimator.train(input_fn, max_steps=STEPS)
    return estimator, initial


def summary_values(model_dir, tag):
    values = {}
    for path in glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return [values[s] for s in sorted(values)]


def compare_replicas(out_dir):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    config = tiny_config()
    input_fn, cls = make_input_fn(config, GLOBAL_BATCH)
    positives = (cls > 0).sum(axis=1)
    single, initial = train(tf.distribute.OneDeviceStrategy("/cpu:0"), config,
                            os.path.join(out_dir, "one"), input_fn)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    double, _ = train(mirrored, config, os.path.join(out_dir, "two"), input_fn, initial)
    np.savez(os.path.join(out_dir, "weights.npz"),
             **{f"one_{i}": w for i, w in enumerate(single.model.get_weights())},
             **{f"two_{i}": w for i, w in enumerate(double.model.get_weights())},
             **{f"init_{i}": w for i, w in enumerate(initial)})
    report = {"replicas": [1, mirrored.num_replicas_in_sync], "positives_per_image": positives.tolist()}
    for tag in ("loss", "cls_loss", "loc_loss", "l2_loss", "num_positives", "accuracy"):
        report[tag] = [summary_values(os.path.join(out_dir, "one"), tag),
                       summary_values(os.path.join(out_dir, "two"), tag)]
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f)


def multi_worker(out_dir):
    from ssd.engine.distribute import is_chief, make_strategy
    strategy = make_strategy("multi_worker")
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    config = tiny_config()
    input_fn, _ = make_input_fn(config, 2 * GLOBAL_BATCH)
    model_dir = os.path.join(out_dir, "model")
    estimator, _ = train(strategy, config, model_dir, input_fn)
    np.savez(os.path.join(out_dir, f"weights_{task['index']}.npz"), *estimator.model.get_weights())
    with open(os.path.join(out_dir, f"report_{task['index']}.json"), "w") as f:
        json.dump({"chief": is_chief(strategy), "replicas": strategy.num_replicas_in_sync,
                   "global_step": estimator.global_step}, f)


def preempted_worker(out_dir):
    """Trains (up to 10000 steps) with stop signals until a SIGTERM to any worker stops all."""
    from absl import logging
    logging.set_verbosity(logging.INFO)  # the progress lines the test waits for
    tf.get_logger().setLevel("INFO")  # the PreemptionCheckpointHandler's
    from ssd.engine.estimator import Estimator, RunConfig
    from ssd.engine.distribute import make_strategy
    from ssd.engine.interrupts import StopSignals, TrainingInterrupted
    from ssd.engine.model_fn import SSDModelFn
    strategy = make_strategy("multi_worker")
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    from ssd.config.loading import apply_overrides, from_dict, to_dict
    config = from_dict(apply_overrides(to_dict(tiny_config()), {"train.learning_rate": 1e-4}))
    input_fn, _ = make_input_fn(config, 2 * GLOBAL_BATCH)
    run_config = RunConfig(model_dir=os.path.join(out_dir, "model"), save_checkpoints_steps=5000,
                           save_summary_steps=0, log_step_count_steps=1, train_distribute=strategy)
    estimator = Estimator(SSDModelFn, config, run_config)
    report = {"index": task["index"]}
    try:
        with StopSignals() as signals:
            estimator.train(input_fn, max_steps=10000, stop_signals=signals)
    except TrainingInterrupted as e:
        report.update(step=e.step, checkpoint=e.checkpoint, exit_code=e.exit_code)
    with open(os.path.join(out_dir, f"report_{task['index']}.json"), "w") as f:
        json.dump(dict(report, global_step=estimator.global_step), f)
    sys.exit(report.get("exit_code", 0))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    mode, directory = sys.argv[1], sys.argv[2]
    {"replicas": compare_replicas, "worker": multi_worker, "preempt": preempted_worker}[mode](directory)
