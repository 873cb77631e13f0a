"""Reads one PASCAL VOC annotation file, tolerating the variations found in real data sets.

Every departure from the VOC format that can be handled is handled with a default and reported as a
note `(kind, message)`, so the caller can count and log it; only XML that cannot be parsed at all
raises `VocXmlError`, which names the file. Coordinates stay in VOC's 1-based inclusive pixel
convention and are read as floats ("45.7" occurs in the wild); clipping them to the image is left
to the caller, who knows the real image size.
"""

from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ET
from pathlib import Path

Note = tuple[str, str]


class VocXmlError(ValueError):
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
