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

Every class gets a status. A class without non-difficult ground truth ("no_ground_truth") has no
AP (the devkit divides by zero): its AP is None, whatever detections it has, and it is left out of
the mean. A class with ground truth but no detection ("no_detections") has AP 0 and counts in the
mean, as do the others ("ok"): the status words of `ssd.evaluator`.

Precision is 0/0 before the first counted (non-ignored) detection. The devkit keeps that NaN and
relies on MATLAB's `max` skipping NaN; here it is 0, which gives the same AP (precision is never
negative), except when every detection of a class is ignored: the devkit's AP is then NaN, here 0.

Boxes are VOC pixel boxes (xmin, ymin, xmax, ymax, 1-based inclusive), except in
`VOCEvaluator.add_batch`. Result files: `ssd.voc.results`; scoring files: `ssd.voc.eval`; the
printed table: `ssd.voc.table`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from ssd.evaluator import class_status
from ssd.voc import results as voc_results
from ssd.voc.image_ids import image_id_text
from ssd.voc.coords import normalized_to_voc

METRICS = {"voc07": "VOC07 11-point", "voc12": "VOC2010+ all-point"}
# Ground truth that went through normalized float32 coordinates is snapped back to the integer
# pixels of the annotation when it lies this close (in pixels), so that in-process scoring equals
# scoring the original XML files.
GT_SNAP_TOLERANCE = 1e-3


# --- one class -------------------------------------------------------------------------------

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


def check_metric(metric: str) -> None:
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


def evaluate_indexed(det_image: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
                     gt_image: np.ndarray, gt_boxes: np.ndarray, gt_difficult: np.ndarray,
                     iou_threshold: float = 0.5, metric: str = "voc07"
                     ) -> tuple[np.ndarray, np.ndarray, float | None, int]:
    """`evaluate_class` with images as non-negative integer indices (the fast path).

    det_*: one class's detections in file order; gt_*: that class's ground truth, each image's in
    annotation order. Returns (recall [D], precision [D], ap or None when npos == 0, npos).
    """
    check_metric(metric)
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
    # jmax is a valid index exactly where a detection is assigned (there may be no gt at all)
    difficult_hit = np.zeros(len(det_image), dtype=bool)
    difficult_hit[assigned] = gt_difficult[jmax[assigned]]
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
    return evaluate_indexed(det_image, scores, boxes, np.concatenate(gt_image or [[]]),
                            np.concatenate(gt_boxes or [np.zeros((0, 4))]),
                            np.concatenate(gt_difficult or [[]]), iou_threshold, metric)


# --- every class -----------------------------------------------------------------------------

def mean_ap(aps: Mapping[str, float | None]) -> float | None:
    """Mean over the classes whose AP is defined; None when there is none."""
    defined = [ap for ap in aps.values() if ap is not None]
    return float(np.mean(defined)) if defined else None


def score_classes(class_names: Sequence[str],
                  ground_truth: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                  num_images: int, metric: str = "voc07", iou_threshold: float = 0.5) -> dict[str, Any]:
    """Scores every class of a data set whose images are numbered 0 .. num_images - 1.

    ground_truth: flat (image [N], boxes [N, 4] VOC, labels [N] 1-based, difficult [N]).
    detections: per class in class_names order, (image [D], scores [D], boxes [D, 4] VOC) in file order.
    Returns {"metric", "classes": {name: AP or None}, "mAP", "num_images", "status": {name: status},
    "num_positives", "num_difficult", "num_detections": {name: count},
    "precision_recall": {name: (recall, precision)}}.
    """
    check_metric(metric)
    if len(detections) != len(class_names):
        raise ValueError(f"{len(detections)} detection sets for {len(class_names)} classes")
    gt_image, gt_boxes, gt_labels, gt_difficult = (np.asarray(x) for x in ground_truth)
    gt_difficult = gt_difficult.astype(bool)
    aps, status, curves, npos, ndifficult, ndets = {}, {}, {}, {}, {}, {}
    for label, (name, (det_image, det_scores, det_boxes)) in enumerate(zip(class_names, detections), start=1):
        g = gt_labels == label
        recall, precision, ap, n = evaluate_indexed(det_image, det_scores, det_boxes, gt_image[g],
                                                    gt_boxes[g], gt_difficult[g], iou_threshold, metric)
        aps[name], curves[name], npos[name] = ap, (recall, precision), n
        ndifficult[name] = int(np.count_nonzero(gt_difficult[g]))
        ndets[name] = len(recall)
        status[name] = class_status(n, ndets[name])
    return {"metric": metric, "classes": aps, "mAP": mean_ap(aps), "num_images": int(num_images),
            "status": status, "num_positives": npos, "num_difficult": ndifficult,
            "num_detections": ndets, "precision_recall": curves}


def summary_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-ready part of a result (everything but the precision/recall curves)."""
    return {key: value for key, value in result.items() if key != "precision_recall"}


# --- accumulating over a data set ------------------------------------------------------------

def _flatten(per_image: Sequence[tuple[np.ndarray, ...]], empty: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Per-image tuples of arrays (rows counted by the second) -> (image index per row, *columns)."""
    counts = [len(arrays[1]) for arrays in per_image]
    columns = (np.concatenate([arrays[k] for arrays in per_image] or [e]) for k, e in enumerate(empty))
    return (np.repeat(np.arange(len(per_image)), counts), *columns)


def _snap_to_pixels(voc_boxes: np.ndarray) -> np.ndarray:
    rounded = np.round(voc_boxes)
    return np.where(np.abs(voc_boxes - rounded) <= GT_SNAP_TOLERANCE, rounded, voc_boxes)


class VOCEvaluator:
    """Collects ground truth and detections image by image and scores them with the VOC metric.

    Class labels are 1-based indices into class_names (0 is background). Detection order inside
    an image, and the order in which images are added, is the "file order" that breaks score ties;
    `detections_by_class` (what the result files hold) keeps the same order, so re-scoring the
    files gives the same numbers.
    """

    def __init__(self, class_names: Sequence[str], metric: str = "voc07", iou_threshold: float = 0.5):
        check_metric(metric)
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
        image_id = image_id_text(image_id)
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

    def _ground_truth(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flat (image index [N], boxes [N, 4], labels [N], difficult [N])."""
        return _flatten(self._gt, (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool)))

    def _indexed_detections(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per class: (image index [D], scores [D], boxes [D, 4]) in the order they were added."""
        image, boxes, scores, classes = _flatten(self._det, (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)))
        rows = [np.flatnonzero(classes == label) for label in range(1, len(self.class_names) + 1)]
        return [(image[r], scores[r], boxes[r]) for r in rows]

    def detections_by_class(self) -> list[voc_results.ClassDetections]:
        """Per class (class_names order): (image_ids, scores [D], boxes [D, 4] VOC), file order."""
        ids = self.image_ids
        return [([ids[i] for i in image.tolist()], scores, boxes)
                for image, scores, boxes in self._indexed_detections()]

    def result(self) -> dict[str, Any]:
        """`score_classes` of everything added so far."""
        return score_classes(self.class_names, self._ground_truth(), self._indexed_detections(),
                             self.num_images, self.metric, self.iou_threshold)

    def write_results(self, results_dir: str | os.PathLike,
                      prefix: str = voc_results.RESULT_PREFIX) -> list[Path]:
        """VOC result files, one per class (`ssd.voc.results.write_detections`)."""
        return voc_results.write_detections(results_dir, self.class_names, self.detections_by_class(), prefix)
