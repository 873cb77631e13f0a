"""Evaluating detections on a test set with the VOC or COCO metric: the loop, the reports,
TensorBoard.

The pieces of `eval.py` and of the Estimator's evaluation during training, which share them so
that both report the same numbers under the same TensorBoard tags:
  * data: `resolve_record_files` (a pattern, a file or a directory of shards) and `count_records`;
  * `evaluate`: runs a `ssd.inference.detector.Detector` over an EVAL dataset into the evaluator of the
    metric (`ssd.engine.evaluators.make_evaluator`: VOC07/VOC12 or COCO), with a progress line;
  * `write_report` / `write_tensorboard`, VOC metrics: VOC result files, JSON summary,
    precision/recall PNG; in TensorBoard (model_dir/eval, see `summary_dir`) the mAP and
    per-class APs as scalars (tags "mAP" and "classes/<name>"), each class's precision/recall
    curve in the PR-curves tab ("precision_recall/<name>", classes with no detection or no
    ground truth have none);
  * the same for the COCO metric: the detections as a COCO results JSON (DETECTIONS_FILENAME,
    COCO's image and category ids for COCO-converted records), for other records the ground
    truth they were scored against (GROUND_TRUTH_FILENAME, so `python -m ssd.coco.eval`
    re-scores them), and summary.json as `python -m ssd.coco.eval --output_json` writes it
    (`ssd.coco.metric.write_summary`) plus step and checkpoint; in TensorBoard the 12 COCO
    numbers (COCO_PREFIX + "AP", "AP50", ...) and per-class AP@[.5:.95]
    (COCO_CLASSES_PREFIX + name) as scalars, no curves;
  * for every metric, the first EVAL_IMAGES images of the evaluation set with their detections
    scoring at least DISPLAY_THRESHOLD (class names and scores, left) beside the ground truth
    (right), tag IMAGES_TAG (`evaluation_pictures`);
  * `evaluate_checkpoint`: restore, evaluate, print, report; `run_evaluation`: what eval.py does,
    for one checkpoint or each new one (`--watch`).
Checkpoints are found, restored and watched by ssd.modeling.checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from ssd.coco import metric as coco_metric

from ssd.voc import metric as voc_metric

from ssd.voc import table as voc_table
from ssd.modeling.checkpoints import (CheckpointRemovedError, DamagedCheckpointError, find_checkpoint, restore_checkpoint,
                             watch_checkpoints)
from ssd.config.loading import Config
from ssd.data.input_fn import make_input_fn
from ssd.data.record_files import DataError, resolve_files
from ssd.inference.detector import Detector, build_inference_model
from ssd.draw import draw_boxes, draw_precision_recall, side_by_side
from ssd.engine.evaluators import COCO, Evaluator, add_batch, check_metric, make_evaluator, uses_coco_ids
from ssd.modes import ModeKeys
from ssd.data.preprocessing import to_display
from ssd.progress import Progress
from ssd.engine.summaries import write_image_list, write_pr_curves, write_scalar

SUMMARY_FILENAME = "summary.json"
CURVES_FILENAME = "precision_recall.png"
RESULTS_SUBDIR = "results"
SUMMARY_SUBDIR = "eval"  # TensorBoard directory inside model_dir
PR_CURVES_PREFIX = "precision_recall/"
DETECTIONS_FILENAME = "detections.json"  # COCO metric: the results JSON
GROUND_TRUTH_FILENAME = "ground_truth.json"  # COCO metric on records without a category map
COCO_PREFIX = "coco/"  # TensorBoard: the 12 COCO numbers
COCO_CLASSES_PREFIX = "coco_classes/"  # TensorBoard: per-class AP@[.5:.95]
IMAGES_TAG = "detections_and_ground_truth"
EVAL_IMAGES = 6  # the first images of the evaluation set, drawn for TensorBoard at each evaluation
DISPLAY_THRESHOLD = 0.5  # detections drawn on those images


# --- data ----------------------------------------------------------------------------------

def resolve_record_files(data: str) -> list[str]:
    """TFRecord files of `data` (ssd.data.record_files.resolve_files), with its errors as DataError."""
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

def evaluate(detector: Detector, dataset: tf.data.Dataset, evaluator: Evaluator,
             num_images: int | None = None, data_name: str = "the data",
             progress_stream: TextIO | None = None, num_samples: int = 0) -> dict[str, Any]:
    """Feeds every EVAL batch (features, labels) through `detector(images, original_shape)`
    into `evaluator`.

    Returns {"num_images", "seconds", "images_per_second", "samples"}: samples are the first
    `num_samples` images with their detections and ground truth (see `keep_samples`), for
    `evaluation_pictures`. Raises DataError when the data set is empty or a record cannot be
    decoded.
    """
    samples: list[dict[str, np.ndarray]] = []
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
        detections = detector(features["image"], features["original_shape"])
        batch = int(features["image"].shape[0])
        add_batch(evaluator, features["image_id"].numpy(), features["original_shape"].numpy(),
                  detections, labels)
        if len(samples) < num_samples:
            samples += keep_samples(features, detections, labels, num_samples - len(samples))
        images += batch
        progress.update(batch)
    progress.close()
    if images == 0:
        raise DataError(f"{data_name} holds no images")
    seconds = progress.elapsed
    return {"num_images": images, "seconds": seconds, "images_per_second": images / seconds,
            "samples": samples}


def keep_samples(features, detections, labels, count: int) -> list[dict[str, np.ndarray]]:
    """The first `count` images of a batch as numpy: "image" (the preprocessed model input),
    "original_shape", the detections ("boxes" normalized, "scores", "classes", "num_detections")
    and the ground truth ("gt_boxes" normalized, "gt_labels", "num_gt")."""
    parts = {"image": features["image"], "original_shape": features["original_shape"],
             **{k: detections[k] for k in ("boxes", "scores", "classes", "num_detections")},
             "gt_boxes": labels["boxes"], "gt_labels": labels["labels"], "num_gt": labels["num_boxes"]}
    arrays = {name: np.asarray(value)[:count] for name, value in parts.items()}
    return [{name: array[i] for name, array in arrays.items()} for i in range(len(arrays["image"]))]


def display_size(original_shape: Sequence[int], input_size: int) -> tuple[int, int]:
    """(height, width) with the original aspect ratio and the longer side `input_size`."""
    height, width = (int(v) for v in original_shape)
    scale = input_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def evaluation_pictures(samples: Sequence[dict[str, np.ndarray]], config: Config,
                        score_threshold: float = DISPLAY_THRESHOLD) -> list[Image.Image]:
    """Each sample's detections scoring at least `score_threshold` (left, with class names and
    scores) beside its ground truth (right).

    The pictures are the model's input turned back into RGB pixels (the evaluation data holds
    no encoded image after preprocessing), stretched back to the original aspect ratio with
    the longer side the input size: what the network saw, shaped as the photo.
    """

    names = list(config.data.class_names)
    pictures = []
    for sample in samples:
        rgb = to_display(tf.constant(sample["image"][np.newaxis]), config)[0].numpy()
        height, width = display_size(sample["original_shape"], config.model.input_size)
        image = Image.fromarray(np.round(rgb * 255).astype(np.uint8)).resize((width, height),
                                                                              Image.BILINEAR)
        scale = np.array([height, width, height, width], np.float32)
        n, n_gt = int(sample["num_detections"]), int(sample["num_gt"])
        detected = draw_boxes(image, sample["boxes"][:n] * scale, sample["classes"][:n], names,
                              sample["scores"][:n], score_threshold=score_threshold)
        truth = draw_boxes(image, sample["gt_boxes"][:n_gt] * scale, sample["gt_labels"][:n_gt], names)
        pictures.append(side_by_side(detected, truth, titles=(f"detections >= {score_threshold:g}",
                                                              "ground truth")))
    return pictures


# --- reports -------------------------------------------------------------------------------

def summary_of(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready part of a result, as its metric's own scorer writes it."""
    if result["metric"] == COCO:
        return coco_metric.summary_of(result)
    return voc_metric.summary_of(result)


def format_result(result: dict[str, Any]) -> str:
    """The printed report: the per-class AP table (COCO: its 12-number block first)."""
    if result["metric"] == COCO:
        return coco_metric.format_stats(result) + "\n\n" + coco_metric.format_table(result)
    return voc_table.format_table(result)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def write_report(result: dict[str, Any], evaluator: Evaluator, output_dir: str | os.PathLike,
                 step: int, checkpoint_path: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Writes the report files of the result's metric into output_dir.

    VOC: result files (output_dir/results), summary.json and precision_recall.png. COCO:
    DETECTIONS_FILENAME, GROUND_TRUTH_FILENAME unless the evaluator writes the COCO data set's
    own ids, and summary.json (`ssd.coco.metric.write_summary`).
    Returns the JSON summary: the result without its curves (metric, classes: AP per class, None
    when undefined, status per class, mAP, num_images, num_positives, ...; COCO: the 12 numbers
    too), step, checkpoint, plus `extra`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {**summary_of(result), "step": int(step), "checkpoint": checkpoint_path, **(extra or {})}
    if result["metric"] == COCO:
        evaluator.write_results(output_dir / DETECTIONS_FILENAME)
        if not uses_coco_ids(evaluator):
            evaluator.write_ground_truth(output_dir / GROUND_TRUTH_FILENAME)
        coco_metric.write_summary(output_dir / SUMMARY_FILENAME, summary)
        return summary
    evaluator.write_results(output_dir / RESULTS_SUBDIR)
    _write_json(output_dir / SUMMARY_FILENAME, summary)
    m_ap = result["mAP"]
    title = (f"{voc_metric.METRICS[result['metric']]} precision/recall at step {step}, "
             f"mAP {'n/a' if m_ap is None else f'{100 * m_ap:.1f}'}")
    draw_precision_recall(result["precision_recall"], result["classes"], title=title).save(
        output_dir / CURVES_FILENAME)
    return summary


def summary_dir(model_dir: str | os.PathLike) -> str:
    """Where evaluation's TensorBoard summaries go: model_dir/eval, beside training's."""
    return os.path.join(os.fspath(model_dir), SUMMARY_SUBDIR)


def scalars_of(result: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of a result, by tag (undefined values have none). VOC: "mAP" and
    "classes/<name>"; COCO: COCO_PREFIX + each of the 12 numbers and COCO_CLASSES_PREFIX + name."""
    if result["metric"] == COCO:
        numbers = {COCO_PREFIX + key: result[key] for key in coco_metric.STAT_KEYS}
        per_class = {COCO_CLASSES_PREFIX + name: ap for name, ap in result["classes"].items()}
    else:
        numbers = {"mAP": result["mAP"]}
        per_class = {f"classes/{name}": ap for name, ap in result["classes"].items()}
    return {tag: float(value) for tag, value in {**numbers, **per_class}.items() if value is not None}


def write_tensorboard(result: dict[str, Any], summary_dir: str | os.PathLike, step: int,
                      pictures: Sequence[Image.Image] = ()) -> None:
    """At `step`: the result's scalars (`scalars_of`), for VOC metrics the per-class
    precision/recall curves (PR_CURVES_PREFIX + name), and `pictures` (IMAGES_TAG)."""
    writer = tf.summary.create_file_writer(str(summary_dir))
    with writer.as_default():
        for tag, value in scalars_of(result).items():
            write_scalar(tag, value, step)
        if "precision_recall" in result:
            write_pr_curves(result["precision_recall"], step, result["num_positives"], PR_CURVES_PREFIX)
        if pictures:
            write_image_list(IMAGES_TAG, pictures, step)
    writer.close()


# --- checkpoints ---------------------------------------------------------------------------

def evaluate_checkpoint(detector: Detector, checkpoint_path: str, input_fn: Callable, metric: str,
                        output_dir: str | os.PathLike | None, summary_dir: str | os.PathLike | None,
                        num_images: int | None = None, data_name: str = "the data",
                        progress_stream: TextIO | None = None,
                        print_table: Callable[[str], None] | None = print,
                        data_files: Sequence[str] | None = None) -> dict[str, Any]:
    """Restores `checkpoint_path` into the detector's model, evaluates, prints the table, writes
    the report and the TensorBoard summaries.

    `data_files`: the TFRecord files `input_fn` reads, where the COCO metric looks for the
    converter's category map (`ssd.engine.evaluators.make_evaluator`); None when unknown.
    `output_dir` may contain "{step}"; None writes no report files, `summary_dir` None no
    TensorBoard summaries (and keeps no images for them). Returns the JSON summary (plus
    "output_dir" when reports were written).
    """
    config = detector.config
    evaluator = make_evaluator(metric, config, data_files)  # a bad category map fails before restoring
    step = restore_checkpoint(detector.model, checkpoint_path, config)
    logging.info("evaluating %s (step %d) with the %s metric", checkpoint_path, step, metric)
    samples = EVAL_IMAGES if summary_dir is not None else 0
    stats = evaluate(detector, input_fn(None), evaluator, num_images, data_name, progress_stream,
                     num_samples=samples)
    result = evaluator.result()
    if print_table is not None:
        print_table(format_result(result))
    summary = {**summary_of(result), "step": step, "checkpoint": checkpoint_path}
    if output_dir is not None:
        directory = str(output_dir).replace("{step}", str(step))
        summary = write_report(result, evaluator, directory, step, checkpoint_path,
                               extra={"images_per_second": stats["images_per_second"]})
        summary["output_dir"] = directory
    if summary_dir is not None:
        write_tensorboard(result, summary_dir, step, evaluation_pictures(stats["samples"], config))
    return summary


def run_evaluation(config: Config, model_dir: str, data: str, *, checkpoint_path: str | None = None,
                   metric: str | None = None, output_dir: str | None = None, watch: bool = False,
                   watch_timeout_secs: float | None = 3600.0, watch_interval_secs: float = 30.0,
                   precision: str = "float32", jit_compile: bool = False, count_images: bool = True,
                   progress_stream: TextIO | None = None,
                   print_table: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """What `eval.py` does: evaluates one checkpoint, or with `watch` each new one until the
    checkpoint at train.max_steps has been evaluated or `watch_timeout_secs` pass without one.

    Reports go to output_dir (default model_dir/eval_<step>; with watch, <output_dir>/eval_<step>),
    TensorBoard summaries to model_dir/eval. Returns the JSON summaries.
    """
    metric = check_metric(metric or config.eval.metric)
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
    make_evaluator(metric, config, files)  # a category map that does not fit fails here, once
    input_fn = make_input_fn(files, config, ModeKeys.EVAL)
    detector = Detector(build_inference_model(config, precision), config, jit_compile)
    if output_dir is None:
        template = os.path.join(model_dir, "eval_{step}")
    else:
        template = os.path.join(output_dir, "eval_{step}") if watch else output_dir
    summaries = []
    for path in checkpoints:
        try:
            summary = evaluate_checkpoint(detector, path, input_fn, metric, template,
                                          summary_dir(model_dir), num_images, data,
                                          progress_stream, print_table, data_files=files)
        except (CheckpointRemovedError, DamagedCheckpointError) as e:
            if not watch:
                raise
            logging.warning("%s; waiting for the next one", e)
            continue
        summaries.append(summary)
        if watch and summary["step"] >= config.train.max_steps:
            logging.info("evaluated the checkpoint at train.max_steps (%d); done", config.train.max_steps)
            break
    return summaries
