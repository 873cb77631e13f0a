"""fc6's dilated convolution: the direct kernel where it exists, Keras' SpaceToBatchND elsewhere,
the same numbers either way (against a numpy reference and against Keras' own Conv2D)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dilated_conv_same_reference(x, kernel, rate):
    """Stride-1 'same' dilated convolution by its definition: out[y, x] = sum over taps (i, j)
    of in[y + rate * (i - kh // 2), x + rate * (j - kw // 2)] @ kernel[i, j] (zero outside)."""
    batch, height, width, _ = x.shape
    kh, kw, _, out_channels = kernel.shape
    out = np.zeros((batch, height, width, out_channels), np.float64)
    for i in range(kh):
        for j in range(kw):
            dy, dx = rate * (i - kh // 2), rate * (j - kw // 2)
            shifted = np.zeros_like(x, dtype=np.float64)
            ys, yd = slice(max(dy, 0), height + min(dy, 0)), slice(max(-dy, 0), height - max(dy, 0))
            xs, xd = slice(max(dx, 0), width + min(dx, 0)), slice(max(-dx, 0), width - max(dx, 0))
            shifted[:, yd, xd] = x[:, ys, xs]
            out += shifted @ kernel[i, j].astype(np.float64)
    return out


# Runs in a fresh process (the kernels are chosen when TensorFlow loads): the layer's output,
# gradients, Keras' Conv2D's gradients on the same weights, and the op types of the traced graph.
_PROBE = r"""
import json, sys
import numpy as np
import keras, tensorflow as tf
from ssd.modeling.dilated_conv import DilatedConv2D, native_dilation_available
rng = np.random.default_rng(0)
results = {"native": native_dilation_available("float32"), "native_bfloat16": native_dilation_available("bfloat16")}
from ssd import cpu
from ssd.modeling.dilated_conv import _onednn_enabled
cases = [("float32", (2, 19, 19, 4)), ("float32", (1, 10, 13, 4)), ("mixed_float16", (1, 19, 19, 4))]
if not _onednn_enabled() or cpu.onednn_has_bfloat16():  # else no bfloat16 convolution at all (ssd.cpu)
    cases.append(("mixed_bfloat16", (1, 19, 19, 4)))
for dtype, shape in cases:
    x = tf.constant(rng.normal(size=shape).astype(np.float32))
    ours = DilatedConv2D(5, 3, padding="same", dilation_rate=6, dtype=dtype)
    keras_own = keras.layers.Conv2D(5, 3, padding="same", dilation_rate=6, dtype=dtype)
    ours.build(shape); keras_own.build(shape)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    bias = rng.normal(size=(5,)).astype(np.float32)
    ours.set_weights([kernel, bias]); keras_own.set_weights([kernel, bias])
    weight = tf.constant(rng.normal(size=shape[:3] + (5,)).astype(np.float32))

    def gradients(layer):
        @tf.function
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.cast(layer(x), tf.float32)
                loss = tf.reduce_sum(y * weight)
            return (y,) + tuple(tape.gradient(loss, [x, layer.kernel, layer.bias]))
        graph = run.get_concrete_function(x).graph.as_graph_def()
        ops = sorted({node.op for node in graph.node}
                     | {node.op for f in graph.library.function for node in f.node_def})
        return [v.numpy().tolist() for v in run(x)], ops

    (y, dx, dk, db), ops = gradients(ours)
    (y2, dx2, dk2, db2), _ = gradients(keras_own)
    results[dtype + str(shape)] = {"x": x.numpy().tolist(), "kernel": kernel.tolist(), "bias": bias.tolist(),
                                   "y": y, "dx": dx, "dk": dk, "db": db, "keras": [y2, dx2, dk2, db2],
                                   "space_to_batch": "SpaceToBatchND" in ops}
print("RESULT" + json.dumps(results))
"""


def _probe(onednn: str) -> dict:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def _close(a, b, scale_tolerance):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=0, atol=scale_tolerance * max(1.0, np.abs(b).max()))


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize("onednn", ["1", "0"])
def test_dilated_conv_equals_its_definition_and_keras_with_either_kernels(onednn):
    from ssd import cpu

    results = _probe(onednn)
    native, native_bfloat16 = results.pop("native"), results.pop("native_bfloat16")
    if cpu._is_x86():  # oneDNN exists only in TensorFlow's x86 builds
        assert native == (onednn == "1")
        assert native_bfloat16 == (onednn == "1" and cpu.onednn_has_bfloat16())
    for key, case in results.items():
        half = key.startswith("mixed_float16")
        tolerance = {"mixed_float16": 5e-3, "mixed_bfloat16": 4e-2}.get(key.split("(")[0], 1e-4)
        x, kernel = np.asarray(case["x"]), np.asarray(case["kernel"])
        expected = dilated_conv_same_reference(x, kernel, 6) + np.asarray(case["bias"])
        _close(case["y"], expected, tolerance)
        for ours, keras_own in zip((case["y"], case["dx"], case["dk"], case["db"]), case["keras"]):
            _close(ours, keras_own, tolerance)
        # float16 on a CPU has no direct dilated gradient anywhere: Keras' way, and it still trains
        direct = native_bfloat16 if key.startswith("mixed_bfloat16") else native and not half
        assert case["space_to_batch"] == (not direct), key


def test_ssd300_fc6_is_the_dilated_layer():
    from ssd.config.loading import load_config
    from ssd.modeling.build import build_model
    from ssd.modeling.dilated_conv import DilatedConv2D

    config = load_config("ssd300_shapes_cpu", {})
    model = build_model(config)
    fc6 = model.get_layer("fc6")
    assert isinstance(fc6, DilatedConv2D) and tuple(fc6.dilation_rate) == (6, 6)
    assert sum(isinstance(layer, DilatedConv2D) for layer in model.layers) == 1


def test_dilated_conv_refuses_what_it_does_not_compute():
    from ssd.modeling.dilated_conv import DilatedConv2D

    with pytest.raises(ValueError, match="stride-1"):
        DilatedConv2D(4, 3, strides=2, dilation_rate=1, name="bad")
