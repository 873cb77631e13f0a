"""COCO's sparse category ids <-> the library's contiguous labels, and the file that records them.

COCO numbers its 80 categories with ids between 1 and 90 (some ids are unused). The library needs
labels 1..K (0 is background), so label i is the i-th category in the order the annotation file
lists them. The converter writes that map beside the records as `<name>_categories.json`:

  {"categories": [{"label": 1, "coco_id": 1, "name": "person"}, ...]}

Evaluation reads it back (`read_category_map`) to write detections with COCO's own ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple, Sequence

from ssd.data.records import CATEGORIES_SUFFIX
from ssd.errors import UserError


class Category(NamedTuple):
    label: int    # the library's contiguous label, 1..K
    coco_id: int  # the annotation file's category id
    name: str


class CategoryError(UserError, ValueError):
    """The categories cannot be mapped; the message names the bad entry or file."""


def category_map_path(output_directory: str | Path, name: str) -> Path:
    return Path(output_directory) / f"{name}{CATEGORIES_SUFFIX}"


def category_map_text(categories: Sequence[Category]) -> str:
    """The category map file's content."""
    content = {"categories": [{"label": c.label, "coco_id": c.coco_id, "name": c.name} for c in categories]}
    return json.dumps(content, indent=2) + "\n"


def write_category_map(path: str | Path, categories: Sequence[Category]) -> None:
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(category_map_text(categories))
    os.replace(partial, path)


def read_category_map(path: str | Path) -> list[Category]:
    """The map written by the converter, in label order. Raises CategoryError for a malformed file."""
    try:
        entries = json.loads(Path(path).read_text())["categories"]
        result = [Category(label=int(e["label"]), coco_id=int(e["coco_id"]), name=str(e["name"]))
                  for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CategoryError(f"{path}: not a category map ({type(error).__name__}: {error})") from error
    if [c.label for c in result] != list(range(1, len(result) + 1)):
        raise CategoryError(f"{path}: labels must be 1..{len(result)} in order")
    return result
