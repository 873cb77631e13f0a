"""Scores VOC result files against VOC XML annotations, as the devkit does, and its command line.

    python -m ssd.voc.eval --annotations_dir DIR --imageset FILE --results_dir DIR \
        [--metric voc07|voc12] [--classes a,b,c] [--prefix comp4_det_test_] [--output_json FILE]

The annotations are read by `ssd.voc.annotations` (the converter's rules, so that scoring the XML files
and evaluating the TFRecords converted from them see the same ground truth); the result files by
`ssd.voc.results`; the metric is `ssd.voc.metric`. Objects of classes outside the class list are
not scored and are counted in the result's "unknown_classes"; on the command line, without
--classes, such names are an error that lists them (the data is not VOC's).
"""

from __future__ import annotations

import collections
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ssd.config.loading import VOC_CLASSES
from ssd.voc.image_ids import read_image_ids, repeated_ids
from ssd.voc.metric import METRICS, check_metric, score_classes, summary_of
from ssd.voc.results import RESULT_PREFIX, ClassDetections, read_detections
from ssd.voc.table import format_table
from ssd.voc.annotations import labeled_boxes, parse_voc_xml

# Notes of the XML reader about fields the metric does not use: not worth a warning here.
_NOTES_IRRELEVANT_TO_SCORING = ("size_missing", "size_invalid", "truncated_missing", "truncated_invalid")
MAX_LOGGED_NOTES_PER_KIND = 5

log = logging.getLogger(__name__)


def read_imageset(path: str | os.PathLike) -> list[str]:
    """Image ids of an image set file; an id listed twice is an error (it would count twice)."""
    ids = read_image_ids(path)
    repeated = repeated_ids(ids)
    if repeated:
        raise ValueError(f"{path}: image ids listed more than once: {', '.join(repeated[:5])}")
    return ids


def read_ground_truth(annotations_dir: str | os.PathLike, image_ids: Sequence[str],
                      class_names: Sequence[str]) -> tuple[tuple[np.ndarray, ...], dict[str, int], dict[str, int]]:
    """Ground truth of `<annotations_dir>/<id>.xml` for each id, image i numbered i.

    Returns ((image [N], boxes [N, 4] VOC, labels [N], difficult [N]), unknown class name ->
    objects, note kind -> count). Notes that change what is scored are logged (the first few of
    each kind with their file); an unreadable file raises VocXmlError naming it.
    """
    gt_image, gt_boxes, gt_labels, gt_difficult = [], [], [], []
    unknown: collections.Counter[str] = collections.Counter()
    notes: collections.Counter[str] = collections.Counter()
    for i, image_id in enumerate(image_ids):
        path = Path(annotations_dir) / f"{image_id}.xml"
        annotation = parse_voc_xml(path)
        for kind, message in annotation.notes:
            if kind in _NOTES_IRRELEVANT_TO_SCORING:
                continue
            notes[kind] += 1
            if notes[kind] <= MAX_LOGGED_NOTES_PER_KIND:
                log.warning("%s: %s", path, message)
        boxes, labels, difficult, unknown_names = labeled_boxes(annotation, class_names)
        unknown.update(unknown_names)
        gt_image.append(np.full(len(labels), i))
        gt_boxes.append(boxes)
        gt_labels.append(labels)
        gt_difficult.append(difficult)
    for kind, count in sorted(notes.items()):
        if count > MAX_LOGGED_NOTES_PER_KIND:
            log.warning("%d annotation notes of kind %s in all (%d shown)", count, kind, MAX_LOGGED_NOTES_PER_KIND)
    ground_truth = (np.concatenate(gt_image or [np.zeros(0, np.int64)]),
                    np.concatenate(gt_boxes or [np.zeros((0, 4))]),
                    np.concatenate(gt_labels or [np.zeros(0, np.int64)]),
                    np.concatenate(gt_difficult or [np.zeros(0, bool)]))
    return ground_truth, dict(sorted(unknown.items())), dict(sorted(notes.items()))


def _check_known_images(per_class: Sequence[ClassDetections], known: Mapping[str, int],
                        results_dir: Any, imageset: Any) -> None:
    unknown: dict[str, int] = {}
    for ids, _, _ in per_class:
        for image_id in ids:
            if image_id not in known:
                unknown[image_id] = unknown.get(image_id, 0) + 1
    if unknown:
        examples = ", ".join(list(unknown)[:5])
        raise ValueError(f"{sum(unknown.values())} detections in {results_dir} name {len(unknown)} "
                         f"image ids that are not in {imageset}, e.g. {examples}")


def _object_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} ({count} object{'s' * (count != 1)})" for name, count in counts.items())


class UnknownClassesError(ValueError):
    """The annotations name classes outside the class list (when that is refused).

    `counts`: unknown name -> objects; `names_found`: every class name the annotations use, those
    of the list first (in its order), then the unknown ones.
    """

    def __init__(self, counts: Mapping[str, int], class_names: Sequence[str], names_found: Sequence[str]):
        self.counts = dict(counts)
        self.names_found = list(names_found)
        super().__init__(f"the annotations name classes outside the class list ({', '.join(class_names)}): "
                         f"{_object_counts(self.counts)}")


def evaluate_files(annotations_dir: str | os.PathLike, imageset: str | os.PathLike,
                   results_dir: str | os.PathLike, metric: str = "voc07",
                   class_names: Sequence[str] = VOC_CLASSES, prefix: str = RESULT_PREFIX,
                   refuse_unknown_classes: bool = False) -> dict[str, Any]:
    """Scores VOC result files against the VOC XML annotations of an image set, as the devkit does.

    Detections are scored in each class file's own order (which breaks score ties). Returns
    `ssd.voc.metric.score_classes`'s result plus "unknown_classes" (name -> objects of classes
    outside class_names, not scored; UnknownClassesError instead with refuse_unknown_classes)
    and "annotation_notes" (kind -> count of irregularities the XML reader handled).
    """
    check_metric(metric)
    image_ids = read_imageset(imageset)
    ground_truth, unknown, notes = read_ground_truth(annotations_dir, image_ids, class_names)
    if unknown and refuse_unknown_classes:
        labels_found = set(ground_truth[2].tolist())
        known_found = [name for label, name in enumerate(class_names, start=1) if label in labels_found]
        raise UnknownClassesError(unknown, class_names, known_found + list(unknown))
    if unknown:
        log.warning("objects of classes outside the class list are not scored: %s",
                    ", ".join(f"{name} ({count})" for name, count in unknown.items()))
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    per_class = read_detections(results_dir, class_names, prefix)
    _check_known_images(per_class, index, results_dir, imageset)
    detections = [(np.array([index[i] for i in ids], dtype=np.int64), scores, boxes)
                  for ids, scores, boxes in per_class]
    result = score_classes(class_names, ground_truth, detections, len(image_ids), metric)
    result["unknown_classes"] = unknown
    result["annotation_notes"] = notes
    return result


# --- command line ----------------------------------------------------------------------------

def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("annotations_dir", None, "Directory of VOC XML annotations (<image_id>.xml).")
    flags.DEFINE_string("imageset", None, "Image set file, one image id per line (e.g. ImageSets/Main/test.txt).")
    flags.DEFINE_string("results_dir", None, "Directory of result files <prefix><class>.txt.")
    flags.DEFINE_enum("metric", "voc07", sorted(METRICS), "voc07: 11-point AP; voc12: all-point AP.")
    flags.DEFINE_list("classes", list(VOC_CLASSES), "Class names, comma-separated (default: the 20 VOC classes).")
    flags.DEFINE_string("output_json", None, "Optional JSON file: metric, per-class AP (null when "
                        "undefined) and status, mAP, counts.")
    flags.DEFINE_string("prefix", RESULT_PREFIX, "Result file name prefix.")
    for name in ("annotations_dir", "imageset", "results_dir"):
        flags.mark_flag_as_required(name)


def main(argv: Sequence[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    flag_values = flags.FLAGS
    default_classes = not flag_values["classes"].present
    try:
        result = evaluate_files(flag_values.annotations_dir, flag_values.imageset, flag_values.results_dir,
                                flag_values.metric, flag_values.classes, flag_values.prefix,
                                refuse_unknown_classes=default_classes)
    except UnknownClassesError as e:
        raise SystemExit(f"python -m ssd.voc.eval: error: the annotations name classes that are not VOC's: {_object_counts(e.counts)}; "
                         f"without --classes the 20 VOC classes are scored. Give the data's class list, "
                         f"e.g. --classes={','.join(e.names_found)}") from None
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"python -m ssd.voc.eval: error: {e}") from None
    print(format_table(result))
    if flag_values.output_json:
        Path(flag_values.output_json).write_text(json.dumps(summary_of(result), indent=2) + "\n")


if __name__ == "__main__":
    from ssd import cli

    cli.quiet_tensorflow_startup()
    _define_flags()
    cli.run(main)
