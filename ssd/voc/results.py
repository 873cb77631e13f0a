"""VOC result files: one `comp4_det_test_<class>.txt` per class, as the evaluation server takes them.

Each line is one detection, `<image_id> <score> <xmin> <ymin> <xmax> <ymax>`, with the box in
VOC's 1-based inclusive pixels. The order of the lines matters: the metric breaks score ties by
it, so files are written in the order the detections were collected and read back in file order.

Detections of one class travel as a triple (image_ids [D], scores [D], boxes [D, 4]); a whole set
as a list of such triples, one per class in class-list order.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

RESULT_PREFIX = "comp4_det_test_"

ClassDetections = tuple[list[str], np.ndarray, np.ndarray]

log = logging.getLogger(__name__)


def result_file(results_dir: str | os.PathLike, class_name: str, prefix: str = RESULT_PREFIX) -> Path:
    return Path(results_dir) / f"{prefix}{class_name}.txt"


def no_detections() -> ClassDetections:
    return [], np.zeros(0), np.zeros((0, 4))


def write_detections(results_dir: str | os.PathLike, class_names: Sequence[str],
                     per_class: Sequence[ClassDetections], prefix: str = RESULT_PREFIX) -> list[Path]:
    """One file per class (empty when the class has no detection); returns their paths."""
    if len(per_class) != len(class_names):
        raise ValueError(f"{len(per_class)} detection sets for {len(class_names)} classes")
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (ids, scores, boxes) in zip(class_names, per_class):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        # repr gives the shortest text that parses back to the same double
        lines = [f"{image_id} {score!r} {x0!r} {y0!r} {x1!r} {y1!r}\n"
                 for image_id, score, (x0, y0, x1, y1) in zip(ids, scores.tolist(), boxes.tolist())]
        path = result_file(results_dir, name, prefix)
        path.write_text("".join(lines))
        paths.append(path)
    return paths


def _bad_result_line(path: Any, line_number: int, line: str) -> ValueError:
    return ValueError(f"{path}:{line_number}: expected '<image_id> <score> <xmin> <ymin> <xmax> <ymax>' "
                      f"with finite numbers, got {line.rstrip()!r}")


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def read_result_file(path: str | os.PathLike) -> ClassDetections:
    """(image_ids, scores [D], boxes [D, 4]) of one result file, in file order; blank lines are
    skipped, and an empty file holds no detections. A malformed line raises ValueError naming the
    file and line."""
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


def stray_result_files(results_dir: str | os.PathLike, class_names: Sequence[str],
                       prefix: str = RESULT_PREFIX) -> list[Path]:
    """Result files in results_dir whose class is not in class_names (sorted)."""
    expected = {result_file(results_dir, name, prefix).name for name in class_names}
    return sorted(path for path in Path(results_dir).glob(f"{prefix}*.txt") if path.name not in expected)


def read_detections(results_dir: str | os.PathLike, class_names: Sequence[str],
                    prefix: str = RESULT_PREFIX) -> list[ClassDetections]:
    """Per class (in class_names order): (image_ids, scores, boxes) in file order.

    A missing class file means no detections for that class; a file of a class outside
    class_names is not read. Both are logged as warnings.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory not found: {results_dir}")
    per_class = []
    for name in class_names:
        path = result_file(results_dir, name, prefix)
        if path.is_file():
            per_class.append(read_result_file(path))
        else:
            log.warning("%s is missing: no detections for class %s", path, name)
            per_class.append(no_detections())
    for path in stray_result_files(results_dir, class_names, prefix):
        log.warning("%s is ignored: class %r is not in the class list", path,
                    path.name[len(prefix):-len(".txt")])
    return per_class
