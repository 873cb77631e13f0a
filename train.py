r"""Trains SSD300 / SSD512 from TFRecords (dataset/convert_voc.py writes them).

  python train.py --data_dir=tfrecords/voc0712_trainval-* --model_dir=runs/ssd300 \
      [--config=ssd300_voc0712] [--batch_size=32] [--max_steps=120000] [--learning_rate=1e-3] \
      [--strategy=auto] [--pretrained=imagenet] [--mixed_precision=none] [--jit_compile] \
      [--set train.lr_boundaries=[2000,80000,100000] --set data.augmentation=tf1] \
      [--eval_data_dir=tfrecords/voc07_test-* --eval_every_steps=10000] \
      [--fine_tune_checkpoint=runs/ssd300_coco [--fine_tune_checkpoint_type=detection]]

The recipe (--config, a name from configs/ or a JSON path) is the base; --set section.field=value
overrides any field, and the flags given explicitly (batch_size, max_steps, learning_rate,
mixed_precision, jit_compile) override it last. The resolved config is written to
model_dir/config.json when training starts (after the data and the backbone weights are found),
so a start that fails earlier leaves the directory free for a corrected command.

Running again with the same --model_dir resumes from the latest checkpoint (step, weights,
optimizer state); the saved config is then the base unless --config is given. Changes that keep
the model's variable shapes (learning rate, max_steps, augmentation, ...) are allowed, logged and
saved; a change of a shape field (architecture, input size, classes, width, batch norm, feature
maps, boxes per location) is refused. Pretrained backbone weights are only loaded on a fresh start.

--fine_tune_checkpoint=DIR_OR_CKPT starts from a detection model trained by this project instead
(ssd.engine.fine_tune): with --fine_tune_checkpoint_type=detection (default) everything but the
class channels of classes the two class lists do not share; with =backbone the backbone only. It
replaces --pretrained, and applies on a fresh start only: a resumed run logs that it is not used.

Multi-GPU: --strategy=mirrored (or auto) splits the global --batch_size over the GPUs, which must
divide it. Multi-machine: --strategy=multi_worker with TF_CONFIG set on every worker; the same
model_dir must be reachable by all, and only the chief writes it.

One run per model directory: the chief holds model_dir/train.lock (ssd.engine.model_dir_lock) and a
second run is refused. Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption; with multi_worker,
sent to any worker) finishes the step in flight, saves a checkpoint, says where, and exits with
130 (SIGINT) or 143 (SIGTERM, or another worker was stopped); the same command resumes. A second
Ctrl-C stops at once without saving. Unfinished saves of a killed run (ckpt-N_temp) are removed,
and a damaged newest checkpoint is skipped for the newest intact one, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python train.py` from anywhere: make `ssd` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

from absl import app, flags, logging

from ssd.config import loading as config_lib
from ssd.config import resume
from ssd.engine.interrupts import TrainingInterrupted
from ssd.errors import UserError

FLAGS = flags.FLAGS

flags.DEFINE_string("config", "ssd300_voc0712", "Recipe name (one of "
                    f"{', '.join(config_lib.recipe_names())}) or path to a config JSON.")
flags.DEFINE_string("data_dir", None, "Training TFRecords: a glob, comma-separated globs, or a "
                    "directory (its *-of-* shards).")
flags.DEFINE_string("model_dir", None, "Where checkpoints, summaries and config.json go.")
flags.DEFINE_integer("batch_size", None, "Global batch size, split across replicas.")
flags.DEFINE_integer("max_steps", None, "Train until the global step reaches this.")
flags.DEFINE_float("learning_rate", None, "Base learning rate (the schedule's factors multiply it).")
flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multi_worker", "one_device"],
                  "Distribution strategy.")
flags.DEFINE_integer("num_gpus", None, "Use at most this many local GPUs (default: all).")
flags.DEFINE_string("pretrained", "imagenet", "Backbone initialization on a fresh start: imagenet, "
                    "a Keras VGG16 (or MobileNetV2) weights file, a TF-slim vgg_16 checkpoint, "
                    "or none.")
flags.DEFINE_string("fine_tune_checkpoint", None, "Start from a detection model of this project: "
                    "a model directory written by train.py (its newest checkpoint) or a checkpoint "
                    "prefix inside one. Used on a fresh start only; it replaces --pretrained "
                    "(ssd.engine.fine_tune).")
flags.DEFINE_enum("fine_tune_checkpoint_type", "detection", ["detection", "backbone"],
                  "detection: backbone, extra layers, box heads and the class channels of the "
                  "classes both class lists share (by name); backbone: the backbone only.")
flags.DEFINE_enum("mixed_precision", None, ["none", "float16", "bfloat16"], "Mixed precision policy.")
flags.DEFINE_bool("jit_compile", None, "XLA-compile the network.")
flags.DEFINE_multi_string("set", [], "Config override section.field=value (value parsed as JSON "
                          "when it parses), e.g. --set train.lr_boundaries=[2000,80000,100000].")
flags.DEFINE_string("eval_data_dir", None, "Evaluation TFRecords; with --eval_every_steps the "
                    "model is evaluated (VOC mAP) during training.")
flags.DEFINE_integer("eval_every_steps", 0, "Evaluate every this many steps (0: never).")

# flag name -> config field it overrides when given explicitly
FLAG_FIELDS = {
    "batch_size": "train.batch_size",
    "max_steps": "train.max_steps",
    "learning_rate": "train.learning_rate",
    "mixed_precision": "train.mixed_precision",
    "jit_compile": "train.jit_compile",
}

def nan_remedy(train: config_lib.TrainConfig) -> str:
    """What to change after a non-finite loss: a longer warm-up where the schedule has one."""
    lower = f"a lower --learning_rate (now {train.learning_rate:g})"
    if train.lr_schedule == "piecewise" and train.lr_boundaries:
        longer = [max(2000, 4 * train.lr_boundaries[0]), *train.lr_boundaries[1:]]
        remedies = (f"a longer warm-up, e.g. --set train.lr_boundaries="
                    f"{json.dumps(longer).replace(' ', '')}, or {lower}")
    else:
        remedies = lower
    return (f"Remedies: {remedies}. Running the same command again resumes from the latest good "
            "checkpoint.")


class TrainingError(UserError):
    """A problem the user can fix: printed as one line without a traceback (ssd.cli.run)."""


def explicit_overrides() -> config_lib.Overrides:
    """Dotted config overrides from --set, then from the flags given on the command line, each
    remembering its origin (an error names the --set or the flag it came from)."""
    overrides = config_lib.Overrides()
    for text in FLAGS.set:
        key, value = config_lib.parse_override(text)
        overrides.set(key, value, f"--set {text}")
    for flag, field in FLAG_FIELDS.items():
        if FLAGS[flag].present:
            overrides.set(field, FLAGS[flag].value, f"--{flag}")
    return overrides


def run_config_for(config: config_lib.Config, model_dir: str, strategy):
    from ssd.engine.estimator import RunConfig
    train = config.train
    return RunConfig(
        model_dir=model_dir,
        save_checkpoints_steps=train.save_checkpoints_steps or None,
        save_checkpoints_secs=train.save_checkpoints_secs or None,
        keep_checkpoint_max=train.keep_checkpoint_max,
        save_summary_steps=train.save_summary_steps,
        log_step_count_steps=train.log_step_count_steps,
        save_image_summary_steps=train.image_summary_steps,
        tf_random_seed=train.seed,
        train_distribute=strategy,
        mixed_precision=train.mixed_precision,
        jit_compile=train.jit_compile,
        steps_per_loop=train.steps_per_loop)


def make_checked_strategy(config: config_lib.Config):
    """The --strategy's tf.distribute strategy, whose replicas must split the batch evenly."""
    from ssd.engine.distribute import DistributionError, check_batch_divisible, make_strategy
    try:
        strategy = make_strategy(FLAGS.strategy, FLAGS.num_gpus)
        replicas = strategy.num_replicas_in_sync
        per_replica = check_batch_divisible(config.train.batch_size, replicas)
    except DistributionError as e:
        raise TrainingError(str(e)) from e
    logging.info("strategy %s: %d replica(s), global batch %d (%d per replica)",
                 type(strategy).__name__, replicas, config.train.batch_size, per_replica)
    return strategy


def make_input_fns(config: config_lib.Config):
    """(training input function, evaluation's or None), after checking the records' classes."""
    from ssd.data.input_fn import make_input_fn
    from ssd.data.record_classes import check_record_classes, evaluation_remedy
    from ssd.data.record_files import DataError
    from ssd.modes import ModeKeys

    try:
        train_input_fn = make_input_fn(FLAGS.data_dir, config, ModeKeys.TRAIN)
        eval_input_fn = None
        if FLAGS.eval_data_dir and FLAGS.eval_every_steps > 0:
            eval_input_fn = make_input_fn(FLAGS.eval_data_dir, config, ModeKeys.EVAL)
        check_record_classes(FLAGS.data_dir, config.data.class_names)
        if eval_input_fn is not None:
            check_record_classes(FLAGS.eval_data_dir, config.data.class_names, remedy=evaluation_remedy)
    except FileNotFoundError as e:
        raise TrainingError(f"no data files: {e}") from e
    except DataError as e:
        raise TrainingError(str(e)) from e
    return train_input_fn, eval_input_fn


def initialize_first_start(estimator, config: config_lib.Config) -> None:
    """On the first start, the weights of --fine_tune_checkpoint or of --pretrained; on a resume,
    nothing (the checkpoint has them)."""
    from ssd.modeling.pretrained import PretrainedError, initialize_for_config

    latest = estimator.latest_checkpoint()
    if latest is None and FLAGS.fine_tune_checkpoint:
        fine_tune_start(estimator.model, config)
    elif latest is None:
        try:
            report = initialize_for_config(estimator.model, config, FLAGS.pretrained)
        except PretrainedError as e:
            raise TrainingError(str(e)) from e
        logging.info("backbone from %s (%s): copied %s; subsampled %s", report["source"],
                     report["format"], report["copied"] or "nothing", report["subsampled"] or "nothing")
    else:
        logging.info("resuming from %s; --pretrained=%s is not applied", latest, FLAGS.pretrained)
        if FLAGS.fine_tune_checkpoint:
            logging.info("resuming from %s; --fine_tune_checkpoint=%s is not used (it "
                         "initializes the first start only)", latest, FLAGS.fine_tune_checkpoint)


def classes_from_records(model_dir: str, overrides: config_lib.Overrides) -> None:
    """On a fresh start without data.class_names given, the class list the records were
    converted with (the converter's summary beside the shards) becomes the config's: one list,
    stated once, from which model.num_classes follows. A resumed run keeps its model's classes
    (the records are checked against them)."""
    from ssd.data.record_classes import record_class_list

    if "data.class_names" in overrides or (Path(model_dir) / config_lib.CONFIG_FILENAME).exists():
        return
    names, source = record_class_list(FLAGS.data_dir, read_records=False)
    if names is None:
        return  # the recipe's; the records are checked against them
    overrides.set("data.class_names", names, f"the records' classes ({source})")
    logging.info("classes from the records (%s): %s", source, ", ".join(names))


def run(model_dir: str) -> None:
    recipe_given = FLAGS["config"].present
    overrides = explicit_overrides()
    classes_from_records(model_dir, overrides)
    config, changes = resume.resolve_config(model_dir, FLAGS.config, recipe_given, overrides)
    cli.kernels_for_precision(config.train.mixed_precision)
    # TensorFlow's runtime starts here: the multi-worker strategy must come first.
    strategy = make_checked_strategy(config)
    train_input_fn, eval_input_fn = make_input_fns(config)

    import tensorflow as tf

    from ssd.data.record_files import data_error_from
    from ssd.engine.distribute import is_chief
    from ssd.engine.estimator import Estimator
    from ssd.engine.interrupts import StopSignals
    from ssd.engine.model_dir_lock import ModelDirLock, ModelDirLockedError
    from ssd.engine.model_fn import SSDModelFn
    from ssd.modeling.checkpoints import DamagedCheckpointError, remove_stale_temporaries

    chief = is_chief(strategy)
    # Only the chief writes into model_dir, so only it takes the lock; `eval.py --watch` never does.
    lock = ModelDirLock(model_dir) if chief else contextlib.nullcontext()
    try:
        with lock, StopSignals() as signals:
            if chief:
                remove_stale_temporaries(model_dir)
            estimator = Estimator(SSDModelFn, model_config=config,
                                  run_config=run_config_for(config, model_dir, strategy))
            initialize_first_start(estimator, config)
            if chief:  # only now: a start that failed above leaves no config to be held to
                for field, (old, new) in changes.items():
                    logging.info("config change on resume: %s: %r -> %r", field, old, new)
                logging.info("config written to %s", config_lib.save_config(config, model_dir))
            train(estimator, config, train_input_fn, eval_input_fn, signals)
    except (ModelDirLockedError, DamagedCheckpointError) as e:
        raise TrainingError(str(e)) from e
    except FloatingPointError as e:  # NonFiniteLossError, or weights gone non-finite at a save
        raise TrainingError(f"{e}. {nan_remedy(config.train)}") from e
    except tf.errors.OpError as e:
        damaged = data_error_from(e)  # a record damaged past the checked start of its file
        if damaged is None:
            raise
        raise TrainingError(str(damaged)) from None


def fine_tune_start(model, config: config_lib.Config) -> None:
    """The first start from --fine_tune_checkpoint. It restores at least the whole backbone, all
    that --pretrained would initialize, so --pretrained is not applied (a warning says so when it
    was given explicitly)."""
    from ssd.engine.fine_tune import FineTuneError, initialize_from_checkpoint

    if FLAGS["pretrained"].present and FLAGS.pretrained != "none":
        logging.warning("--pretrained=%s is not applied: --fine_tune_checkpoint restores the whole "
                        "backbone (and more), so the fine-tune checkpoint wins", FLAGS.pretrained)
    try:
        report = initialize_from_checkpoint(model, config, FLAGS.fine_tune_checkpoint,
                                            FLAGS.fine_tune_checkpoint_type)
    except FineTuneError as e:
        raise TrainingError(str(e)) from e
    for warning in report.warnings:
        logging.warning("fine-tune checkpoint: %s", warning)
    for line in report.log_lines():
        logging.info("%s", line)


def train(estimator, config: config_lib.Config, train_input_fn, eval_input_fn, signals) -> None:
    if eval_input_fn is not None:
        metrics = estimator.train_and_evaluate(train_input_fn, eval_input_fn, config.train.max_steps,
                                               FLAGS.eval_every_steps, stop_signals=signals)
        if metrics:
            logging.info("final evaluation: mAP %s", metrics.get("mAP"))
    else:
        estimator.train(train_input_fn, config.train.max_steps, stop_signals=signals)
    logging.info("training finished at step %d", estimator.global_step)


def interrupted(e) -> int:
    """Says where an interrupted run saved and how to resume; returns the exit code."""
    print(f"train.py: {e}. To resume, run the same command again.", file=sys.stderr)
    return e.exit_code


def stopped_at_once() -> int:
    print("train.py: stopped at once by a second interrupt; steps since the last checkpoint are "
          "lost. To resume from it, run the same command again.", file=sys.stderr)
    return 128 + signal.SIGINT


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required")
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required")
    try:
        run(FLAGS.model_dir)  # its user errors are printed as one line by cli.run
    except TrainingInterrupted as e:
        sys.exit(interrupted(e))
    except KeyboardInterrupt:
        sys.exit(stopped_at_once())


if __name__ == "__main__":
    cli.run(main)
