"""COCO results JSON: the list of detections the COCO evaluation server and pycocotools take.

Each detection is {"image_id": int, "category_id": int, "bbox": [x, y, width, height], "score":
float}, with the COCO data set's own image and category ids and the box in pixels of the
original image (`ssd.coco.coords`). Boxes are rounded to BBOX_DECIMALS (a hundredth of a pixel,
far below any annotation's precision) and scores to SCORE_DECIMALS, which keeps files of a
million detections small; the in-process metric scores the rounded values, so re-scoring a
written file reproduces its numbers exactly.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

BBOX_DECIMALS = 2
SCORE_DECIMALS = 5
RESULT_KEYS = ("image_id", "category_id", "bbox", "score")
MAX_NAMED = 5  # ids named in an error message


def detection_entries(image_id: int, boxes_xywh: np.ndarray, scores: np.ndarray,
                      category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One image's detections as results entries, in the given order.

    boxes_xywh: [D, 4] COCO pixel boxes; scores: [D]; category_ids: [D] COCO category ids.
    """
    boxes = np.round(np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4), BBOX_DECIMALS).tolist()
    scores = np.round(np.asarray(scores, dtype=np.float64).reshape(-1), SCORE_DECIMALS).tolist()
    category_ids = [int(c) for c in category_ids]
    if not len(boxes) == len(scores) == len(category_ids):
        raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, "
                         f"{len(category_ids)} category ids")
    return [{"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
            for b, s, c in zip(boxes, scores, category_ids)]


def write_json(path: str | os.PathLike, data: Any, indent: int | None = None) -> Path:
    """Writes JSON atomically (a reader never sees half a file); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n")
    os.replace(tmp, path)
    return path


def write_results(path: str | os.PathLike, entries: Sequence[Mapping[str, Any]]) -> Path:
    """The results JSON list (compact: one line; these files are large)."""
    return write_json(path, [dict(entry) for entry in entries])


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parsed JSON of `path`; FileNotFoundError / ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    missing = [key for key in RESULT_KEYS if key not in entry]
    if missing:
        return f"missing {', '.join(missing)}"
    for key in ("image_id", "category_id"):
        if not _is_integer(entry[key]):
            return f"{key} {entry[key]!r} is not an integer"
    bbox = entry["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite(v) for v in bbox)):
        return f"bbox {bbox!r} is not [x, y, width, height] of finite numbers"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox {bbox!r} has a negative width or height"
    if not _is_finite(entry["score"]):
        return f"score {entry['score']!r} is not a finite number"
    return None


def check_results(results: Any, source: Any) -> list[dict[str, Any]]:
    """The entries of a results JSON list, checked; ValueError naming `source` and the first bad
    entry otherwise."""
    if not isinstance(results, list):
        raise ValueError(f"{source}: a COCO results file is a JSON list of detections "
                         f"{{\"image_id\", \"category_id\", \"bbox\", \"score\"}}, "
                         f"got a JSON {type(results).__name__}")
    for index, entry in enumerate(results):
        problem = _entry_problem(entry)
        if problem:
            raise ValueError(f"{source}: detection {index}: {problem}")
    return results


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The checked detections of a results JSON file."""
    return check_results(read_json(path, "results file"), path)


def _named(values: Iterable[int]) -> str:
    values = sorted(set(values))
    text = ", ".join(str(v) for v in values[:MAX_NAMED])
    return text + (", ..." if len(values) > MAX_NAMED else "")


def check_known_ids(results: Sequence[Mapping[str, Any]], image_ids: Iterable[int],
                    category_ids: Iterable[int], results_source: Any, annotations_source: Any,
                    what: str = "detections") -> None:
    """ValueError when detections (or annotations: `what`) name image or category ids the
    annotations do not have (the message counts them and names a few)."""
    known_images, known_categories = set(image_ids), set(category_ids)
    for key, known, ids in (("image_id", known_images, "image ids"),
                            ("category_id", known_categories, "category ids")):
        unknown = [entry[key] for entry in results if entry[key] not in known]
        if unknown:
            raise ValueError(f"{len(unknown)} {what} in {results_source} name {len(set(unknown))} "
                             f"{ids} that are not in {annotations_source}, e.g. {_named(unknown)}")
