"""SSD's convolution layer: keras.layers.Conv2D computed the way the kernels at hand do it fastest.

Two departures from Keras' own computation, each the same mathematics (results agree to float
rounding, as any two summation orders do):

* Dilated convolutions (fc6) run as one dilated convolution where the kernels have dilated
  gradients. TensorFlow's `tf.nn.convolution` computes every dilated convolution outside a TPU
  as SpaceToBatchND -> convolution -> BatchToSpaceND, because its own CPU kernels (Eigen) have no
  dilated gradients; for fc6 (3x3, dilation 6, 19x19) that costs more than the convolution
  itself. oneDNN's CPU kernels and the GPU's have them: SSD300's fc6 at batch 8, oneDNN on an AMD
  EPYC (2 cores): forward and backward 1.06 -> 0.29 s.
* Weight gradients as matrix products where oneDNN's are slow. Without AVX-512 (AVX2-only CPUs,
  or `ONEDNN_MAX_CPU_ISA` below it) oneDNN's weight-gradient convolutions ran at 12-50 GFLOP/s
  where its forward convolutions ran at ~95 (SSD300's 3x3 layers at batch 8), 63% of a training
  step. There the layer's gradient is its own (`tf.custom_gradient`): the input gradient is
  oneDNN's, and the weight gradient of each kernel tap (i, j) is one matrix product,
  (input shifted by the tap)^T @ (output gradient): the same multiply-adds, computed by the
  matrix-product kernels. Measured with oneDNN held to AVX2 (2 cores, batch 8): 300x300 maps of
  64 channels 2.3 s -> 0.67 s, 150x150x64 2.6x, 75x75x256 2.4x, 38x38x256 and 19x19x512 1.2x, 10x10
  even; but with fewer than 64 channels on either side or maps under 10x10 the products are the
  slower ones (conv1_1's 3 input channels 0.6x, 1/8-width layers 0.24-0.54x), so those layers keep
  oneDNN's (`TAP_MIN_CHANNELS`, `TAP_MIN_POSITIONS`). Taps run one after another, so that only
  one shifted copy of the input exists at a time. With AVX-512 oneDNN's weight gradients are kept
  (faster there for the large maps), and GPUs keep theirs.

`native_dilation_available(dtype)` and `tap_weight_gradients_wanted(dtype)` say where each
applies; `same_padding` is TensorFlow's 'same' rule, used by the network for explicit pads too.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from ssd import cpu


# below these (input or output channels; output positions) matrix products lose (module docstring)
TAP_MIN_CHANNELS = 64
TAP_MIN_POSITIONS = 100


@functools.cache
def _onednn_enabled() -> bool:
    """Whether TensorFlow runs oneDNN's CPU kernels (TF_ENABLE_ONEDNN_OPTS, read when it loaded)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TensorFlow without the query: keep Keras' way
        return False


@functools.cache
def _gpu_present() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def native_dilation_available(dtype: str = "float32") -> bool:
    """Whether the kernels here have dilated convolution gradients for `dtype`: a GPU's for every
    float type; oneDNN's for float32, and for bfloat16 where oneDNN has bfloat16 convolutions;
    never TensorFlow's own CPU kernels (float16 on a CPU always runs those)."""
    if _gpu_present():
        return True
    if dtype == "float32":
        return _onednn_enabled()
    return dtype == "bfloat16" and _onednn_enabled() and cpu.onednn_has_bfloat16()


def tap_weight_gradients_wanted(dtype: str = "float32") -> bool:
    """Whether weight gradients are computed as matrix products here (module docstring):
    float32 on a CPU whose oneDNN runs without AVX-512."""
    return (dtype == "float32" and not _gpu_present() and _onednn_enabled()
            and not cpu.onednn_uses_avx512())


def same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) of one axis: the odd pixel goes after."""
    span = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + span - size, 0)
    return (total // 2, total - total // 2)


def weight_gradient_by_taps(inputs, output_gradient, kernel_size, strides, dilations, pads):
    """d(loss)/d(kernel) of a convolution, [kh, kw, in, out], one matrix product per tap.

    `inputs` [B, H, W, in], `output_gradient` [B, Ho, Wo, out] (static spatial sizes), `pads`
    ((top, bottom), (left, right)) as the convolution padded its input."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, strides, dilations
    channels_in, channels_out = inputs.shape[-1], output_gradient.shape[-1]
    out_h, out_w = output_gradient.shape[1], output_gradient.shape[2]
    padded = tf.pad(inputs, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])
    gradient = tf.reshape(output_gradient, [-1, channels_out])
    taps, previous = [], []
    for i in range(kh):
        for j in range(kw):
            with tf.control_dependencies(previous):  # one shifted copy alive at a time
                shifted = padded[:, i * dh:i * dh + sh * (out_h - 1) + 1:sh,
                                 j * dw:j * dw + sw * (out_w - 1) + 1:sw, :]
                tap = tf.matmul(tf.reshape(shifted, [-1, channels_in]), gradient, transpose_a=True)
            taps.append(tap)
            previous = [tap]
    return tf.reshape(tf.stack(taps), [kh, kw, channels_in, channels_out])


@keras.saving.register_keras_serializable(package="ssd")
class Conv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D (same variables, configuration and output), computed as the module
    docstring says; channels-last."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError(f"{self.name}: ssd.modeling.convolution.Conv2D is channels-last, "
                             f"got {self.data_format}")

    def _tf_padding(self) -> str:
        return self.padding.upper()

    def convolution_op(self, inputs, kernel):
        # TensorFlow's kernels dilate stride-1 convolutions only
        if (max(self.dilation_rate) == 1 or max(self.strides) > 1
                or not native_dilation_available(self.compute_dtype)):
            return super().convolution_op(inputs, kernel)
        return tf.nn.conv2d(inputs, kernel, strides=1, padding=self._tf_padding(),
                            dilations=list(self.dilation_rate))

    def call(self, inputs):
        activation = getattr(self.activation, "__name__", None)
        static = inputs.shape[1] is not None and inputs.shape[2] is not None
        if (activation not in ("relu", "linear") or not static or self.groups != 1
                or not tap_weight_gradients_wanted(self.compute_dtype) or not self._taps_pay(inputs)):
            return super().call(inputs)
        return self._call_with_tap_gradients(inputs, relu=activation == "relu")

    def _taps_pay(self, inputs) -> bool:
        _, out_h, out_w, _ = self.compute_output_shape(inputs.shape)
        return (min(int(inputs.shape[-1]), self.filters) >= TAP_MIN_CHANNELS
                and out_h * out_w >= TAP_MIN_POSITIONS)

    def _pads(self, inputs):
        if self.padding == "valid":
            return ((0, 0), (0, 0))
        return tuple(same_padding(int(inputs.shape[axis]), self.kernel_size[axis - 1],
                                  self.strides[axis - 1], self.dilation_rate[axis - 1])
                     for axis in (1, 2))

    def _call_with_tap_gradients(self, inputs, relu: bool):
        strides, dilations = list(self.strides), list(self.dilation_rate)
        padding, pads = self._tf_padding(), self._pads(inputs)
        kernel_size, use_bias, name = tuple(self.kernel_size), self.use_bias, self.name

        @tf.custom_gradient
        def convolve(x, kernel, *bias):
            y = tf.nn.conv2d(x, kernel, strides=strides, padding=padding, dilations=dilations)
            if use_bias:
                y = tf.nn.bias_add(y, bias[0])
            if relu:
                y = tf.nn.relu(y)

            def gradient(dy):
                if relu:
                    dy = tf.raw_ops.ReluGrad(gradients=dy, features=y)
                dx = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
                    strides=[1, *strides, 1], padding=padding, dilations=[1, *dilations, 1])
                with tf.name_scope(f"{name}_weight_gradient"):  # named for profiles
                    dkernel = weight_gradient_by_taps(x, dy, kernel_size, strides, dilations, pads)
                return (dx, dkernel) + ((tf.reduce_sum(dy, axis=[0, 1, 2]),) if use_bias else ())

            return y, gradient

        arguments = (inputs, tf.convert_to_tensor(self.kernel))
        if use_bias:
            arguments += (tf.convert_to_tensor(self.bias),)
        return convolve(*arguments)
