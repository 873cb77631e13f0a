"""The evaluators of the VOC07, VOC12 and COCO metrics (`ssd.evaluator.Evaluator`), and the one
place that picks one.

`make_evaluator(metric, config, data_files)` returns a `VOCMetric` for "voc07" and "voc12", a
`COCOMetric` for "coco". For records written by `dataset/convert_coco.py` the COCO evaluator gets
the category ids of the converter's category map (`<name>_categories.json` beside the shards
`<name>-N-of-M`), so that its results carry COCO's own category ids and image ids (the records'
`image/source_id`); the map's names must be the model's `data.class_names`, label by label.
Records without a map (VOC-format data, your own) are scored against the ground truth the COCO
evaluator builds from them.

Crowd regions are ignored ground truth for both metrics (COCO's rule; the VOC metric has only
difficult objects to ignore), and the objects' areas reach the COCO metric where the records know
them.

Reports. VOC: the devkit's result files (RESULTS_SUBDIR), SUMMARY_FILENAME and the
precision/recall plot CURVES_FILENAME; in TensorBoard "mAP", "classes/<name>" and the per-class
precision/recall curves. COCO: the detections as a COCO results JSON (DETECTIONS_FILENAME), for
records without a category map the ground truth they were scored against (GROUND_TRUTH_FILENAME,
so that `python -m ssd.coco.eval` re-scores them), and SUMMARY_FILENAME as `python -m
ssd.coco.eval --output_json` writes it; in TensorBoard the 12 numbers (COCO_PREFIX + "AP", ...)
and per-class AP@[.5:.95] (COCO_CLASSES_PREFIX + name).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ssd.coco import metric as coco_metric
from ssd.coco.categories import Category, CategoryError, category_map_path, read_category_map
from ssd.coco.results import write_json
from ssd.config.loading import Config
from ssd.data.record_files import DataError
from ssd.data.records import parse_shard_name
from ssd.draw import draw_precision_recall
from ssd.evaluator import Evaluator
from ssd.voc import metric as voc_metric
from ssd.voc import table as voc_table

COCO = coco_metric.METRIC
METRICS = {**voc_metric.METRICS, COCO: "COCO AP@[.5:.95]"}

SUMMARY_FILENAME = "summary.json"
CURVES_FILENAME = "precision_recall.png"  # VOC
RESULTS_SUBDIR = "results"  # VOC: the devkit's comp4_det_test_<class>.txt files
DETECTIONS_FILENAME = "detections.json"  # COCO: the results JSON
GROUND_TRUTH_FILENAME = "ground_truth.json"  # COCO, records without a category map
COCO_PREFIX = "coco/"  # TensorBoard: the 12 COCO numbers
COCO_CLASSES_PREFIX = "coco_classes/"  # TensorBoard: per-class AP@[.5:.95]


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    return metric


# --- the category map of COCO-converted records ----------------------------------------------

def category_map_of(data_files: Sequence[str]) -> tuple[str, list[Category]] | None:
    """(path, categories) of the converter's category map beside the shards of `data_files`, or
    None when they have none. DataError when the files mix data sets with and without a map, or
    with different maps, or a map cannot be read."""
    found: dict[str, list[Category] | None] = {}
    for path in data_files:
        shard = parse_shard_name(path)
        map_path = (os.fspath(category_map_path(os.path.dirname(os.fspath(path)), shard[0]))
                    if shard is not None else None)
        if map_path in found:
            continue
        if map_path is None or not os.path.isfile(map_path):
            found[map_path or os.fspath(path)] = None
            continue
        try:
            found[map_path] = read_category_map(map_path)
        except CategoryError as e:
            raise DataError(str(e)) from None
    maps = {path: categories for path, categories in found.items() if categories is not None}
    if not maps:
        return None
    if len(maps) < len(found):
        without = sorted(path for path, categories in found.items() if categories is None)
        raise DataError(f"the COCO metric cannot mix COCO-converted records (category map "
                        f"{sorted(maps)[0]}) with records that have no category map ({without[0]})")
    (first_path, first), *others = sorted(maps.items())
    for path, categories in others:
        if categories != first:
            raise DataError(f"the data sets' category maps differ: {first_path} and {path}")
    return first_path, first


def coco_category_ids(categories: Sequence[Category], class_names: Sequence[str],
                      source: str) -> list[int]:
    """The COCO category id of each label; DataError unless the map names the model's classes
    in label order."""
    names = [c.name for c in categories]
    if names != list(class_names):
        raise DataError(f"{source}: the data's categories {names} are not the model's "
                        f"data.class_names {list(class_names)} (label by label); evaluate with "
                        f"the model trained on this data or convert the data with its classes")
    return [c.coco_id for c in categories]


# --- the evaluators ----------------------------------------------------------------------------

def _batch_arrays(detections: Mapping[str, Any], labels: Mapping[str, Any]):
    labels = {key: np.asarray(value) for key, value in labels.items()}
    dets = tuple(np.asarray(detections[k]) for k in ("boxes", "scores", "classes", "num_detections"))
    return dets, labels


def _known_areas(labels: Mapping[str, np.ndarray], original_shapes: np.ndarray) -> np.ndarray | None:
    """The objects' areas in pixels where the records know them (COCO's segmentation areas), their
    boxes' areas elsewhere; None when no record of the batch knows one (the evaluator then takes
    the box areas on its own)."""
    areas = labels.get("area")
    if areas is None:
        return None
    areas = np.asarray(areas, dtype=np.float64)
    valid = np.arange(areas.shape[1])[np.newaxis] < np.asarray(labels["num_boxes"])[:, np.newaxis]
    if areas.size == 0 or not np.any((areas >= 0) & valid):
        return None
    boxes = np.asarray(labels["boxes"], dtype=np.float64)
    shapes = np.asarray(original_shapes, dtype=np.float64).reshape(-1, 1, 2)
    box_areas = ((boxes[..., 2] - boxes[..., 0]) * shapes[..., 0]
                 * (boxes[..., 3] - boxes[..., 1]) * shapes[..., 1])
    return np.where(areas >= 0, areas, box_areas)


class VOCMetric(Evaluator):
    """VOC07 (11-point) or VOC12 (all-point) AP per class, computed by `ssd.voc.metric`."""

    def __init__(self, class_names: Sequence[str], metric: str):
        self.metric = metric
        self.scorer = voc_metric.VOCEvaluator(class_names, metric)

    def add_batch(self, image_ids, original_shapes, detections, labels) -> None:
        dets, labels = _batch_arrays(detections, labels)
        ignored = labels["difficult"].astype(bool)
        if "is_crowd" in labels:  # a crowd region is no object to find: ignored like a difficult one
            ignored = ignored | labels["is_crowd"].astype(bool)
        self.scorer.add_batch(image_ids, original_shapes, dets,
                              (labels["boxes"], labels["labels"], ignored, labels["num_boxes"]))

    def result(self) -> dict[str, Any]:
        return self.scorer.result()

    def summary(self, result):
        return voc_metric.summary_of(result)

    def format(self, result) -> str:
        return voc_table.format_table(result)

    def scalars(self, result) -> dict[str, float]:
        tags = {"mAP": result["mAP"], **{f"classes/{name}": ap for name, ap in result["classes"].items()}}
        return {tag: float(value) for tag, value in tags.items() if value is not None}

    def precision_recall(self, result):
        return result["precision_recall"], result["num_positives"]

    def write_report(self, result, output_dir: Path, summary) -> None:
        self.scorer.write_results(output_dir / RESULTS_SUBDIR)
        write_json(output_dir / SUMMARY_FILENAME, dict(summary), indent=2)
        m_ap = result["mAP"]
        title = (f"{METRICS[self.metric]} precision/recall {_what(summary)}, "
                 f"mAP {'n/a' if m_ap is None else f'{100 * m_ap:.1f}'}")
        draw_precision_recall(result["precision_recall"], result["classes"], title=title).save(
            output_dir / CURVES_FILENAME)


def _what(summary: Mapping[str, Any]) -> str:
    """What was scored, for a title: "at step N", or the exported model's format and step."""
    step = "an unknown step" if summary.get("step") is None else f"step {summary['step']}"
    if not summary.get("exported_model"):
        return f"at {step}"
    quantize = f" {summary['quantize']}" if summary.get("quantize") else ""
    return f"of the {summary.get('format')}{quantize} export of {step}"


class COCOMetric(Evaluator):
    """COCO's 12 numbers and per-class AP@[.5:.95], computed by pycocotools (`ssd.coco.metric`)."""

    metric = COCO

    def __init__(self, class_names: Sequence[str], category_ids: Sequence[int] | None = None):
        self.scorer = coco_metric.COCOEvaluator(class_names, category_ids)

    @property
    def uses_coco_ids(self) -> bool:
        """Whether the results carry a COCO data set's own ids (whose annotation file is then the
        ground truth, so none is written)."""
        return bool(self.scorer.coco_ids)

    def add_batch(self, image_ids, original_shapes, detections, labels) -> None:
        dets, labels = _batch_arrays(detections, labels)
        truth = (labels["boxes"], labels["labels"], labels["difficult"].astype(bool), labels["num_boxes"])
        self.scorer.add_batch(image_ids, original_shapes, dets, truth, is_crowd=labels.get("is_crowd"),
                              areas=_known_areas(labels, original_shapes))

    def result(self) -> dict[str, Any]:
        return self.scorer.result()

    def summary(self, result):
        return coco_metric.summary_of(result)

    def format(self, result) -> str:
        return coco_metric.format_stats(result) + "\n\n" + coco_metric.format_table(result)

    def scalars(self, result) -> dict[str, float]:
        tags = {**{COCO_PREFIX + key: result[key] for key in coco_metric.STAT_KEYS},
                **{COCO_CLASSES_PREFIX + name: ap for name, ap in result["classes"].items()}}
        return {tag: float(value) for tag, value in tags.items() if value is not None}

    def write_report(self, result, output_dir: Path, summary) -> None:
        self.scorer.write_results(output_dir / DETECTIONS_FILENAME)
        if not self.uses_coco_ids:
            self.scorer.write_ground_truth(output_dir / GROUND_TRUTH_FILENAME)
        coco_metric.write_summary(output_dir / SUMMARY_FILENAME, summary)


def make_evaluator(metric: str, config: Config, data_files: Sequence[str] | None = None) -> Evaluator:
    """The evaluator of `metric` for a model of `config` on the records `data_files` (None: not
    known, e.g. an input function of unknown origin; the COCO metric then builds its ground truth
    from the records)."""
    class_names = list(config.data.class_names)
    if check_metric(metric) != COCO:
        return VOCMetric(class_names, metric)
    found = category_map_of(data_files) if data_files else None
    if found is None:
        return COCOMetric(class_names)
    path, categories = found
    return COCOMetric(class_names, coco_category_ids(categories, class_names, path))
