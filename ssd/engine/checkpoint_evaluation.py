"""Evaluating checkpoints: one, or each new one of a training run as it appears (eval.py's
`--watch`). Restores it into the detector, runs the evaluation loop, prints the metric's report and
writes it (`ssd.engine.evaluation_reports`). Checkpoints are found, restored and watched by
`ssd.modeling.checkpoints`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence, TextIO

from absl import logging

from ssd.config.loading import Config
from ssd.data.input_fn import make_input_fn
from ssd.data.record_files import DataError, count_records, resolve_record_files
from ssd.engine import evaluation_reports as reports
from ssd.engine.evaluation import evaluate_and_report
from ssd.engine.evaluators import check_metric, make_evaluator
from ssd.inference.detector import Detector, build_inference_model
from ssd.modeling.checkpoints import (CheckpointRemovedError, DamagedCheckpointError, find_checkpoint,
                                      restore_checkpoint, watch_checkpoints)
from ssd.modes import ModeKeys


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
    return evaluate_and_report(detector, input_fn(None), evaluator, step, checkpoint_path, output_dir,
                               summary_dir, num_images, data_name, progress_stream, print_table)


def run_evaluation(config: Config, model_dir: str, data: str, *, checkpoint_path: str | None = None,
                   metric: str | None = None, output_dir: str | None = None, watch: bool = False,
                   watch_timeout_secs: float | None = 3600.0, watch_interval_secs: float = 30.0,
                   precision: str = "float32", jit_compile: bool = False, count_images: bool = True,
                   progress_stream: TextIO | None = None,
                   print_table: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """What `eval.py` does: evaluates one checkpoint, or with `watch` each new one until the
    checkpoint at train.max_steps has been evaluated or `watch_timeout_secs` pass without one.

    Reports go to <output_dir>/<metric> (output_dir defaulting to model_dir/eval_<step>; with
    watch, <output_dir>/eval_<step>/<metric>: `evaluation_reports.report_dir_template`),
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
    if count_images:  # reads every file through: seconds for large data sets
        logging.info("counting the images of %s (%d files)", data, len(files))
    num_images = count_records(files) if count_images else None
    if num_images == 0:
        raise DataError(f"{data} holds no records ({len(files)} files: {', '.join(files[:3])}"
                        f"{', ...' if len(files) > 3 else ''})")
    make_evaluator(metric, config, files)  # a category map that does not fit fails here, once
    input_fn = make_input_fn(files, config, ModeKeys.EVAL)
    detector = Detector(build_inference_model(config, precision), config, jit_compile)
    template = reports.report_dir_template(model_dir, output_dir, metric, per_step=watch)
    summaries = []
    for path in checkpoints:
        try:
            summary = evaluate_checkpoint(detector, path, input_fn, metric, template,
                                          reports.summary_dir(model_dir), num_images, data,
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
