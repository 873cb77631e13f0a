"""Evaluating trained checkpoints on a test set: restore, detect, score, report, watch.

The pieces of `eval.py`, usable on their own:
  * checkpoints: `find_checkpoint`, `restore_checkpoint` (the layout the Estimator writes:
    `tf.train.Checkpoint(model=..., global_step=..., optimizer=...)`; only the model and the step
    are read), with clear errors for a missing checkpoint, one that does not fit the config's
    model, and one removed by `max_to_keep` rotation while being read;
  * `make_detector`: the network plus post-processing in one tf.function (the network alone may
    be XLA-compiled; NMS has no XLA kernel);
  * data: `resolve_record_files` (a pattern, a file or a directory of shards) and `count_records`;
  * `evaluate`: runs a detector over an EVAL dataset into a `VOCEvaluator`, with a progress line;
  * `write_report` / `write_tensorboard`: VOC result files, JSON summary, precision/recall PNG,
    and the mAP and per-class APs as TensorBoard scalars (the tags `Estimator.evaluate` uses);
  * `watch_checkpoints`: yields each new complete checkpoint as training writes it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ssd.anchors import generate_anchors
from ssd.config import Config, shape_fields
from ssd.data import make_input_fn, resolve_files
from ssd.draw import draw_precision_recall
from ssd.model import build_model
from ssd.modes import ModeKeys
from ssd.postprocess import postprocess
from ssd.precision import INFERENCE_POLICIES, dtype_policy
from ssd.progress import Progress
from ssd.summaries import write_scalar
from ssd.voc_eval import METRICS, VOCEvaluator, format_table

SUMMARY_FILENAME = "summary.json"
CURVES_FILENAME = "precision_recall.png"
RESULTS_SUBDIR = "results"
SUMMARY_SUBDIR = "eval"  # TensorBoard directory inside model_dir, shared with Estimator.evaluate


class NoCheckpointError(FileNotFoundError):
    """There is no checkpoint where one was expected."""


class CheckpointRemovedError(FileNotFoundError):
    """A listed checkpoint disappeared before it was read (CheckpointManager rotation)."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's variables do not fit the model built from the config."""


class DataError(ValueError):
    """The evaluation data is missing, empty or unreadable; the message names the pattern or file."""


# --- checkpoints ---------------------------------------------------------------------------

def checkpoint_exists(path: str) -> bool:
    return tf.io.gfile.exists(path + ".index")


def find_checkpoint(model_dir: str | None, checkpoint_path: str | None = None) -> str:
    """`checkpoint_path` (a checkpoint prefix, or a directory: its latest), else model_dir's latest."""
    if checkpoint_path:
        if tf.io.gfile.isdir(checkpoint_path):
            latest = tf.train.latest_checkpoint(checkpoint_path)
            if latest is None:
                raise NoCheckpointError(f"no checkpoint in {checkpoint_path}")
            return latest
        if not checkpoint_exists(checkpoint_path):
            raise NoCheckpointError(f"checkpoint {checkpoint_path} not found (no {checkpoint_path}.index)")
        return checkpoint_path
    if not model_dir:
        raise NoCheckpointError("neither a model directory nor a checkpoint path was given")
    latest = tf.train.latest_checkpoint(model_dir)
    if latest is None:
        raise NoCheckpointError(f"no checkpoint in {model_dir} (no 'checkpoint' file listing one); "
                                f"train first or pass --checkpoint_path")
    return latest


def checkpoint_number(path: str) -> int | None:
    """The N of a `.../ckpt-N` prefix (CheckpointManager numbers checkpoints by global step)."""
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else None


def _model_fields(config: Config) -> str:
    return ", ".join(f"{k}={v}" for k, v in shape_fields(config).items())


def restore_checkpoint(model: keras.Model, checkpoint_path: str, config: Config) -> int:
    """Loads the model's variables from an Estimator checkpoint; returns the checkpoint's global step.

    The optimizer slots in the checkpoint are left unread. Raises CheckpointMismatchError when a
    variable is missing or has another shape (the message names it), CheckpointRemovedError when
    the checkpoint was deleted meanwhile.
    """
    step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(model=model, global_step=step)
    hint = (f"the config's model fields must match those the checkpoint was trained with "
            f"(here: {_model_fields(config)})")
    try:
        status = checkpoint.restore(checkpoint_path).expect_partial()
        status.assert_existing_objects_matched()
    except (tf.errors.NotFoundError, tf.errors.DataLossError) as e:
        if not checkpoint_exists(checkpoint_path):
            raise CheckpointRemovedError(f"checkpoint {checkpoint_path} was removed while being read "
                                         f"(rotation by max_to_keep?)") from e
        raise
    except (ValueError, AssertionError) as e:
        raise CheckpointMismatchError(f"checkpoint {checkpoint_path} does not fit the model built "
                                      f"from the config: {e}; {hint}") from e
    if int(step.numpy()) < 0:
        number = checkpoint_number(checkpoint_path)
        logging.warning("checkpoint %s has no global_step; using %s from its name", checkpoint_path, number)
        return number if number is not None else 0
    return int(step.numpy())


def build_inference_model(config: Config, precision: str = "float32") -> keras.Model:
    """The network for inference, computing in `precision` ("float32" or "bfloat16")."""
    if precision not in INFERENCE_POLICIES:
        raise ValueError(f"precision must be one of {sorted(INFERENCE_POLICIES)}, got {precision!r}")
    with dtype_policy(INFERENCE_POLICIES[precision]):
        return build_model(config)


def load_model(config: Config, checkpoint_path: str, precision: str = "float32") -> tuple[keras.Model, int]:
    model = build_inference_model(config, precision)
    return model, restore_checkpoint(model, checkpoint_path, config)


def make_detector(model: keras.Model, config: Config, jit_compile: bool = False
                  ) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """images [B, H, W, 3] preprocessed float32 -> postprocess() detections, in one tf.function."""
    anchors = tf.constant(generate_anchors(config), tf.float32)

    def network(images):
        return model(images, training=False)

    if jit_compile:
        network = tf.function(network, jit_compile=True)

    @tf.function
    def detect(images):
        cls_logits, box_encodings = network(images)
        return postprocess(cls_logits, box_encodings, anchors, config)

    return detect


# --- data ----------------------------------------------------------------------------------

def resolve_record_files(data: str) -> list[str]:
    """TFRecord files of `data` (ssd.data.resolve_files), with its errors as DataError."""
    try:
        return resolve_files(data)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(str(e)) from None


def count_records(files: Sequence[str]) -> int:
    """Number of records in the files; an unreadable file raises DataError naming it."""
    total = 0
    for path in files:
        try:
            count = int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))
        except tf.errors.OpError as e:
            raise DataError(f"{path}: not a readable TFRecord file ({e.message.splitlines()[0]})") from None
        total += count
    return total


# --- the evaluation loop -------------------------------------------------------------------

def evaluate(detector: Callable, dataset: tf.data.Dataset, evaluator: VOCEvaluator,
             num_images: int | None = None, data_name: str = "the data",
             progress_stream: TextIO | None = None) -> dict[str, float]:
    """Feeds every EVAL batch (features, labels) through `detector` into `evaluator`.

    Returns {"num_images", "seconds", "images_per_second"}. Raises DataError when the data set is
    empty or a record cannot be decoded.
    """
    progress = Progress(num_images, label="eval", stream=progress_stream)
    iterator = iter(dataset)
    images = 0
    while True:
        try:
            features, labels = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError as e:
            raise DataError(f"reading {data_name} failed after {images} images: "
                            f"{e.message.splitlines()[0]}") from None
        detections = detector(features["image"])
        batch = int(features["image"].shape[0])
        evaluator.add_batch(
            [_text(i) for i in features["image_id"].numpy()], features["original_shape"].numpy(),
            tuple(detections[k].numpy() for k in ("boxes", "scores", "classes", "num_detections")),
            tuple(labels[k].numpy() for k in ("boxes", "labels", "difficult", "num_boxes")))
        images += batch
        progress.update(batch)
    progress.close()
    if images == 0:
        raise DataError(f"{data_name} holds no images")
    seconds = progress.elapsed
    return {"num_images": images, "seconds": seconds, "images_per_second": images / seconds}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def write_report(result: dict[str, Any], evaluator: VOCEvaluator, output_dir: str | os.PathLike,
                 step: int, checkpoint_path: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Writes VOC result files (output_dir/results), summary.json and precision_recall.png.

    Returns the JSON summary: metric, classes (AP per class, None when undefined), mAP, step,
    checkpoint, num_images, num_positives, plus `extra`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    evaluator.write_results(output_dir / RESULTS_SUBDIR)
    summary = {"metric": result["metric"], "classes": result["classes"], "mAP": result["mAP"],
               "step": int(step), "checkpoint": checkpoint_path, "num_images": result["num_images"],
               "num_positives": result.get("num_positives", {})}
    summary.update(extra or {})
    tmp = output_dir / (SUMMARY_FILENAME + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, output_dir / SUMMARY_FILENAME)
    m_ap = result["mAP"]
    title = (f"{METRICS[result['metric']]} precision/recall at step {step}, "
             f"mAP {'n/a' if m_ap is None else f'{100 * m_ap:.1f}'}")
    draw_precision_recall(result["precision_recall"], result["classes"], title=title).save(
        output_dir / CURVES_FILENAME)
    return summary


def write_tensorboard(result: dict[str, Any], summary_dir: str | os.PathLike, step: int) -> None:
    """mAP and per-class APs as scalars at `step` (tags "mAP" and "classes/<name>")."""
    writer = tf.summary.create_file_writer(str(summary_dir))
    with writer.as_default():
        if result["mAP"] is not None:
            write_scalar("mAP", float(result["mAP"]), step)
        for name, ap in result["classes"].items():
            if ap is not None:
                write_scalar(f"classes/{name}", float(ap), step)
    writer.close()


def evaluate_checkpoint(config: Config, model: keras.Model, detector: Callable, checkpoint_path: str,
                        input_fn: Callable, metric: str, output_dir: str | os.PathLike | None,
                        summary_dir: str | os.PathLike | None, num_images: int | None = None,
                        data_name: str = "the data", progress_stream: TextIO | None = None,
                        print_table: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Restores `checkpoint_path` into `model`, evaluates, prints the table and writes the report.

    `output_dir` may contain "{step}"; None writes no files. Returns the JSON summary (plus
    "output_dir").
    """
    step = restore_checkpoint(model, checkpoint_path, config)
    logging.info("evaluating %s (step %d) with the %s metric", checkpoint_path, step, metric)
    evaluator = VOCEvaluator(config.data.class_names, metric)
    stats = evaluate(detector, input_fn(None), evaluator, num_images, data_name, progress_stream)
    result = evaluator.result()
    if print_table is not None:
        print_table(format_table(result))
    summary = {"metric": result["metric"], "classes": result["classes"], "mAP": result["mAP"],
               "step": step, "checkpoint": checkpoint_path, "num_images": result["num_images"]}
    if output_dir is not None:
        directory = str(output_dir).replace("{step}", str(step))
        summary = write_report(result, evaluator, directory, step, checkpoint_path,
                               extra={"images_per_second": stats["images_per_second"]})
        summary["output_dir"] = directory
    if summary_dir is not None:
        write_tensorboard(result, summary_dir, step)
    return summary


# --- watching a training run ---------------------------------------------------------------

def listed_checkpoints(model_dir: str) -> list[str]:
    """The checkpoints the `checkpoint` file lists (oldest first) whose .index exists.

    CheckpointManager rewrites that file only after a checkpoint's data and index are complete,
    so a listed checkpoint is whole unless rotation has deleted it since.
    """
    state = tf.train.get_checkpoint_state(model_dir)
    if state is None:
        return []
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    paths = [p if os.path.isabs(p) else os.path.join(model_dir, p) for p in paths if p]
    return [p for p in paths if checkpoint_exists(p)]


def watch_checkpoints(model_dir: str, timeout_secs: float, interval_secs: float,
                      sleep: Callable[[float], None] = time.sleep,
                      clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """Yields new checkpoints of model_dir as they appear, newest first when several are waiting.

    Only checkpoints numbered above the last one yielded are new: when evaluation is slower than
    training, intermediate checkpoints are skipped (and logged) rather than evaluated late. Stops
    after `timeout_secs` (None: never) without a new checkpoint; the caller stops at max_steps.
    """
    last_number = -1
    deadline = None if timeout_secs is None else clock() + timeout_secs
    announced = False
    while True:
        fresh = [p for p in listed_checkpoints(model_dir) if (checkpoint_number(p) or 0) > last_number]
        if fresh:
            newest = max(fresh, key=lambda p: checkpoint_number(p) or 0)
            skipped = [p for p in fresh if p != newest]
            if skipped:
                logging.info("skipping %d older new checkpoints: %s", len(skipped), ", ".join(skipped))
            last_number = checkpoint_number(newest) or 0
            announced = False
            yield newest
            deadline = None if timeout_secs is None else clock() + timeout_secs
            continue
        if deadline is not None and clock() >= deadline:
            logging.info("no new checkpoint in %s for %.0f s; stopping", model_dir, timeout_secs)
            return
        if not announced:
            logging.info("waiting for a new checkpoint in %s", model_dir)
            announced = True
        wait = interval_secs if deadline is None else max(0.0, min(interval_secs, deadline - clock()))
        sleep(wait)


def run_evaluation(config: Config, model_dir: str, data: str, *, checkpoint_path: str | None = None,
                   metric: str | None = None, output_dir: str | None = None, watch: bool = False,
                   watch_timeout_secs: float | None = 3600.0, watch_interval_secs: float = 30.0,
                   precision: str = "float32", jit_compile: bool = False, count_images: bool = True,
                   progress_stream: TextIO | None = None,
                   print_table: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """What `eval.py` does: evaluates one checkpoint, or with `watch` each new one until the
    checkpoint at train.max_steps has been evaluated or `watch_timeout_secs` pass without one.

    Reports go to output_dir (default model_dir/eval_<step>; with watch, <output_dir>/eval_<step>),
    TensorBoard scalars to model_dir/eval. Returns the JSON summaries.
    """
    metric = metric or config.eval.metric
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    if not watch:
        checkpoints: Iterator[str] = iter([find_checkpoint(model_dir, checkpoint_path)])
    elif checkpoint_path:
        raise ValueError("--watch follows the checkpoints of model_dir; do not give a checkpoint path")
    else:
        checkpoints = watch_checkpoints(model_dir, watch_timeout_secs, watch_interval_secs)
    files = resolve_record_files(data)
    num_images = count_records(files) if count_images else None
    if num_images == 0:
        raise DataError(f"{data} holds no records ({len(files)} files: {', '.join(files[:3])}"
                        f"{', ...' if len(files) > 3 else ''})")
    input_fn = make_input_fn(files, config, ModeKeys.EVAL)
    model = build_inference_model(config, precision)
    detector = make_detector(model, config, jit_compile)
    if output_dir is None:
        template = os.path.join(model_dir, "eval_{step}")
    else:
        template = os.path.join(output_dir, "eval_{step}") if watch else output_dir
    summaries = []
    for path in checkpoints:
        try:
            summary = evaluate_checkpoint(config, model, detector, path, input_fn, metric, template,
                                          os.path.join(model_dir, SUMMARY_SUBDIR), num_images, data,
                                          progress_stream, print_table)
        except CheckpointRemovedError as e:
            if not watch:
                raise
            logging.warning("%s; waiting for the next one", e)
            continue
        summaries.append(summary)
        if watch and summary["step"] >= config.train.max_steps:
            logging.info("evaluated the checkpoint at train.max_steps (%d); done", config.train.max_steps)
            break
    return summaries
