r"""The newcomer's path (`make demo`): data, conversion, training, evaluation and pictures.

  python demo.py [--output_dir=demo_output] [--seed=0] [--max_steps=N] [--quick]

Runs the documented command lines one after the other, each as a subprocess of this Python:

  1. dataset/make_shapes.py   a synthetic VOC-format data set of coloured shapes (from --seed);
  2. dataset/convert_voc.py   its trainval and test splits into TFRecords;
  3. train.py                 SSD300 on the CPU recipe configs/ssd300_shapes_cpu.json, from
                              scratch (--pretrained=none: no download);
  4. eval.py                  VOC07 mAP on the held-out test split;
  5. visualize.py             detections drawn beside the ground truth on a few test images;

then prints where everything went and the commands it ran, so that each step can be repeated
by hand. Every stage's output is streamed live (progress bars, training log with ETA) and also
kept in <output_dir>/logs/<stage>.log. A failing stage stops the demo with its command line and
exit code.

The demo owns these entries of --output_dir and replaces them on every run: shapes/,
tfrecords/, model/, eval/, pictures/, logs/, demo_summary.json. Nothing else there is touched.

--seed fixes the data set and the training run (data.seed, train.seed). --max_steps replaces the
recipe's train.max_steps (its learning-rate boundaries stay where they are). --quick runs the
same stages on a tiny data set with a few training steps (well under a minute of compute on two
cores, meaningless mAP): the smoke test of the whole path, used by tests/test_end_to_end.py.

The default run takes about 7 minutes on a quiet 2-core AVX-512 CPU and about 13 on an AVX2-only
one (it prints its own estimate after the first training steps) and reaches a VOC07 mAP near 0.84
on the 300 held-out test images.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence, TextIO

if __package__ in (None, ""):  # run as `python demo.py` from anywhere: make `ssd` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssd.progress import format_duration

REPO_ROOT = Path(__file__).resolve().parent
RECIPE = "ssd300_shapes_cpu"
EVAL_METRIC = "voc07"  # eval.py writes its reports into eval/<metric>/
DEFAULT_OUTPUT_DIR = REPO_ROOT / "demo_output"
OWNED_ENTRIES = ("shapes", "tfrecords", "model", "eval", "pictures", "logs", "demo_summary.json")
TRAIN_NAME = "shapes_trainval"
TEST_NAME = "shapes_test"
LOG_TAIL_LINES = 30
SECONDS_PER_SHAPES_IMAGE = 0.015  # dataset/make_shapes.py, measured
FULL_RUN_MINUTES = "7-13"  # the whole default demo, AVX-512 and AVX2-only 2-core CPUs
# what the stages after training cost beyond their images, measured: a TensorFlow app's start-up
# and model build (eval.py, visualize.py); evaluation is a forward pass, ~3x a training image
STAGE_STARTUP_SECONDS = 15
EVAL_IMAGES_PER_TRAINING_IMAGE = 3.0
SECONDS_PER_PICTURE = 0.5
# a progress line of the training log (ssd.engine.training): "step 25/900: ... | 0.93 steps/s, 14.8 examples/s, ETA 0:15:41"
_TRAINING_PROGRESS = re.compile(r"step (\d+)/(\d+): .*\| ([\d.]+) steps/s, ([\d.]+) examples/s, "
                                r"ETA (?:(\d+) days?, )?(\d+):(\d\d):(\d\d)")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """How big the demo is. `train_overrides` are `--set` values on top of the recipe."""

    num_trainval: int
    num_test: int
    num_pictures: int
    max_steps: int | None = None  # None: the recipe's train.max_steps
    train_overrides: tuple[str, ...] = ()


FULL = DemoSettings(num_trainval=2000, num_test=300, num_pictures=8)
QUICK = DemoSettings(
    num_trainval=24, num_test=8, num_pictures=2, max_steps=12,
    train_overrides=("model.width_multiplier=0.125", "train.batch_size=4",
                     "train.save_checkpoints_steps=6", "train.log_step_count_steps=3",
                     "train.save_summary_steps=3", "train.image_summary_steps=6",
                     "eval.batch_size=4"))


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    output_dir: Path

    @property
    def voc_root(self) -> Path:
        return self.output_dir / "shapes"

    @property
    def records_dir(self) -> Path:
        return self.output_dir / "tfrecords"

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "model"

    @property
    def eval_dir(self) -> Path:
        return self.output_dir / "eval"

    @property
    def eval_report_dir(self) -> Path:
        return self.eval_dir / EVAL_METRIC

    @property
    def pictures_dir(self) -> Path:
        return self.output_dir / "pictures"

    @property
    def logs_dir(self) -> Path:
        return self.output_dir / "logs"

    @property
    def summary_file(self) -> Path:
        return self.output_dir / "demo_summary.json"

    def records(self, name: str) -> Path:
        return self.records_dir / f"{name}-*"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    argv: tuple[str, ...]
    description: str = ""


@dataclasses.dataclass
class StageResult:
    name: str
    command: str
    seconds: float
    log: Path


def _about(seconds: float) -> str:
    return f"{round(seconds / 60)} min" if seconds >= 90 else f"{round(seconds)} s"


class TrainingSpeedReport:
    """Watches the training stage's output; at its first progress line (the first rate measured
    after the graph is built) prints the speed and the time left for the whole demo."""

    def __init__(self, settings: DemoSettings, stream: TextIO, clock=time.time):
        self._settings, self._stream, self._clock = settings, stream, clock
        self._buffer = ""
        self.reported = False

    def __call__(self, text: str) -> None:
        if self.reported:
            return
        self._buffer += text.replace("\r", "\n")
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            match = _TRAINING_PROGRESS.search(line)
            if match:
                self._report(match)
                return

    def _report(self, match: re.Match) -> None:
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups()[4:])
        training_left = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
        images_per_second = float(match.group(4))
        after_training = (2 * STAGE_STARTUP_SECONDS + self._settings.num_pictures * SECONDS_PER_PICTURE
                          + self._settings.num_test / max(EVAL_IMAGES_PER_TRAINING_IMAGE * images_per_second, 1e-9))
        left = training_left + after_training
        finish = time.strftime("%H:%M", time.localtime(self._clock() + left))
        print(f"--- demo: training runs at {images_per_second:.1f} images/s ({match.group(3)} steps/s); "
              f"training ends in about {_about(training_left)}, the whole demo in about {_about(left)} "
              f"(around {finish})", file=self._stream, flush=True)
        self.reported = True


class StageError(RuntimeError):
    """A stage's command failed; the message names the command, its exit code and its log."""

    def __init__(self, stage: Stage, command: str, returncode: int, log: Path, tail: str):
        self.stage, self.command, self.returncode, self.log = stage, command, returncode, log
        super().__init__(f"stage '{stage.name}' failed with exit code {returncode}\n"
                         f"  command: {command}\n  full log: {log}\n"
                         f"  last lines of its output:\n{tail}")


def recipe_class_names(recipe: str = RECIPE) -> list[str]:
    from ssd.config.loading import load_config

    return list(load_config(recipe).data.class_names)


def display_path(path: Path | str, cwd: Path = REPO_ROOT) -> str:
    """`path` relative to `cwd` when inside it (shorter commands to copy), else absolute.

    Symbolic links are kept: a virtualenv's python is a link, and the link is what selects the
    virtualenv.
    """
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(os.path.abspath(cwd)))
    except ValueError:
        return str(absolute)


def _display_argv(argv: Sequence[str], cwd: Path) -> str:
    python = Path(argv[0])
    shown = [display_path(python, cwd) if python.is_absolute() else argv[0]]
    return shlex.join(shown + list(argv[1:]))


def plan_stages(paths: DemoPaths, settings: DemoSettings, seed: int, python: str,
                class_names: Sequence[str], cwd: Path = REPO_ROOT) -> list[Stage]:
    """The demo's command lines, in order (paths shown relative to `cwd` when inside it)."""
    def p(path: Path | str) -> str:
        return display_path(path, cwd)

    classes = ",".join(class_names)
    total_images = settings.num_trainval + settings.num_test
    stages = [Stage("make data", (
        python, "dataset/make_shapes.py", f"--output_dir={p(paths.voc_root)}",
        f"--num_trainval={settings.num_trainval}", f"--num_test={settings.num_test}",
        f"--seed={seed}", "--overwrite"),
        f"drawing {total_images} synthetic images with VOC XML annotations "
        f"(about {max(1, round(total_images * SECONDS_PER_SHAPES_IMAGE))} s; "
        f"it prints a summary when done)")]
    for split, name in (("trainval", TRAIN_NAME), ("test", TEST_NAME)):
        stages.append(Stage(f"convert {split}", (
            python, "dataset/convert_voc.py", f"--voc_root={p(paths.voc_root)}", f"--splits={split}",
            f"--classes={classes}", f"--output_directory={p(paths.records_dir)}", f"--name={name}"),
            f"the {split} split into TFRecord shards"))
    train = [python, "train.py", f"--config={RECIPE}", f"--data_dir={p(paths.records(TRAIN_NAME))}",
             f"--model_dir={p(paths.model_dir)}", "--pretrained=none", f"--set=data.seed={seed}",
             f"--set=train.seed={seed}"]
    train += [f"--set={override}" for override in settings.train_overrides]
    if settings.max_steps is not None:
        train.append(f"--max_steps={settings.max_steps}")
    stages.append(Stage("train", tuple(train),
                        f"SSD300 from scratch on the CPU recipe configs/{RECIPE}.json; the log shows "
                        f"the losses, speed and ETA"))
    stages.append(Stage("evaluate", (
        python, "eval.py", f"--model_dir={p(paths.model_dir)}",
        f"--data_dir={p(paths.records(TEST_NAME))}", f"--output_dir={p(paths.eval_dir)}",
        f"--metric={EVAL_METRIC}"),
        "VOC07 mAP of the last checkpoint on the held-out test split"))
    pictures = _picture_files(paths, settings)
    stages.append(Stage("visualize", (
        python, "visualize.py", f"--images={','.join(p(f) for f in pictures)}",
        f"--model_dir={p(paths.model_dir)}", f"--annotations_dir={p(paths.voc_root / 'Annotations')}",
        f"--output_dir={p(paths.pictures_dir)}"),
        f"detections beside the ground truth on {len(pictures)} test images"))
    return stages


def _picture_files(paths: DemoPaths, settings: DemoSettings) -> list[Path]:
    """The first test images: their ids are known before the data exists (make_shapes numbers
    trainval images first, then test images, 000001...)."""
    first = settings.num_trainval + 1
    count = min(settings.num_pictures, settings.num_test)
    return [paths.voc_root / "JPEGImages" / f"{i:06d}.jpg" for i in range(first, first + count)]


def _tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = log.read_text(errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"    | {line}" for line in kept)


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # log lines as they happen, not when a buffer fills
    return env


def run_stage(stage: Stage, log_path: Path, cwd: Path = REPO_ROOT,
              stream: TextIO | None = None, on_output: Callable[[str], None] | None = None) -> StageResult:
    """Runs one command, streaming its output (carriage returns too, for progress bars) to
    `stream` and to `log_path`, and to `on_output` when given (after the terminal has it).
    Raises StageError when it exits with a non-zero code."""
    stream = stream or sys.stdout
    command = _display_argv(stage.argv, cwd)
    header = f"=== {stage.name}: {stage.description} ===" if stage.description else f"=== {stage.name} ==="
    print(f"\n{header}\n$ {command}", file=stream, flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(f"$ {command}\n".encode())
        process = subprocess.Popen(list(stage.argv), cwd=cwd, env=child_environment(),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            chunk = process.stdout.read1(4096)
            if not chunk:
                break
            log.write(chunk)
            log.flush()
            text = decoder.decode(chunk)  # the apps keep TensorFlow's start-up lines off (ssd.cli)
            stream.write(text)
            stream.flush()
            if on_output is not None:
                on_output(text)
        stream.write(decoder.decode(b"", final=True))
        returncode = process.wait()
    seconds = time.monotonic() - start
    if returncode != 0:
        raise StageError(stage, command, returncode, log_path, _tail(log_path))
    print(f"--- {stage.name}: done in {format_duration(seconds)}", file=stream, flush=True)
    return StageResult(stage.name, command, seconds, log_path)


def clear_outputs(paths: DemoPaths) -> None:
    """Removes what an earlier demo run left in the entries the demo owns (and only those): a
    left-over model directory would otherwise be resumed instead of trained."""
    for name in OWNED_ENTRIES:
        target = paths.output_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def read_eval_summary(paths: DemoPaths) -> dict:
    summary_file = paths.eval_report_dir / "summary.json"
    if not summary_file.is_file():
        raise FileNotFoundError(f"eval.py wrote no {summary_file}")
    return json.loads(summary_file.read_text())


def run_demo(output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR, *, seed: int = 0, quick: bool = False,
             max_steps: int | None = None, python: str | None = None, cwd: Path = REPO_ROOT,
             stream: TextIO | None = None) -> dict:
    """Runs every stage and returns the demo summary (also written to demo_summary.json)."""
    stream = stream or sys.stdout
    settings = QUICK if quick else FULL
    if max_steps is not None:
        settings = dataclasses.replace(settings, max_steps=max_steps)
    paths = DemoPaths(Path(output_dir).resolve())
    for script in ("dataset/make_shapes.py", "dataset/convert_voc.py", "train.py", "eval.py",
                   "visualize.py"):
        if not (cwd / script).is_file():
            raise FileNotFoundError(f"{cwd / script} is missing: the demo runs the scripts of a "
                                    f"source checkout (pip install -e .)")
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    clear_outputs(paths)
    stages = plan_stages(paths, settings, seed, python or sys.executable, recipe_class_names(), cwd)
    expected = "" if quick else f" (about {FULL_RUN_MINUTES} minutes on a quiet 2-core CPU)"
    print(f"SSD demo: {len(stages)} stages{expected}; everything goes to "
          f"{display_path(paths.output_dir, cwd)}", file=stream, flush=True)
    results = []
    start = time.monotonic()
    for stage in stages:
        log = paths.logs_dir / f"{stage.name.replace(' ', '_')}.log"
        watch = TrainingSpeedReport(settings, stream) if stage.name == "train" else None
        results.append(run_stage(stage, log, cwd, stream, on_output=watch))
    total = time.monotonic() - start
    evaluation = read_eval_summary(paths)
    summary = {
        "output_dir": str(paths.output_dir),
        "quick": quick,
        "seed": seed,
        "voc_root": str(paths.voc_root),
        "records": {"trainval": str(paths.records(TRAIN_NAME)), "test": str(paths.records(TEST_NAME))},
        "model_dir": str(paths.model_dir),
        "eval_dir": str(paths.eval_report_dir),
        "pictures_dir": str(paths.pictures_dir),
        "pictures": sorted(str(p) for p in paths.pictures_dir.iterdir() if p.is_file()),
        "logs_dir": str(paths.logs_dir),
        "stages": [{"name": r.name, "command": r.command, "seconds": round(r.seconds, 1)} for r in results],
        "total_seconds": round(total, 1),
        "evaluation": {k: evaluation.get(k) for k in ("metric", "classes", "mAP", "step", "num_images")},
    }
    paths.summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict, cwd: Path = REPO_ROOT) -> str:
    from ssd.voc.table import format_table

    def p(path: str) -> str:
        return display_path(path, cwd)

    evaluation = summary["evaluation"]
    width = max(len(stage["name"]) for stage in summary["stages"])
    lines = ["", "=" * 72, "SSD demo finished" + (" (--quick: a smoke run, the mAP means nothing)"
                                                     if summary["quick"] else ""), "=" * 72, "",
             f"{format_table(evaluation)}", f"(step {evaluation['step']}, held-out test split)", "",
             "Where everything went:",
             f"  data set (VOC layout)   {p(summary['voc_root'])}",
             f"  TFRecords               {p(summary['records']['trainval'])}",
             f"                          {p(summary['records']['test'])}",
             f"  model_dir               {p(summary['model_dir'])}  (config.json, checkpoints, "
             f"TensorBoard summaries)",
             f"  evaluation              {p(summary['eval_dir'])}  (summary.json, "
             f"precision_recall.png, VOC result files)",
             f"  pictures                {p(summary['pictures_dir'])}  (detections | ground truth)",
             f"  logs of every stage     {p(summary['logs_dir'])}",
             "",
             "TensorBoard (scalars, precision/recall curves, detections beside ground truth):",
             f"  {p(str(Path(sys.executable).parent / 'tensorboard'))} --logdir {p(summary['model_dir'])}",
             "",
             "Stages and their commands (run them again by hand from the repository root):"]
    for stage in summary["stages"]:
        lines.append(f"  {stage['name']:<{width}}  {format_duration(stage['seconds']):>7}  $ {stage['command']}")
    lines.append(f"  {'total':<{width}}  {format_duration(summary['total_seconds']):>7}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python demo.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=str(DEFAULT_OUTPUT_DIR),
                        help="where everything goes (default: demo_output/ in the repository)")
    parser.add_argument("--seed", type=int, default=0, help="data set and training seed")
    parser.add_argument("--quick", action="store_true",
                        help="tiny data, tiny network, a few steps: checks the path, not the mAP")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="training steps (default: the recipe's train.max_steps)")
    args = parser.parse_args(argv)
    try:
        summary = run_demo(args.output_dir, seed=args.seed, quick=args.quick, max_steps=args.max_steps)
    except StageError as error:
        print(f"\nThe demo stopped: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:
        print(f"\nThe demo stopped: {error}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
