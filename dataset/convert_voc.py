r"""Converts PASCAL VOC-format data sets into sharded TFRecords (the schema of ssd/data/records.py).

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

Writes `<name>-00000-of-000NN` ... and `<name>_summary.json` (dataset/tfrecord_writer.py).
Images are shuffled by a fixed seed (`--shuffle_seed`), so that VOC2007 and VOC2012 are mixed in
every shard, and the i-th of that order goes to shard i mod NN; `--noshuffle` keeps the split
lists' order (roots in order). Shards are written into a hidden temporary directory and moved into
place only when all of them are complete; the summary is written last, so its presence marks a
finished conversion. Output is byte-identical for identical input, whatever the number of workers.

What happens with irregular input:
  * missing <difficult>/<truncated>/<pose>: 0 / 0 / Unspecified (counted as warnings);
  * float coordinates: kept as floats;
  * <size> missing, invalid or disagreeing with the image: the decoded image wins (warning);
  * photos with an EXIF orientation tag (phones store them sideways): the record holds the
    pixel grid the annotation refers to, upright when <size> matches the upright size, as
    stored when it matches the stored one; when <size> cannot tell (missing, matching neither,
    square images, orientations 2-4 that keep width and height) `--exif` decides: auto keeps the
    stored grid with a warning, apply turns the image upright, ignore keeps it as stored. Boxes
    are never changed, only the pixels chosen (ssd/data/orientation.py);
  * a box reaching outside the image: clipped (warning); inverted, or empty after clipping:
    dropped (warning);
  * class names not in the class list: an error listing them with their files, or with
    --skip_unknown_classes those objects are dropped (warning);
  * images without objects: kept (evaluation sets need them), or skipped with --drop_empty;
  * images that are not plain RGB JPEG (grayscale, CMYK, alpha, palette, PNG behind a .jpg name,
    16-bit...): re-encoded as RGB JPEG at quality 95; undecodable or truncated images and malformed
    XML: skipped and listed in the summary;
  * ids of the split lists without an XML or image file: an error listing them, or with
    --skip_missing those ids are skipped and listed in the summary;
  * ids present in two roots: an error listing them (ids are the records' source_id, which
    evaluation matches on, so they must be unique; rename or convert the roots separately).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Sequence, TextIO

if __package__ in (None, ""):  # run as `python dataset/convert_voc.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

import numpy as np
from absl import app, flags, logging

from dataset import voc_image
from dataset.voc_entries import Entry, Note, find_entries, load_class_names, voc_roots
from dataset.tfrecord_writer import (DEFAULT_SHUFFLE_SEED, IMAGES_PER_SHARD, ConversionError, ConvertedImage,
                                     Outcome, WarningTally, check_name, write_records)
from ssd.voc import annotations as voc_xml
from ssd.config.loading import VOC_CLASSES
from ssd.data.orientation import EXIF_POLICIES, UPRIGHT, check_policy
from ssd.voc.coords import voc_to_normalized

JPEG_QUALITY = 95
MAX_FILES_PER_CLASS = 3  # files quoted per unknown class name


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    class_to_label: dict[str, int]
    skip_unknown_classes: bool = False
    drop_empty: bool = False
    jpeg_quality: int = JPEG_QUALITY
    exif_policy: str = "auto"



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
    hint = " (width and height swapped)" if swapped else ""
    return ("size_mismatch", f"<size> says {annotation.width}x{annotation.height} but the image is "
                             f"{width}x{height}{hint}; using the image's")


def _exif_note(image: voc_image.EncodedImage, policy: str) -> Note | None:
    """Under --exif=auto, a turned photo whose <size> cannot tell which grid the boxes refer to."""
    if policy != "auto" or image.orientation == UPRIGHT or image.choice.decided_by != "policy":
        return None
    return ("exif_undecided", f"EXIF orientation {image.orientation} and <size> cannot tell whether the "
                              f"boxes refer to the stored or the upright picture; kept the stored "
                              f"{image.width}x{image.height} grid (--exif=apply for upright)")


def _annotated_size(annotation: voc_xml.VocAnnotation) -> tuple[int, int] | None:
    return None if annotation.width is None else (annotation.width, annotation.height)


def convert_image(entry: Entry, annotation: voc_xml.VocAnnotation, options: ImageOptions) -> Outcome:
    """Decodes (re-encoding if needed) one image and turns its annotation into record fields.

    Bad data never raises: it becomes a skip reason or a note.
    """
    notes: list[Note] = list(annotation.notes)

    def outcome(image: ConvertedImage | None, skip_reason: str | None = None) -> Outcome:
        return Outcome(image_id=entry.image_id, annotation_file=entry.xml_path, image_file=entry.image_path,
                       image=image, skip_reason=skip_reason, notes=tuple(notes))

    try:
        data = Path(entry.image_path).read_bytes()
        image = voc_image.load_rgb_jpeg(data, quality=options.jpeg_quality,
                                        annotated_size=_annotated_size(annotation),
                                        exif_policy=options.exif_policy)
    except (OSError, voc_image.CorruptImageError) as error:
        return outcome(None, f"corrupt image: {error}")
    for note in (_exif_note(image, options.exif_policy), _size_note(annotation, image.height, image.width)):
        if note:
            notes.append(note)
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
        return outcome(None, "no objects (--drop_empty)")
    normalized = voc_to_normalized(np.array([box for _, _, box in kept], np.float64).reshape(-1, 4),
                                   image.height, image.width)
    converted = ConvertedImage(
        image_id=entry.image_id, filename=Path(entry.image_path).name, encoded=image.encoded,
        height=image.height, width=image.width, boxes=tuple(tuple(map(float, row)) for row in normalized),
        labels=tuple(label for _, label, _ in kept), texts=tuple(obj.name for obj, _, _ in kept),
        difficult=tuple(obj.difficult for obj, _, _ in kept),
        truncated=tuple(obj.truncated for obj, _, _ in kept), reencoded=image.reencoded,
        exif_orientation=image.orientation, exif_upright=image.choice.upright,
        exif_decided_by=image.choice.decided_by)
    return outcome(converted)


def _convert_task(task: tuple[Entry, voc_xml.VocAnnotation], options: ImageOptions) -> Outcome:
    return convert_image(task[0], task[1], options)


# ----------------------------------------------------------------------------- conversion

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


def _image_id(task: tuple[Entry, voc_xml.VocAnnotation]) -> str:
    return task[0].image_id


def convert_voc(roots: Sequence[str | Path], output_directory: str | Path, name: str,
                class_names: Sequence[str] = VOC_CLASSES, *, splits: Sequence[str] = ("trainval",),
                all_annotated: bool = False, num_shards: int | None = None, num_workers: int = 1,
                skip_unknown_classes: bool = False, drop_empty: bool = False, skip_missing: bool = False,
                exif_policy: str = "auto", shuffle_seed: int | None = DEFAULT_SHUFFLE_SEED,
                jpeg_quality: int = JPEG_QUALITY, progress_stream: TextIO | None = None) -> dict:
    """Converts the images of `roots` (their `splits`, or every annotated image) into TFRecords.

    Labels are 1..N in `class_names` order. `shuffle_seed` None keeps the list order.
    Returns the summary that is also written to `<output_directory>/<name>_summary.json`.
    Raises ConversionError for input that needs fixing.
    """
    check_name(name)
    try:
        check_policy(exif_policy)
    except ValueError as error:
        raise ConversionError(str(error)) from error
    class_names = tuple(class_names)
    tally = WarningTally()
    found = find_entries(roots, splits, all_annotated, skip_missing)
    for kind, message in found.notes:
        tally.add(kind, "", message)
    tasks, unreadable = _scan_annotations(found.entries, class_names, skip_unknown_classes)
    if not tasks:
        raise ConversionError(f"nothing to convert: {len(found.entries)} ids found, {len(unreadable)} "
                              f"unreadable, {len(found.missing)} with missing files")
    options = ImageOptions(class_to_label={n: i + 1 for i, n in enumerate(class_names)},
                           skip_unknown_classes=skip_unknown_classes, drop_empty=drop_empty,
                           jpeg_quality=jpeg_quality, exif_policy=exif_policy)
    header = {"sources": found.sources, "exif_policy": exif_policy, "num_missing": len(found.missing)}
    return write_records(tasks, functools.partial(_convert_task, options=options), key=_image_id,
                         output_directory=output_directory, name=name, class_names=class_names,
                         header=header, skipped=found.missing + unreadable, tally=tally,
                         num_shards=num_shards, num_workers=num_workers, shuffle_seed=shuffle_seed,
                         progress_stream=progress_stream)


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
flags.DEFINE_bool("skip_missing", False,
                  "Leave out ids of the split lists whose XML or image file is missing (listed in the "
                  "summary) instead of failing.")
flags.DEFINE_enum("exif", "auto", list(EXIF_POLICIES),
                  "Photos with an EXIF orientation tag whose <size> cannot tell which pixel grid the "
                  "boxes refer to: auto keeps the stored grid and warns, apply turns them upright, "
                  "ignore keeps the stored grid. A <size> that matches one grid only always decides.")
flags.DEFINE_bool("shuffle", True, "Shuffle the images (seeded, deterministic) before sharding; "
                                   "--noshuffle keeps the split lists' order.")
flags.DEFINE_integer("shuffle_seed", DEFAULT_SHUFFLE_SEED, "Seed of the shuffled order.")


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
                              skip_unknown_classes=FLAGS.skip_unknown_classes, drop_empty=FLAGS.drop_empty,
                              skip_missing=FLAGS.skip_missing, exif_policy=FLAGS.exif,
                              shuffle_seed=FLAGS.shuffle_seed if FLAGS.shuffle else None)
    except ConversionError as error:
        sys.exit(f"convert_voc.py: error: {error}")
    print(f"{name}: {summary['num_images']} images, {summary['num_objects']} objects, "
          f"{summary['num_skipped']} skipped -> {FLAGS.output_directory}")


if __name__ == "__main__":
    cli.run(main)
