"""Image ids: read from the split lists of a VOC-layout data set, and given as text.

An image id names an image everywhere: the split list line, `Annotations/<id>.xml`, the records'
`image/source_id`, and the first column of VOC result files. The metric matches on it as text.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def image_id_text(image_id: Any) -> str:
    """An image id as text: bytes (as TFRecords hold it) decoded as UTF-8, a numpy scalar
    unwrapped, anything else through str()."""
    if isinstance(image_id, np.ndarray) and image_id.ndim == 0:
        image_id = image_id.item()
    if isinstance(image_id, (bytes, np.bytes_)):
        return bytes(image_id).decode("utf-8")
    return str(image_id)


def read_image_ids(path: str | os.PathLike) -> list[str]:
    """Ids of a split list such as ImageSets/Main/test.txt, in file order: the first token of each
    non-empty line (VOC's per-class lists add a second column, `<id> 1`). Repeats are kept; see
    `repeated_ids`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image set file not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def repeated_ids(ids: Sequence[str]) -> list[str]:
    """The ids that occur more than once, in order of first occurrence."""
    counts = collections.Counter(ids)
    return [image_id for image_id in dict.fromkeys(ids) if counts[image_id] > 1]
