"""Two computations of the same detections compared within the tolerance their kernels allow.

Two paths through the same network (eager and graph, TensorFlow and TFLite, oneDNN and Eigen,
AVX2 and AVX-512) sum in different orders, so their scores differ by ~1e-7 and two detections
of near-equal score may come in either order. Where a decision depends on a score threshold the
order of near-ties can change what is kept: the last rows of a list cut at `max_detections` may
be another box of the same score. So:

- rows are matched by class, score and box, not by position;
- rows scoring within `score_atol` of the cut of a full list are not required to have a
  counterpart (either path may have kept the other of a near-tie);
- every other row of each side must have its own counterpart on the other side.
"""

from __future__ import annotations

import numpy as np


def detections_of(outputs, index: int | None = 0, prefix: str = "") -> dict[str, np.ndarray]:
    """One image's rows from batched outputs (`boxes`, `scores`, `classes`, `num_detections`, each
    possibly named `<prefix><name>`; `index=None`: the outputs of one image, unbatched), cut to its
    number of detections."""
    def get(name):
        value = np.asarray(outputs[name])
        return value if index is None else value[index]

    n = int(get("num_detections"))
    return {"boxes": get(prefix + "boxes")[:n], "scores": get(prefix + "scores")[:n],
            "classes": get(prefix + "classes")[:n].astype(np.int64)}


def _unmatched(rows, others, box_atol, score_atol, required):
    """Indices of `rows` (where `required`) with no counterpart of their own among `others`."""
    unused = np.ones(len(others["scores"]), bool)
    missing = []
    for i in np.argsort(-rows["scores"], kind="stable"):
        same = (unused & (others["classes"] == rows["classes"][i])
                & (np.abs(others["scores"] - rows["scores"][i]) <= score_atol)
                & (np.abs(others["boxes"] - rows["boxes"][i]).max(axis=1) <= box_atol))
        if same.any():
            unused[np.flatnonzero(same)[0]] = False
        elif required[i]:
            missing.append(int(i))
    return missing


def _describe(rows, i, others):
    if not len(others["scores"]):
        return f"row {i} (class {rows['classes'][i]}, score {rows['scores'][i]:.6f}): the other side is empty"
    nearest = int(np.argmin(np.abs(others["boxes"] - rows["boxes"][i]).max(axis=1)
                            + np.abs(others["scores"] - rows["scores"][i])))
    return (f"row {i} (class {rows['classes'][i]}, score {rows['scores'][i]:.6f}, box {np.round(rows['boxes'][i], 5)})"
            f"; nearest: class {others['classes'][nearest]}, score {others['scores'][nearest]:.6f}, "
            f"box {np.round(others['boxes'][nearest], 5)}")


def assert_same_detections(actual, expected, *, box_atol: float, score_atol: float,
                           max_detections: int | None = None, min_score: float | None = None,
                           names=("actual", "expected")):
    """`actual` and `expected`: one image's rows each (see `detections_of`).

    `max_detections`: the length at which a list was cut; a full list's last rows are near a
    decision. `min_score`: compare only rows scoring at least this (a weakly trained model's
    low-score tail holds hundreds of overlapping boxes whose IoU may lie within rounding of the
    NMS threshold)."""
    sides = (actual, expected)
    cut = -np.inf
    for side in sides:
        if max_detections is not None and len(side["scores"]) >= max_detections:
            cut = max(cut, float(side["scores"].min()))
    if min_score is not None:
        cut = max(cut, float(min_score))
    for side in sides:
        assert np.all(np.diff(side["scores"]) <= score_atol), "rows are not sorted by decreasing score"
    problems = []
    for (name, rows), (other_name, others) in zip(zip(names, sides), zip(reversed(names), reversed(sides))):
        required = rows["scores"] > cut + score_atol
        for i in _unmatched(rows, others, box_atol, score_atol, required):
            problems.append(f"{name} {_describe(rows, i, others)} has no counterpart in {other_name}")
    assert not problems, "\n".join(problems[:10]) + (f"\n... {len(problems)} in all" if len(problems) > 10 else "")
    return int(np.count_nonzero(expected["scores"] > cut + score_atol))  # rows that had to match
