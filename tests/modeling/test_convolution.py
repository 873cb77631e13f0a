"""SSD's Conv2D: the direct dilated convolution and the weight gradients by matrix products give
Keras' Conv2D's numbers (and a numpy reference's) wherever each applies."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ssd import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def conv_reference(x, kernel, stride=1, dilation=1, pads=((0, 0), (0, 0))):
    """A convolution by its definition: out[b, y, x] = sum over taps (i, j) of
    padded[b, y * stride + i * dilation, x * stride + j * dilation] @ kernel[i, j]."""
    padded = np.pad(x.astype(np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw, _, channels_out = kernel.shape
    out_h = (padded.shape[1] - (kh - 1) * dilation - 1) // stride + 1
    out_w = (padded.shape[2] - (kw - 1) * dilation - 1) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, channels_out))
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i * dilation:i * dilation + stride * (out_h - 1) + 1:stride,
                            j * dilation:j * dilation + stride * (out_w - 1) + 1:stride]
            out += window @ kernel[i, j]
    return out


def weight_gradient_reference(x, dy, kernel_shape, stride, dilation, pads):
    """d(sum(conv(x, k) * dy))/dk by its definition, one tap at a time."""
    padded = np.pad(x.astype(np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw = kernel_shape
    out_h, out_w = dy.shape[1:3]
    gradient = np.zeros((kh, kw, x.shape[-1], dy.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i * dilation:i * dilation + stride * (out_h - 1) + 1:stride,
                            j * dilation:j * dilation + stride * (out_w - 1) + 1:stride]
            gradient[i, j] = np.einsum("byxc,byxo->co", window, dy)
    return gradient


@pytest.mark.parametrize("kernel, stride, dilation, size", [(3, 1, 1, 9), (3, 1, 6, 19), (3, 2, 1, 10),
                                                              (1, 1, 1, 5), (4, 1, 1, 4), (3, 2, 1, 5)])
def test_weight_gradient_by_taps_is_the_definition(kernel, stride, dilation, size):
    import tensorflow as tf

    from ssd.modeling.convolution import same_padding, weight_gradient_by_taps

    rng = np.random.default_rng(kernel * 100 + stride * 10 + dilation)
    x = rng.normal(size=(2, size, size + 1, 3)).astype(np.float32)
    pads = (same_padding(size, kernel, stride, dilation), same_padding(size + 1, kernel, stride, dilation))
    out = conv_reference(x, np.zeros((kernel, kernel, 3, 4)), stride, dilation, pads)
    dy = rng.normal(size=out.shape).astype(np.float32)
    ours = weight_gradient_by_taps(tf.constant(x), tf.constant(dy), (kernel, kernel), (stride, stride),
                                   (dilation, dilation), pads)
    expected = weight_gradient_reference(x, dy, (kernel, kernel), stride, dilation, pads)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_same_padding_is_tensorflows_rule():
    import tensorflow as tf

    from ssd.modeling.convolution import same_padding

    for size, kernel, stride, dilation in [(10, 3, 2, 1), (19, 3, 1, 6), (5, 3, 2, 1), (38, 3, 1, 1), (4, 4, 1, 1)]:
        x = np.random.default_rng(size).normal(size=(1, size, size, 2)).astype(np.float32)
        k = np.random.default_rng(kernel).normal(size=(kernel, kernel, 2, 3)).astype(np.float32)
        pads = (same_padding(size, kernel, stride, dilation),) * 2
        ours = conv_reference(x, k, stride, dilation, pads)
        theirs = tf.nn.convolution(x, k, strides=stride, padding="SAME", dilations=dilation).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_tap_gradients_only_where_onednn_runs_without_avx512(monkeypatch):
    from ssd.modeling import convolution

    monkeypatch.setattr(convolution, "_gpu_present", lambda: False)
    for onednn, avx512, dtype, wanted in [(True, False, "float32", True), (True, True, "float32", False),
                                          (False, False, "float32", False), (True, False, "bfloat16", False)]:
        monkeypatch.setattr(convolution, "_onednn_enabled", lambda: onednn)
        monkeypatch.setattr(cpu, "onednn_uses_avx512", lambda: avx512)
        assert convolution.tap_weight_gradients_wanted(dtype) == wanted
    monkeypatch.setattr(convolution, "_gpu_present", lambda: True)
    monkeypatch.setattr(convolution, "_onednn_enabled", lambda: True)
    monkeypatch.setattr(cpu, "onednn_uses_avx512", lambda: False)
    assert not convolution.tap_weight_gradients_wanted("float32")  # a GPU keeps its own


# Runs in a fresh process (the kernels are chosen when TensorFlow loads): for each layer shape,
# the output and gradients of SSD's Conv2D and of Keras' Conv2D on the same weights, and the op
# types of the traced gradient graph.
_PROBE = r"""
import json, sys
import numpy as np
import keras, tensorflow as tf
from ssd import cpu
from ssd.modeling.convolution import Conv2D, _onednn_enabled, native_dilation_available, tap_weight_gradients_wanted
rng = np.random.default_rng(0)
results = {"native": native_dilation_available("float32"), "native_bfloat16": native_dilation_available("bfloat16"),
           "taps": tap_weight_gradients_wanted("float32"), "cases": []}
cases = [("float32", (2, 19, 19, 64), dict(filters=64, kernel_size=3, padding="same", dilation_rate=6)),
         ("float32", (1, 10, 13, 64), dict(filters=64, kernel_size=3, padding="same", dilation_rate=6)),
         ("float32", (1, 10, 10, 64), dict(filters=64, kernel_size=3, padding="same")),
         ("float32", (1, 21, 21, 64), dict(filters=64, kernel_size=3, strides=2, padding="valid", activation=None,
                                           use_bias=False)),
         ("float32", (1, 19, 19, 64), dict(filters=64, kernel_size=3, strides=2, padding="same", activation=None)),
         ("float32", (1, 10, 10, 64), dict(filters=64, kernel_size=1, padding="valid")),
         ("float32", (1, 13, 13, 64), dict(filters=64, kernel_size=4, padding="valid", activation=None)),
         ("float32", (2, 9, 9, 4), dict(filters=5, kernel_size=3, padding="same")),
         ("mixed_float16", (1, 19, 19, 4), dict(filters=5, kernel_size=3, padding="same", dilation_rate=6))]
if not _onednn_enabled() or cpu.onednn_has_bfloat16():  # else no bfloat16 convolution at all (ssd.cpu)
    cases.append(("mixed_bfloat16", (1, 19, 19, 4), dict(filters=5, kernel_size=3, padding="same", dilation_rate=6)))
for dtype, shape, options in cases:
    options = {"activation": "relu", **options}
    x = tf.constant(rng.normal(size=shape).astype(np.float32))
    ours = Conv2D(dtype=dtype, **options)
    # Keras' layer without the activation: a ReLU's gradient is then given as the mask of our own
    # output, so that an output within rounding of 0 cannot make the two gradients differ
    keras_own = keras.layers.Conv2D(dtype=dtype, **{**options, "activation": None})
    ours.build(shape); keras_own.build(shape)
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in keras_own.weights]
    ours.set_weights(weights); keras_own.set_weights(weights)
    out_shape = keras_own.compute_output_shape(shape)
    weight = tf.constant(rng.normal(size=out_shape).astype(np.float32))

    def gradients(layer, loss_weight):
        @tf.function
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.cast(layer(x), tf.float32)
                loss = tf.reduce_sum(y * loss_weight)
            return (y,) + tuple(tape.gradient(loss, [x] + layer.trainable_weights))
        graph = run.get_concrete_function(x).graph.as_graph_def()
        ops = sorted({node.op for node in graph.node}
                     | {node.op for f in graph.library.function for node in f.node_def})
        return [v.numpy() for v in run(x)], ops

    ours_values, ops = gradients(ours, weight)
    relu = options["activation"] == "relu"
    mask = (ours_values[0] > 0).astype(np.float32) if relu else 1.0
    keras_values, _ = gradients(keras_own, weight * mask)
    if relu:
        keras_values[0] = np.maximum(keras_values[0], 0)
    results["cases"].append({"dtype": dtype, "options": options, "shape": shape,
                             "ours": [v.tolist() for v in ours_values], "keras": [v.tolist() for v in keras_values],
                             "space_to_batch": "SpaceToBatchND" in ops,
                             "weight_gradient_kernel": "Conv2DBackpropFilter" in ops})
print("RESULT" + json.dumps(results))
"""


def _probe(environment: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", cpu.ISA_LIMIT_VARIABLE)}
    env.update(environment, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def _close(a, b, scale_tolerance):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=0, atol=scale_tolerance * max(1.0, np.abs(b).max()))


# oneDNN off; on (with AVX-512 where the CPU has it); on and held to AVX2, as on an AVX2-only CPU
_KERNELS = {"eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"}, "onednn": {"TF_ENABLE_ONEDNN_OPTS": "1"},
            "onednn_avx2": {"TF_ENABLE_ONEDNN_OPTS": "1", cpu.ISA_LIMIT_VARIABLE: "AVX2"}}


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize("kernels", sorted(_KERNELS))
def test_conv2d_equals_keras_and_the_definition_with_every_kernel_set(kernels):
    results = _probe(_KERNELS[kernels])
    if cpu._is_x86():  # oneDNN exists only in TensorFlow's x86 builds
        onednn = kernels != "eigen"
        assert results["native"] == onednn
        assert results["native_bfloat16"] == (onednn and kernels != "onednn_avx2" and cpu.onednn_has_bfloat16({*cpu.cpu_flags()}, {}))
        assert results["taps"] == (onednn and (kernels == "onednn_avx2" or not cpu.onednn_uses_avx512(None, {})))
    for case in results["cases"]:
        options, dtype = case["options"], case["dtype"]
        tolerance = {"mixed_float16": 5e-3, "mixed_bfloat16": 4e-2}.get(dtype, 1e-4)
        for ours, keras_own in zip(case["ours"], case["keras"]):  # output, then gradients
            _close(ours, keras_own, tolerance)
        if options.get("dilation_rate", 1) > 1:
            direct = results["native_bfloat16"] if dtype == "mixed_bfloat16" else (
                results["native"] and dtype == "float32")
            assert case["space_to_batch"] == (not direct), case
        if dtype == "float32":
            out_h, out_w = np.asarray(case["ours"][0]).shape[1:3]
            large = min(case["shape"][-1], options["filters"]) >= 64 and out_h * out_w >= 100
            assert case["weight_gradient_kernel"] == (not (results["taps"] and large)), case


def test_dilated_conv_output_is_the_definition():
    import tensorflow as tf

    from ssd.modeling.convolution import Conv2D, same_padding

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 19, 19, 4)).astype(np.float32)
    layer = Conv2D(5, 3, padding="same", dilation_rate=6, activation=None)
    layer.build(x.shape)
    kernel, bias = (rng.normal(size=w.shape).astype(np.float32) for w in layer.weights)
    layer.set_weights([kernel, bias])
    pads = (same_padding(19, 3, 1, 6),) * 2
    expected = conv_reference(x, kernel, 1, 6, pads) + bias
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_ssd300_convolutions_are_ssds_layer():
    from ssd.config.loading import load_config
    from ssd.modeling.build import build_model
    from ssd.modeling.convolution import Conv2D

    model = build_model(load_config("ssd300_shapes_cpu", {}))
    convolutions = [layer for layer in model.layers if isinstance(layer, __import__("keras").layers.Conv2D)]
    assert convolutions and all(isinstance(layer, Conv2D) for layer in convolutions)
    assert tuple(model.get_layer("fc6").dilation_rate) == (6, 6)


_MODEL_PROBE = r"""
import json
import numpy as np
import tensorflow as tf
from ssd.config.loading import load_config
from ssd.modeling import convolution
from ssd.modeling.build import build_model
config = load_config("ssd300_voc0712", {"model.width_multiplier": 0.5})
model = build_model(config)
rng = np.random.default_rng(0)
images = tf.constant(rng.normal(size=(2, 300, 300, 3)).astype(np.float32))
logits, boxes = model(images)
weights = [tf.constant(rng.normal(size=t.shape).astype(np.float32)) for t in (logits, boxes)]

def gradients():
    @tf.function
    def run(images):
        with tf.GradientTape() as tape:
            logits, boxes = model(images, training=True)
            loss = tf.reduce_sum(logits * weights[0]) + tf.reduce_sum(boxes * weights[1])
        return tape.gradient(loss, model.trainable_variables)
    graph = run.get_concrete_function(images).graph.as_graph_def()
    ops = [node.op for f in graph.library.function for node in f.node_def] + [n.op for n in graph.node]
    return [g.numpy() for g in run(images)], ops

taps, taps_ops = gradients()
wanted = convolution.tap_weight_gradients_wanted("float32")
convolution.tap_weight_gradients_wanted = lambda dtype="float32": False
plain, plain_ops = gradients()
worst = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)) for a, b in zip(taps, plain))
print("RESULT" + json.dumps({"wanted": wanted, "worst": worst, "count": len(taps),
                             "filter_kernels": [ops.count("Conv2DBackpropFilter") for ops in (taps_ops, plain_ops)],
                             "products": [ops.count("MatMul") for ops in (taps_ops, plain_ops)]}))
"""


@pytest.mark.slow  # starts a process
def test_ssd300_gradients_with_tap_weight_gradients_equal_onednns():
    """SSD300 at half width (layers on both sides of the 64-channel line) under oneDNN held to AVX2:
    every variable's gradient equals the one computed with oneDNN's weight gradients."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update({"TF_ENABLE_ONEDNN_OPTS": "1", cpu.ISA_LIMIT_VARIABLE: "AVX2", "TF_CPP_MIN_LOG_LEVEL": "2"})
    result = subprocess.run([sys.executable, "-c", _MODEL_PROBE], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))[6:])
    if cpu._is_x86():
        assert found["wanted"]
        # layers of >= 64 channels on maps >= 10x10 take products (one per kernel tap); conv1_1
        # (3 input channels), conv1_2 (32 at half width), the small maps and thin heads keep oneDNN's
        with_taps, plain = found["filter_kernels"]
        assert 0 < with_taps < plain and found["products"][0] - found["products"][1] >= plain - with_taps
    assert found["count"] > 40 and found["worst"] < 1e-3
