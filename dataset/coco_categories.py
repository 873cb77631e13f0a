"""Which categories of a COCO-format file become the data set's classes, and in which order.

COCO's own files list exactly their classes. Files exported by labeling tools often list more:
Roboflow puts the data set itself first (`{"id": 0, "name": "<data set>", "supercategory":
"none"}`), which every real category names as its supercategory and no annotation uses; with one
class that name is the class's own, listed twice. A category that no annotation uses is reported,
and it is left out of the class list (with a note) when it only repeats another category's name or
is the supercategory of all the others. Every other category keeps its place: label i is the i-th
category kept, in the file's order. Two categories that annotations use under one name are an
error naming both ids.

Splits of one export must share their classes even when a class is absent from one split:
`from_reference` takes the class list and label order of another file (the training split's
annotations or its `<name>_categories.json`) and maps this file's category ids onto it by name.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Collection, Sequence

from ssd.coco.categories import Category, CategoryError, read_category_map


class CategorySelectionError(ValueError):
    """The categories cannot become a class list; the message names the ids or file."""


@dataclasses.dataclass(frozen=True)
class Listed:
    coco_id: int
    name: str
    supercategory: str | None


@dataclasses.dataclass(frozen=True)
class Selection:
    categories: list[Category]  # the class list: labels 1..K
    by_file_id: dict[int, Category]  # this file's category ids that annotations may use
    notes: list[str]  # what was left out or is unused, one line each


def listed_categories(entries: Sequence, source: str) -> list[Listed]:
    """The `categories` entries of a file; CategorySelectionError for malformed entries and ids
    listed twice."""
    listed, ids = [], set()
    for index, entry in enumerate(entries):
        entry = entry if isinstance(entry, dict) else {}
        coco_id, name = entry.get("id"), entry.get("name")
        if isinstance(coco_id, bool) or not isinstance(coco_id, int) or not isinstance(name, str) or not name:
            raise CategorySelectionError(f"{source}: entry {index} needs an integer 'id' and a 'name'")
        if coco_id in ids:
            raise CategorySelectionError(f"{source}: category id {coco_id} is listed twice")
        ids.add(coco_id)
        supercategory = entry.get("supercategory")
        listed.append(Listed(coco_id, name, supercategory if isinstance(supercategory, str) else None))
    if not listed:
        raise CategorySelectionError(f"{source}: no categories")
    return listed


def _why_left_out(category: Listed, listed: Sequence[Listed]) -> str | None:
    others = [c for c in listed if c.coco_id != category.coco_id]
    twin = next((c for c in others if c.name == category.name), None)
    if twin is not None:
        return f"repeats the name of category id {twin.coco_id}"
    if others and all(c.supercategory == category.name for c in others):
        return "is the supercategory of all the others (a labeling tool's entry for the data set)"
    return None


def _describe(category: Listed) -> str:
    return f"category id {category.coco_id} {category.name!r}"


def select(entries: Sequence, used_ids: Collection[int], source: str) -> Selection:
    """The class list of a file whose annotations use the category ids `used_ids`."""
    listed = listed_categories(entries, source)
    kept, notes = [], []
    for category in listed:
        why = None if category.coco_id in used_ids else _why_left_out(category, listed)
        if why:
            notes.append(f"{source}: {_describe(category)}, which no annotation uses, {why}: left out")
        else:
            kept.append(category)
    by_name: dict[str, Listed] = {}
    for category in kept:
        if category.name in by_name:
            raise CategorySelectionError(
                f"{source}: category name {category.name!r} is listed twice (ids "
                f"{by_name[category.name].coco_id} and {category.coco_id}); labels would be ambiguous")
        by_name[category.name] = category
    categories = [Category(label, c.coco_id, c.name) for label, c in enumerate(kept, start=1)]
    for category in categories:
        if category.coco_id not in used_ids:
            notes.append(f"{source}: category id {category.coco_id} {category.name!r}: no annotation "
                         f"uses it (kept as label {category.label})")
    return Selection(categories, {c.coco_id: c for c in categories}, notes)


def read_reference(path: str | Path) -> list[Category]:
    """The class list of `path`: a converter's `<name>_categories.json` or a COCO annotation file
    (its categories selected as `select` does with its own annotations)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise CategorySelectionError(f"cannot read {path}: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list) and "images" in data:
        used = {a.get("category_id") for a in data["annotations"] if isinstance(a, dict)}
        return select(data.get("categories") or [], used, str(path)).categories
    try:
        return read_category_map(path)
    except CategoryError as error:
        raise CategorySelectionError(f"{error} (--categories_from takes a COCO annotation file or a "
                                     f"converter's <name>_categories.json)") from None


def from_reference(entries: Sequence, used_ids: Collection[int], reference: Sequence[Category],
                   source: str, reference_source: str) -> Selection:
    """The class list of `reference`, with this file's category ids mapped onto it by name (a
    class this file does not list keeps the reference's id). A category annotations use that the
    reference does not have is an error; an unused one is left out with a note."""
    listed = listed_categories(entries, source)
    names = {c.name for c in reference}
    notes = []
    for category in listed:
        if category.name in names:
            continue
        if category.coco_id in used_ids:
            raise CategorySelectionError(
                f"{source}: {_describe(category)} is used by annotations but is not among the classes "
                f"of {reference_source} ({', '.join(c.name for c in reference)})")
        notes.append(f"{source}: {_describe(category)}, which no annotation uses, is not among the "
                     f"classes of {reference_source}: left out")
    categories = []
    for wanted in reference:
        namesakes = [c for c in listed if c.name == wanted.name]
        used = [c for c in namesakes if c.coco_id in used_ids]
        if len(used) > 1:
            raise CategorySelectionError(f"{source}: category name {wanted.name!r} is listed twice (ids "
                                         f"{used[0].coco_id} and {used[1].coco_id}); labels would be ambiguous")
        chosen = (used or namesakes or [None])[0]
        categories.append(Category(wanted.label, wanted.coco_id if chosen is None else chosen.coco_id, wanted.name))
    return Selection(categories, {c.coco_id: c for c in categories}, notes)
