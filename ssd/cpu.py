"""The CPU TensorFlow computes on: the fastest correct kernels for it, and what to report of it.

TensorFlow's x86 builds carry two sets of CPU kernels: its own (Eigen) and oneDNN's. It turns
oneDNN on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on an AVX2-only CPU (AMD Zen 2/3,
older Intel) it stays off, although there it also computes the convolutions of SSD faster
(measured on the demo's training step: 11.0 -> 14.8 images/s). `prefer_onednn()` turns it on
unless the user chose with `TF_ENABLE_ONEDNN_OPTS`; the variable is read when TensorFlow loads,
so it must run before the first `import tensorflow` (the apps do it first thing). oneDNN sums in
another order than Eigen: results agree to float rounding, not bit for bit.

`describe()` names the CPU, its vector extensions, the kernels in use and the thread settings in
one line, printed beside every benchmark figure so that figures of two machines are not compared
by mistake.
"""

from __future__ import annotations

import os
import platform
import sys

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
# the extensions that decide TensorFlow's kernels and their speed, as /proc/cpuinfo names them
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
# TensorFlow turns oneDNN on by itself where any of these is present (its x86 default rule)
_ONEDNN_BY_DEFAULT = ("avx512_vnni", "avx512_bf16", "amx_tile")


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _cpuinfo_value(field: str, cpuinfo_path: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo (None where the system has none)."""
    try:
        with open(cpuinfo_path) as file:
            for line in file:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where the system does not list them)."""
    return set((_cpuinfo_value("flags", cpuinfo_path) or "").split())


def cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    return (_cpuinfo_value("model name", cpuinfo_path)
            or platform.processor() or platform.machine())


def prefer_onednn(environ=None) -> bool:
    """Sets TF_ENABLE_ONEDNN_OPTS=1 on x86 unless it is set already (the user's choice stands) or
    TensorFlow is loaded (too late to matter). Returns whether it set it."""
    environ = os.environ if environ is None else environ
    if ONEDNN_VARIABLE in environ or not _is_x86() or "tensorflow" in sys.modules:
        return False
    environ[ONEDNN_VARIABLE] = "1"
    return True


def onednn_state(environ=None, flags: set[str] | None = None) -> str:
    """'on' or 'off', and why: the variable's value, or TensorFlow's default for this CPU."""
    environ = os.environ if environ is None else environ
    value = environ.get(ONEDNN_VARIABLE)
    if value is not None:
        on = value.strip().lower() in ("1", "true", "yes", "on")
        return f"{'on' if on else 'off'} ({ONEDNN_VARIABLE}={value})"
    flags = cpu_flags() if flags is None else flags
    on = _is_x86() and any(flag in flags for flag in _ONEDNN_BY_DEFAULT)
    return f"{'on' if on else 'off'} (TensorFlow's default for this CPU)"


def describe() -> str:
    """One line: CPU model and cores, vector extensions, oneDNN, TensorFlow's thread settings
    (0 = TensorFlow's default: one per core)."""
    flags = cpu_flags()
    vectors = [flag for flag in VECTOR_FLAGS if flag in flags]
    line = (f"CPU: {cpu_model()}, {os.cpu_count()} cores, {'/'.join(vectors) or 'no AVX2'}; "
            f"oneDNN {onednn_state(flags=flags)}")
    import tensorflow as tf  # after prefer_onednn, where the caller wants it

    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return line + (f"; TensorFlow {tf.__version__}, threads intra-op {intra or 'default'}, "
                   f"inter-op {inter or 'default'}")
