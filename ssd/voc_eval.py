"""The PASCAL VOC detection metric, computed as the official devkit's VOCevaldet does.

Per class:
  1. Detections are sorted by decreasing score with a stable sort (equal scores keep file order).
  2. Each detection is compared with every ground truth of its class in its image, difficult and
     already matched ones included, in 1-based inclusive pixel coordinates ("+1" widths); a pair
     counts only when the intersection has iw > 0 and ih > 0. The ground truth with the largest
     overlap is taken (the first one on ties); there is no fall-back to the next best one.
  3. Overlap >= iou_threshold (inclusive): a difficult ground truth makes the detection ignored,
     an unmatched one makes it a true positive (and matched), a matched one a false positive
     (duplicate). Smaller overlap: false positive.
  4. recall = cumsum(tp) / npos (npos counts non-difficult ground truths),
     precision = cumsum(tp) / (cumsum(tp) + cumsum(fp)).
  5. AP: "voc07" is the 11-point mean over the thresholds np.arange(0, 1.1, 0.1) (whose 4th value is
     0.30000000000000004) of the maximum precision at recall >= t, 0 where none; "voc12" is the area
     under the right-to-left maximum precision envelope over all points.

A class without non-difficult ground truth has no AP (the devkit divides by zero); it is reported
as None and left out of the mean.

Precision is 0/0 before the first counted (non-ignored) detection. The devkit keeps that NaN and
relies on MATLAB's `max` skipping NaN; here it is 0, which gives the same AP (precision is never
negative), except when every detection of a class is ignored: the devkit's AP is then NaN, here 0.

Command line (reads VOC XML annotations and `comp4_det_test_<class>.txt` result files):
    python -m ssd.voc_eval --annotations_dir DIR --imageset FILE --results_dir DIR [--metric voc07]
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from ssd.config import VOC_CLASSES
from ssd.voc_coords import normalized_to_voc

METRICS = {"voc07": "VOC07 11-point", "voc12": "VOC2010+ all-point"}
RESULT_PREFIX = "comp4_det_test_"
# Ground truth that went through normalized float32 coordinates is snapped back to the integer
# pixels of the annotation when it lies this close (in pixels), so that in-process scoring equals
# scoring the original XML files.
GT_SNAP_TOLERANCE = 1e-3

log = logging.getLogger(__name__)


# --- the metric ------------------------------------------------------------------------------

def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP of one precision/recall curve (points in detection order)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            reached = recall >= t
            p = float(np.max(precision[reached])) if reached.any() else 0.0
            ap += p / 11.0
        return ap
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * envelope[steps]))


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")


def _best_ground_truth(det_image: np.ndarray, det_boxes: np.ndarray, gt_starts: np.ndarray,
                       gt_counts: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every detection, the max overlap with its image's ground truths and that gt's index.

    Ground truths of one image occupy gt_boxes[start:start + count]. All (detection, gt) pairs are
    laid out flat, so the work is vectorized however unevenly the gts are spread over images.
    Returns (ovmax [D], jmax [D]) with ovmax = -inf (jmax = -1) where no pair has iw > 0, ih > 0.
    """
    num_dets = len(det_image)
    ovmax = np.full(num_dets, -np.inf)
    jmax = np.full(num_dets, -1, dtype=np.int64)
    pairs_per_det = gt_counts[det_image]
    num_pairs = int(pairs_per_det.sum())
    if num_pairs == 0:
        return ovmax, jmax
    pair_begin = np.cumsum(pairs_per_det) - pairs_per_det
    pair_det = np.repeat(np.arange(num_dets), pairs_per_det)
    pair_gt = np.arange(num_pairs) - pair_begin[pair_det] + gt_starts[det_image][pair_det]
    b = det_boxes[pair_det]
    g = gt_boxes[pair_gt]
    # the devkit's arithmetic, operation for operation, so that 0.5 boundaries land identically
    iw = np.minimum(b[:, 2], g[:, 2]) - np.maximum(b[:, 0], g[:, 0]) + 1.0
    ih = np.minimum(b[:, 3], g[:, 3]) - np.maximum(b[:, 1], g[:, 1]) + 1.0
    inter = iw * ih
    union = ((b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
             + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = inter / union
    # NaN (degenerate boxes) never beats the running maximum in the devkit's `ov > ovmax`
    overlap = np.where((iw > 0) & (ih > 0) & ~np.isnan(overlap), overlap, -np.inf)

    has_pairs = pairs_per_det > 0
    segment_begin = pair_begin[has_pairs]
    segment_max = np.maximum.reduceat(overlap, segment_begin)
    at_max = overlap == np.repeat(segment_max, pairs_per_det[has_pairs])
    first_at_max = np.minimum.reduceat(np.where(at_max, np.arange(num_pairs), num_pairs),
                                       segment_begin)
    found = segment_max > -np.inf
    rows = np.flatnonzero(has_pairs)[found]
    ovmax[rows] = segment_max[found]
    jmax[rows] = pair_gt[first_at_max[found]]
    return ovmax, jmax


def _evaluate_indexed(det_image: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
                      gt_image: np.ndarray, gt_boxes: np.ndarray, gt_difficult: np.ndarray,
                      iou_threshold: float, metric: str) -> tuple[np.ndarray, np.ndarray, float | None, int]:
    """evaluate_class with images as non-negative integer indices (the fast path)."""
    _check_metric(metric)
    det_image = np.asarray(det_image, dtype=np.int64).reshape(-1)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    gt_image = np.asarray(gt_image, dtype=np.int64).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_difficult = np.asarray(gt_difficult, dtype=bool).reshape(-1)
    npos = int(np.count_nonzero(~gt_difficult))

    order = np.argsort(-det_scores, kind="stable")
    det_image, det_boxes = det_image[order], det_boxes[order]

    # gts grouped by image, each image's gts kept in their original order (first wins on ties)
    gt_order = np.argsort(gt_image, kind="stable")
    gt_image, gt_boxes, gt_difficult = gt_image[gt_order], gt_boxes[gt_order], gt_difficult[gt_order]
    num_images = int(max(det_image.max(initial=-1), gt_image.max(initial=-1))) + 1
    gt_counts = np.bincount(gt_image, minlength=num_images)
    gt_starts = np.cumsum(gt_counts) - gt_counts

    ovmax, jmax = _best_ground_truth(det_image, det_boxes, gt_starts, gt_counts, gt_boxes)
    assigned = ovmax >= iou_threshold
    difficult_hit = assigned & gt_difficult[np.maximum(jmax, 0)]
    claims = np.flatnonzero(assigned & ~difficult_hit)
    # in score order the first claim on a gt is the true positive, later ones are duplicates
    _, first_claim = np.unique(jmax[claims], return_index=True)
    tp = np.zeros(len(det_image))
    tp[claims[first_claim]] = 1.0
    fp = np.where(difficult_hit | (tp > 0), 0.0, 1.0)

    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    counted = tp + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / npos if npos else np.zeros_like(tp)
        precision = np.where(counted > 0, tp / counted, 0.0)
    if npos == 0:
        return recall, precision, None, 0
    return recall, precision, voc_ap(recall, precision, metric == "voc07"), npos


def evaluate_class(detections: tuple[Sequence[Hashable], Sequence[float], np.ndarray],
                   ground_truth: Mapping[Hashable, tuple[np.ndarray, np.ndarray]],
                   iou_threshold: float = 0.5,
                   metric: str = "voc07") -> tuple[np.ndarray, np.ndarray, float | None, int]:
    """Scores one class.

    detections: (image_ids [D], scores [D], boxes [D, 4] VOC xmin, ymin, xmax, ymax, 1-based), in
      file order (it decides ties in score).
    ground_truth: image_id -> (boxes [N, 4] VOC, difficult [N] bool), this class's objects only,
      in annotation order (it decides ties in overlap). A detection on an image missing from the
      mapping has no ground truth to match: a false positive.
    Returns (recall [D], precision [D], ap or None when npos == 0, npos).
    """
    image_ids, scores, boxes = detections
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(image_ids) == len(scores) == len(boxes):
        raise ValueError(f"detections: {len(image_ids)} image ids, {len(scores)} scores and {len(boxes)} boxes")
    index = {image_id: i for i, image_id in enumerate(ground_truth)}
    gt_image, gt_boxes, gt_difficult = [], [], []
    for image_id, (b, d) in ground_truth.items():
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
        d = np.asarray(d, dtype=bool).reshape(-1)
        if len(b) != len(d):
            raise ValueError(f"ground truth of image {image_id!r}: {len(b)} boxes but {len(d)} difficult flags")
        gt_image.append(np.full(len(b), index[image_id]))
        gt_boxes.append(b)
        gt_difficult.append(d)
    det_image = [index.setdefault(image_id, len(index)) for image_id in image_ids]
    return _evaluate_indexed(det_image, scores, boxes, np.concatenate(gt_image or [[]]),
                             np.concatenate(gt_boxes or [np.zeros((0, 4))]),
                             np.concatenate(gt_difficult or [[]]), iou_threshold, metric)


def mean_ap(aps: Mapping[str, float | None]) -> float | None:
    """Mean over the classes whose AP is defined; None when there is none."""
    defined = [ap for ap in aps.values() if ap is not None]
    return float(np.mean(defined)) if defined else None


# --- accumulating over a data set ------------------------------------------------------------

def _snap_to_pixels(voc_boxes: np.ndarray) -> np.ndarray:
    rounded = np.round(voc_boxes)
    return np.where(np.abs(voc_boxes - rounded) <= GT_SNAP_TOLERANCE, rounded, voc_boxes)


def _as_str(image_id: Any) -> str:
    if isinstance(image_id, bytes):
        return image_id.decode("utf-8")
    if isinstance(image_id, np.ndarray) and image_id.ndim == 0:
        return _as_str(image_id.item())
    return str(image_id)


class VOCEvaluator:
    """Collects ground truth and detections image by image and scores them with the VOC metric.

    Class labels are 1-based indices into class_names (0 is background). Detection order inside
    an image, and the order in which images are added, is the "file order" that breaks score ties;
    write_results writes the same order, so re-scoring the files gives the same numbers.
    """

    def __init__(self, class_names: Sequence[str], metric: str = "voc07", iou_threshold: float = 0.5):
        _check_metric(metric)
        if not class_names:
            raise ValueError("class_names is empty")
        self.class_names = list(class_names)
        self.metric = metric
        self.iou_threshold = iou_threshold
        self._image_index: dict[str, int] = {}
        self._gt: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._det: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def num_images(self) -> int:
        return len(self._image_index)

    @property
    def image_ids(self) -> list[str]:
        return list(self._image_index)

    def _check_labels(self, labels: np.ndarray, what: str, image_id: str) -> None:
        bad = labels[(labels < 1) | (labels > len(self.class_names))]
        if bad.size:
            raise ValueError(f"image {image_id!r}: {what} {bad.tolist()} outside 1..{len(self.class_names)}")

    def add_image(self, image_id: Any, gt_boxes_voc: np.ndarray, gt_labels: np.ndarray,
                  gt_difficult: np.ndarray, det_boxes_voc: np.ndarray, det_scores: np.ndarray,
                  det_classes: np.ndarray) -> None:
        """One image: VOC pixel boxes (xmin, ymin, xmax, ymax, 1-based), 1-based class labels."""
        image_id = _as_str(image_id)
        if image_id in self._image_index:
            raise ValueError(f"image {image_id!r} added twice")
        gt_boxes = np.asarray(gt_boxes_voc, dtype=np.float64).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
        gt_difficult = np.asarray(gt_difficult, dtype=bool).reshape(-1)
        det_boxes = np.asarray(det_boxes_voc, dtype=np.float64).reshape(-1, 4)
        det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
        det_classes = np.asarray(det_classes, dtype=np.int64).reshape(-1)
        if not len(gt_boxes) == len(gt_labels) == len(gt_difficult):
            raise ValueError(f"image {image_id!r}: {len(gt_boxes)} gt boxes, {len(gt_labels)} labels, "
                             f"{len(gt_difficult)} difficult flags")
        if not len(det_boxes) == len(det_scores) == len(det_classes):
            raise ValueError(f"image {image_id!r}: {len(det_boxes)} detection boxes, {len(det_scores)} "
                             f"scores, {len(det_classes)} classes")
        self._check_labels(gt_labels, "ground-truth labels", image_id)
        self._check_labels(det_classes, "detection classes", image_id)
        self._image_index[image_id] = len(self._image_index)
        self._gt.append((gt_boxes, gt_labels, gt_difficult))
        self._det.append((det_boxes, det_scores, det_classes))

    def add_batch(self, image_ids: Sequence[Any], original_shapes: np.ndarray,
                  detections: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  ground_truth: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  snap_ground_truth: bool = True) -> None:
        """A batch in the library's normalized convention (e.g. postprocess outputs + EVAL labels).

        detections: (boxes [B, K, 4], scores [B, K], classes [B, K], num_detections [B]).
        ground_truth: (boxes [B, M, 4], labels [B, M] (0 = padding), difficult [B, M], num_boxes [B]).
        original_shapes: [B, 2] (height, width) in pixels.
        With snap_ground_truth, gt pixel coordinates within GT_SNAP_TOLERANCE of an integer are
        rounded to it (annotations are integer pixels; float32 normalization blurs them).
        """
        det_boxes, det_scores, det_classes, num_dets = (np.asarray(x) for x in detections)
        gt_boxes, gt_labels, gt_difficult, num_boxes = (np.asarray(x) for x in ground_truth)
        shapes = np.asarray(original_shapes).reshape(-1, 2)
        for i, image_id in enumerate(image_ids):
            height, width = float(shapes[i, 0]), float(shapes[i, 1])
            n = int(num_boxes[i])
            keep = gt_labels[i, :n] > 0
            gt_voc = normalized_to_voc(gt_boxes[i, :n][keep], height, width)
            if snap_ground_truth:
                gt_voc = _snap_to_pixels(gt_voc)
            k = int(num_dets[i])
            self.add_image(image_id, gt_voc, gt_labels[i, :n][keep], gt_difficult[i, :n][keep],
                           normalized_to_voc(det_boxes[i, :k], height, width),
                           det_scores[i, :k], det_classes[i, :k])

    def _flat(self):
        """All ground truth and detections as flat arrays with integer image indices."""
        gt_counts = [len(labels) for _, labels, _ in self._gt]
        det_counts = [len(scores) for _, scores, _ in self._det]
        gt = (np.repeat(np.arange(len(self._gt)), gt_counts),
              np.concatenate([b for b, _, _ in self._gt] or [np.zeros((0, 4))]),
              np.concatenate([lab for _, lab, _ in self._gt] or [np.zeros(0, np.int64)]),
              np.concatenate([d for _, _, d in self._gt] or [np.zeros(0, bool)]))
        det = (np.repeat(np.arange(len(self._det)), det_counts),
               np.concatenate([b for b, _, _ in self._det] or [np.zeros((0, 4))]),
               np.concatenate([s for _, s, _ in self._det] or [np.zeros(0)]),
               np.concatenate([c for _, _, c in self._det] or [np.zeros(0, np.int64)]))
        return gt, det

    def result(self) -> dict[str, Any]:
        """{"metric", "classes": {name: ap or None}, "mAP", "num_images",
        "precision_recall": {name: (recall, precision)}, "num_positives": {name: npos}}."""
        (gt_image, gt_boxes, gt_labels, gt_difficult), (det_image, det_boxes, det_scores, det_classes) = self._flat()
        aps: dict[str, float | None] = {}
        curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        npos: dict[str, int] = {}
        for label, name in enumerate(self.class_names, start=1):
            g = gt_labels == label
            d = det_classes == label
            recall, precision, ap, n = _evaluate_indexed(
                det_image[d], det_scores[d], det_boxes[d], gt_image[g], gt_boxes[g], gt_difficult[g],
                self.iou_threshold, self.metric)
            aps[name], curves[name], npos[name] = ap, (recall, precision), n
        return {"metric": self.metric, "classes": aps, "mAP": mean_ap(aps),
                "num_images": self.num_images, "precision_recall": curves, "num_positives": npos}

    def write_results(self, results_dir: str | os.PathLike, prefix: str = RESULT_PREFIX) -> list[Path]:
        """VOC result files, one per class (empty when the class has no detection)."""
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        _, (det_image, det_boxes, det_scores, det_classes) = self._flat()
        ids = self.image_ids
        paths = []
        for label, name in enumerate(self.class_names, start=1):
            rows = np.flatnonzero(det_classes == label)
            path = results_dir / f"{prefix}{name}.txt"
            # repr gives the shortest text that parses back to the same double
            lines = [f"{ids[i]} {score!r} {x0!r} {y0!r} {x1!r} {y1!r}\n" for i, score, (x0, y0, x1, y1)
                     in zip(det_image[rows].tolist(), det_scores[rows].tolist(), det_boxes[rows].tolist())]
            path.write_text("".join(lines))
            paths.append(path)
        return paths


def format_table(result: Mapping[str, Any]) -> str:
    """Per-class AP and mAP in percent, one decimal; undefined APs shown as n/a."""
    aps = result["classes"]
    width = max([len(name) for name in aps] + [len("mAP")]) + 2
    title = METRICS.get(result.get("metric"), str(result.get("metric")))
    header = f"{title} AP (%)"
    if result.get("num_images") is not None:
        header += f", {result['num_images']} images"
    lines = [header]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{100.0 * value:.1f}"

    for name, ap in aps.items():
        lines.append(f"{name:<{width}}{fmt(ap):>6}")
    lines.append("-" * (width + 6))
    lines.append(f"{'mAP':<{width}}{fmt(result['mAP']):>6}")
    undefined = [name for name, ap in aps.items() if ap is None]
    if undefined:
        lines.append(f"n/a: no non-difficult ground truth ({', '.join(undefined)}); left out of the mAP")
    return "\n".join(lines)


# --- files: VOC XML annotations and result files ---------------------------------------------

def read_imageset(path: str | os.PathLike) -> list[str]:
    """Image ids of an ImageSets file (first token of each non-empty line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image set file not found: {path}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    counts: dict[str, int] = {}
    for image_id in ids:
        counts[image_id] = counts.get(image_id, 0) + 1
    repeated = [image_id for image_id, n in counts.items() if n > 1]
    if repeated:
        raise ValueError(f"{path}: image ids listed more than once: {', '.join(repeated[:5])}")
    return ids


def read_annotation(path: str | os.PathLike, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [N, 4] VOC pixels, labels [N] 1-based, difficult [N]) of one VOC XML file.

    Objects of classes outside class_names are skipped; a missing <difficult> means 0.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as e:
        raise ValueError(f"{path}: not valid XML: {e}") from e
    label_of = {name: i for i, name in enumerate(class_names, start=1)}
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in label_of:
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{path}: object {k} ({name}) has no <bndbox>")
        try:
            boxes.append([float(bndbox.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")])
            difficult.append(int(float((obj.findtext("difficult") or "0").strip() or 0)) != 0)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: object {k} ({name}): bad or missing bndbox/difficult value") from e
        labels.append(label_of[name])
    return (np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(labels, dtype=np.int64),
            np.array(difficult, dtype=bool))


def _bad_result_line(path: Any, line_number: int, line: str) -> ValueError:
    return ValueError(f"{path}:{line_number}: expected '<image_id> <score> <xmin> <ymin> <xmax> <ymax>' "
                      f"with finite numbers, got {line.rstrip()!r}")


def read_result_file(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image_ids, scores [D], boxes [D, 4]) of one `<image_id> <score> <xmin> <ymin> <xmax> <ymax>` file."""
    lines = Path(path).read_text().splitlines()
    numbered = [(n, fields) for n, fields in enumerate((line.split() for line in lines), start=1) if fields]
    for n, fields in numbered:
        if len(fields) != 6:
            raise _bad_result_line(path, n, lines[n - 1])
    try:
        numbers = (float(v) for _, fields in numbered for v in fields[1:])
        values = np.fromiter(numbers, dtype=np.float64, count=5 * len(numbered)).reshape(-1, 5)
        finite = np.isfinite(values).all(axis=1)
    except ValueError:  # find the offending line
        finite = np.array([all(_is_finite_number(v) for v in fields[1:]) for _, fields in numbered])
    if not finite.all():
        n = numbered[int(np.argmin(finite))][0]
        raise _bad_result_line(path, n, lines[n - 1])
    return [fields[0] for _, fields in numbered], values[:, 0], values[:, 1:]


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def read_detections(results_dir: str | os.PathLike, class_names: Sequence[str],
                    prefix: str = RESULT_PREFIX) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    """Per class (in class_names order): (image_ids, scores, boxes) in file order.

    A missing class file means no detections for that class (logged as a warning).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory not found: {results_dir}")
    per_class = []
    for name in class_names:
        path = results_dir / f"{prefix}{name}.txt"
        if path.is_file():
            per_class.append(read_result_file(path))
        else:
            log.warning("%s is missing: no detections for class %s", path, name)
            per_class.append(([], np.zeros(0), np.zeros((0, 4))))
    return per_class


def _check_known_images(per_class: Sequence[tuple[list[str], np.ndarray, np.ndarray]],
                        known: Mapping[str, int], results_dir: Any, imageset: Any) -> None:
    unknown: dict[str, int] = {}
    for ids, _, _ in per_class:
        for image_id in ids:
            if image_id not in known:
                unknown[image_id] = unknown.get(image_id, 0) + 1
    if unknown:
        examples = ", ".join(list(unknown)[:5])
        raise ValueError(f"{sum(unknown.values())} detections in {results_dir} name {len(unknown)} "
                         f"image ids that are not in {imageset}, e.g. {examples}")


def evaluate_files(annotations_dir: str | os.PathLike, imageset: str | os.PathLike,
                   results_dir: str | os.PathLike, metric: str = "voc07",
                   class_names: Sequence[str] = VOC_CLASSES,
                   prefix: str = RESULT_PREFIX) -> dict[str, Any]:
    """Scores VOC result files against the VOC XML annotations of an image set, as the devkit does.

    Detections are scored in each class file's own order (which breaks score ties).
    """
    _check_metric(metric)
    image_ids = read_imageset(imageset)
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    per_class = read_detections(results_dir, class_names, prefix)
    _check_known_images(per_class, index, results_dir, imageset)

    gt_image, gt_boxes, gt_labels, gt_difficult = [], [], [], []
    for i, image_id in enumerate(image_ids):
        boxes, labels, difficult = read_annotation(Path(annotations_dir) / f"{image_id}.xml", class_names)
        gt_image.append(np.full(len(labels), i))
        gt_boxes.append(boxes)
        gt_labels.append(labels)
        gt_difficult.append(difficult)
    gt_image, gt_labels, gt_difficult = (np.concatenate(x or [[]]) for x in (gt_image, gt_labels, gt_difficult))
    gt_boxes = np.concatenate(gt_boxes or [np.zeros((0, 4))])

    aps, curves, npos = {}, {}, {}
    for label, (name, (ids, scores, boxes)) in enumerate(zip(class_names, per_class), start=1):
        g = gt_labels == label
        recall, precision, ap, n = _evaluate_indexed([index[i] for i in ids], scores, boxes, gt_image[g],
                                                     gt_boxes[g], gt_difficult[g], 0.5, metric)
        aps[name], curves[name], npos[name] = ap, (recall, precision), n
    return {"metric": metric, "classes": aps, "mAP": mean_ap(aps), "num_images": len(image_ids),
            "precision_recall": curves, "num_positives": npos}


# --- command line ----------------------------------------------------------------------------

def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("annotations_dir", None, "Directory of VOC XML annotations (<image_id>.xml).")
    flags.DEFINE_string("imageset", None, "Image set file, one image id per line (e.g. ImageSets/Main/test.txt).")
    flags.DEFINE_string("results_dir", None, "Directory of result files <prefix><class>.txt.")
    flags.DEFINE_enum("metric", "voc07", sorted(METRICS), "voc07: 11-point AP; voc12: all-point AP.")
    flags.DEFINE_list("classes", list(VOC_CLASSES), "Class names, comma-separated (default: the 20 VOC classes).")
    flags.DEFINE_string("output_json", None, "Optional JSON file for {metric, classes, mAP}.")
    flags.DEFINE_string("prefix", RESULT_PREFIX, "Result file name prefix.")
    for name in ("annotations_dir", "imageset", "results_dir"):
        flags.mark_flag_as_required(name)


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {' '.join(argv[1:])}")
    flag_values = flags.FLAGS
    try:
        result = evaluate_files(flag_values.annotations_dir, flag_values.imageset, flag_values.results_dir,
                                flag_values.metric, flag_values.classes, flag_values.prefix)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(format_table(result))
    if flag_values.output_json:
        summary = {"metric": result["metric"], "classes": result["classes"], "mAP": result["mAP"]}
        Path(flag_values.output_json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
