"""What every command-line app shares: a quiet TensorFlow start-up on the fastest CPU kernels
(`ssd.cpu.prefer_onednn`), --help, short usage errors.

Each app calls `quiet_tensorflow_startup()` before its other imports and `run(main)` instead of
absl's `app.run(main)`:

  * TensorFlow's start-up lines ("oneDNN custom operations are on", "This TensorFlow binary is
    optimized ...") are noise to a user. `TF_CPP_MIN_LOG_LEVEL` is set to 1 (no INFO lines)
    unless the user chose a level. Some lines are printed while the libraries load, before
    TensorFlow reads that variable, so the first `import tensorflow` runs with the process's
    stderr captured, and what the level lets through (or all of it when the import fails) is
    passed on. Level 0 (everything) leaves TensorFlow alone.
  * `--help` (and -h, --helpshort, -?, --helpfull) prints the usage on stdout and exits 0 (absl
    exits 1), without loading TensorFlow when the app itself does not import it at start-up.
  * A usage error (`app.UsageError` raised by main, a bad or unknown flag) prints one line,
    `<app>: error: <message> (see --help)`, and exits 2, instead of the whole flag list.
  * A user error (`ssd.errors.UserError` raised by main: a bad file, config field, data set or
    model directory) prints one line, `<app>: error: <message>`, and exits 1, instead of a
    traceback. Every app reports its users' mistakes this way.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from typing import Callable, Iterator, NoReturn, Sequence

from ssd import cpu
from ssd.errors import UserError

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = "1"  # TensorFlow's C++ levels: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR
USAGE_EXIT_CODE = 2  # as argparse and most Unix tools
ERROR_EXIT_CODE = 1
HELP_ARGUMENTS = {"--help": True, "-h": True, "--helpshort": True, "-?": True, "--helpfull": False}

# A C++ log line: absl ("I0000 00:00:1796.. 123 file.cc:1] ...") or TensorFlow's older format
# ("2025-01-01 12:00:00.123: I file.cc:1] ..."); the letter is the severity.
_LOG_LINE = re.compile(r"^(?:(?P<absl>[IWEF])\d{4} |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tf>[IWEF]) )")
_SEVERITIES = "IWEF"
# absl's notice that logging is not set up yet (printed with the first message of each library)
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"


def program_name() -> str:
    """What the user typed to run the app: `train.py`, or `python -m ssd.voc.eval` for a module
    of the package (whose file name, eval.py, would be mistaken for the app of that name)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.startswith("ssd."):
        return f"python -m {spec.name}"
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "app"


# --- a quiet TensorFlow start-up -------------------------------------------------------------

def log_at_level(text: str, min_level: int) -> str:
    """Captured C++ log output without the messages below `min_level` (0 INFO, 1 WARNING,
    2 ERROR, 3 FATAL, as TF_CPP_MIN_LOG_LEVEL counts; a message's continuation lines go with it)
    nor, from level 1 on, absl's not-initialized notice. Other lines are kept."""
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        match = _LOG_LINE.match(line)
        if match:
            dropping = _SEVERITIES.index(match.group("absl") or match.group("tf")) < min_level
        elif line.startswith(_ABSL_PREAMBLE):
            dropping = min_level >= 1
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _stderr_filtered(min_level: int) -> Iterator[None]:
    """Captures file descriptor 2 (C++ writes there directly) and passes on what
    `log_at_level` keeps; everything when the body raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            sys.stderr.write(text if failed else log_at_level(text, min_level))
            sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of the `tensorflow` package under `_stderr_filtered`."""

    def __init__(self, loader: importlib.abc.Loader, min_level: int):
        self._loader = loader
        self._min_level = min_level

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # the package sees its own loader
        with _stderr_filtered(self._min_level):
            self._loader.exec_module(module)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, the ordinary way, and hands its loading to `_QuietLoader`."""

    def __init__(self, min_level: int):
        self._min_level = min_level

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the nested imports below take the ordinary path
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self._min_level)
        return spec


def quiet_tensorflow_startup() -> None:
    """Keeps TensorFlow's start-up lines below the log level (the user's, else INFO is dropped)
    off the terminal (module docstring), and picks the fastest CPU kernels (`ssd.cpu`).
    TensorFlow is still imported only where the app does."""
    cpu.prefer_onednn()
    try:
        min_level = int(os.environ.setdefault(LOG_LEVEL_VARIABLE, QUIET_LEVEL))
    except ValueError:
        return  # not a level TensorFlow understands either: leave it alone
    if min_level <= 0 or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder(min_level))


def kernels_for_precision(precision: str) -> None:
    """Before TensorFlow loads, for a run computing in `precision`: CPU kernels that have it
    (`ssd.cpu.kernels_for_bfloat16`), said in the log when they change."""
    if precision == "bfloat16":
        note = cpu.kernels_for_bfloat16()
        if note:
            from absl import logging
            logging.warning("%s", note)


# --- help and usage errors ------------------------------------------------------------------

def usage_error(message: str) -> NoReturn:
    """Prints `<app>: error: <message> (see --help)` and exits with status 2."""
    sys.stderr.write(f"{program_name()}: error: {message} (see --help)\n")
    sys.exit(USAGE_EXIT_CODE)


def user_error(message: str) -> NoReturn:
    """Prints `<app>: error: <message>` and exits with status 1."""
    sys.stderr.write(f"{program_name()}: error: {message}\n")
    sys.exit(ERROR_EXIT_CODE)


def _help_requested(argv: Sequence[str]) -> bool | None:
    """True for the short help, False for --helpfull, None when no help is asked for."""
    for argument in argv[1:]:
        if argument == "--":
            break
        if argument in HELP_ARGUMENTS:
            return HELP_ARGUMENTS[argument]
    return None


def _parse_flags(argv: Sequence[str]) -> list[str]:
    from absl import flags

    try:
        return flags.FLAGS(list(argv))
    except flags.Error as error:
        usage_error(str(error).replace("\n", " "))


def run(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
    """absl's `app.run(main)` with the --help, usage-error and user-error behaviour of the module
    docstring."""
    from absl import app

    argv = list(sys.argv if argv is None else argv)
    short = _help_requested(argv)
    if short is not None:
        app.usage(shorthelp=short, writeto_stdout=True)
        sys.exit(0)

    def guarded_main(arguments: list[str]):
        try:
            return main(arguments)
        except app.UsageError as error:
            usage_error(str(error))
        except UserError as error:
            user_error(str(error))

    app.run(guarded_main, argv=argv, flags_parser=_parse_flags)
