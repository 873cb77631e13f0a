"""COCO pixel boxes <-> the library's normalized boxes, used only at file boundaries.

COCO annotations and result files give a box as `[x, y, width, height]` in continuous pixel
coordinates with the origin at the top-left corner of the top-left pixel: a box covering the whole
W x H image is [0, 0, W, H]. Its normalized form is therefore
[y / H, x / W, (y + height) / H, (x + width) / W], with no +-1 (unlike VOC's inclusive pixel
indices, ssd/voc/coords.py).
"""

from __future__ import annotations

import numpy as np


def coco_to_normalized(coco_boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """[N, 4] COCO (x, y, width, height) pixels -> [N, 4] normalized [ymin, xmin, ymax, xmax]."""
    b = np.asarray(coco_boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 1] / height, b[:, 0] / width,
                     (b[:, 1] + b[:, 3]) / height, (b[:, 0] + b[:, 2]) / width], axis=-1)


def normalized_to_coco(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """[N, 4] normalized [ymin, xmin, ymax, xmax] -> [N, 4] COCO (x, y, width, height) pixels."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 1] * width, b[:, 0] * height,
                     (b[:, 3] - b[:, 1]) * width, (b[:, 2] - b[:, 0]) * height], axis=-1)


def image_size(image_entry: dict) -> tuple[int, int] | None:
    """(width, height) of an entry of a COCO file's "images", None when either is missing or not
    a positive integer."""
    width, height = image_entry.get("width"), image_entry.get("height")
    valid = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height))
    return (width, height) if valid else None
