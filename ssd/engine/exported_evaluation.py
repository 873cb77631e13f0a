"""Evaluating an exported model (eval.py's `--exported_model`): the SavedModel or .tflite that
export.py wrote, scored on TFRecords exactly as a checkpoint is (`ssd.engine.evaluation`), so the
cost of the export (TFLite's resizing to uint8, int8 quantization) is measured with the same
metric, tables and report files.

The config and class names are the ones the export wrote beside the model
(`ssd.inference.exported`); the summary's step and checkpoint come from its export.json, plus
"exported_model", "format" and "quantize". Reports go to `output_dir`/<metric>, output_dir by
default beside the model (`default_output_dir`), never into a training directory's eval_<step>;
nothing goes to TensorBoard.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence, TextIO

from absl import logging

from ssd.config.loading import with_eval_batch_size
from ssd.data.input_fn import make_input_fn
from ssd.data.record_classes import disagreements, label_list, record_class_names
from ssd.data.record_files import DataError, count_records, resolve_record_files
from ssd.engine.evaluation import evaluate_and_report
from ssd.engine.evaluators import check_metric, make_evaluator
from ssd.inference.exported import ExportedModelError, load_exported
from ssd.modes import ModeKeys

EVAL_SUFFIX = "_eval"


def default_output_dir(model_path: str | os.PathLike) -> str:
    """Beside the model, named after it: exported/ssd300 -> exported/ssd300_eval,
    exported/lite/model.tflite -> exported/lite/model_eval."""
    path = os.path.normpath(os.fspath(model_path))
    root, extension = os.path.splitext(path)
    return (root if extension == ".tflite" else path) + EVAL_SUFFIX


def check_model_classes(model_path: str, class_names: Sequence[str], files: Sequence[str]) -> None:
    """ExportedModelError, one line, when the records name a label otherwise than the model."""
    record_names, unnamed = record_class_names(files)
    if unnamed:
        logging.warning("%d of %d record files (%s, ...) hold objects without class names: their "
                        "labels cannot be checked against the model's classes", len(unnamed),
                        len(files), unnamed[0])
    lines = disagreements(record_names, class_names)
    if lines:
        shown = files[0] + (f" and {len(files) - 1} more" if len(files) > 1 else "")
        raise ExportedModelError(
            f"{model_path}: the model's classes ({', '.join(class_names)}) are not the records' "
            f"({label_list(record_names)}) in {shown}: {lines[0]}{f' (and {len(lines) - 1} more)' if len(lines) > 1 else ''}")


def evaluate_exported(model_path: str | os.PathLike, data: str, *, metric: str | None = None,
                      output_dir: str | os.PathLike | None = None, batch_size: int | None = None,
                      num_threads: int | None = None, count_images: bool = True,
                      progress_stream: TextIO | None = None,
                      print_table: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Scores the exported model at `model_path` on the records of `data` with `metric` (default:
    the exported config's eval.metric); prints the table, writes the reports into `output_dir`
    (default `default_output_dir`), in its subdirectory named after the metric. Returns the JSON
    summary with "output_dir".

    Raises ExportedModelError (one line) for what is not an exported model or one whose classes
    disagree with the records, DataError for the data, ConfigError for a bad batch size.
    """
    exported = load_exported(model_path, num_threads)
    config = with_eval_batch_size(exported.config, batch_size, exported.files.config)
    metric = check_metric(metric or config.eval.metric)
    files = resolve_record_files(data)
    check_model_classes(exported.files.model, config.data.class_names, files)
    num_images = count_records(files) if count_images else None
    if num_images == 0:
        raise DataError(f"{data} holds no records ({len(files)} files: {', '.join(files[:3])}"
                        f"{', ...' if len(files) > 3 else ''})")
    evaluator = make_evaluator(metric, config, files)
    dataset = make_input_fn(files, config, ModeKeys.EVAL, encoded_images=True)(None)
    info = exported.info
    logging.info("evaluating %s (%s, from %s) with the %s metric", exported.files.model,
                 exported.files.kind, info.get("checkpoint", "an unknown checkpoint"), metric)
    extra = {"exported_model": exported.files.model, "format": exported.files.kind,
             "quantize": info.get("quantize")}
    base = output_dir if output_dir is not None else default_output_dir(exported.files.model)
    directory = os.path.join(os.fspath(base), metric)  # one directory per metric, as for checkpoints
    return evaluate_and_report(exported.detector, dataset, evaluator, info.get("step"),
                               info.get("checkpoint"), directory, None, num_images, data,
                               progress_stream, print_table, extra=extra)
