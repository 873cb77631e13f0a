"""An evaluation's result written down: the report files, the JSON summary and TensorBoard.

The files are the metric's own (`ssd.engine.evaluators`); here they get the step and checkpoint
they belong to, and a directory of their metric's name (`report_dir_template`: e.g.
model_dir/eval_<step>/voc07/), so that evaluating a checkpoint with another metric keeps both.
In TensorBoard (model_dir/eval, see `summary_dir`) each evaluation writes its metric's scalars,
the precision/recall curves when the metric has them (PR_CURVES_PREFIX + class name, none for a
class without detections or ground truth) and the pictures of `ssd.engine.evaluation_pictures`
(tag IMAGES_TAG).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import tensorflow as tf
from PIL import Image

from ssd.engine.summaries import write_image_list, write_pr_curves, write_scalar
from ssd.evaluator import Evaluator

SUMMARY_SUBDIR = "eval"  # TensorBoard directory inside model_dir, beside training's
REPORT_DIR_PATTERN = "eval_{step}"  # a checkpoint's reports inside model_dir, one subdirectory per metric
PR_CURVES_PREFIX = "precision_recall/"
IMAGES_TAG = "detections_and_ground_truth"


def report_dir_template(model_dir: str | os.PathLike, output_dir: str | os.PathLike | None,
                        metric: str, per_step: bool) -> str:
    """Where an evaluation's report files go, "{step}" standing for the checkpoint's step:
    <output_dir>/<metric>, output_dir defaulting to model_dir/eval_{step}; with `per_step`
    (several checkpoints into one given output_dir) <output_dir>/eval_{step}/<metric>."""
    if output_dir is None:
        base = os.path.join(os.fspath(model_dir), REPORT_DIR_PATTERN)
    else:
        base = os.path.join(os.fspath(output_dir), REPORT_DIR_PATTERN) if per_step else os.fspath(output_dir)
    return os.path.join(base, metric)


def summary_dir(model_dir: str | os.PathLike) -> str:
    """Where evaluation's TensorBoard summaries go: model_dir/eval."""
    return os.path.join(os.fspath(model_dir), SUMMARY_SUBDIR)


def summary_of(evaluator: Evaluator, result: Mapping[str, Any], step: int | None,
               checkpoint_path: str | None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON summary: the metric's summary of the result (metric, classes: AP per class, None
    when undefined, status per class, num_images, ...), step, checkpoint (None when unknown: an
    exported model without its export.json), plus `extra`."""
    return {**evaluator.summary(result), "step": None if step is None else int(step),
            "checkpoint": checkpoint_path, **(extra or {})}


def write_report(evaluator: Evaluator, result: Mapping[str, Any], output_dir: str | os.PathLike,
                 step: int | None, checkpoint_path: str | None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes the metric's report files into output_dir; returns the JSON summary written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_of(evaluator, result, step, checkpoint_path, extra)
    evaluator.write_report(result, output_dir, summary)
    return summary


def write_tensorboard(evaluator: Evaluator, result: Mapping[str, Any], summary_dir: str | os.PathLike,
                      step: int, pictures: Sequence[Image.Image] = ()) -> None:
    """At `step`: the metric's scalars, its precision/recall curves if any, and `pictures`."""
    writer = tf.summary.create_file_writer(str(summary_dir))
    with writer.as_default():
        for tag, value in evaluator.scalars(result).items():
            write_scalar(tag, value, step)
        curves = evaluator.precision_recall(result)
        if curves is not None:
            write_pr_curves(curves[0], step, curves[1], PR_CURVES_PREFIX)
        if pictures:
            write_image_list(IMAGES_TAG, pictures, step)
    writer.close()
