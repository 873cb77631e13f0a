r"""Converts COCO-format object detection data into sharded TFRecords (the schema of ssd/data/records.py).

Examples:
  # COCO 2017: train2017 for training, val2017 (= the 2014 minival) for evaluation
  python dataset/convert_coco.py --annotations_file=annotations/instances_train2017.json \
      --image_dir=train2017 --output_directory=tfrecords --name=coco_train2017 --skip_empty
  python dataset/convert_coco.py --annotations_file=annotations/instances_val2017.json \
      --image_dir=val2017 --output_directory=tfrecords --name=coco_val2017
  # the paper's 2014 splits: several annotation files (each with its image directory, paired in
  # order), and a list of COCO image ids (one per line) choosing the images
  python dataset/convert_coco.py \
      --annotations_file=annotations/instances_train2014.json,annotations/instances_val2014.json \
      --image_dir=train2014,val2014 --image_ids_file=trainval35k.txt \
      --output_directory=tfrecords --name=coco_trainval35k --skip_empty

Writes `<name>-00000-of-000NN` ..., `<name>_categories.json` and `<name>_summary.json`
(sharded, atomic, seeded shuffle and summary as dataset/tfrecord_writer.py describes).

Categories: COCO's ids are sparse (1..90 for 80 categories); label i (1..K) is the i-th category
kept, in the order the annotation file lists them (dataset/coco_categories.py: categories no
annotation uses are reported, and left out when they only repeat another's name or are the
supercategory of all the others, as the data set entry of Roboflow exports is).
--categories_from=FILE gives another split's class list and label order instead (the training
split's annotation file or `<name>_categories.json`). `<name>_categories.json` records the map,
{"categories": [{"label": 1, "coco_id": 1, "name": "person"}, ...]}; evaluation reads it with
`ssd.coco.categories.read_category_map` to write detections with COCO ids. Several annotation
files must list the same categories.

Each record: image/source_id = the COCO image id (as text), image/filename = the JSON file_name,
class/text = the category name, boxes converted by ssd/coco/coords.py from the JSON's
[x, y, width, height] pixels (normalized by the JSON width and height), image/object/is_crowd =
iscrowd, image/object/area = the annotation's area (pixels of the JSON size), difficult and
truncated 0 (COCO has neither).

What happens with irregular input:
  * crowd annotations (iscrowd 1): with --crowd=ignore (the default, COCO's meaning) kept and
    flagged is_crowd (the COCO metric ignores detections on them; training does not use them as
    targets); with --crowd=objects converted as ordinary objects. Labeling tools (CVAT) mark objects
    drawn as masks iscrowd 1: when most annotations are crowd the converter warns and names the
    flag, and a data set whose every annotation is a crowd region is refused before anything is
    written, unless --evaluation_only says it is for evaluation;
  * images without annotations: kept (evaluation needs them); --skip_empty leaves out images
    without an annotation other than crowd regions (listed in the summary);
  * boxes with a zero or negative width or height: dropped; malformed boxes (not four finite
    numbers): dropped; boxes reaching outside the image: clipped; boxes entirely outside:
    dropped (each counted as a warning); boxes spilling past the edge by less than a pixel (the
    rounding of labeling tools): clipped and only counted (summary: corrected_without_warning);
  * annotations without an area: the box area (warning); without iscrowd: 0 (warning);
  * the JSON width/height and the image file: the EXIF rule of ssd/data/orientation.py chooses the
    stored or the upright pixels first (--exif as in convert_voc.py). If the size still differs,
    an image of exactly the same aspect ratio (a resized copy) is kept, boxes normalized by the
    JSON size (warning "size_scaled"); any other size is skipped with its reason in the summary,
    since the boxes cannot be placed on it reliably. Images without a JSON size use the file's;
  * grayscale, CMYK, PNG and other non-RGB-JPEG images: re-encoded as RGB JPEG (dataset/voc_image.py);
    undecodable images: skipped and listed;
  * file names with folders ("images/x.jpg", as Label Studio and CVAT write them) are relative to
    --image_dir (the export's root); an absolute file name is looked for under --image_dir too;
  * missing image files: an error listing them, or with --skip_missing skipped and listed;
  * category ids of annotations missing from `categories`, annotations of unknown images,
    duplicate image ids, duplicate category ids or names, and --image_ids_file ids absent from
    the annotation files: errors naming them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Sequence, TextIO

if __package__ in (None, ""):  # run as `python dataset/convert_coco.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

import numpy as np
from absl import app, flags, logging

from dataset import voc_image
from dataset.coco_annotations import (CROWD_POLICIES, Box, CocoImage, check_training_targets, find_images,
                                      read_image_ids, split_missing)
from dataset.tfrecord_writer import (DEFAULT_SHUFFLE_SEED, IMAGES_PER_SHARD, ConversionError, ConvertedImage,
                                     Note, Outcome, WarningTally, check_name, write_records)
from ssd.coco.categories import category_map_path, category_map_text
from ssd.coco.coords import coco_to_normalized
from ssd.data.orientation import EXIF_POLICIES, UPRIGHT, check_policy

JPEG_QUALITY = 95
SUBPIXEL_SPILL = 1.0  # pixels past the image edge clipped without a warning


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    annotations_file: str
    drop_empty: bool = False
    jpeg_quality: int = JPEG_QUALITY
    exif_policy: str = "auto"


# ----------------------------------------------------------------------------- per-image work

def clip_coco_box(box: Box, height: float, width: float) -> tuple[Box | None, str | None]:
    """(box clipped to the image, in COCO pixels, warning kind) or (None, kind) if unusable."""
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return None, "box_empty"
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None, "box_outside"
    if (x0, y0, x1, y1) == (x, y, x + w, y + h):
        return box, None
    spill = max(-x, -y, x + w - float(width), y + h - float(height))
    return (x0, y0, x1 - x0, y1 - y0), ("box_clipped_subpixel" if spill < SUBPIXEL_SPILL else "box_clipped")


def _exif_note(image: voc_image.EncodedImage, policy: str) -> Note | None:
    if policy != "auto" or image.orientation == UPRIGHT or image.choice.decided_by != "policy":
        return None
    return ("exif_undecided", f"EXIF orientation {image.orientation} and the JSON size cannot tell whether "
                              f"the boxes refer to the stored or the upright picture; kept the stored "
                              f"{image.width}x{image.height} grid (--exif=apply for upright)")


def convert_image(task: CocoImage, options: ImageOptions) -> Outcome:
    """Decodes (re-encoding if needed) one image and turns its annotations into record fields.

    Bad data never raises: it becomes a skip reason or a note.
    """
    notes: list[Note] = []
    where = f"image {task.image_id} ({task.file_name})"

    def outcome(image: ConvertedImage | None, skip_reason: str | None = None) -> Outcome:
        return Outcome(image_id=str(task.image_id), annotation_file=options.annotations_file,
                       image_file=task.path, image=image, skip_reason=skip_reason, notes=tuple(notes))

    try:
        image = voc_image.load_rgb_jpeg(Path(task.path).read_bytes(), quality=options.jpeg_quality,
                                        annotated_size=task.size, exif_policy=options.exif_policy)
    except (OSError, voc_image.CorruptImageError) as error:
        return outcome(None, f"corrupt image: {error}")
    note = _exif_note(image, options.exif_policy)
    if note:
        notes.append((note[0], f"{where}: {note[1]}"))
    width, height = task.size or (image.width, image.height)
    if task.size is None:
        notes.append(("size_missing", f"{where}: no valid width/height; using the image's"))
    elif (image.width, image.height) != (width, height):
        if image.width * height != image.height * width:
            return outcome(None, f"size mismatch: the JSON says {width}x{height} but the image is "
                                 f"{image.width}x{image.height} (another aspect ratio)")
        notes.append(("size_scaled", f"{where}: the JSON says {width}x{height} but the image is "
                                     f"{image.width}x{image.height} (same aspect ratio); boxes "
                                     f"normalized by the JSON size"))
    kept = []
    for obj in task.objects:
        if obj.bbox is None:
            notes.append(("box_invalid", f"{where}: {obj.name} box is not four finite numbers; dropped"))
            continue
        box, kind = clip_coco_box(obj.bbox, height, width)
        if kind:
            action = "dropped" if box is None else f"clipped to {list(box)}"
            notes.append((kind, f"{where}: {obj.name} box {list(obj.bbox)} in a {width}x{height} image "
                                f"{action}"))
        if box is None:
            continue
        area = obj.area
        if area is None:
            area = obj.bbox[2] * obj.bbox[3]
            notes.append(("area_missing", f"{where}: {obj.name} annotation has no area; using the box's"))
        if not obj.iscrowd_given:
            notes.append(("iscrowd_missing", f"{where}: {obj.name} annotation has no iscrowd; using 0"))
        kept.append((obj, box, area))
    if options.drop_empty and not any(not obj.is_crowd for obj, _, _ in kept):
        return outcome(None, "no objects other than crowd regions (--skip_empty)")
    normalized = coco_to_normalized(np.array([box for _, box, _ in kept], np.float64).reshape(-1, 4),
                                    height, width)
    converted = ConvertedImage(
        image_id=str(task.image_id), filename=task.file_name, encoded=image.encoded,
        height=image.height, width=image.width, boxes=tuple(tuple(map(float, row)) for row in normalized),
        labels=tuple(obj.label for obj, _, _ in kept), texts=tuple(obj.name for obj, _, _ in kept),
        difficult=(0,) * len(kept), truncated=(0,) * len(kept), reencoded=image.reencoded,
        exif_orientation=image.orientation, exif_upright=image.choice.upright,
        exif_decided_by=image.choice.decided_by, is_crowd=tuple(obj.is_crowd for obj, _, _ in kept),
        area=tuple(float(area) for _, _, area in kept))
    return outcome(converted)


# ----------------------------------------------------------------------------- conversion

def _image_key(task: CocoImage) -> str:
    return str(task.image_id)


def convert_coco(annotations_files: Sequence[str | Path], image_dirs: Sequence[str | Path],
                 output_directory: str | Path, name: str, *, image_ids_file: str | Path | None = None,
                 num_shards: int | None = None, num_workers: int = 1, drop_empty: bool = False,
                 skip_missing: bool = False, exif_policy: str = "auto",
                 shuffle_seed: int | None = DEFAULT_SHUFFLE_SEED, jpeg_quality: int = JPEG_QUALITY,
                 categories_from: str | Path | None = None, crowd: str = "ignore",
                 evaluation_only: bool = False, progress_stream: TextIO | None = None) -> dict:
    """Converts the images of the COCO annotation files (paired with their image directories),
    or those named by `image_ids_file`, into TFRecords and writes the category map beside them.

    `shuffle_seed` None keeps the files' (or the id list's) order; `categories_from`, `crowd` and
    `evaluation_only` as the flags of the same names (module docstring). Nothing in
    `output_directory` changes unless the conversion succeeds. Returns the summary that is also
    written to `<output_directory>/<name>_summary.json`. Raises ConversionError for input that
    needs fixing.
    """
    check_name(name)
    try:
        check_policy(exif_policy)
    except ValueError as error:
        raise ConversionError(str(error)) from error
    if crowd not in CROWD_POLICIES:
        raise ConversionError(f"crowd must be one of {CROWD_POLICIES}, got {crowd!r}")
    tally = WarningTally(quiet_kinds=("box_clipped_subpixel",))
    image_ids = None
    if image_ids_file is not None:
        image_ids, repeated = read_image_ids(image_ids_file)
        if repeated:
            tally.add("duplicate_id", str(image_ids_file), f"{repeated} ids listed more than once; each "
                                                           f"converted once")
    images, selection, sources = find_images(annotations_files, image_dirs, image_ids,
                                             categories_from=categories_from, crowd=crowd)
    for note in selection.notes:
        logging.warning("%s", note)
    categories = selection.categories
    tasks, missing = split_missing(images, skip_missing)
    if not tasks:
        raise ConversionError(f"nothing to convert: {len(images)} images, {len(missing)} with missing files")
    check_training_targets(tasks, crowd, evaluation_only)
    map_path = category_map_path(output_directory, name)
    options = ImageOptions(annotations_file=", ".join(map(str, annotations_files)), drop_empty=drop_empty,
                           jpeg_quality=jpeg_quality, exif_policy=exif_policy)
    header = {"sources": sources, "image_ids_file": None if image_ids_file is None else str(image_ids_file),
              "category_map": map_path.name, "categories_from": None if categories_from is None else str(categories_from),
              "category_notes": selection.notes, "crowd": crowd, "exif_policy": exif_policy,
              "num_missing": len(missing)}
    return write_records(tasks, functools.partial(convert_image, options=options), key=_image_key,
                         output_directory=output_directory, name=name,
                         class_names=[c.name for c in categories], header=header, skipped=missing,
                         tally=tally, num_shards=num_shards, num_workers=num_workers,
                         shuffle_seed=shuffle_seed, progress_stream=progress_stream,
                         side_files={map_path.name: category_map_text(categories)})


# ----------------------------------------------------------------------------- command line

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags: defined only when run as a script, since several converters share
    flag names (--output_directory, --name, ...) and tests import them into one process."""
    flags.DEFINE_list("annotations_file", [],
                      "COCO instances JSON file(s), e.g. annotations/instances_train2017.json.")
    flags.DEFINE_list("image_dir", [],
                      "Image directory of each annotation file (file_name is relative to it).")
    flags.DEFINE_string("image_ids_file", None,
                        "Text file of COCO image ids, one per line: convert only these, in this order "
                        "(e.g. the 2014 trainval35k / minival).")
    flags.DEFINE_string("output_directory", None, "Where shards, category map and summary are written.")
    flags.DEFINE_string("name", None, "Output name; default coco_<annotation file stem without "
                                      "'instances_'>, e.g. coco_train2017.")
    flags.DEFINE_integer("num_shards", 0, f"Number of shards; 0: one per {IMAGES_PER_SHARD} images.")
    flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Worker processes for image decoding.")
    flags.DEFINE_bool("skip_empty", False, "Skip images without objects other than crowd regions (for "
                                           "training sets); evaluation sets need them.")
    flags.DEFINE_alias("drop_empty", "skip_empty")  # convert_voc.py's name
    flags.DEFINE_bool("skip_missing", False, "Leave out images whose file is missing (listed in the "
                                             "summary) instead of failing.")
    flags.DEFINE_enum("exif", "auto", list(EXIF_POLICIES),
                      "Photos with an EXIF orientation tag whose JSON size cannot tell which pixel grid "
                      "the boxes refer to: auto keeps the stored grid and warns, apply turns them "
                      "upright, ignore keeps the stored grid. A JSON size that matches one grid only "
                      "always decides.")
    flags.DEFINE_bool("shuffle", True, "Shuffle the images (seeded, deterministic) before sharding; "
                                       "--noshuffle keeps the files' (or the id list's) order.")
    flags.DEFINE_integer("shuffle_seed", DEFAULT_SHUFFLE_SEED, "Seed of the shuffled order.")
    flags.DEFINE_string("categories_from", None,
                        "The class list and label order of another split: its COCO annotation file or "
                        "its <name>_categories.json (val/test get the training split's classes).")
    flags.DEFINE_enum("crowd", "ignore", list(CROWD_POLICIES),
                      "Annotations with iscrowd 1: ignore = crowd regions, no training target (COCO's "
                      "meaning); objects = ordinary objects (labeling tools mark masks so).")
    flags.DEFINE_bool("evaluation_only", False, "The split is only evaluated: convert it even when "
                                                "every annotation is a crowd region.")


def default_name(annotations_files: Sequence[str]) -> str:
    stems = [Path(f).stem.removeprefix("instances_") for f in annotations_files]
    return "coco_" + "+".join(stems)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.annotations_file or not FLAGS.image_dir:
        raise app.UsageError("--annotations_file and --image_dir are required")
    if len(FLAGS.annotations_file) != len(FLAGS.image_dir):
        raise app.UsageError("give one --image_dir per --annotations_file, in the same order")
    if not FLAGS.output_directory:
        raise app.UsageError("--output_directory is required")
    name = FLAGS.name or default_name(FLAGS.annotations_file)
    try:
        summary = convert_coco(FLAGS.annotations_file, FLAGS.image_dir, FLAGS.output_directory, name,
                               image_ids_file=FLAGS.image_ids_file, num_shards=FLAGS.num_shards or None,
                               num_workers=FLAGS.num_workers, drop_empty=FLAGS.skip_empty,
                               skip_missing=FLAGS.skip_missing, exif_policy=FLAGS.exif,
                               shuffle_seed=FLAGS.shuffle_seed if FLAGS.shuffle else None,
                               categories_from=FLAGS.categories_from, crowd=FLAGS.crowd,
                               evaluation_only=FLAGS.evaluation_only)
    except ConversionError as error:
        sys.exit(f"convert_coco.py: error: {error}")
    print(f"{name}: {summary['num_images']} images, {summary['num_objects']} objects "
          f"({summary['num_crowd']} crowd), {summary['num_skipped']} skipped -> {FLAGS.output_directory}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
