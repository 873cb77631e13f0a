"""Which metric scores an evaluation: the one place that picks a VOC or a COCO evaluator.

`make_evaluator(metric, config, data_files)` returns a `ssd.voc.metric.VOCEvaluator` for "voc07"
and "voc12", a `ssd.coco.metric.COCOEvaluator` for "coco". For records written by
`dataset/convert_coco.py` the COCO evaluator gets the category ids of the converter's category map
(`<name>_categories.json` beside the shards `<name>-N-of-M`), so that its results carry COCO's own
category ids and image ids (the records' `image/source_id`); the map's names must be the model's
`data.class_names`, label by label. Records without a map (VOC-format data, your own) are scored
against the ground truth the COCO evaluator builds from them.

`add_batch` feeds one EVAL batch to either evaluator: crowd regions are ignored ground truth for
both (COCO's rule; the VOC metric has only difficult objects to ignore), and the objects' areas
reach the COCO evaluator where the records know them.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence, Union

import numpy as np

from ssd.coco import metric as coco_metric

from ssd.voc import metric as voc_metric
from ssd.coco.categories import Category, CategoryError, category_map_path, read_category_map
from ssd.coco.metric import COCOEvaluator
from ssd.config.loading import Config
from ssd.data.record_files import DataError
from ssd.data.records import parse_shard_name
from ssd.voc.metric import VOCEvaluator

COCO = coco_metric.METRIC
METRICS = {**voc_metric.METRICS, COCO: "COCO AP@[.5:.95]"}
Evaluator = Union[VOCEvaluator, COCOEvaluator]


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


# --- the evaluator ---------------------------------------------------------------------------

def make_evaluator(metric: str, config: Config, data_files: Sequence[str] | None = None) -> Evaluator:
    """The evaluator of `metric` for a model of `config` on the records `data_files` (None: not
    known, e.g. an input function of unknown origin; the COCO metric then builds its ground truth
    from the records)."""
    class_names = list(config.data.class_names)
    if check_metric(metric) != COCO:
        return VOCEvaluator(class_names, metric)
    found = category_map_of(data_files) if data_files else None
    if found is None:
        return COCOEvaluator(class_names)
    path, categories = found
    return COCOEvaluator(class_names, coco_category_ids(categories, class_names, path))


def uses_coco_ids(evaluator: Evaluator) -> bool:
    """Whether the evaluator writes the COCO data set's own ids (its ground truth is that data
    set's annotation file, so it is not written)."""
    return isinstance(evaluator, COCOEvaluator) and evaluator.coco_ids


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


def add_batch(evaluator: Evaluator, image_ids: np.ndarray, original_shapes: np.ndarray,
              detections: Mapping[str, Any], labels: Mapping[str, Any]) -> None:
    """One EVAL batch (numpy or eager tensors): detections {"boxes", "scores", "classes",
    "num_detections"}, labels {"boxes", "labels", "difficult", "num_boxes", and "is_crowd",
    "area" when the records have them}."""
    labels = {key: np.asarray(value) for key, value in labels.items()}
    dets = tuple(np.asarray(detections[k]) for k in ("boxes", "scores", "classes", "num_detections"))
    is_crowd = labels.get("is_crowd")
    difficult = labels["difficult"].astype(bool)
    if isinstance(evaluator, COCOEvaluator):
        truth = (labels["boxes"], labels["labels"], difficult, labels["num_boxes"])
        evaluator.add_batch(image_ids, original_shapes, dets, truth, is_crowd=is_crowd,
                            areas=_known_areas(labels, original_shapes))
        return
    if is_crowd is not None:  # a crowd region is no object to find: ignored like a difficult one
        difficult = difficult | is_crowd.astype(bool)
    evaluator.add_batch(image_ids, original_shapes, dets,
                        (labels["boxes"], labels["labels"], difficult, labels["num_boxes"]))
