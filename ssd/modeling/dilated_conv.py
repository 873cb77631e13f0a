"""A dilated convolution computed by the kernels that have one, instead of through SpaceToBatchND.

TensorFlow's `tf.nn.convolution` (and with it Keras' Conv2D) computes every dilated convolution
outside a TPU as SpaceToBatchND -> convolution -> BatchToSpaceND, because its own CPU kernels
(Eigen) have no dilated gradients. For SSD's fc6 (3x3, dilation 6, 19x19 or 32x32 inputs) that
costs more than the convolution itself: the feature map is cut into 36 sub-images of about 6x6,
padded, convolved and put back. oneDNN's CPU kernels and the GPU kernels compute the dilated
convolution and both of its gradients directly; measured on SSD300's fc6 at batch 8 with oneDNN
on an AMD EPYC (2 cores): forward 110 -> 320 GFLOP/s (nominal FLOPs: the direct kernel skips the
taps that fall on the padding), forward and backward 1.06 -> 0.29 s.

`native_dilation_available(dtype)` says whether the kernels in use have dilated gradients for
the compute dtype: a GPU's for every float type; oneDNN's (when it is on) for float32, and for
bfloat16 on CPUs where oneDNN has bfloat16 convolutions (ssd.cpu.onednn_has_bfloat16); float16
on a CPU runs TensorFlow's own kernels, which have none. `DilatedConv2D` is a Keras Conv2D that
uses the direct convolution there and Keras' own computation elsewhere. Its variables, output and serialization are Conv2D's; the two
ways agree to float rounding (they sum in another order).
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from ssd import cpu


@functools.cache
def _onednn_enabled() -> bool:
    """Whether TensorFlow runs oneDNN's CPU kernels (TF_ENABLE_ONEDNN_OPTS, read when it loaded)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TensorFlow without the query: keep Keras' way
        return False


def native_dilation_available(dtype: str = "float32") -> bool:
    """Whether the kernels TensorFlow runs here have dilated convolution gradients for `dtype`."""
    if tf.config.list_logical_devices("GPU"):
        return True
    if dtype == "float32":
        return _onednn_enabled()
    return dtype == "bfloat16" and _onednn_enabled() and cpu.onednn_has_bfloat16()


@keras.saving.register_keras_serializable(package="ssd")
class DilatedConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D whose dilated convolution runs directly where the kernels have it
    (module docstring); channels-last, stride 1, as fc6 uses it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.data_format != "channels_last" or tuple(self.strides) != (1, 1):
            raise ValueError(f"{self.name}: DilatedConv2D is for channels-last, stride-1 "
                             f"convolutions, got {self.data_format} and strides {self.strides}")

    def convolution_op(self, inputs, kernel):
        if max(self.dilation_rate) == 1 or not native_dilation_available(self.compute_dtype):
            return super().convolution_op(inputs, kernel)
        return tf.nn.conv2d(inputs, kernel, strides=1, padding=self.padding.upper(),
                            dilations=list(self.dilation_rate))
