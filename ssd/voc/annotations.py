"""Reads PASCAL VOC annotation files: the one reader of VOC XML, for the converter, the scorer and
the drawing of ground truth, so that all three see the same objects in the same file.

Coordinates stay in VOC's 1-based inclusive pixel convention (`ssd.voc.coords` converts them).
Every departure from the VOC format that can be handled is handled with the default below and
reported as a note `(kind, message)`, so the caller can count and log it; only a file that cannot
be read as VOC XML at all raises `VocXmlError` (a ValueError whose message starts with the path).

The rules, case by case:
  * unreadable file, malformed XML, or a root other than <annotation>: VocXmlError;
  * objects are the <object> children of <annotation> only (a nested element named "object" is
    not an object), in file order, which the metric uses to break overlap ties;
  * <name>: surrounding whitespace is stripped (" cat " is cat; names are otherwise exact and
    case-sensitive); an object without a name is dropped (note object_unnamed);
  * <bndbox>: the object's own one (VOC2012 layout annotations nest more boxes inside <part>);
    coordinates are read as floats ("45.7" occurs in the wild); a missing <bndbox> (box_missing)
    or a coordinate that is missing, not a number or not finite (box_invalid) drops the object;
    xmax < xmin or ymax < ymin drops it too (box_inverted): no detection can overlap it, and
    keeping it would only count an unmatchable object. xmin == xmax is a valid one-pixel box;
  * <difficult> and <truncated>: any number, non-zero meaning yes (as the devkit's `if diff`),
    or true/false; missing or empty means 0 (note <tag>_missing), anything else 0 (<tag>_invalid);
  * <pose>: missing or empty means "Unspecified";
  * <size>: missing, incomplete (size_missing) or not positive numbers (size_invalid) gives
    width = height = depth = None; the reader never uses it, and boxes are not clipped to it:
    clipping to the image is the caller's business (the converter clips to the decoded image;
    the metric, like the devkit, scores the boxes as written).
"""

from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from ssd.errors import UserError

Note = tuple[str, str]


class VocXmlError(UserError, ValueError):
    """An annotation file that cannot be read; the message starts with the file's path."""


@dataclasses.dataclass(frozen=True)
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax; VOC 1-based inclusive pixels
    difficult: int = 0
    truncated: int = 0
    pose: str = "Unspecified"


@dataclasses.dataclass(frozen=True)
class VocAnnotation:
    path: str
    filename: str | None
    width: int | None   # None when <size> is missing or unusable (see notes)
    height: int | None
    depth: int | None
    objects: tuple[VocObject, ...]
    notes: tuple[Note, ...]


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_size(root: ET.Element, notes: list[Note]) -> tuple[int | None, int | None, int | None]:
    size = root.find("size")
    if size is None:
        notes.append(("size_missing", "no <size> element"))
        return None, None, None
    width_text, height_text = size.findtext("width"), size.findtext("height")
    if width_text is None or height_text is None:
        notes.append(("size_missing", "<size> lacks <width> or <height>"))
        return None, None, None
    width, height = _number(width_text), _number(height_text)
    if width is None or height is None or width < 1 or height < 1:
        notes.append(("size_invalid", f"unusable <size> {width_text.strip()!r} x {height_text.strip()!r}"))
        return None, None, None
    depth = _number(size.findtext("depth"))
    return int(round(width)), int(round(height)), None if depth is None else int(round(depth))


def _read_flag(element: ET.Element, tag: str, object_name: str, notes: list[Note]) -> int:
    text = element.findtext(tag)
    if text is None or not text.strip():
        notes.append((f"{tag}_missing", f"object {object_name!r} has no <{tag}>, using 0"))
        return 0
    value = _number(text)
    if value is None:
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return int(lowered == "true")
        notes.append((f"{tag}_invalid",
                      f"object {object_name!r} has <{tag}>{text.strip()}</{tag}>, using 0"))
        return 0
    return int(value != 0)


def _read_object(element: ET.Element, index: int, notes: list[Note]) -> VocObject | None:
    name = (element.findtext("name") or "").strip()
    if not name:
        notes.append(("object_unnamed", f"object #{index} has no <name>, dropped"))
        return None
    # Only the object's own <bndbox>: VOC2012 layout annotations nest further boxes inside <part>.
    bndbox = element.find("bndbox")
    if bndbox is None:
        notes.append(("box_missing", f"object {name!r} has no <bndbox>, dropped"))
        return None
    texts = [bndbox.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
    coordinates = [_number(text) for text in texts]
    if any(value is None for value in coordinates):
        notes.append(("box_invalid", f"object {name!r} has an unreadable <bndbox> {texts}, dropped"))
        return None
    xmin, ymin, xmax, ymax = coordinates
    if xmax < xmin or ymax < ymin:
        notes.append(("box_inverted", f"object {name!r} has an inverted <bndbox> "
                                      f"({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}), dropped"))
        return None
    pose = (element.findtext("pose") or "").strip() or "Unspecified"
    return VocObject(name=name, box=tuple(coordinates),
                     difficult=_read_flag(element, "difficult", name, notes),
                     truncated=_read_flag(element, "truncated", name, notes), pose=pose)


def parse_voc_xml(path: str | Path) -> VocAnnotation:
    """Parses `path`; raises VocXmlError for unreadable or non-VOC XML."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise VocXmlError(f"{path}: malformed XML ({error})") from error
    except OSError as error:
        raise VocXmlError(f"{path}: cannot read ({error})") from error
    if root.tag != "annotation":
        raise VocXmlError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    notes: list[Note] = []
    width, height, depth = _read_size(root, notes)
    objects = [_read_object(element, index, notes) for index, element in enumerate(root.findall("object"))]
    filename = (root.findtext("filename") or "").strip() or None
    return VocAnnotation(path=str(path), filename=filename, width=width, height=height, depth=depth,
                         objects=tuple(obj for obj in objects if obj is not None), notes=tuple(notes))


def labeled_boxes(annotation: VocAnnotation, class_names: Sequence[str]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(boxes [N, 4] VOC pixels float64, labels [N] 1-based int64, difficult [N] bool, unknown).

    Labels are 1-based positions in class_names; objects of other classes are left out, and
    their names (one entry per object, file order) are returned as `unknown`.
    """
    label_of = {name: i for i, name in enumerate(class_names, start=1)}
    kept = [obj for obj in annotation.objects if obj.name in label_of]
    unknown = [obj.name for obj in annotation.objects if obj.name not in label_of]
    return (np.array([obj.box for obj in kept], dtype=np.float64).reshape(-1, 4),
            np.array([label_of[obj.name] for obj in kept], dtype=np.int64),
            np.array([obj.difficult != 0 for obj in kept], dtype=bool), unknown)


def read_annotation(path: str | Path, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [N, 4] VOC pixels, labels [N] 1-based, difficult [N]) of the objects of class_names
    in one VOC XML file, by the rules above; raises VocXmlError for an unreadable file."""
    boxes, labels, difficult, _ = labeled_boxes(parse_voc_xml(path), class_names)
    return boxes, labels, difficult
