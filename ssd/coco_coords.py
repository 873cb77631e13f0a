"""COCO pixel boxes <-> the library's normalized boxes, used only at file boundaries.

COCO annotations and result files give a box as `[x, y, width, height]` in continuous pixel
coordinates with the origin at the top-left corner of the image: a box covering the whole
W x H image is [0, 0, W, H]. The normalized form of [x, y, w, h] is
[y / H, x / W, (y + h) / H, (x + w) / W]; no half-pixel or "+1" terms, so the round trip is exact
up to floating point.
"""

from __future__ import annotations

import numpy as np


def coco_to_normalized(boxes_xywh: np.ndarray, height: float, width: float) -> np.ndarray:
    """[N, 4] COCO (x, y, width, height) in pixels -> [N, 4] normalized [ymin, xmin, ymax, xmax]."""
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 1] / height, b[:, 0] / width,
                     (b[:, 1] + b[:, 3]) / height, (b[:, 0] + b[:, 2]) / width], axis=-1)


def normalized_to_coco(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """[N, 4] normalized [ymin, xmin, ymax, xmax] -> [N, 4] COCO (x, y, width, height) in pixels."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 1] * width, b[:, 0] * height,
                     (b[:, 3] - b[:, 1]) * width, (b[:, 2] - b[:, 0]) * height], axis=-1)
