"""Scoring a COCO results JSON file against COCO annotations: `python -m ssd.coco.eval`.

    python -m ssd.coco.eval --annotations_file instances_val2017.json --results_file dets.json \
        [--output_json summary.json] [--verbose]

prints the 12 COCO numbers in pycocotools' layout and a per-class AP table, and writes the
summary JSON (`ssd.coco.metric.write_summary`). The annotations are a COCO instances JSON (or the
ground truth `COCOEvaluator.write_ground_truth` builds from other data); the results a JSON list
of {"image_id", "category_id", "bbox", "score"} (`ssd.coco.results`); the metric is pycocotools'
(`ssd.coco.metric`). An empty results list scores 0 for every class with ground truth.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any, Mapping, Sequence

from ssd.coco.metric import evaluate_coco, format_stats, format_table, write_summary
from ssd.coco.results import check_known_ids, read_json, read_results


log = logging.getLogger(__name__)


# --- annotations -----------------------------------------------------------------------------

def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_list(dataset: Mapping[str, Any], key: str, path: Any) -> list[Any]:
    values = dataset.get(key)
    if not isinstance(values, list):
        raise ValueError(f"{path}: a COCO annotations file has a list {key!r}")
    return values


def check_annotations(dataset: Any, path: Any) -> dict[str, Any]:
    """A COCO annotations data set, checked, with what pycocotools needs filled in.

    Annotations without "id" are numbered, without "iscrowd" are not crowd, without "area" get
    their box's area (COCO's own files have all three). ValueError naming the file and the first
    bad entry otherwise.
    """
    if not isinstance(dataset, dict):
        raise ValueError(f"{path}: a COCO annotations file is a JSON object with images, "
                         f"annotations and categories, got a JSON {type(dataset).__name__}")
    images, annotations, categories = (_check_list(dataset, k, path)
                                       for k in ("images", "annotations", "categories"))
    for what, entries in (("image", images), ("category", categories)):
        for index, entry in enumerate(entries):
            if not (isinstance(entry, dict) and _is_integer(entry.get("id"))):
                raise ValueError(f"{path}: {what} {index} has no integer 'id'")
    filled = []
    used_ids = {a["id"] for a in annotations if isinstance(a, dict) and _is_integer(a.get("id"))}
    next_id = max(used_ids, default=0) + 1
    for index, a in enumerate(annotations):
        bbox = a.get("bbox") if isinstance(a, dict) else None
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
            raise ValueError(f"{path}: annotation {index} has no bbox [x, y, width, height] of finite numbers")
        if not (_is_integer(a.get("image_id")) and _is_integer(a.get("category_id"))):
            raise ValueError(f"{path}: annotation {index} has no integer image_id and category_id")
        a = dict(a)
        if not _is_integer(a.get("id")):
            a["id"], next_id = next_id, next_id + 1
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(bbox[2]) * float(bbox[3]))
        filled.append(a)
    check_known_ids(filled, (i["id"] for i in images), (c["id"] for c in categories),
                    path, "its images and categories", what="annotations")
    return {**dataset, "annotations": filled}


def read_annotations(path: str | os.PathLike) -> dict[str, Any]:
    """The checked COCO annotations data set of a JSON file."""
    return check_annotations(read_json(path, "annotations file"), path)


def evaluate_files(annotations_file: str | os.PathLike, results_file: str | os.PathLike,
                   verbose: bool = False) -> dict[str, Any]:
    """Scores a results JSON file against a COCO annotations file (`evaluate_coco`'s result).

    Raises FileNotFoundError for a missing file, ValueError for a malformed one or for detections
    naming image or category ids the annotations do not have.
    """
    dataset = read_annotations(annotations_file)
    results = read_results(results_file)
    check_known_ids(results, (i["id"] for i in dataset["images"]), (c["id"] for c in dataset["categories"]),
                    results_file, annotations_file)
    if not results:
        log.warning("%s holds no detections: every class with ground truth scores 0", results_file)
    return evaluate_coco(dataset, results, verbose)


# --- command line ----------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ssd.coco.eval",
        description="Scores a COCO results JSON file against COCO annotations with pycocotools' "
                    "COCOeval (bbox): the 12 COCO numbers and per-class AP.")
    parser.add_argument("--annotations_file", required=True,
                        help="COCO annotations JSON (images, annotations, categories), e.g. instances_val2017.json.")
    parser.add_argument("--results_file", required=True,
                        help="COCO results JSON: a list of {image_id, category_id, bbox [x, y, w, h], score}.")
    parser.add_argument("--output_json", default=None,
                        help="Optional summary JSON: the 12 numbers, per-class AP and AP50 (null when "
                             "undefined), status and counts.")
    parser.add_argument("--verbose", action="store_true", help="Also print pycocotools' own output.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        result = evaluate_files(args.annotations_file, args.results_file, args.verbose)
    except (ValueError, FileNotFoundError) as e:
        print(f"python -m ssd.coco.eval: error: {e}", file=sys.stderr)
        return 1
    print(format_stats(result))
    print()
    print(format_table(result))
    if args.output_json:
        write_summary(args.output_json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
