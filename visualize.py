r"""Draws a trained SSD's detections on images, at their original resolution.

  python visualize.py --images=photos/,extra.jpg --model_dir=runs/ssd300 --output_dir=drawn \
      [--checkpoint_path=runs/ssd300/ckpt-120000] [--score_threshold=0.5] \
      [--annotations_dir=VOC2007/Annotations | --annotations_file=annotations/instances_val2017.json]
  python visualize.py --images=photos/ --saved_model=exported/ssd300 --output_dir=drawn

--images takes files, folders (their .jpg/.jpeg/.png/.bmp/.webp files; other files in them are
counted and named in the log) and globs, comma-separated; any size, grayscale and RGBA too. The
detector is model_dir's config and latest checkpoint (or --checkpoint_path), or an exported
SavedModel (--saved_model, its uint8 signature with
--score_threshold as its score_threshold input). Each image is written to --output_dir under its
own name with the boxes scoring at least --score_threshold drawn with class names and scores.
With --annotations_dir, the VOC XML of the same stem is drawn beside the detections (detections
left, ground truth right); with --annotations_file, a COCO annotations JSON's objects of the image
of the same file name (ssd.coco.image_truth). Objects of classes the model does not know are
counted and reported (a warning per name, and in the final line). Unreadable images are skipped,
counted and named (in the log and the final line).

Pictures are shown as a person sees them: a photo's EXIF orientation is applied, and the detector
runs on those upright pixels. With an annotation, its <size> decides the pixel grid as the
converters decide it (ssd.data.orientation.orient_for_annotation; a COCO image's width and height
play the part of <size>): the upright picture when <size> is
the upright size, the stored one when it is the stored size, and --exif=auto|apply|ignore when
it cannot tell (auto keeps the stored grid and warns, like the converters).
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python visualize.py` from anywhere: make `ssd` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

import numpy as np
from absl import app, flags, logging
from PIL import Image, UnidentifiedImageError

from ssd.errors import UserError

FLAGS = flags.FLAGS

flags.DEFINE_list("images", None, "Image files, folders and globs (comma-separated).")
flags.DEFINE_string("model_dir", None, "Training directory: config.json and checkpoints.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix or a directory (its latest); "
                    "default: the latest in --model_dir.")
flags.DEFINE_string("saved_model", None, "An exported SavedModel (instead of --model_dir).")
flags.DEFINE_string("output_dir", None, "Where the drawn images go.")
flags.DEFINE_float("score_threshold", 0.5, "Draw detections scoring at least this.")
flags.DEFINE_string("annotations_dir", None, "VOC XML annotations (<image stem>.xml): draw the "
                    "ground truth beside the detections.")
flags.DEFINE_string("annotations_file", None, "A COCO annotations JSON (images matched by file "
                    "name): draw the ground truth beside the detections.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Inference precision (with "
                  "--model_dir).")
flags.DEFINE_enum("exif", "auto", ["auto", "apply", "ignore"],
                  "With --annotations_dir or --annotations_file, photos with an EXIF orientation "
                  "tag whose annotated size cannot tell which pixel grid the boxes refer to: auto "
                  "keeps the stored grid and warns, "
                  "apply turns them upright, ignore keeps the stored grid (the converters' rule). "
                  "Images drawn without an annotation are always shown upright.")
flags.DEFINE_integer("batch_size", None, "Images per inference call (with --model_dir); default "
                     "eval.batch_size.")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
KEPT_FORMATS = (".jpg", ".jpeg", ".png")  # drawn images keep these formats; others become PNG
MAX_LISTED_SKIPS = 10


class UsageError(UserError):
    """A problem with the command line: printed as one line without a traceback (ssd.cli.run)."""


def listed(names: list[str]) -> str:
    """The first MAX_LISTED_SKIPS names, comma-separated, with "..." when there are more."""
    return ", ".join(names[:MAX_LISTED_SKIPS]) + (", ..." if len(names) > MAX_LISTED_SKIPS else "")


def collect_images(entries: list[str], left_out: list[str] | None = None) -> list[Path]:
    """Image paths of files, folders (non-recursive, by extension) and globs, in the given order.
    The other files of the folders are appended to `left_out`."""
    found: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            found += [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
            if left_out is not None:
                left_out += [str(p) for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(entry):
            matches = sorted(Path(p) for p in glob.glob(entry) if Path(p).is_file())
            if not matches:
                raise UsageError(f"--images: nothing matches {entry}")
            found += matches
        else:
            raise UsageError(f"--images: {entry} does not exist")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise UsageError(f"--images: no {'/'.join(IMAGE_EXTENSIONS)} files in {', '.join(entries)}")
    return unique


def output_name(path: Path, used: set[str]) -> str:
    """The image's own file name (PNG for formats other than JPEG/PNG), made unique."""
    suffix = path.suffix if path.suffix.lower() in KEPT_FORMATS else ".png"
    name, k = path.stem + suffix, 1
    while name in used:
        name, k = f"{path.stem}_{k}{suffix}", k + 1
    used.add(name)
    return name


class CheckpointDetector:
    """model_dir's config and a checkpoint, through ssd.inference.detector.Detector: batched inference."""

    def __init__(self, model_dir: str, checkpoint_path: str | None, batch_size: int | None,
                 precision: str = "float32"):
        from ssd.inference.detector import Detector, load_trained_model

        self.config, model, checkpoint, step = load_trained_model(model_dir, checkpoint_path, precision)
        logging.info("detector: %s (step %d)", checkpoint, step)
        self._detector = Detector(model, self.config)
        self.class_names = self._detector.class_names
        self.batch_size = batch_size or self.config.eval.batch_size

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return self._detector.detect_arrays(images)


class SavedModelDetector:
    """An exported SavedModel's uint8 signature, one image per call (sizes differ)."""

    def __init__(self, saved_model: str, score_threshold: float = 0.0):
        import tensorflow as tf

        from ssd.inference.saved_model import SIGNATURE_CLASS_NAMES, SIGNATURE_IMAGES

        loaded = tf.saved_model.load(saved_model)
        self._loaded = loaded  # keeps the signatures' variables alive
        self._serve = loaded.signatures[SIGNATURE_IMAGES]
        self._threshold = tf.constant(score_threshold, tf.float32)
        names = loaded.signatures[SIGNATURE_CLASS_NAMES]()["class_names"].numpy()
        self.class_names = [n.decode("utf-8") for n in names]
        self.batch_size = 1

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        import tensorflow as tf

        results = []
        for image in images:
            out = self._serve(images=tf.constant(image[np.newaxis]), score_threshold=self._threshold)
            results.append({"pixel_boxes": out["detection_pixel_boxes"][0].numpy(),
                            "scores": out["detection_scores"][0].numpy(),
                            "classes": out["detection_classes"][0].numpy().astype(np.int32),
                            "num_detections": int(out["num_detections"][0])})
        return results


def read_image(path: Path) -> Image.Image:
    """The image as stored (its EXIF still readable), decoded."""
    with Image.open(path) as image:
        image.load()
        return image


class VocImageTruth:
    """One VOC XML's objects, as `ssd.coco.image_truth.ImageTruth` offers them."""

    def __init__(self, annotation: Path):
        from ssd.voc.annotations import parse_voc_xml

        self._parsed = parse_voc_xml(annotation)
        self.size = None if self._parsed.width is None else (self._parsed.width, self._parsed.height)

    def labeled(self, class_names: list[str], height: int, width: int):
        """(normalized boxes [N, 4], 1-based labels [N], names of objects of unknown classes)."""
        from ssd.voc.annotations import labeled_boxes
        from ssd.voc.coords import voc_to_normalized

        boxes, labels, _, unknown = labeled_boxes(self._parsed, class_names)
        return voc_to_normalized(boxes, height, width), labels, unknown


class VocAnnotations:
    """An --annotations_dir: the VOC XML of an image's stem."""

    def __init__(self, directory: Path):
        self.directory = directory

    def find(self, path: Path) -> tuple[VocImageTruth | None, str | None]:
        from ssd.voc.annotations import VocXmlError

        annotation = self.directory / f"{path.stem}.xml"
        if not annotation.is_file():
            return None, f"no annotation {annotation}"
        try:
            return VocImageTruth(annotation), None
        except VocXmlError as e:
            return None, str(e)


def picture(stored: Image.Image, annotated: bool, annotated_size: tuple[int, int] | None, policy: str
            ) -> tuple[Image.Image, str | None]:
    """(the RGB pixels to draw on and detect in, a warning or None).

    Not annotated: the picture upright by its EXIF orientation. Annotated: the grid the
    annotation's (width, height) refers to (None: no usable <size>), by the converters' rule.
    """
    from ssd.data.orientation import apply_orientation, orient_for_annotation, orientation_of

    if not annotated:
        return apply_orientation(stored, orientation_of(stored)).convert("RGB"), None
    pixels, orientation, choice = orient_for_annotation(stored, annotated_size, policy)
    warning = None
    if choice.decided_by == "policy" and policy == "auto":
        warning = (f"EXIF orientation {orientation} and the annotation's <size> cannot tell whether "
                   f"its boxes refer to the upright picture; drawn on the stored "
                   f"{stored.width}x{stored.height} grid (--exif=apply for upright)")
    return pixels.convert("RGB"), warning


def ground_truth_image(image: Image.Image, boxes: np.ndarray, labels: np.ndarray,
                       class_names: list[str]) -> Image.Image:
    """`image` with the normalized ground-truth `boxes` drawn."""
    from ssd.draw import draw_boxes

    height, width = image.height, image.width
    return draw_boxes(image, boxes * np.array([height, width, height, width]), labels, class_names)


def draw(image: Image.Image, detection: dict, class_names: list[str], threshold: float) -> tuple[Image.Image, int]:
    from ssd.draw import draw_boxes

    n = detection["num_detections"]
    scores = detection["scores"][:n]
    drawn = draw_boxes(image, detection["pixel_boxes"][:n], detection["classes"][:n], class_names, scores,
                       score_threshold=threshold)
    return drawn, int(np.count_nonzero(scores >= threshold))


def _load(path: Path, annotations, class_names: list[str], policy: str) -> dict:
    """One image's pixels to draw on and, when its annotation is found, the ground truth
    (normalized boxes, labels, names of unknown classes)."""
    item = {"path": path, "truth": None, "problem": None}
    stored = read_image(path)
    found = None
    if annotations is not None:
        found, item["problem"] = annotations.find(path)
    item["image"], warning = picture(stored, found is not None, None if found is None else found.size,
                                     policy)
    if warning:
        logging.warning("%s: %s", path, warning)
    if found is not None:
        item["truth"] = found.labeled(class_names, item["image"].height, item["image"].width)
    return item


def run(paths: list[Path], detector, output_dir: Path, threshold: float,
        annotations=None, exif_policy: str = "auto") -> dict:
    """Draws every image; returns the counts (written, skipped, boxes, no_annotation),
    "skipped_files" (the unreadable images) and "unknown_classes": {name: objects} of annotated
    classes the model does not know. `annotations`: VocAnnotations, a COCO file's
    `ssd.coco.image_truth.CocoImageTruths` or None."""
    from collections import Counter

    from ssd.draw import side_by_side
    from ssd.progress import Progress

    output_dir.mkdir(parents=True, exist_ok=True)
    inputs = {p.parent for p in paths}
    if output_dir.resolve() in inputs:
        raise UsageError(f"--output_dir {output_dir} holds input images, which would be overwritten")
    used: set[str] = set()
    counts: dict = {"written": 0, "skipped": 0, "boxes": 0, "no_annotation": 0}
    unknown_classes: Counter = Counter()
    skipped: list[str] = []
    progress = Progress(len(paths), label="visualize")
    for start in range(0, len(paths), detector.batch_size):
        batch = []
        for path in paths[start:start + detector.batch_size]:
            try:
                batch.append(_load(path, annotations, detector.class_names, exif_policy))
            except (UnidentifiedImageError, OSError, ValueError) as e:
                counts["skipped"] += 1
                skipped.append(str(path))
                logging.warning("skipping %s: not a readable image (%s)", path, e)
                progress.update()
        if not batch:
            continue
        detections = detector([np.asarray(item["image"]) for item in batch])
        for item, detection in zip(batch, detections):
            path, image = item["path"], item["image"]
            drawn, shown = draw(image, detection, detector.class_names, threshold)
            counts["boxes"] += shown
            if annotations is not None:
                if item["truth"] is None:
                    counts["no_annotation"] += 1
                    logging.warning("%s: no ground truth drawn (%s)", path, item["problem"])
                else:
                    boxes, labels, unknown = item["truth"]
                    unknown_classes.update(unknown)
                    truth = ground_truth_image(image, boxes, labels, detector.class_names)
                    drawn = side_by_side(drawn, truth, titles=("detections", "ground truth"))
            name = output_name(path, used)
            save_options = {"quality": 95} if name.lower().endswith((".jpg", ".jpeg")) else {}
            drawn.save(output_dir / name, **save_options)
            counts["written"] += 1
            progress.update()
    progress.close()
    if skipped:
        logging.warning("%d unreadable images skipped: %s", len(skipped), listed(skipped))
    for name, number in sorted(unknown_classes.items()):
        logging.warning("annotations: %d objects of class %r, which the model does not know (its "
                        "classes: %s); not drawn", number, name, ", ".join(detector.class_names))
    counts["unknown_classes"] = dict(sorted(unknown_classes.items()))
    counts["skipped_files"] = skipped
    return counts


def read_annotations(annotations_dir: str | None, annotations_file: str | None):
    """VocAnnotations of --annotations_dir, the CocoImageTruths of --annotations_file, or None."""
    if annotations_dir:
        if not Path(annotations_dir).is_dir():
            raise UsageError(f"--annotations_dir {annotations_dir} is not a directory")
        return VocAnnotations(Path(annotations_dir))
    if annotations_file:
        from ssd.coco.image_truth import read_image_truths

        return read_image_truths(annotations_file)
    return None


def summary_line(counts: dict, threshold: float, output_dir: str, annotated: bool) -> str:
    line = (f"wrote {counts['written']} images ({counts['boxes']} boxes >= {threshold}) to "
            f"{output_dir}; skipped {counts['skipped']} unreadable")
    if counts.get("skipped_files"):
        line += f" ({listed(counts['skipped_files'])})"
    if counts.get("left_out"):
        line += (f"; left out {len(counts['left_out'])} files of the folders that are not "
                 f"{'/'.join(IMAGE_EXTENSIONS)} images ({listed(counts['left_out'])})")
    if annotated:
        line += f"; {counts['no_annotation']} without annotation"
        unknown = counts["unknown_classes"]
        if unknown:
            line += (f"; {sum(unknown.values())} annotated objects of classes the model does not "
                     f"know, not drawn: " + ", ".join(f"{n} ({c})" for n, c in unknown.items()))
    return line


def main(argv) -> None:
    cli.kernels_for_precision(FLAGS.precision)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.images:
        raise app.UsageError("--images is required")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    if bool(FLAGS.model_dir) == bool(FLAGS.saved_model):
        raise app.UsageError("give exactly one of --model_dir and --saved_model")
    if FLAGS.checkpoint_path and not FLAGS.model_dir:
        raise app.UsageError("--checkpoint_path goes with --model_dir")
    if FLAGS.annotations_dir and FLAGS.annotations_file:
        raise app.UsageError("give at most one of --annotations_dir (VOC XML) and --annotations_file (COCO JSON)")

    try:  # UserErrors (bad config, checkpoint, ...) are printed as one line by cli.run
        left_out: list[str] = []
        paths = collect_images(FLAGS.images, left_out)
        if left_out:
            logging.warning("left out %d files of the --images folders that are not %s images: %s",
                            len(left_out), "/".join(IMAGE_EXTENSIONS), listed(left_out))
        annotations = read_annotations(FLAGS.annotations_dir, FLAGS.annotations_file)
        if FLAGS.saved_model:
            detector = SavedModelDetector(FLAGS.saved_model, FLAGS.score_threshold)
        else:
            detector = CheckpointDetector(FLAGS.model_dir, FLAGS.checkpoint_path, FLAGS.batch_size,
                                          FLAGS.precision)
        counts = run(paths, detector, Path(FLAGS.output_dir), FLAGS.score_threshold, annotations,
                     FLAGS.exif)
        counts["left_out"] = left_out
    except OSError as e:  # an --output_dir that cannot be written, ...
        cli.user_error(str(e))
    print(summary_line(counts, FLAGS.score_threshold, FLAGS.output_dir, annotations is not None))


if __name__ == "__main__":
    cli.run(main)
