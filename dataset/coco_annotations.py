"""Reading COCO-format annotation files into the images and objects to convert.

The JSON's images and annotations (in file order, or in the order of an image id list), the class
list (dataset/coco_categories.py), the image files they name, and the checks that need the whole
data set before anything is written: missing files, and whether any training target is left.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Sequence

from absl import logging

from dataset import coco_categories
from dataset.tfrecord_writer import ConversionError, listing
from ssd.coco.categories import Category
from ssd.coco.coords import image_size

CROWD_POLICIES = ("ignore", "objects")
MOSTLY_CROWD = 0.5  # a larger share of crowd annotations is most likely a labeling tool's masks

Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class CocoObject:
    label: int
    name: str
    bbox: Box | None      # [x, y, width, height] as in the JSON; None when malformed
    area: float | None    # None when the JSON gives none
    is_crowd: int
    iscrowd_given: bool


@dataclasses.dataclass(frozen=True)
class CocoImage:
    """One image to convert."""
    image_id: int
    file_name: str
    path: str
    size: tuple[int, int] | None  # (width, height) of the JSON; None when missing or invalid
    objects: tuple[CocoObject, ...]


def load_json(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ConversionError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise ConversionError(f"{path}: not a COCO annotation file (needs 'images' and 'categories' lists)")
    if not isinstance(data.get("annotations", []), list):
        raise ConversionError(f"{path}: 'annotations' is not a list")
    return data


def read_image_ids(path: str | Path) -> tuple[list[int], int]:
    """(the COCO image ids of a text file, one per line, in file order, each once; repeats)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise ConversionError(f"cannot read {path}: {error}") from error
    ids = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                ids.append(int(line.strip()))
            except ValueError:
                raise ConversionError(f"{path}:{number}: {line.strip()!r} is not a COCO image id") from None
    unique = list(dict.fromkeys(ids))
    return unique, len(ids) - len(unique)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _bbox(value) -> Box | None:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    numbers = tuple(_number(v) for v in value)
    return None if None in numbers else numbers


def _objects_by_image(annotations: Sequence[dict], labels: dict[int, Category], known_images: set[int],
                      source: str, crowd: str = "ignore") -> dict[int, list[CocoObject]]:
    """Annotations grouped by image id, in file order. Raises ConversionError for category ids not
    in `categories` and for image ids not in `images`."""
    grouped: dict[int, list[CocoObject]] = collections.defaultdict(list)
    unknown_categories: collections.Counter = collections.Counter()
    unknown_images: collections.Counter = collections.Counter()
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise ConversionError(f"{source}: annotations[{index}] is not an object")
        category = labels.get(annotation.get("category_id"))
        image_id = annotation.get("image_id")
        if category is None:
            unknown_categories[repr(annotation.get("category_id"))] += 1
        if image_id not in known_images:
            unknown_images[repr(image_id)] += 1
        if category is None or image_id not in known_images:
            continue
        iscrowd = annotation.get("iscrowd")
        grouped[image_id].append(CocoObject(
            label=category.label, name=category.name, bbox=_bbox(annotation.get("bbox")),
            area=_number(annotation.get("area")), is_crowd=int(bool(iscrowd) and crowd == "ignore"),
            iscrowd_given=iscrowd is not None))
    if unknown_categories:
        found = [f"category_id {k}: {n} annotations" for k, n in sorted(unknown_categories.items())]
        raise ConversionError(f"{source}: {len(unknown_categories)} category ids of annotations are not in "
                              f"'categories':\n{listing(found)}")
    if unknown_images:
        found = [f"image_id {k}: {n} annotations" for k, n in sorted(unknown_images.items())]
        raise ConversionError(f"{source}: annotations refer to {len(unknown_images)} image ids that are "
                              f"not in 'images':\n{listing(found)}")
    return grouped


def _image_path(image_dir: str, file_name: str) -> str:
    """The image file of a JSON file_name: relative to image_dir (folders included); an absolute
    name (a labeling tool's upload path) is looked for under image_dir as well."""
    path = os.path.join(image_dir, file_name)
    if os.path.isabs(file_name) and not os.path.isfile(path):
        for candidate in (os.path.join(image_dir, file_name.lstrip("/\\")),
                          os.path.join(image_dir, os.path.basename(file_name))):
            if os.path.isfile(candidate):
                return candidate
    return path


def _used_category_ids(datas: Sequence[dict]) -> set:
    return {a.get("category_id") for data in datas for a in data.get("annotations", []) if isinstance(a, dict)}


def select_categories(datas: Sequence[dict], annotations_files: Sequence[str],
                      reference: str | Path | None = None) -> coco_categories.Selection:
    """The class list of the annotation files (which must list the same categories), or of
    `reference` (--categories_from)."""
    try:
        listed = [coco_categories.listed_categories(data["categories"], f"{path}: categories")
                  for data, path in zip(datas, annotations_files)]
        for these, path in zip(listed[1:], annotations_files[1:]):
            if these != listed[0]:
                raise ConversionError(f"{path} lists other categories (or another order) than "
                                      f"{annotations_files[0]}; labels would differ")
        used = _used_category_ids(datas)
        source = f"{annotations_files[0]}: categories"
        if reference is None:
            return coco_categories.select(datas[0]["categories"], used, source)
        return coco_categories.from_reference(datas[0]["categories"], used,
                                              coco_categories.read_reference(reference), source, str(reference))
    except coco_categories.CategorySelectionError as error:
        raise ConversionError(str(error)) from None


def find_images(annotations_files: Sequence[str | Path], image_dirs: Sequence[str | Path],
                image_ids: Sequence[int] | None = None, *, categories_from: str | Path | None = None,
                crowd: str = "ignore") -> tuple[list[CocoImage], coco_categories.Selection, list[dict]]:
    """(images in file order, or in `image_ids` order; the class list; one description per file).

    Raises ConversionError for malformed files, categories differing between files, duplicate
    image ids and `image_ids` absent from every file.
    """
    if len(annotations_files) != len(image_dirs) or not annotations_files:
        raise ConversionError(f"give one image directory per annotation file ({len(annotations_files)} "
                              f"annotation files, {len(image_dirs)} image directories)")
    annotations_files, image_dirs = list(map(str, annotations_files)), list(map(str, image_dirs))
    datas = [load_json(path) for path in annotations_files]
    selection = select_categories(datas, annotations_files, categories_from)
    images: dict[int, CocoImage] = {}
    sources, duplicates, malformed = [], [], []
    for data, annotations_file, image_dir in zip(datas, annotations_files, image_dirs):
        listed: set[int] = set()
        for index, entry in enumerate(data["images"]):
            image_id = entry.get("id") if isinstance(entry, dict) else None
            file_name = entry.get("file_name") if isinstance(entry, dict) else None
            if isinstance(image_id, bool) or not isinstance(image_id, int) or not isinstance(file_name, str):
                malformed.append(f"{annotations_file}: images[{index}] needs an integer 'id' and a "
                                 f"'file_name'")
            elif image_id in images or image_id in listed:
                duplicates.append(f"image id {image_id} ({file_name}) in {annotations_file}")
            else:
                listed.add(image_id)
        if malformed or duplicates:
            continue
        grouped = _objects_by_image(data.get("annotations", []), selection.by_file_id, listed,
                                    annotations_file, crowd)
        for entry in data["images"]:
            image_id = entry["id"]
            images[image_id] = CocoImage(image_id=image_id, file_name=entry["file_name"],
                                         path=_image_path(image_dir, entry["file_name"]), size=image_size(entry),
                                         objects=tuple(grouped.get(image_id, ())))
        sources.append({"annotations_file": annotations_file, "image_dir": image_dir,
                        "num_images": len(listed), "num_annotations": len(data.get("annotations", []))})
    if malformed:
        raise ConversionError(f"{len(malformed)} malformed image entries:\n{listing(malformed)}")
    if duplicates:
        raise ConversionError(f"{len(duplicates)} image ids are listed more than once (ids must be unique; "
                              f"they are the records' source_id):\n{listing(duplicates)}")
    if image_ids is None:
        return list(images.values()), selection, sources
    absent = [image_id for image_id in image_ids if image_id not in images]
    if absent:
        raise ConversionError(f"{len(absent)} ids of the image id list are in no annotation file:\n"
                              f"{listing(absent)}")
    return [images[image_id] for image_id in image_ids], selection, sources


def check_training_targets(images: Sequence[CocoImage], crowd: str, evaluation_only: bool) -> None:
    """Warns when most annotations are crowd regions; raises ConversionError when every one is and
    the data is not meant for evaluation only."""
    objects = [obj for image in images for obj in image.objects]
    crowds = sum(obj.is_crowd for obj in objects)
    if not objects or crowd != "ignore" or crowds <= MOSTLY_CROWD * len(objects):
        return
    message = (f"{crowds} of the {len(objects)} annotations are crowd regions (iscrowd 1), which "
               f"training ignores; labeling tools such as CVAT mark objects drawn as masks that way: "
               f"pass --crowd=objects to train on them")
    if crowds == len(objects) and not evaluation_only:
        raise ConversionError(f"no training target left: {message}, or --evaluation_only if this "
                              f"split is only evaluated (the COCO metric then ignores detections on them)")
    logging.warning("MOST ANNOTATIONS ARE CROWD REGIONS: %s", message)


def split_missing(images: Sequence[CocoImage], skip_missing: bool) -> tuple[list[CocoImage], list[dict]]:
    """(images whose file exists, summary items of the others). Raises ConversionError for missing
    files unless `skip_missing`."""
    present, missing = [], []
    for image in images:
        if os.path.isfile(image.path):
            present.append(image)
        else:
            missing.append({"image_id": str(image.image_id), "file": image.path,
                            "reason": f"missing file: no {image.path}"})
    if missing and not skip_missing:
        raise ConversionError(f"{len(missing)} image files are missing (pass --skip_missing to leave "
                              f"them out):\n{listing([m['file'] for m in missing])}")
    for item in missing:
        logging.warning("%s: image %s: skipped: %s", item["file"], item["image_id"], item["reason"])
    return present, missing
