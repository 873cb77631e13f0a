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
    assert cpu.prefer_onednn(environ) and environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}
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


@pytest.mark.parametrize("user_value", [None, "0"])
def test_apps_start_tensorflow_with_onednn_unless_the_user_chose(user_value):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
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
