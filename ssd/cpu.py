"""The CPU TensorFlow computes on: the fastest correct kernels for it, and what to report of it.

TensorFlow's x86 builds carry two sets of CPU kernels: its own (Eigen) and oneDNN's. It turns
oneDNN on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on an AVX2-only CPU (AMD Zen 2/3,
older Intel) it stays off, although there it also computes the convolutions of SSD faster (the
demo's training step on an AMD EPYC: 11.0 images/s with Eigen, 26 with oneDNN held to AVX2).
`prefer_onednn()` turns it on unless the user chose with `TF_ENABLE_ONEDNN_OPTS`; the variable
is read when TensorFlow loads, so it must run before the first `import tensorflow` (the apps do
it first thing). oneDNN sums in another order than Eigen: results agree to float rounding, not
bit for bit.

oneDNN has bfloat16 convolutions only on CPUs with AVX-512 (or when `ONEDNN_MAX_CPU_ISA` does not
hold it below that); elsewhere a bfloat16 network fails in oneDNN ("could not create a primitive
descriptor"), while TensorFlow's own kernels compute it, slowly. An app that is asked for
bfloat16 calls `kernels_for_bfloat16()` before TensorFlow loads: where oneDNN was only this
module's preference and lacks bfloat16, it is turned back off.

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
# oneDNN's AVX-512 kernels ("avx512_core": F, BW, VL, DQ); its bfloat16 convolutions need them
_ONEDNN_AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
ISA_LIMIT_VARIABLE = "ONEDNN_MAX_CPU_ISA"  # oneDNN's own cap on the instructions it uses
_ISA_LIMITS_WITHOUT_AVX512 = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2")
# set beside the variable by prefer_onednn, so that it and the apps it starts know the value was
# the project's preference, not the user's choice
PREFERENCE_MARKER = "SSD_ONEDNN_PREFERRED"


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
    environ[PREFERENCE_MARKER] = "1"
    return True


def onednn_uses_avx512(flags: set[str] | None = None, environ=None) -> bool:
    """Whether oneDNN computes with AVX-512 here (the CPU has it and `ONEDNN_MAX_CPU_ISA` does not
    hold oneDNN below it)."""
    environ = os.environ if environ is None else environ
    flags = cpu_flags() if flags is None else flags
    limit = environ.get(ISA_LIMIT_VARIABLE, "").strip().lower()
    return all(flag in flags for flag in _ONEDNN_AVX512) and limit not in _ISA_LIMITS_WITHOUT_AVX512


def onednn_has_bfloat16(flags: set[str] | None = None, environ=None) -> bool:
    """Whether oneDNN can compute bfloat16 convolutions on this CPU: it has them with AVX-512 only."""
    return onednn_uses_avx512(flags, environ)


def kernels_for_bfloat16(flags: set[str] | None = None, environ=None) -> str | None:
    """Before TensorFlow loads, for a run in bfloat16: turns oneDNN back off where only
    `prefer_onednn` turned it on and it has no bfloat16 convolutions here. Returns what to log,
    or None when nothing changed."""
    environ = os.environ if environ is None else environ
    preferred = environ.get(PREFERENCE_MARKER) == "1" and environ.get(ONEDNN_VARIABLE) == "1"
    if not preferred or "tensorflow" in sys.modules or onednn_has_bfloat16(flags, environ):
        return None
    environ[ONEDNN_VARIABLE] = "0"
    return ("bfloat16 on a CPU without AVX-512: oneDNN has no bfloat16 convolutions here, so "
            "TensorFlow's own kernels compute it (slower than float32 on this CPU)")


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


def describe_cpu() -> str:
    """One line: CPU model and cores, vector extensions (for figures measured without TensorFlow)."""
    vectors = [flag for flag in VECTOR_FLAGS if flag in cpu_flags()]
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores, {'/'.join(vectors) or 'no AVX2'}"


def describe() -> str:
    """One line: `describe_cpu`, oneDNN, TensorFlow's thread settings (0 = TensorFlow's default:
    one per core)."""
    line = f"{describe_cpu()}; oneDNN {onednn_state()}"
    import tensorflow as tf  # after prefer_onednn, where the caller wants it

    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return line + (f"; TensorFlow {tf.__version__}, threads intra-op {intra or 'default'}, "
                   f"inter-op {inter or 'default'}")
