"""Stateless random draws for the training augmentation.

Every random choice of the augmentation is a pure function of a [2] int64 seed, so that the
same data seed gives the same batches on every run and every machine, whatever the number of
parallel calls.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    """`num` independent stateless seeds ([2] int64 each) derived from one."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)
    return [seeds[i] for i in range(num)]


def uniform(seed: tf.Tensor, shape: Sequence[int], low: float = 0.0,
            high: float = 1.0) -> tf.Tensor:
    """float32 draws in [low, high) of `shape`, fixed by `seed`."""
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)
