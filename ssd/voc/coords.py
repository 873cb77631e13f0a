"""VOC pixel coordinates <-> the library's normalized boxes, used only at file boundaries.

VOC annotations and result files use 1-based inclusive pixel indices: a box covering the whole
W x H image is xmin=1, ymin=1, xmax=W, ymax=H. Pixel i (1-based) spans the continuous interval
[i - 1, i], so a VOC box spans [xmin - 1, xmax] x [ymin - 1, ymax] and its normalized form is
[(ymin - 1) / H, (xmin - 1) / W, ymax / H, xmax / W]. With this reading the devkit's "+1" areas and
overlaps equal the continuous ones, and the round trip is exact.
"""

from __future__ import annotations

import numpy as np


def voc_to_normalized(voc_boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """[N, 4] VOC (xmin, ymin, xmax, ymax), 1-based inclusive -> [N, 4] normalized [ymin, xmin, ymax, xmax]."""
    b = np.asarray(voc_boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 1] - 1.0) / height, (b[:, 0] - 1.0) / width,
                     b[:, 3] / height, b[:, 2] / width], axis=-1)


def normalized_to_voc(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """[N, 4] normalized [ymin, xmin, ymax, xmax] -> [N, 4] VOC (xmin, ymin, xmax, ymax), 1-based inclusive."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 1] * width + 1.0, b[:, 0] * height + 1.0,
                     b[:, 3] * width, b[:, 2] * height], axis=-1)
