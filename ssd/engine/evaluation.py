"""The evaluation loop: a `Detector` over an EVAL dataset into an evaluator of one metric.

What eval.py and the Estimator's evaluation during training share, so that both report the same
numbers: `evaluate` feeds the batches and keeps the first images for pictures;
`evaluate_and_report` then prints, writes and summarizes the result, whatever the detections come
from (a checkpoint, `ssd.engine.checkpoint_evaluation`; an exported model,
`ssd.engine.exported_evaluation`). The reports are `ssd.engine.evaluation_reports`, the
pictures `ssd.engine.evaluation_pictures`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, TextIO

import numpy as np
import tensorflow as tf

from ssd.data.record_files import DataError
from ssd.engine.evaluation_pictures import EVAL_IMAGES, evaluation_pictures
from ssd.engine.evaluation_reports import summary_of, write_report, write_tensorboard
from ssd.evaluator import Evaluator
from ssd.inference.detector import Detector
from ssd.progress import Progress


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
        evaluator.add_batch(features["image_id"].numpy(), features["original_shape"].numpy(),
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


def evaluate_and_report(detector, dataset: tf.data.Dataset, evaluator: Evaluator, step: int | None,
                        source: str | None, output_dir: str | os.PathLike | None,
                        summary_dir: str | os.PathLike | None, num_images: int | None = None,
                        data_name: str = "the data", progress_stream: TextIO | None = None,
                        print_table: Callable[[str], None] | None = print,
                        extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`evaluate`, then the metric's table printed, its report written into `output_dir` (which
    may contain "{step}"; None: no files) and TensorBoard's summaries into `summary_dir` (None:
    none, and no pictures kept; they need `detector.config`).

    `step` and `source` (the checkpoint) label the summary; `extra` joins the written summary,
    with images_per_second. Returns the JSON summary (plus "output_dir" when reports were written).
    """
    samples = EVAL_IMAGES if summary_dir is not None else 0
    stats = evaluate(detector, dataset, evaluator, num_images, data_name, progress_stream,
                     num_samples=samples)
    result = evaluator.result()
    if print_table is not None:
        print_table(evaluator.format(result))
    summary = summary_of(evaluator, result, step, source)
    if output_dir is not None:
        directory = str(output_dir).replace("{step}", str(step))
        summary = write_report(evaluator, result, directory, step, source,
                               extra={"images_per_second": stats["images_per_second"], **(extra or {})})
        summary["output_dir"] = directory
    if summary_dir is not None:
        write_tensorboard(evaluator, result, summary_dir, step,
                          evaluation_pictures(stats["samples"], detector.config))
    return summary
