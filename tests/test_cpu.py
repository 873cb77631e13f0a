"""ssd.cpu: oneDNN turned on unless the user chose, and the CPU described for benchmark reports."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssd import cpu

ROOT = Path(__file__).resolve().parent.parent
CPUINFO = """processor\t: 0
model name\t: Example CPU 9000
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_cpu_flags_and_model_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert cpu.cpu_flags(str(path)) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu.cpu_model(str(path)) == "Example CPU 9000"
    assert cpu.cpu_flags(str(tmp_path / "missing")) == set()


def test_onednn_state_follows_the_variable_then_tensorflow_default(monkeypatch):
    monkeypatch.setattr(cpu, "_is_x86", lambda: True)
    assert cpu.onednn_state({"TF_ENABLE_ONEDNN_OPTS": "0"}) == "off (TF_ENABLE_ONEDNN_OPTS=0)"
    assert cpu.onednn_state({"TF_ENABLE_ONEDNN_OPTS": "1"}) == "on (TF_ENABLE_ONEDNN_OPTS=1)"
    assert cpu.onednn_state({}, {"avx2", "fma"}).startswith("off (TensorFlow's default")
    assert cpu.onednn_state({}, {"avx2", "avx512f", "avx512_vnni"}).startswith("on (TensorFlow's default")


def test_prefer_onednn_keeps_the_users_choice(monkeypatch):
    monkeypatch.setattr(cpu, "_is_x86", lambda: True)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    environ = {}
    assert cpu.prefer_onednn(environ) and environ == {"TF_ENABLE_ONEDNN_OPTS": "1", cpu.PREFERENCE_MARKER: "1"}
    chosen = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert not cpu.prefer_onednn(chosen) and chosen == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    monkeypatch.setattr(cpu, "_is_x86", lambda: False)
    other = {}
    assert not cpu.prefer_onednn(other) and other == {}


def test_prefer_onednn_too_late_once_tensorflow_is_loaded(monkeypatch):
    monkeypatch.setattr(cpu, "_is_x86", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorflow", object())
    environ = {}
    assert not cpu.prefer_onednn(environ) and environ == {}


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize("user_value", [None, "0"])
def test_apps_start_tensorflow_with_onednn_unless_the_user_chose(user_value):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", cpu.PREFERENCE_MARKER)}
    if user_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_value
    code = ("from ssd import cli, cpu; cli.quiet_tensorflow_startup(); import tensorflow; "
            "print(cpu.onednn_state())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    if user_value == "0":
        assert out == "off (TF_ENABLE_ONEDNN_OPTS=0)"
    elif cpu._is_x86():
        assert out == "on (TF_ENABLE_ONEDNN_OPTS=1)"
    else:
        assert out.endswith("(TensorFlow's default for this CPU)")


def test_describe_names_cpu_kernels_and_threads():
    line = cpu.describe()
    assert line.startswith("CPU: ") and "oneDNN" in line and "intra-op" in line and "inter-op" in line


AVX2_ONLY = {"sse2", "avx", "avx2", "fma"}
AVX512 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def test_onednn_bfloat16_needs_avx512_not_capped_below_it():
    assert not cpu.onednn_has_bfloat16(AVX2_ONLY, {})
    assert cpu.onednn_has_bfloat16(AVX512, {})
    assert not cpu.onednn_has_bfloat16(AVX512, {cpu.ISA_LIMIT_VARIABLE: "AVX2"})
    assert cpu.onednn_has_bfloat16(AVX512, {cpu.ISA_LIMIT_VARIABLE: "AVX512_CORE_AMX"})


def test_bfloat16_turns_back_off_only_the_projects_own_preference(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    preferred = {"TF_ENABLE_ONEDNN_OPTS": "1", cpu.PREFERENCE_MARKER: "1"}
    assert "TensorFlow's own kernels" in cpu.kernels_for_bfloat16(AVX2_ONLY, preferred)
    assert preferred["TF_ENABLE_ONEDNN_OPTS"] == "0"
    capable = {"TF_ENABLE_ONEDNN_OPTS": "1", cpu.PREFERENCE_MARKER: "1"}
    assert cpu.kernels_for_bfloat16(AVX512, capable) is None and capable["TF_ENABLE_ONEDNN_OPTS"] == "1"
    users = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    assert cpu.kernels_for_bfloat16(AVX2_ONLY, users) is None and users == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    monkeypatch.setitem(sys.modules, "tensorflow", object())
    late = {"TF_ENABLE_ONEDNN_OPTS": "1", cpu.PREFERENCE_MARKER: "1"}
    assert cpu.kernels_for_bfloat16(AVX2_ONLY, late) is None


@pytest.mark.slow  # starts a process
def test_an_app_in_bfloat16_computes_where_onednn_has_no_bfloat16():
    """ONEDNN_MAX_CPU_ISA=AVX2 makes this CPU an AVX2-only one for oneDNN, whose bfloat16
    convolution then fails to start; the app's kernels for bfloat16 compute it."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", cpu.PREFERENCE_MARKER)}
    env[cpu.ISA_LIMIT_VARIABLE] = "AVX2"
    code = ("from ssd import cli, cpu; cli.quiet_tensorflow_startup(); cli.kernels_for_precision('bfloat16'); "
            "import tensorflow as tf; x = tf.ones([1, 8, 8, 3], tf.bfloat16); "
            "y = tf.nn.conv2d(x, tf.ones([3, 3, 3, 4], tf.bfloat16), 1, 'SAME'); "
            "print(float(tf.reduce_sum(tf.cast(y, tf.float32))), cpu.onednn_state())")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    total, state = result.stdout.strip().split(" ", 1)
    assert float(total) == 4 * (36 * 27 + 24 * 18 + 4 * 12)  # 8x8 SAME: 36 inner, 24 edge, 4 corner taps
    if cpu._is_x86():
        assert state == "off (TF_ENABLE_ONEDNN_OPTS=0)"
