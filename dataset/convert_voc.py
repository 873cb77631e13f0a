r"""Converts PASCAL VOC-format data sets into sharded TFRecords (the schema of ssd/records.py).

Examples:
  # VOC07+12 trainval (16,551 images) for training, VOC07 test (4,952) for evaluation
  python dataset/convert_voc.py --dataset_directory=VOCdevkit --years=2007,2012 \
      --splits=trainval --output_directory=tfrecords --name=voc0712_trainval
  python dataset/convert_voc.py --dataset_directory=VOCdevkit --years=2007 --splits=test \
      --output_directory=tfrecords --name=voc07_test
  # the seed's training set: every annotated image of VOC2007 (minus its test list) and VOC2012
  python dataset/convert_voc.py --dataset_directory=VOCdevkit --years=2007,2012 --all_annotated \
      --output_directory=tfrecords --name=voc0712_all
  # any VOC-format data set with its own classes (labels 1..N in list order)
  python dataset/convert_voc.py --voc_root=shapes --split=trainval \
      --classes=circle,square,triangle,star --output_directory=tfrecords --name=shapes_trainval

Writes `<name>-00000-of-000NN` ... (image i of the split order goes to shard i mod NN) and
`<name>_summary.json`. Shards are written into a hidden temporary directory and moved into place
only when all of them are complete; the summary is written last, so its presence marks a finished
conversion. Output is byte-identical for identical input, whatever the number of workers.

What happens with irregular input:
  * missing <difficult>/<truncated>/<pose>: 0 / 0 / Unspecified (counted as warnings);
  * float coordinates: kept as floats;
  * <size> missing, invalid or disagreeing with the image: the decoded image wins (warning);
  * a box reaching outside the image: clipped (warning); inverted, or empty after clipping:
    dropped (warning);
  * class names not in the class list: an error listing them with their files, or with
    --skip_unknown_classes those objects are dropped (warning);
  * images without objects: kept (evaluation sets need them), or skipped with --drop_empty;
  * images that are not plain RGB JPEG (grayscale, CMYK, alpha, palette, PNG behind a .jpg name,
    16-bit...): re-encoded as RGB JPEG at quality 95; undecodable or truncated images and malformed
    XML: skipped and listed in the summary;
  * ids of the split lists without an XML or image file, and ids present in two roots: an error
    listing them (ids are the records' source_id, which evaluation matches on, so they must be
    unique; rename or convert the roots separately).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import json
import math
import multiprocessing
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, Sequence, TextIO

if __package__ in (None, ""):  # run as `python dataset/convert_voc.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from dataset import voc_image
from ssd.progress import Progress
from ssd import records, voc_xml
from ssd.config import VOC_CLASSES
from ssd.image_ids import read_image_ids
from ssd.voc_coords import voc_to_normalized

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG", ".png", ".PNG")
IMAGES_PER_SHARD = 1000
JPEG_QUALITY = 95
MAX_LISTED = 10          # ids quoted in an error message
MAX_FILES_PER_CLASS = 3  # files quoted per unknown class name
MAX_LOGGED_PER_KIND = 5  # warnings of one kind logged with their file; the rest are only counted

Note = voc_xml.Note


class ConversionError(Exception):
    """The input cannot be converted as asked; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image to convert."""
    image_id: str
    root: str
    xml_path: str
    image_path: str


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    class_to_label: dict[str, int]
    skip_unknown_classes: bool = False
    drop_empty: bool = False
    jpeg_quality: int = JPEG_QUALITY


@dataclasses.dataclass(frozen=True)
class ConvertedImage:
    image_id: str
    filename: str
    encoded: bytes
    height: int
    width: int
    boxes: tuple[tuple[float, float, float, float], ...]  # normalized [ymin, xmin, ymax, xmax]
    labels: tuple[int, ...]
    texts: tuple[str, ...]
    difficult: tuple[int, ...]
    truncated: tuple[int, ...]
    reencoded: str | None


@dataclasses.dataclass(frozen=True)
class Outcome:
    entry: Entry
    image: ConvertedImage | None  # None when skipped
    skip_reason: str | None
    notes: tuple[Note, ...]


# ----------------------------------------------------------------------------- input discovery

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


def _listing(items: Sequence[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = "\n".join(f"  {item}" for item in items[:MAX_LISTED])
    more = f"\n  ... and {total - MAX_LISTED} more" if total > MAX_LISTED else ""
    return shown + more


def find_entries(roots: Sequence[str | Path], splits: Sequence[str], all_annotated: bool
                 ) -> tuple[list[Entry], list[dict], list[Note]]:
    """Entries in conversion order (roots in order, then split-list order or sorted ids).

    Returns (entries, one description per root for the summary, notes). Raises ConversionError
    for missing directories, split lists or files, and for ids present in more than one root.
    """
    entries: list[Entry] = []
    sources: list[dict] = []
    notes: list[Note] = []
    missing: list[str] = []
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
                continue
            if image_id in first_root:
                duplicates.append(f"{image_id} in {first_root[image_id]} and {root}")
                continue
            first_root[image_id] = str(root)
            entries.append(Entry(image_id=image_id, root=str(root),
                                 xml_path=str(root / "Annotations" / f"{image_id}.xml"),
                                 image_path=str(root / "JPEGImages" / image_name)))
    if missing:
        raise ConversionError(f"{len(missing)} image ids have missing files:\n{_listing(missing)}")
    if duplicates:
        raise ConversionError(f"{len(duplicates)} image ids occur in more than one root (ids must be "
                              f"unique; convert those roots separately):\n{_listing(duplicates)}")
    return entries, sources, notes


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


# ----------------------------------------------------------------------------- per-image work

def clip_voc_box(box: tuple[float, float, float, float], height: int, width: int
                 ) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """(box clipped to the image in VOC inclusive pixels, warning kind) or (None, kind) if unusable.

    xmin == xmax is a valid one-pixel-wide box in VOC's inclusive convention; xmax < xmin is not.
    """
    xmin, ymin, xmax, ymax = box
    if xmax < xmin or ymax < ymin:
        return None, "box_inverted"
    clipped = (max(xmin, 1.0), max(ymin, 1.0), min(xmax, float(width)), min(ymax, float(height)))
    if clipped == tuple(box):
        return tuple(box), None
    if clipped[2] < clipped[0] or clipped[3] < clipped[1]:
        return None, "box_outside"
    return clipped, "box_clipped"


def _size_note(annotation: voc_xml.VocAnnotation, height: int, width: int) -> Note | None:
    if annotation.width is None or (annotation.width, annotation.height) == (width, height):
        return None
    swapped = (annotation.width, annotation.height) == (height, width)
    hint = " (width and height swapped: EXIF rotation?)" if swapped else ""
    return ("size_mismatch", f"<size> says {annotation.width}x{annotation.height} but the image is "
                             f"{width}x{height}{hint}; using the image's")


def convert_image(entry: Entry, annotation: voc_xml.VocAnnotation, options: ImageOptions) -> Outcome:
    """Decodes (re-encoding if needed) one image and turns its annotation into record fields.

    Bad data never raises: it becomes a skip reason or a note.
    """
    notes: list[Note] = list(annotation.notes)
    try:
        data = Path(entry.image_path).read_bytes()
        image = voc_image.load_rgb_jpeg(data, quality=options.jpeg_quality)
    except (OSError, voc_image.CorruptImageError) as error:
        return Outcome(entry=entry, image=None, skip_reason=f"corrupt image: {error}", notes=tuple(notes))
    size_note = _size_note(annotation, image.height, image.width)
    if size_note:
        notes.append(size_note)
    kept = []
    for obj in annotation.objects:
        label = options.class_to_label.get(obj.name)
        if label is None:  # only reached with skip_unknown_classes: the scan rejects them otherwise
            notes.append(("unknown_class", f"object of unknown class {obj.name!r} dropped"))
            continue
        box, kind = clip_voc_box(obj.box, image.height, image.width)
        if kind:
            action = "dropped" if box is None else f"clipped to {box}"
            notes.append((kind, f"{obj.name} box {obj.box} in a {image.width}x{image.height} image "
                                f"{action}"))
        if box is not None:
            kept.append((obj, label, box))
    if not kept and options.drop_empty:
        return Outcome(entry=entry, image=None, skip_reason="no objects (--drop_empty)", notes=tuple(notes))
    normalized = voc_to_normalized(np.array([box for _, _, box in kept], np.float64).reshape(-1, 4),
                                   image.height, image.width)
    converted = ConvertedImage(
        image_id=entry.image_id, filename=Path(entry.image_path).name, encoded=image.encoded,
        height=image.height, width=image.width, boxes=tuple(tuple(map(float, row)) for row in normalized),
        labels=tuple(label for _, label, _ in kept), texts=tuple(obj.name for obj, _, _ in kept),
        difficult=tuple(obj.difficult for obj, _, _ in kept),
        truncated=tuple(obj.truncated for obj, _, _ in kept), reencoded=image.reencoded)
    return Outcome(entry=entry, image=converted, skip_reason=None, notes=tuple(notes))


def _convert_task(task: tuple[Entry, voc_xml.VocAnnotation], options: ImageOptions) -> Outcome:
    return convert_image(task[0], task[1], options)


# ----------------------------------------------------------------------------- bookkeeping

class WarningTally:
    """Counts warnings by kind; logs the first few of each kind with their file."""

    def __init__(self, max_logged: int = MAX_LOGGED_PER_KIND):
        self.max_logged = max_logged
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, kind: str, file: str, message: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.max_logged:
            text = f"{file}: {message}" if file else message
            self.examples[kind].append(text)
            logging.warning("%s", text)
            if self.counts[kind] == self.max_logged:
                logging.warning("(further '%s' warnings are only counted)", kind)


def _scan_annotations(entries: Sequence[Entry], class_names: Sequence[str], skip_unknown_classes: bool
                      ) -> tuple[list[tuple[Entry, voc_xml.VocAnnotation]], list[dict]]:
    """Parses every XML up front, so that unknown classes fail fast, before any image work."""
    known = set(class_names)
    tasks, skipped = [], []
    unknown: dict[str, list[str]] = collections.defaultdict(list)
    for entry in entries:
        try:
            annotation = voc_xml.parse_voc_xml(entry.xml_path)
        except voc_xml.VocXmlError as error:
            logging.warning("%s", error)
            skipped.append({"image_id": entry.image_id, "file": entry.xml_path, "reason": str(error)})
            continue
        for obj in annotation.objects:
            if obj.name not in known:
                unknown[obj.name].append(entry.xml_path)
        tasks.append((entry, annotation))
    if unknown and not skip_unknown_classes:
        lines = []
        for name in sorted(unknown):
            files = list(dict.fromkeys(unknown[name]))
            more = f" and {len(files) - MAX_FILES_PER_CLASS} more" if len(files) > MAX_FILES_PER_CLASS else ""
            shown = ", ".join(files[:MAX_FILES_PER_CLASS]) + more
            lines.append(f"  {name!r}: {len(unknown[name])} objects in {len(files)} files: {shown}")
        raise ConversionError(
            f"{len(unknown)} class names are not in the class list ({', '.join(class_names)}); give the "
            f"right classes or pass --skip_unknown_classes to drop those objects:\n" + "\n".join(lines))
    return tasks, skipped


def _outcomes(tasks: Sequence[tuple[Entry, voc_xml.VocAnnotation]], options: ImageOptions,
              num_workers: int) -> Iterator[Outcome]:
    work = functools.partial(_convert_task, options=options)
    if num_workers <= 1 or len(tasks) <= 1:
        yield from map(work, tasks)
        return
    # fork keeps workers cheap (no re-import of TensorFlow); the workers themselves never touch TF.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(method).Pool(num_workers) as pool:
        yield from pool.imap(work, tasks, chunksize=4)


def shard_name(name: str, index: int, num_shards: int) -> str:
    return f"{name}-{index:05d}-of-{num_shards:05d}"


def finished_shards(output_directory: str | Path, name: str) -> list[Path]:
    """Every `<name>-NNNNN-of-NNNNN` file in the directory, whatever its shard count."""
    digits = "[0-9]" * 5
    pattern = os.path.join(glob.escape(str(output_directory)), f"{glob.escape(name)}-{digits}-of-{digits}")
    return sorted(Path(path) for path in glob.glob(pattern))


def _serialize(image: ConvertedImage) -> bytes:
    example = records.make_example(
        encoded=image.encoded, image_format="jpeg", height=image.height, width=image.width,
        filename=image.filename, source_id=image.image_id, boxes=image.boxes, labels=image.labels,
        texts=image.texts, difficult=image.difficult, truncated=image.truncated)
    return example.SerializeToString(deterministic=True)


def _write_json_atomically(path: Path, content: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)


# ----------------------------------------------------------------------------- conversion

def convert_voc(roots: Sequence[str | Path], output_directory: str | Path, name: str,
                class_names: Sequence[str] = VOC_CLASSES, *, splits: Sequence[str] = ("trainval",),
                all_annotated: bool = False, num_shards: int | None = None, num_workers: int = 1,
                skip_unknown_classes: bool = False, drop_empty: bool = False,
                jpeg_quality: int = JPEG_QUALITY, progress_stream: TextIO | None = None) -> dict:
    """Converts the images of `roots` (their `splits`, or every annotated image) into TFRecords.

    Labels are 1..N in `class_names` order. Returns the summary that is also written to
    `<output_directory>/<name>_summary.json`. Raises ConversionError for input that needs fixing.
    """
    if not name or os.sep in name:
        raise ConversionError(f"invalid output name {name!r}")
    class_names = tuple(class_names)
    output_directory = Path(output_directory)
    tally = WarningTally()

    entries, sources, notes = find_entries(roots, splits, all_annotated)
    for kind, message in notes:
        tally.add(kind, "", message)
    tasks, skipped = _scan_annotations(entries, class_names, skip_unknown_classes)
    if not tasks:
        raise ConversionError(f"nothing to convert: {len(entries)} ids found, {len(skipped)} unreadable")
    num_shards = num_shards or max(1, math.ceil(len(tasks) / IMAGES_PER_SHARD))
    options = ImageOptions(class_to_label={n: i + 1 for i, n in enumerate(class_names)},
                           skip_unknown_classes=skip_unknown_classes, drop_empty=drop_empty,
                           jpeg_quality=jpeg_quality)

    objects_per_class = collections.Counter()
    difficult_per_class = collections.Counter()
    reencoded = collections.Counter()
    images_per_shard = [0] * num_shards
    num_truncated = num_empty = written = 0
    shard_names = [shard_name(name, i, num_shards) for i in range(num_shards)]
    output_directory.mkdir(parents=True, exist_ok=True)
    partial_directory = output_directory / f".{name}.partial"
    shutil.rmtree(partial_directory, ignore_errors=True)  # left by a killed run
    partial_directory.mkdir()
    writers = []
    progress = Progress(len(tasks), label=name, stream=progress_stream)
    try:
        writers = [tf.io.TFRecordWriter(str(partial_directory / shard)) for shard in shard_names]
        for outcome in _outcomes(tasks, options, num_workers):
            for kind, message in outcome.notes:
                tally.add(kind, outcome.entry.xml_path, message)
            progress.update()
            if outcome.image is None:
                logging.warning("%s: skipped: %s", outcome.entry.image_path, outcome.skip_reason)
                skipped.append({"image_id": outcome.entry.image_id, "file": outcome.entry.image_path,
                                "reason": outcome.skip_reason})
                continue
            image = outcome.image
            shard = written % num_shards
            writers[shard].write(_serialize(image))
            images_per_shard[shard] += 1
            written += 1
            objects_per_class.update(image.texts)
            difficult_per_class.update(t for t, d in zip(image.texts, image.difficult) if d)
            num_truncated += sum(image.truncated)
            num_empty += not image.labels
            if image.reencoded:
                reencoded[image.reencoded] += 1
        progress.close()
        for writer in writers:
            writer.close()
        writers = []
        if not written:
            raise ConversionError(f"no image could be converted ({len(skipped)} skipped); see the log")
        summary = {
            "name": name,
            "sources": sources,
            "classes": list(class_names),
            "num_images": written,
            "num_objects": sum(objects_per_class.values()),
            "num_difficult": sum(difficult_per_class.values()),
            "num_truncated": num_truncated,
            "num_empty_images": num_empty,
            "objects_per_class": {n: objects_per_class[n] for n in class_names},
            "difficult_per_class": {n: difficult_per_class[n] for n in class_names},
            "reencoded_images": dict(sorted(reencoded.items())),
            "num_skipped": len(skipped),
            "skipped": skipped,
            "warnings": dict(sorted(tally.counts.items())),
            "warning_examples": {kind: tally.examples[kind] for kind in sorted(tally.examples)},
            "num_shards": num_shards,
            "shards": shard_names,
            "images_per_shard": images_per_shard,
        }
        summary_path = output_directory / f"{name}_summary.json"
        summary_path.unlink(missing_ok=True)
        for stale in finished_shards(output_directory, name):
            if stale.name not in shard_names:
                stale.unlink()
        for shard in shard_names:
            os.replace(partial_directory / shard, output_directory / shard)
        _write_json_atomically(summary_path, summary)
    finally:
        for writer in writers:
            writer.close()
        shutil.rmtree(partial_directory, ignore_errors=True)
    logging.info("%s: wrote %d images (%d objects) into %d shards in %s; %d skipped; warnings: %s",
                 name, written, summary["num_objects"], num_shards, output_directory, len(skipped),
                 dict(tally.counts) or "none")
    return summary


# ----------------------------------------------------------------------------- command line

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_directory", None,
                    "VOCdevkit directory holding VOC<year> roots (with --years).")
flags.DEFINE_list("years", [], "Years under --dataset_directory, e.g. 2007,2012.")
flags.DEFINE_list("voc_root", [], "VOC-layout root(s) (Annotations/, JPEGImages/, ImageSets/Main/), "
                                  "instead of --dataset_directory/--years.")
flags.DEFINE_list("splits", ["trainval"],
                  "Split lists ImageSets/Main/<split>.txt to convert, e.g. trainval or test.")
flags.DEFINE_alias("split", "splits")
flags.DEFINE_bool("all_annotated", False,
                  "The seed's mode: every Annotations/*.xml instead of the split lists (ids of a "
                  "test.txt in the same root are left out).")
flags.DEFINE_list("classes", [], "Class names, labels 1..N in this order (default: the 20 VOC classes).")
flags.DEFINE_string("classes_file", None, "File with one class name per line, instead of --classes.")
flags.DEFINE_string("output_directory", None, "Where shards and summary are written.")
flags.DEFINE_string("name", None,
                    "Output name; default derived from the years/root and splits, e.g. voc0712_trainval.")
flags.DEFINE_integer("num_shards", 0, f"Number of shards; 0: one per {IMAGES_PER_SHARD} images.")
flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Worker processes for image decoding.")
flags.DEFINE_bool("skip_unknown_classes", False,
                  "Drop objects of classes not in the list instead of failing.")
flags.DEFINE_bool("drop_empty", False, "Skip images without objects (for training sets).")


def default_name(years: Sequence[str], roots: Sequence[str], splits: Sequence[str],
                 all_annotated: bool) -> str:
    stem = ("voc" + "".join(str(y).strip()[-2:] for y in years)) if years else \
        "+".join(Path(r).resolve().name for r in roots)
    return f"{stem}_{'all' if all_annotated else '+'.join(splits)}"


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(FLAGS.voc_root) == bool(FLAGS.dataset_directory):
        raise app.UsageError("give either --voc_root or --dataset_directory with --years")
    if FLAGS.dataset_directory and not FLAGS.years:
        raise app.UsageError("--dataset_directory needs --years, e.g. --years=2007,2012")
    if not FLAGS.output_directory:
        raise app.UsageError("--output_directory is required")
    roots = FLAGS.voc_root or voc_roots(FLAGS.dataset_directory, FLAGS.years)
    splits = [s.strip() for s in FLAGS.splits if s.strip()]
    if not splits and not FLAGS.all_annotated:
        raise app.UsageError("--splits is empty")
    name = FLAGS.name or default_name(FLAGS.years, FLAGS.voc_root, splits, FLAGS.all_annotated)
    try:
        class_names = load_class_names(FLAGS.classes, FLAGS.classes_file)
        summary = convert_voc(roots, FLAGS.output_directory, name, class_names, splits=splits,
                              all_annotated=FLAGS.all_annotated, num_shards=FLAGS.num_shards or None,
                              num_workers=FLAGS.num_workers,
                              skip_unknown_classes=FLAGS.skip_unknown_classes, drop_empty=FLAGS.drop_empty)
    except ConversionError as error:
        sys.exit(f"error: {error}")
    print(f"{name}: {summary['num_images']} images, {summary['num_objects']} objects, "
          f"{summary['num_skipped']} skipped -> {FLAGS.output_directory}")


if __name__ == "__main__":
    app.run(main)
