"""Computation precision: the names users give and the Keras dtype policies they mean.

Checkpoints hold float32 variables whatever the policy, so a model built under any of them loads
any checkpoint.
"""

from __future__ import annotations

import contextlib

import keras

# training: float16 needs loss scaling, bfloat16 does not
TRAINING_POLICIES = {"none": None, "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
# inference: bfloat16 roughly doubles CPU throughput where oneDNN has bf16 kernels (AVX512_BF16,
# AMX); its scores differ from float32 ones in the third significant digit
INFERENCE_POLICIES = {"float32": None, "bfloat16": "mixed_bfloat16"}


@contextlib.contextmanager
def dtype_policy(name: str | None):
    """Sets Keras's global dtype policy (None: leave it) while models are built, then restores it."""
    if name is None:
        yield
        return
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
