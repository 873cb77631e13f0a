"""Distribution strategies by name, and the checks that go with them.

`make_strategy(name)`:
  auto          MirroredStrategy over all local GPUs when there are two or more, a OneDeviceStrategy
                on the single GPU when there is one, otherwise the default (no-op) strategy on the CPU.
  mirrored      MirroredStrategy over all local GPUs (or over the local logical CPU devices when
                there is no GPU, which is how the distribution code is exercised on a CPU machine).
  multi_worker  MultiWorkerMirroredStrategy; the cluster comes from the TF_CONFIG environment
                variable, which is checked first so a missing or malformed value gives a clear error.
                Create it before running any other TensorFlow op in the process.
  one_device    OneDeviceStrategy on the first GPU, or on the CPU.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import tensorflow as tf

from ssd.errors import UserError

STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")

_TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}\'')


class DistributionError(UserError, ValueError):
    """A strategy that cannot be created, or a batch that cannot be split over replicas."""


def _local_devices(device_type: str, limit: int | None) -> list[str]:
    devices = [d.name for d in tf.config.list_logical_devices(device_type)]
    return devices[:limit] if limit else devices


def parse_tf_config(text: str | None) -> Mapping:
    """Validates a TF_CONFIG value and returns it parsed; the error says what is wrong."""
    if not text:
        raise DistributionError(
            "strategy multi_worker needs the TF_CONFIG environment variable describing the "
            f"cluster and this process's task, e.g. {_TF_CONFIG_EXAMPLE}")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise DistributionError(f"TF_CONFIG is not valid JSON ({e}): {text!r}") from e
    if not isinstance(tf_config, dict):
        raise DistributionError(f"TF_CONFIG must be a JSON object, got {text!r}")
    cluster = tf_config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise DistributionError(f"TF_CONFIG has no 'cluster' mapping of job name to addresses: {text!r}")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise DistributionError(f"TF_CONFIG cluster[{job!r}] must be a list of 'host:port' strings")
    task = tf_config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributionError(f"TF_CONFIG needs 'task': {{'type': ..., 'index': ...}}, got {text!r}")
    if task["type"] not in cluster:
        raise DistributionError(f"TF_CONFIG task type {task['type']!r} is not a job of the cluster "
                                f"({', '.join(cluster)})")
    index = task["index"]
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise DistributionError(f"TF_CONFIG task index {index!r} is out of range for job "
                                f"{task['type']!r} with {len(cluster[task['type']])} tasks")
    return tf_config


def make_strategy(name: str, num_gpus: int | None = None) -> tf.distribute.Strategy:
    """Creates the strategy called `name` (see the module docstring); `num_gpus` caps the GPUs used."""
    if name not in STRATEGIES:
        raise DistributionError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "multi_worker":
        parse_tf_config(os.environ.get("TF_CONFIG"))
        # before anything initializes the runtime: collective ops are configured at startup
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = _local_devices("GPU", num_gpus)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(gpus or _local_devices("CPU", None))
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    if len(gpus) >= 2:
        return tf.distribute.MirroredStrategy(gpus)
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0])
    return tf.distribute.get_strategy()


def check_batch_divisible(global_batch: int, num_replicas: int) -> int:
    """Returns the per-replica batch size, or explains which global batch sizes would work."""
    if num_replicas < 1:
        raise DistributionError(f"need at least one replica, got {num_replicas}")
    if global_batch % num_replicas == 0:
        return global_batch // num_replicas
    lower = global_batch // num_replicas * num_replicas
    upper = lower + num_replicas
    options = f"{lower} or {upper}" if lower > 0 else f"{upper}"
    raise DistributionError(
        f"batch {global_batch} does not split over {num_replicas} replicas; use {options} "
        f"(the batch size is global: a multiple of the number of replicas)")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the worker that writes checkpoints and summaries (always true on one machine)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def task_name(strategy: tf.distribute.Strategy) -> str:
    """'worker_1' style name of this process's task ('local' outside a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "local"
    return f"{resolver.task_type}_{resolver.task_id}"
