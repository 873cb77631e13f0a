"""Finding the images of VOC-format data sets: their roots, split lists or annotation files,
the image file of each id, and the class list.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from absl import logging

from dataset.tfrecord_writer import ConversionError, listing
from ssd.config.loading import VOC_CLASSES
from ssd.voc import annotations as voc_xml
from ssd.voc.image_ids import read_image_ids

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG", ".png", ".PNG")

Note = voc_xml.Note


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image to convert."""
    image_id: str
    root: str
    xml_path: str
    image_path: str



@dataclasses.dataclass(frozen=True)
class FoundEntries:
    entries: list[Entry]       # in conversion order (before shuffling)
    sources: list[dict]        # one description per root, for the summary
    notes: list[Note]
    missing: list[dict]        # ids left out for missing files (skip_missing), as summary "skipped" items


def voc_roots(dataset_directory: str | Path, years: Sequence[str]) -> list[Path]:
    """VOCdevkit/VOC<year> for each year."""
    return [Path(dataset_directory) / f"VOC{str(year).strip()}" for year in years]


def read_split_ids(root: Path, split: str) -> list[str]:
    """Ids of ImageSets/Main/<split>.txt in file order (first token of each non-empty line)."""
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        raise ConversionError(f"no split list {path} (lists there: {', '.join(available) or 'none'})")
    return read_image_ids(path)


def annotated_ids(root: Path) -> tuple[list[str], int]:
    """The seed's mode: every Annotations/*.xml, sorted, except ids of the root's test list.

    VOC2007's trainval and test archives unpack into the same VOC2007 directory, so "every
    annotation" would otherwise put the test images into the training set.
    Returns (ids, number of test ids left out).
    """
    ids = sorted(path.stem for path in (root / "Annotations").glob("*.xml"))
    test_list = root / "ImageSets" / "Main" / "test.txt"
    if not test_list.is_file():
        return ids, 0
    test_ids = set(read_split_ids(root, "test"))
    kept = [image_id for image_id in ids if image_id not in test_ids]
    return kept, len(ids) - len(kept)


def find_entries(roots: Sequence[str | Path], splits: Sequence[str], all_annotated: bool,
                 skip_missing: bool = False) -> FoundEntries:
    """Entries in list order (roots in order, then split-list order or sorted ids).

    Raises ConversionError for missing directories or split lists, for ids present in more than
    one root, and for ids without their XML or image file unless `skip_missing`, which lists them
    in `missing` instead.
    """
    entries: list[Entry] = []
    sources: list[dict] = []
    notes: list[Note] = []
    missing: list[str] = []
    missing_items: list[dict] = []
    first_root: dict[str, str] = {}
    duplicates: list[str] = []
    for root in map(Path, roots):
        for sub in ("Annotations", "JPEGImages"):
            if not (root / sub).is_dir():
                raise ConversionError(f"{root} is not a VOC-layout root: no {sub}/ directory")
        if all_annotated:
            ids, excluded = annotated_ids(root)
            sources.append({"root": str(root), "ids": "all annotated", "num_ids": len(ids),
                            "excluded_test_ids": excluded})
            if excluded:
                logging.info("%s: left out the %d ids of ImageSets/Main/test.txt", root, excluded)
        else:
            ids = []
            for split in splits:
                ids.extend(read_split_ids(root, split))
            unique = list(dict.fromkeys(ids))
            if len(unique) != len(ids):
                notes.append(("duplicate_id", f"{root}: {len(ids) - len(unique)} ids listed more than "
                                              f"once in {', '.join(splits)}; each converted once"))
            ids = unique
            sources.append({"root": str(root), "ids": list(splits), "num_ids": len(ids)})
        image_names = set(os.listdir(root / "JPEGImages"))
        annotation_names = set(os.listdir(root / "Annotations"))
        for image_id in ids:
            image_name = next((image_id + ext for ext in IMAGE_EXTENSIONS if image_id + ext in image_names),
                              None)
            problems = []
            if image_id + ".xml" not in annotation_names:
                problems.append(f"no Annotations/{image_id}.xml")
            if image_name is None:
                problems.append(f"no JPEGImages/{image_id}.jpg")
            if problems:
                missing.append(f"{root}: {image_id}: {', '.join(problems)}")
                missing_items.append({"image_id": image_id, "file": str(root),
                                      "reason": f"missing file: {', '.join(problems)}"})
                continue
            if image_id in first_root:
                duplicates.append(f"{image_id} in {first_root[image_id]} and {root}")
                continue
            first_root[image_id] = str(root)
            entries.append(Entry(image_id=image_id, root=str(root),
                                 xml_path=str(root / "Annotations" / f"{image_id}.xml"),
                                 image_path=str(root / "JPEGImages" / image_name)))
    if missing and not skip_missing:
        raise ConversionError(f"{len(missing)} image ids have missing files (pass --skip_missing to "
                              f"leave them out):\n{listing(missing)}")
    if duplicates:
        raise ConversionError(f"{len(duplicates)} image ids occur in more than one root (ids must be "
                              f"unique; convert those roots separately):\n{listing(duplicates)}")
    for item in missing_items:
        logging.warning("%s: %s: skipped: %s", item["file"], item["image_id"], item["reason"])
    return FoundEntries(entries=entries, sources=sources, notes=notes, missing=missing_items)


def load_class_names(classes: Sequence[str] | None = None, classes_file: str | Path | None = None
                     ) -> tuple[str, ...]:
    """The class list: explicit names, else one name per line of `classes_file`, else VOC's 20."""
    if classes and classes_file:
        raise ConversionError("give either a class list or a class file, not both")
    if classes_file:
        names = [line.strip() for line in Path(classes_file).read_text().splitlines()]
        source = str(classes_file)
    elif classes:
        names = [name.strip() for name in classes]
        source = "the class list"
    else:
        return tuple(VOC_CLASSES)
    names = [name for name in names if name]
    if not names:
        raise ConversionError(f"{source} names no classes")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConversionError(f"{source} names these classes more than once: {', '.join(repeated)}")
    return tuple(names)
