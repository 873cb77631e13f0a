"""A COCO annotations file's ground truth, looked up by image file (what visualize.py draws
beside the detections).

An image file is matched to an entry of "images" by its file name: the JSON's `file_name` may
carry folders ("val2017/0001.jpg") or a labeling tool's upload path, so the last path component
decides, and when several entries share it, the one whose whole `file_name` ends the image's
path. Boxes stay COCO's `[x, y, width, height]` pixels of the image as the JSON's width and height
give it, until `normalized_boxes` turns them into the library's normalized
`[ymin, xmin, ymax, xmax]` (ssd.coco.coords).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import PurePath, PurePosixPath
from typing import Sequence

import numpy as np

from ssd.coco.coords import coco_to_normalized, image_size
from ssd.errors import UserError


class CocoAnnotationsError(UserError, ValueError):
    """An annotations file that cannot be read as COCO JSON; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ImageTruth:
    """The annotated objects of one image."""

    file_name: str
    size: tuple[int, int] | None  # (width, height) as the JSON gives them; None when it does not
    boxes: np.ndarray  # [N, 4] COCO [x, y, width, height] pixels, file order (crowd regions too)
    names: tuple[str, ...]  # the category name of each box

    def normalized_boxes(self, height: int, width: int) -> np.ndarray:
        """[N, 4] normalized [ymin, xmin, ymax, xmax]: of the JSON's image size when it gives
        one, else of the picture's `height` x `width`."""
        if self.size is not None:
            width, height = self.size
        return coco_to_normalized(self.boxes, height, width)

    def labeled(self, class_names: Sequence[str], height: int, width: int
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(normalized boxes [M, 4], 1-based labels [M] in class_names, names of the objects of
        other classes, one per object) as ssd.voc.annotations.labeled_boxes gives them."""
        label_of = {name: i for i, name in enumerate(class_names, start=1)}
        known = [i for i, name in enumerate(self.names) if name in label_of]
        boxes = self.normalized_boxes(height, width)[known].reshape(-1, 4)
        labels = np.array([label_of[self.names[i]] for i in known], dtype=np.int64)
        return boxes, labels, [name for name in self.names if name not in label_of]


class CocoImageTruths:
    """The images of a COCO annotations file and their objects, found by image file."""

    def __init__(self, images: Sequence[ImageTruth], source: str):
        self.source = source
        self._by_name: dict[str, list[ImageTruth]] = collections.defaultdict(list)
        for image in images:
            self._by_name[PurePosixPath(image.file_name.replace("\\", "/")).name].append(image)

    def find(self, image_path: str | os.PathLike) -> tuple[ImageTruth | None, str | None]:
        """(the entry of the image file, None) or (None, why there is none)."""
        path = PurePath(os.fspath(image_path)).as_posix()
        name = PurePosixPath(path).name
        candidates = self._by_name.get(name, [])
        if len(candidates) > 1:
            candidates = [c for c in candidates
                          if path.endswith("/" + c.file_name.replace("\\", "/").lstrip("/"))]
        if len(candidates) == 1:
            return candidates[0], None
        if not candidates and name not in self._by_name:
            return None, f"no image named {name} in {self.source}"
        listed = ", ".join(sorted(c.file_name for c in self._by_name[name]))
        return None, f"several images named {name} in {self.source} ({listed}), none of them at this path"


def read_image_truths(path: str | os.PathLike) -> CocoImageTruths:
    """The images and objects of a COCO annotations JSON file (checked as the COCO metric checks
    it, ssd.coco.eval); CocoAnnotationsError naming the file otherwise."""
    from ssd.coco.eval import read_annotations

    try:
        data = read_annotations(path)
    except (FileNotFoundError, ValueError) as e:
        raise CocoAnnotationsError(str(e)) from None
    names = {c["id"]: str(c.get("name", c["id"])) for c in data["categories"]}
    objects: dict[int, list[dict]] = collections.defaultdict(list)
    for annotation in data["annotations"]:
        objects[annotation["image_id"]].append(annotation)
    images = []
    for index, entry in enumerate(data["images"]):
        file_name = entry.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise CocoAnnotationsError(f"{path}: image {index} (id {entry['id']}) has no file_name")
        found = objects.get(entry["id"], [])
        images.append(ImageTruth(
            file_name=file_name, size=image_size(entry),
            boxes=np.array([a["bbox"] for a in found], dtype=np.float64).reshape(-1, 4),
            names=tuple(names[a["category_id"]] for a in found)))
    return CocoImageTruths(images, os.fspath(path))
