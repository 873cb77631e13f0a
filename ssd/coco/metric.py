"""The COCO detection metric, computed by pycocotools' COCOeval ("bbox"), and `COCOEvaluator`.

The numbers are COCOeval's own: AP is the 101-point interpolated precision averaged over the IoU
thresholds 0.50:0.05:0.95, at most 100 detections per image and category, crowd regions ignored;
the 12 summary numbers come out under the keys of STAT_KEYS (AP, AP50, AP75, APs, APm, APl,
AR1, AR10, AR100, ARs, ARm, ARl), unrounded. Where COCOeval reports -1 (no ground truth in that
area range at all) the result holds None.

Per class, AP@[.5:.95] and AP50 are read from COCOeval's accumulated precision at area "all",
100 detections. A class without non-crowd ground truth has no AP (COCOeval leaves it out of every
mean): None, status "no_ground_truth"; a class with ground truth but no detection has AP 0,
status "no_detections"; the others "ok" (the statuses of `ssd.evaluator`). The mean of the
per-class APs is the AP summary number; "mAP" repeats it so that VOC-shaped reports read both.

`COCOEvaluator` collects batches as `ssd.voc.metric.VOCEvaluator` does and works in two ways:
  * COCO data (given the category ids of the labels, from the converter's category map): image
    ids are COCO's (their text is an integer) and labels become COCO category ids, so its results
    JSON is what the COCO evaluation server takes.
  * Any other data (e.g. VOC-format test sets): the ground-truth COCO data set is built from the
    records. Images are numbered 1, 2, ... in the order they are added (the id's text is kept as
    "file_name"), categories are 1..K in class-list order, and an object's area is its box's in
    pixels. VOC's difficult objects become crowd regions (iscrowd=1), the only kind of ignored
    ground truth COCOeval has: a detection matching one is neither a true nor a false positive,
    however many match it, as in the VOC devkit. COCOeval measures overlap with a crowd region as
    intersection over the detection's own area, so a detection lying inside a difficult object is
    ignored too (VOC would call it a false positive when its IoU is below the threshold).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ssd.coco import results as coco_results
from ssd.coco.coords import normalized_to_coco
from ssd.voc.image_ids import image_id_text
from ssd.evaluator import STATUS_NO_GROUND_TRUTH, STATUS_OK, STATUS_TEXT, class_status

METRIC = "coco"
# pycocotools' summarize() order: key, AP or AR, IoU thresholds, area range, max detections
STATS = (
    ("AP", "AP", "0.50:0.95", "all", 100),
    ("AP50", "AP", "0.50", "all", 100),
    ("AP75", "AP", "0.75", "all", 100),
    ("APs", "AP", "0.50:0.95", "small", 100),
    ("APm", "AP", "0.50:0.95", "medium", 100),
    ("APl", "AP", "0.50:0.95", "large", 100),
    ("AR1", "AR", "0.50:0.95", "all", 1),
    ("AR10", "AR", "0.50:0.95", "all", 10),
    ("AR100", "AR", "0.50:0.95", "all", 100),
    ("ARs", "AR", "0.50:0.95", "small", 100),
    ("ARm", "AR", "0.50:0.95", "medium", 100),
    ("ARl", "AR", "0.50:0.95", "large", 100),
)
STAT_KEYS = tuple(key for key, *_ in STATS)
# Ground truth that went through normalized float32 coordinates is snapped back to the grid of
# annotation coordinates (COCO's have two decimals, VOC's are integers) when it lies this close
# (in pixels), so that in-process scoring equals scoring the annotation file: an IoU exactly on a
# threshold (0.8 = 120/150) must land on the same side.
GT_SNAP_TOLERANCE = 1e-3


# --- scoring a data set and its detections ---------------------------------------------------

def _quiet(verbose: bool):
    """pycocotools prints progress on stdout; a library call stays silent unless asked."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _coco_api(dataset: Mapping[str, Any]):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dict(dataset)
    coco.createIndex()
    return coco


def _load_results(ground_truth, results: Sequence[Mapping[str, Any]]):
    """COCO.loadRes on copies (it adds fields to its input); an empty list, which loadRes cannot
    take, becomes a results set without annotations."""
    if results:
        return ground_truth.loadRes([dict(entry) for entry in results])
    return _coco_api({"images": list(ground_truth.dataset["images"]),
                      "categories": list(ground_truth.dataset["categories"]), "annotations": []})


def _defined(value: float) -> float | None:
    return None if value <= -1 else float(value)


def _class_ap(precision: np.ndarray) -> float | None:
    """Mean of COCOeval precision entries over IoU and recall thresholds; -1 marks 'no ground truth'."""
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else None


def _class_names(categories: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """category id -> name; a name used by several categories gets its id appended."""
    names = [str(c.get("name", c["id"])) for c in categories]
    return {int(c["id"]): (name if names.count(name) == 1 else f"{name} (id {c['id']})")
            for c, name in zip(categories, names)}


def _counts(annotations: Sequence[Mapping[str, Any]], category_ids: Sequence[int],
            crowd: bool | None) -> dict[int, int]:
    counts = dict.fromkeys(category_ids, 0)
    for a in annotations:
        if crowd is None or bool(a.get("iscrowd", 0)) == crowd:
            counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    return counts


def evaluate_coco(dataset: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                  verbose: bool = False) -> dict[str, Any]:
    """Scores COCO results against a COCO ground-truth data set (both as parsed JSON).

    dataset: {"images": [{"id", ...}], "annotations": [{"id", "image_id", "category_id", "bbox",
    "area", "iscrowd"}], "categories": [{"id", "name"}]}; results: [{"image_id", "category_id",
    "bbox", "score"}] naming only ids of the data set (ValueError otherwise). With verbose, pycocotools prints its
    progress and summary. Returns {"metric": "coco", <STAT_KEYS>, "mAP", "classes": {name: AP or
    None}, "classes_AP50", "status", "category_ids", "num_images", "num_positives", "num_crowd",
    "num_detections"}, classes in category id order.
    """
    from pycocotools.cocoeval import COCOeval

    coco_results.check_known_ids(results, (i["id"] for i in dataset["images"]),
                                 (c["id"] for c in dataset["categories"]), "the results", "the ground truth")
    with _quiet(verbose):
        ground_truth = _coco_api(dataset)
        evaluation = COCOeval(ground_truth, _load_results(ground_truth, results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = {key: _defined(value) for key, value in zip(STAT_KEYS, evaluation.stats)}

    categories = sorted(dataset["categories"], key=lambda c: c["id"])
    names = _class_names(categories)
    params = evaluation.params
    precision = evaluation.eval["precision"]  # [IoU, recall, category, area, max detections]
    area_all = params.areaRngLbl.index("all")
    max_dets = params.maxDets.index(100)
    iou_50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    column = {int(c): k for k, c in enumerate(params.catIds)}
    aps, aps50 = {}, {}
    for category_id, name in names.items():
        k = column.get(category_id)
        per_class = precision[:, :, k, area_all, max_dets] if k is not None else None
        aps[name] = None if per_class is None else _class_ap(per_class)
        aps50[name] = None if per_class is None else _class_ap(per_class[iou_50])

    ids = list(names)
    positives = _counts(dataset["annotations"], ids, crowd=False)
    crowd = _counts(dataset["annotations"], ids, crowd=True)
    detections = _counts(results, ids, crowd=None)
    status = {}
    for category_id, name in names.items():
        # COCOeval scores a class only when it has non-crowd ground truth
        status[name] = (STATUS_NO_GROUND_TRUTH if aps[name] is None
                        else class_status(positives[category_id], detections[category_id]))
    return {"metric": METRIC, **stats, "mAP": stats["AP"], "classes": aps, "classes_AP50": aps50,
            "status": status, "category_ids": {name: cid for cid, name in names.items()},
            "num_images": len(dataset["images"]),
            "num_positives": {names[c]: n for c, n in positives.items() if c in names},
            "num_crowd": {names[c]: n for c, n in crowd.items() if c in names},
            "num_detections": {names[c]: n for c, n in detections.items() if c in names}}


def summary_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON summary of a result (all of it: every value is JSON-ready), keys as the scorer's."""
    return dict(result)


def write_summary(path: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """The summary JSON: the 12 numbers unrounded, per-class APs (null when undefined), counts."""
    return coco_results.write_json(path, summary_of(result), indent=2)


# --- accumulating over a data set ------------------------------------------------------------

def snap_to_annotation_grid(boxes_xywh: np.ndarray) -> np.ndarray:
    """Pixel values within GT_SNAP_TOLERANCE of a multiple of 0.01 become that multiple."""
    rounded = np.round(boxes_xywh, coco_results.BBOX_DECIMALS)
    return np.where(np.abs(boxes_xywh - rounded) <= GT_SNAP_TOLERANCE, rounded, boxes_xywh)


def _coco_image_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"image id {text!r} is not a COCO image id (a non-negative integer); "
                         f"without category ids, images are numbered in the order they come")
    return int(text)


class COCOEvaluator:
    """Collects ground truth and detections image by image and scores them with COCOeval.

    class_names: label l (1-based; 0 is background) is class_names[l - 1]. category_ids: the COCO
    category id of each label (the converter's category map), which also makes image ids COCO's;
    None numbers categories 1..K and images 1, 2, ... (see the module docstring).
    """

    def __init__(self, class_names: Sequence[str], category_ids: Sequence[int] | None = None,
                 verbose: bool = False):
        if not class_names:
            raise ValueError("class_names is empty")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class names repeat: {list(class_names)}")
        self.class_names = list(class_names)
        self.coco_ids = category_ids is not None
        ids = list(range(1, len(class_names) + 1)) if category_ids is None else [int(c) for c in category_ids]
        if len(ids) != len(self.class_names) or len(set(ids)) != len(ids):
            raise ValueError(f"{len(ids)} category ids {ids} for {len(self.class_names)} classes "
                             f"(one distinct id per class)")
        self.category_ids = np.asarray(ids, dtype=np.int64)
        self.verbose = verbose
        self._image_ids: dict[str, int] = {}  # id text -> COCO image id
        self._used_ids: set[int] = set()  # "5" and "005" are the same COCO image
        self._images: list[dict[str, Any]] = []
        self._annotations: list[dict[str, Any]] = []
        # per image (COCO id, boxes [D, 4] xywh, scores [D], category ids [D]): arrays, not
        # results entries, until they are needed (a million detections as dicts fill gigabytes)
        self._detections: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def num_images(self) -> int:
        return len(self._images)

    @property
    def coco_image_ids(self) -> dict[str, int]:
        """Image id text -> the integer id of the ground truth and results JSON."""
        return dict(self._image_ids)

    def _category_ids_of(self, labels: np.ndarray, what: str, image_id: str) -> np.ndarray:
        bad = labels[(labels < 1) | (labels > len(self.class_names))]
        if bad.size:
            raise ValueError(f"image {image_id!r}: {what} {bad.tolist()} outside 1..{len(self.class_names)}")
        return self.category_ids[labels - 1]

    def add_image(self, image_id: Any, height: float, width: float, gt_boxes_xywh: np.ndarray,
                  gt_labels: np.ndarray, gt_crowd: np.ndarray, det_boxes_xywh: np.ndarray,
                  det_scores: np.ndarray, det_classes: np.ndarray,
                  gt_areas: np.ndarray | None = None) -> int:
        """One image in COCO pixel boxes (x, y, w, h) and 1-based labels; returns its COCO id.

        gt_crowd: crowd regions or difficult objects (both ignored); gt_areas: the objects' areas
        in pixels (COCO's segmentation areas decide small/medium/large), default the box areas.
        """
        text = image_id_text(image_id)
        if text in self._image_ids:
            raise ValueError(f"image {text!r} added twice")
        gt_boxes = np.asarray(gt_boxes_xywh, dtype=np.float64).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
        gt_crowd = np.asarray(gt_crowd, dtype=bool).reshape(-1)
        areas = (gt_boxes[:, 2] * gt_boxes[:, 3] if gt_areas is None
                 else np.asarray(gt_areas, dtype=np.float64).reshape(-1))
        det_boxes = np.asarray(det_boxes_xywh, dtype=np.float64).reshape(-1, 4)
        det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
        det_classes = np.asarray(det_classes, dtype=np.int64).reshape(-1)
        if not len(gt_boxes) == len(gt_labels) == len(gt_crowd) == len(areas):
            raise ValueError(f"image {text!r}: {len(gt_boxes)} gt boxes, {len(gt_labels)} labels, "
                             f"{len(gt_crowd)} crowd/difficult flags, {len(areas)} areas")
        if not len(det_boxes) == len(det_scores) == len(det_classes):
            raise ValueError(f"image {text!r}: {len(det_boxes)} detection boxes, {len(det_scores)} "
                             f"scores, {len(det_classes)} classes")
        gt_categories = self._category_ids_of(gt_labels, "ground-truth labels", text)
        det_categories = self._category_ids_of(det_classes, "detection classes", text)
        coco_id = _coco_image_id(text) if self.coco_ids else len(self._images) + 1
        if coco_id in self._used_ids:
            raise ValueError(f"image {text!r}: COCO image id {coco_id} added twice")
        self._image_ids[text] = coco_id
        self._used_ids.add(coco_id)
        self._images.append({"id": coco_id, "width": int(round(width)), "height": int(round(height)),
                             "file_name": text})
        first = len(self._annotations) + 1
        self._annotations.extend(
            {"id": first + n, "image_id": coco_id, "category_id": int(c), "bbox": box,
             "area": float(area), "iscrowd": int(crowd)}
            for n, (box, c, crowd, area) in enumerate(zip(gt_boxes.tolist(), gt_categories, gt_crowd, areas)))
        self._detections.append((coco_id, det_boxes, det_scores, det_categories))
        return coco_id

    def add_batch(self, image_ids: Sequence[Any], original_shapes: np.ndarray,
                  detections: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  ground_truth: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  is_crowd: np.ndarray | None = None, areas: np.ndarray | None = None,
                  snap_ground_truth: bool = True) -> None:
        """A batch in the library's normalized convention (e.g. postprocess outputs + EVAL labels).

        detections: (boxes [B, K, 4], scores [B, K], classes [B, K], num_detections [B]).
        ground_truth: (boxes [B, M, 4], labels [B, M] (0 = padding), difficult [B, M], num_boxes [B]).
        original_shapes: [B, 2] (height, width) in pixels. is_crowd: optional [B, M] crowd flags
        (ignored like difficult objects); areas: optional [B, M] object areas in original pixels.
        With snap_ground_truth, gt pixel coordinates are snapped to the annotations' grid
        (`snap_to_annotation_grid`).
        """
        det_boxes, det_scores, det_classes, num_dets = (np.asarray(x) for x in detections)
        gt_boxes, gt_labels, gt_difficult, num_boxes = (np.asarray(x) for x in ground_truth)
        shapes = np.asarray(original_shapes).reshape(-1, 2)
        for i, image_id in enumerate(image_ids):
            height, width = float(shapes[i, 0]), float(shapes[i, 1])
            n, k = int(num_boxes[i]), int(num_dets[i])
            keep = gt_labels[i, :n] > 0
            ignored = gt_difficult[i, :n].astype(bool)
            if is_crowd is not None:
                ignored = ignored | np.asarray(is_crowd)[i, :n].astype(bool)
            gt_coco = normalized_to_coco(gt_boxes[i, :n][keep], height, width)
            if snap_ground_truth:
                gt_coco = snap_to_annotation_grid(gt_coco)
            self.add_image(image_id, height, width, gt_coco, gt_labels[i, :n][keep], ignored[keep],
                           normalized_to_coco(det_boxes[i, :k], height, width), det_scores[i, :k],
                           det_classes[i, :k], None if areas is None else np.asarray(areas)[i, :n][keep])

    def ground_truth_dataset(self) -> dict[str, Any]:
        """The ground truth as a COCO annotations JSON data set (instances_*.json's layout)."""
        categories = [{"id": int(c), "name": name} for c, name in zip(self.category_ids, self.class_names)]
        return {"images": list(self._images), "annotations": list(self._annotations),
                "categories": sorted(categories, key=lambda c: c["id"])}

    def results(self) -> list[dict[str, Any]]:
        """The detections as a COCO results JSON list, in the order they were added."""
        return [entry for detections in self._detections
                for entry in coco_results.detection_entries(*detections)]

    def result(self) -> dict[str, Any]:
        """`evaluate_coco` of everything added so far, classes in class-list order."""
        if not self._images:
            raise ValueError("no images were added")
        result = evaluate_coco(self.ground_truth_dataset(), self.results(), self.verbose)
        for key in ("classes", "classes_AP50", "status", "category_ids", "num_positives",
                    "num_crowd", "num_detections"):
            result[key] = {name: result[key][name] for name in self.class_names}
        return result

    def write_results(self, path: str | os.PathLike) -> Path:
        """The results JSON (`ssd.coco.results.write_results`)."""
        return coco_results.write_results(path, self.results())

    def write_ground_truth(self, path: str | os.PathLike) -> Path:
        """The ground-truth COCO JSON, so that the results file can be scored by
        `python -m ssd.coco.eval` or any COCO tool."""
        return coco_results.write_json(path, self.ground_truth_dataset())


# --- text ------------------------------------------------------------------------------------

_STAT_TITLES = {"AP": "Average Precision  (AP)", "AR": "Average Recall     (AR)"}


def format_stats(result: Mapping[str, Any]) -> str:
    """The 12 numbers in pycocotools' layout ("n/a" where it prints -1: no such ground truth)."""
    lines = []
    for key, kind, iou, area, max_dets in STATS:
        value = result[key]
        text = "  n/a" if value is None else f"{value:0.3f}"
        lines.append(f" {_STAT_TITLES[kind]} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {text}")
    return "\n".join(lines)


def format_table(result: Mapping[str, Any]) -> str:
    """Per-class AP@[.5:.95] and AP50 in percent, one decimal, with each class's status when not ok."""
    aps, aps50 = result["classes"], result.get("classes_AP50") or {}
    statuses = result.get("status") or {}
    width = max([len(name) for name in aps] + [len("mean")]) + 2

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{100.0 * value:.1f}"

    lines = [f"COCO AP (%), {result.get('num_images')} images",
             f"{'class':<{width}}{'AP':>6}{'AP50':>7}"]
    for name, ap in aps.items():
        status = statuses.get(name, STATUS_NO_GROUND_TRUTH if ap is None else STATUS_OK)
        lines.append(f"{name:<{width}}{fmt(ap):>6}{fmt(aps50.get(name)):>7}  "
                     f"{STATUS_TEXT.get(status, '')}".rstrip())
    lines.append("-" * (width + 13))
    lines.append(f"{'mean':<{width}}{fmt(result['AP']):>6}{fmt(result['AP50']):>7}")
    undefined = [name for name, ap in aps.items() if ap is None]
    if undefined:
        lines.append(f"n/a: no non-crowd ground truth, hence no AP ({', '.join(undefined)}); "
                     f"left out of the means")
    return "\n".join(lines)
