"""What an evaluator of one metric offers the evaluation loop, and the per-class status words
that every metric's results use.

The loop (`ssd.engine.evaluation`) feeds EVAL batches to an `Evaluator` and reports its result
without knowing which metric it is: the VOC and COCO evaluators (`ssd.engine.evaluators`) each say
how their result is printed, summarized as JSON, written as files and shown in TensorBoard.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Mapping

import numpy as np

STATUS_OK = "ok"
STATUS_NO_DETECTIONS = "no_detections"  # ground truth but no detection: AP 0
STATUS_NO_GROUND_TRUTH = "no_ground_truth"  # nothing to find: no AP, left out of the mean
STATUS_TEXT = {STATUS_NO_GROUND_TRUTH: "no ground truth", STATUS_NO_DETECTIONS: "no detections"}


def class_status(num_positives: int, num_detections: int) -> str:
    if num_positives == 0:
        return STATUS_NO_GROUND_TRUTH
    return STATUS_OK if num_detections else STATUS_NO_DETECTIONS


class Evaluator(abc.ABC):
    """Accumulates the detections and ground truth of an evaluation set and scores them."""

    metric: str  # the name eval.metric and eval.py's --metric give it

    @abc.abstractmethod
    def add_batch(self, image_ids: np.ndarray, original_shapes: np.ndarray,
                  detections: Mapping[str, Any], labels: Mapping[str, Any]) -> None:
        """One EVAL batch (numpy or eager tensors): detections {"boxes", "scores", "classes",
        "num_detections"}, labels {"boxes", "labels", "difficult", "num_boxes", and "is_crowd",
        "area" when the records have them}."""

    @abc.abstractmethod
    def result(self) -> dict[str, Any]:
        """The scores: {"metric", "classes": {name: AP or None}, "status", "num_images", ...}."""

    @abc.abstractmethod
    def summary(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON-ready part of a result, as the metric's own scorer writes it."""

    @abc.abstractmethod
    def format(self, result: Mapping[str, Any]) -> str:
        """The printed report."""

    @abc.abstractmethod
    def scalars(self, result: Mapping[str, Any]) -> dict[str, float]:
        """TensorBoard scalars by tag; undefined values have none."""

    def precision_recall(self, result: Mapping[str, Any]) -> tuple[dict, dict] | None:
        """(curves {name: (recall, precision)}, positives {name: count}) for TensorBoard's PR
        curves, or None when the metric has no such curves."""
        return None

    @abc.abstractmethod
    def write_report(self, result: Mapping[str, Any], output_dir: Path, summary: Mapping[str, Any]) -> None:
        """The report files of the result in output_dir (which exists), `summary` among them."""
